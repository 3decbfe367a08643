"""Drift statistics against hand-computed values, and fingerprints that round-trip."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from retain.data.stream import TensorData
from retain.eval.drift import (
    Fingerprint,
    drift,
    fingerprint,
    js_divergence_bits,
    ks_pvalue,
    ks_statistics,
    mmd,
    total_variation,
)
from retain.eval.flips import flips


def test_ks_statistic_by_hand() -> None:
    # ECDFs at 1, 2, 3, 4: a = 1/3, 2/3, 1, 1 and b = 0, 1/3, 2/3, 1: the largest gap is 1/3.
    a = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]])
    b = torch.tensor([[2.0, 5.0], [3.0, 5.0], [4.0, 5.0]])
    d = ks_statistics(a, b)
    assert d[0].item() == pytest.approx(1 / 3)
    assert d[1].item() == pytest.approx(1.0)  # disjoint samples


def test_ks_pvalue_matches_the_kolmogorov_table() -> None:
    # Kolmogorov's distribution: P(K > 1.358) = 0.050 and P(K > 1.628) = 0.010.
    e = math.sqrt(4000 * 4000 / 8000)
    for lam, p in ((1.358, 0.050), (1.628, 0.010)):
        d = lam / (e + 0.12 + 0.11 / e)
        assert ks_pvalue(d, 4000, 4000) == pytest.approx(p, abs=5e-4)
    assert ks_pvalue(0.0, 10, 10) == 1.0


def test_total_variation_and_js_by_hand() -> None:
    assert total_variation([5, 5], [10, 0]) == pytest.approx(0.5)
    assert total_variation([1, 1], [2, 2, 0]) == 0.0
    assert js_divergence_bits(torch.tensor([1, 0]), torch.tensor([0, 1])) == pytest.approx(1.0)
    assert js_divergence_bits(torch.tensor([3, 1]), torch.tensor([6, 2])) == pytest.approx(0.0)
    # p = (1/2, 1/2), q = (1, 0), m = (3/4, 1/4):
    # JS = 1/2 [1/2 log2(2/3) + 1/2 log2 2] + 1/2 log2(4/3)
    expected = 0.5 * (0.5 * math.log2(2 / 3) + 0.5) + 0.5 * math.log2(4 / 3)
    assert js_divergence_bits(torch.tensor([1, 1]), torch.tensor([1, 0])) == pytest.approx(expected)


def test_mmd_tells_a_shift_from_noise() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(150, 5, generator=g)
    same = torch.randn(150, 5, generator=g)
    shifted = torch.randn(150, 5, generator=g) + torch.tensor([0.8, 0, 0, 0, 0])
    value_same, p_same = mmd(a, same, permutations=100)
    value_shift, p_shift = mmd(a, shifted, permutations=100)
    assert p_same > 0.05 and p_shift < 0.02
    assert value_shift > value_same
    assert mmd(a, shifted, permutations=100) == (value_shift, p_shift)  # seeded


def test_drift_on_tables_and_text() -> None:
    g = torch.Generator().manual_seed(1)
    old = TensorData(x=torch.randn(400, 3, generator=g), y=torch.randint(0, 2, (400,), generator=g))
    x_new = torch.randn(400, 3, generator=g)
    x_new[:, 2] += 2.0  # only feature 2 moves
    new = TensorData(x=x_new, y=torch.full((400,), 2))
    report = drift(fingerprint(old, n_classes=3), fingerprint(new, n_classes=3))
    assert report["features"]["ks_max_feature"] == 2
    assert report["features"]["ks_max"] > 0.5 and report["features"]["mmd_p_value"] < 0.01
    assert report["labels"] == {"total_variation": 1.0, "new_classes": [2]}

    ids_old = torch.tensor([[1, 2, 3, 0], [1, 2, 2, 0]])
    ids_new = torch.tensor([[1, 2, 5, 5], [5, 5, 5, 0]])
    a = fingerprint(TensorData(input_ids=ids_old, attention_mask=ids_old != 0), vocab_size=6)
    b = fingerprint(TensorData(input_ids=ids_new, attention_mask=ids_new != 0), vocab_size=6)
    tokens = drift(a, b)["tokens"]
    assert tokens["unseen_token_share"] == pytest.approx(5 / 7)  # five 5s among 7 tokens


def test_fingerprint_round_trips_through_json_and_safetensors(tmp_path) -> None:
    data = TensorData(x=torch.arange(24.0).reshape(6, 4), y=torch.tensor([0, 1, 1, 0, 1, 1]))
    fp = fingerprint(data, n_classes=2, rows=4)
    save_file(fp.tensors(), tmp_path / "fp.safetensors")
    back = Fingerprint.from_parts(fp.to_json(), load_file(tmp_path / "fp.safetensors"))
    assert back.class_counts == [2, 4] and back.sample.shape == (4, 4)
    assert torch.equal(back.sample, fp.sample)
    assert drift(fp, back)["features"]["ks_max"] == 0.0


def test_negative_flip_rate_by_hand() -> None:
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    old = torch.tensor([0, 1, 2, 3, 4, 5, 0, 0, 0, 0])  # right on 0-5
    new = torch.tensor([0, 1, 9, 9, 4, 5, 6, 0, 0, 0])  # loses 2 and 3, gains 6
    f = flips(old, new, y)
    assert (f.n, f.negative, f.positive) == (10, 2, 1)
    assert f.nfr == 0.2 and f.pfr == 0.1
    # accuracy 0.6 -> 0.5: the change is PFR - NFR
    assert (new == y).float().mean() - (old == y).float().mean() == pytest.approx(f.pfr - f.nfr)
    with pytest.raises(ValueError, match="same length"):
        flips(old, new[:3], y)
