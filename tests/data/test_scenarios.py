from __future__ import annotations

import numpy as np
import pytest
import torch

from retain.data import scenarios as S
from retain.data.sources import Source, from_arrays
from retain.data.stream import Stream, Task, TensorData
from retain.errors import DataError


def test_split_class_incremental_keeps_global_labels(digits):
    s = S.split(digits, n_tasks=5)
    assert s.setting == "class_il" and s.n_outputs == 10
    assert [t.classes for t in s.tasks] == [(0, 1), (2, 3), (4, 5), (6, 7), (8, 9)]
    for t in s.tasks:
        assert set(t.train.y.unique().tolist()) == set(t.classes)
        assert set(t.test.y.unique().tolist()) == set(t.classes)
        assert torch.all(t.train.get("task") == s.tasks.index(t))
    assert sum(len(t.train) for t in s.tasks) == len(digits.x_train)


def test_split_task_il_mask_and_domain_il_labels(digits):
    s = S.split(digits, n_tasks=5, setting="task_il")
    mask = s.class_mask()
    assert mask.shape == (5, 10) and mask[1].nonzero().flatten().tolist() == [2, 3]
    d = S.split(digits, n_tasks=5, setting="domain_il")
    assert d.n_outputs == 2
    assert set(d.tasks[3].train.y.unique().tolist()) == {0, 1}
    assert d.class_names[0] == "0/2/4/6/8"


def test_split_class_order_and_subset(digits):
    s = S.split(digits, n_tasks=2, classes=[7, 3, 1, 0], class_order=[3, 0, 2, 1])
    assert s.n_outputs == 4 and s.class_names == ("7", "3", "1", "0")
    assert s.tasks[0].classes == (3, 0)
    with pytest.raises(DataError, match="do not divide"):
        S.split(digits, n_tasks=3)


def test_permuted_applies_one_permutation_per_task_to_train_and_test(digits):
    s = S.permuted(digits, n_tasks=3, seed=0)
    assert s.setting == "domain_il"
    for t in s.tasks:
        assert torch.equal(t.train.y, digits.y_train)
    # The same pixel values, reordered: sorted rows are unchanged.
    a = s.tasks[1].train.x.reshape(len(digits.x_train), -1)
    b = digits.x_train.reshape(len(digits.x_train), -1)
    assert torch.equal(a.sort(1).values, b.sort(1).values) and not torch.equal(a, b)
    # One permutation for train and test: recover it from a train image and check a test image.
    again = S.permuted(digits, n_tasks=3, seed=0)
    assert torch.equal(again.tasks[2].test.x, s.tasks[2].test.x)
    assert not torch.equal(s.tasks[1].train.x, s.tasks[2].train.x)


def test_rotate_images_by_90_degrees():
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 0, 4] = 1.0  # top-right corner
    out = S.rotate_images(img, 90.0)
    assert out[0, 0, 0, 0] > 0.99  # counter-clockwise: top-right moves to top-left
    s = S.rotated(
        from_arrays(torch.rand(20, 1, 6, 6), torch.randint(0, 3, (20,))),
        n_tasks=2,
        angles=[0.0, 180.0],
    )
    assert torch.allclose(s.tasks[0].train.x, s.tasks[0].train.x)
    flipped = s.tasks[1].train.x
    assert torch.allclose(flipped, s.tasks[0].train.x.flip(-1).flip(-2), atol=1e-5)


def test_iid_chunks_are_disjoint_and_cover(digits):
    s = S.iid(digits, n_tasks=2)
    assert [t.name for t in s.tasks] == ["D1", "D2"]
    assert abs(len(s.tasks[0].train) - len(s.tasks[1].train)) <= 1
    assert len(s.tasks[0].train) + len(s.tasks[1].train) == len(digits.x_train)


