"""The merge strategy: the weight's endpoints, mode all's fresh starts, the sweep's scores, resume,
and a causal LM with an evaluation suite."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from retain.api import run
from retain.config import EvalConfig, RunConfig, TrainConfig
from retain.data.stream import Stream, Task, TensorData
from retain.models import MLP
from retain.strategies.base import Strategy
from retain.strategies.merge import Merge

pytest.importorskip("peft")  # ties uses peft's merge_utils

CFG = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", lr=0.05)


def _mlp():
    torch.manual_seed(0)
    return MLP(64, 6, [32])


def _run(stream, strategies, seed=0):
    return run(_mlp(), stream, strategies, RunConfig(train=CFG, seed=seed))


def test_weight_zero_keeps_the_model_and_weight_one_is_finetune(tiny_stream):
    kept = _run(tiny_stream, [Merge(method="task_arithmetic", weight=0.0)])
    assert all(row == kept.matrix[0] for row in kept.matrix)
    taken = _run(tiny_stream, [Merge(method="task_arithmetic", weight=1.0)])
    assert taken.matrix == _run(tiny_stream, ["finetune"]).matrix


@dataclasses.dataclass
class _Starts(Strategy):
    """Records the first weight matrix at the start of each task."""

    def __post_init__(self):
        self.starts: list[torch.Tensor] = []

    def before_task(self, model, ctx):
        self.starts.append(next(ctx.unwrap(model).parameters()).detach().clone())
        return model


def test_mode_all_trains_every_task_from_the_base(tiny_stream):
    spy = _Starts()
    r = _run(tiny_stream, [Merge(method="ties", mode="all", weight=1.0), spy])
    assert all(torch.equal(s, spy.starts[0]) for s in spy.starts)
    assert r.matrix[1] != r.matrix[0]  # the merge is not the base


def test_sweep_scores_each_weight_and_the_configured_one_is_the_row_of_r(tiny_stream):
    r = _run(tiny_stream, [Merge(method="ties", weight=0.5, sweep=3)])
    for i, per_task in enumerate(r.record.strategy_stats):
        sweep = per_task["merge"]["sweep"]
        assert sweep["split"] == "test" and sweep["task"] == i
        assert [p["weight"] for p in sweep["points"]] == [0.0, 0.5, 1.0]
        middle = [cell["accuracy"] for cell in sweep["points"][1]["tasks"]]
        assert middle == pytest.approx(r.matrix[i + 1])
        # weight 0 is the model before the task: the previous row of R
        start = [cell["accuracy"] for cell in sweep["points"][0]["tasks"]]
        assert start == pytest.approx(r.matrix[i])


@dataclasses.dataclass
class _Weights(Strategy):
    """Records the model's weights at the start and at the end of each task (placed before
    ``merge`` in the list, it sees the specialist; after it, the merge)."""

    def __post_init__(self):
        self.before: list[dict[str, torch.Tensor]] = []
        self.after: list[dict[str, torch.Tensor]] = []

    def before_task(self, model, ctx):
        self.before.append({k: v.clone() for k, v in ctx.unwrap(model).state_dict().items()})
        return model

    def after_task(self, model, ctx):
        self.after.append({k: v.clone() for k, v in ctx.unwrap(model).state_dict().items()})
        return model


def test_ties_in_mode_previous_adds_w_times_the_trimmed_update(tiny_stream):
    """The merge of the first task was the specialist whatever the weight: task vectors were
    taken from the first task's base, so the previous model's was zero, and TIES's disjoint mean
    divides by the agreeing weights. A sweep from the base to the specialist was flat."""
    from peft.utils.merge_utils import magnitude_based_pruning

    first, last = _Weights(), _Weights()
    _run(tiny_stream, [first, Merge(method="ties", weight=0.3, density=0.5), last])
    for i in range(len(tiny_stream.tasks)):
        prev, theta, merged = first.before[i], first.after[i], last.after[i]
        for k in merged:
            update = magnitude_based_pruning(theta[k] - prev[k], 0.5)
            assert torch.allclose(merged[k], prev[k] + 0.3 * update, atol=1e-6), (i, k)
    r = _run(tiny_stream, [Merge(method="ties", weight=0.5, density=0.5, sweep=3)])
    points = r.record.strategy_stats[0]["merge"]["sweep"]["points"]
    losses = [p["tasks"][0]["loss"] for p in points]
    assert len(set(losses)) == 3  # weights 0, 0.5 and 1 give three different models


def test_sweep_uses_the_validation_split_when_there_is_one(tiny_stream):
    g = torch.Generator().manual_seed(0)
    tasks = []
    for t in tiny_stream.tasks[:2]:
        train, val = t.train.split(0.2, g)
        tasks.append(dataclasses.replace(t, train=train, val=val))
    stream = dataclasses.replace(tiny_stream, tasks=tuple(tasks))
    r = _run(stream, [Merge(sweep=2)])
    assert r.record.strategy_stats[-1]["merge"]["sweep"]["split"] == "validation"


def test_resume_gives_the_same_result(tiny_stream, tmp_path, crash_and_resume):
    def make():
        return [Merge(method="dare_ties", mode="all", weight=0.7, density=0.5)]

    r = crash_and_resume(tiny_stream, make, CFG, tmp_path / "run", _mlp)
    assert r.resumed.matrix == r.full.matrix
    full, resumed = r.full_strategies[0], r.strategies[0]
    assert len(resumed.specialists_) == 3
    for a, b in zip(full.specialists_, resumed.specialists_):
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        Merge(weight=1.5)
    with pytest.raises(ValueError, match="mode previous"):
        Merge(method="slerp", mode="all")


def test_merge_on_a_causal_lm_with_a_suite(tiny_causal_lm):
    def block(lo, seed):
        g = torch.Generator().manual_seed(seed)
        ids = lo + (torch.randint(0, 32, (12, 1), generator=g) + torch.arange(12)) % 32
        return TensorData(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())

    tasks = (Task("a", block(0, 0), block(0, 1)), Task("b", block(32, 2), block(32, 3)))
    stream = Stream(tasks, objective="causal_lm", setting="domain_il", suites={"g": block(0, 4)})
    cfg = RunConfig(
        train=TrainConfig(steps=3, batch_size=4, optimizer="adamw", lr=3e-3),
        eval=EvalConfig(batch_size=8),
    )
    r = run(tiny_causal_lm, stream, [Merge(method="slerp", sweep=2)], cfg)
    assert all(math.isfinite(v) for row in r.matrix for v in row)
    point = r.record.strategy_stats[-1]["merge"]["sweep"]["points"][0]
    assert set(point["suites"]) == {"g"} and math.isfinite(point["suites"]["g"]["loss"])


def test_a_cnn_with_batch_norm_merges_floats_and_keeps_its_integer_buffer(tiny_stream):
    torch.manual_seed(0)
    cnn = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 6),
    )
    r = run(cnn, tiny_stream, [Merge(method="dare_linear", mode="all")], RunConfig(train=CFG))
    assert all(math.isfinite(v) for row in r.matrix for v in row)
    bn = r.model[1]
    assert bn.num_batches_tracked.item() == 0  # an integer: the base's, never merged
    assert not torch.equal(bn.running_mean, torch.zeros(4))  # a float buffer: merged


def test_one_weight_per_task_or_a_one_line_refusal(tiny_stream):
    from retain.errors import Unsupported

    with pytest.raises(Unsupported, match="2 weights for 3 tasks") as e:
        Merge(weight=[0.5, 0.5]).check(tiny_stream)
    assert "\n" not in str(e.value)
    Merge(weight=[0.2, 0.5, 1]).check(tiny_stream)