def test_prior_shift_draws_exact_disjoint_proportions(digits):
    s = S.prior_shift(
        digits, [[0.8, 0.1, 0.1], [0.1, 0.9, 0.0]], classes=[0, 1, 2], samples_per_task=100
    )
    c1 = torch.bincount(s.tasks[0].train.y, minlength=3).tolist()
    c2 = torch.bincount(s.tasks[1].train.y, minlength=3).tolist()
    assert c1 == [80, 10, 10] and c2 == [10, 90, 0]
    assert torch.bincount(s.tasks[1].test.y, minlength=3)[2] == 0  # the vanished class
    # Disjoint: no training image appears in both tasks.
    a = {tuple(r.tolist()) for r in s.tasks[0].train.x.reshape(100, -1)}
    b = {tuple(r.tolist()) for r in s.tasks[1].train.x.reshape(100, -1)}
    assert not a & b
    with pytest.raises(DataError, match="sum to 1"):
        S.prior_shift(digits, [[0.5, 0.1, 0.1]], classes=[0, 1, 2])
    with pytest.raises(DataError, match="at most"):
        S.prior_shift(digits, [[1.0, 0.0, 0.0]], classes=[0, 1, 2], samples_per_task=10_000)


def test_by_column_and_empty_group():
    x = np.random.default_rng(0).normal(size=(60, 3)).astype(np.float32)
    y = np.arange(60) % 2
    src = Source(
        torch.from_numpy(x),
        torch.from_numpy(y),
        columns_train={"site": np.array(["a", "b", "c"] * 20)},
    )
    s = S.by_column(src, "site", groups=["b", ["a", "c"]])
    assert [t.name for t in s.tasks] == ["site=b", "site=a|c"]
    assert len(s.tasks[0].train) + len(s.tasks[0].test) == 20
    with pytest.raises(DataError, match="empty"):
        S.by_column(src, "site", groups=["a", "zzz"])
    with pytest.raises(DataError, match="column 'sit' not found"):
        S.by_column(src, "sit")


def test_from_sources_shares_string_labels():
    a = Source(torch.zeros(10, 2), torch.tensor([0, 1] * 5), class_names=["cat", "dog"], name="jan")
    b = Source(torch.ones(10, 2), torch.tensor([0, 1] * 5), class_names=["bird", "dog"], name="feb")
    s = S.from_sources([a, b], test_fraction=0.2)
    assert s.class_names == ("bird", "cat", "dog") and s.n_outputs == 3
    feb_labels = set(torch.cat([s.tasks[1].train.y, s.tasks[1].test.y]).tolist())
    assert feb_labels == {0, 2}  # bird -> 0, dog -> 2


def test_validation_split_and_standardize_with_first_task_stats(digits):
    s = S.iid(digits, n_tasks=2, validation=0.2)
    assert s.tasks[0].val is not None
    assert abs(len(s.tasks[0].val) / (len(s.tasks[0].val) + len(s.tasks[0].train)) - 0.2) < 0.01
    z, info = S.standardize(s)
    first = z.tasks[0].train.x
    mean = first.mean(0)[first.std(0) > 0]
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-5)
    assert "x_mean" in info


def _task(x, y, name="t"):
    return Task(name, TensorData(x=x, y=y), TensorData(x=x, y=y))


def test_stream_rejects_bad_data():
    good = _task(torch.zeros(4, 2), torch.tensor([0, 1, 0, 1]))
    nan_x = torch.zeros(4, 2)
    nan_x[1, 0] = float("nan")
    with pytest.raises(DataError, match="NaN or inf in 1 sample"):
        Stream((_task(nan_x, torch.tensor([0, 1, 0, 1])),), n_outputs=2)
    with pytest.raises(DataError, match=r"labels range over \[0, 5\]"):
        Stream((_task(torch.zeros(2, 2), torch.tensor([0, 5])),), n_outputs=2)
    with pytest.raises(DataError, match="shape"):
        Stream((good, _task(torch.zeros(4, 3), torch.tensor([0, 1, 0, 1]), "u")), n_outputs=2)
    with pytest.raises(DataError, match="empty"):
        Stream((good, _task(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), "u")), n_outputs=2)
    with pytest.raises(DataError, match="unique"):
        Stream((good, good), n_outputs=2)


def test_by_column_config_drops_the_task_column_from_the_inputs():
    from retain.config import ByColumnScenario, StreamConfig
    from retain.data.build import build_stream

    cfg = StreamConfig(
        dataset="diabetes",
        scenario="by_column",
        options=ByColumnScenario(column="sex", groups=[1, 2]),
    )
    stream, info = build_stream(cfg, seed=0)
    assert [t.name for t in stream.tasks] == ["sex=1", "sex=2"]
    assert stream.input_shape == (9,)  # 10 diabetes features minus sex
    assert stream.objective == "regression" and info["standardized"]["inputs"]
    assert sum(len(t.train) + len(t.test) for t in stream.tasks) == 442
