"""Merge methods against their papers' definitions, on tensors small enough to work out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from retain.errors import ConfigError
from retain.merging import merge, merge_tensor

pytest.importorskip("peft")  # ties and dare_ties use peft's merge_utils

BASE = torch.tensor([1.0, 1.0, 1.0, 1.0])
TAU1 = torch.tensor([3.0, -1.0, 2.0, 0.5])
TAU2 = torch.tensor([1.0, 2.0, -4.0, 0.5])


def _models(*taus):
    return [BASE + t for t in taus]


def test_task_arithmetic_adds_weighted_task_vectors():
    # base + 0.5 * tau1 + 1.0 * tau2 = 1 + [1.5 + 1, -0.5 + 2, 1 - 4, 0.25 + 0.5]
    out = merge_tensor(BASE, _models(TAU1, TAU2), [0.5, 1.0], "task_arithmetic")
    assert out.tolist() == [3.5, 2.5, -2.0, 1.75]


def test_ties_trims_elects_and_averages_the_agreeing_entries():
    # Trim to the top 50% magnitude: tau1 -> [3, 0, 2, 0], tau2 -> [0, 2, -4, 0].
    # Elected signs of the sum [3, 2, -2, 0]: +, +, -, (+). Disjoint mean over the agreeing,
    # non-zero entries: [3, 2, -4, 0] (the third: tau1's +2 disagrees and is left out).
    out = merge_tensor(BASE, _models(TAU1, TAU2), [1.0, 1.0], "ties", density=0.5)
    assert out.tolist() == [4.0, 3.0, -3.0, 1.0]


def test_ties_weights_average_the_agreeing_entries_and_zero_weight_drops_a_model():
    a, b = torch.tensor([2.0, 4.0]), torch.tensor([6.0, -1.0])
    base = torch.zeros(2)
    # Weighted: [0.5, 1] and [4.5, -0.75]; elected signs of [5, 0.25]: +, +. Entry 0: both
    # agree, (0.5 + 4.5) / (0.25 + 0.75) = 5; entry 1: only a, 1 / 0.25 = 4.
    assert merge_tensor(base, [a, b], [0.25, 0.75], "ties").tolist() == [5.0, 4.0]
    assert merge_tensor(base, [a, b], [1.0, 0.0], "ties").tolist() == [2.0, 4.0]
    assert merge_tensor(base, [a, b], [0.0, 1.0], "ties").tolist() == [6.0, -1.0]


def test_dare_drops_at_rate_one_minus_density_and_rescales_the_rest():
    base = torch.zeros(20_000)
    tau = torch.full((20_000,), 3.0)
    g = torch.Generator().manual_seed(0)
    out = merge_tensor(base, [tau], [1.0], "dare_linear", density=0.25, generator=g)
    kept = out != 0
    assert set(out.unique().tolist()) == {0.0, 12.0}  # kept entries are tau / density
    assert abs(kept.float().mean().item() - 0.25) < 0.01
    assert abs(out.mean().item() - 3.0) < 0.1  # the expectation of each entry is kept


def test_dare_is_reproducible_from_its_seed():
    base = {"w": torch.zeros(64), "b": torch.zeros(8)}
    a = {"w": torch.randn(64), "b": torch.randn(8)}
    b = {"w": torch.randn(64), "b": torch.randn(8)}
    one = merge(base, [a, b], [0.5, 0.5], "dare_ties", density=0.5, seed=3)
    two = merge(base, [a, b], [0.5, 0.5], "dare_ties", density=0.5, seed=3)
    other = merge(base, [a, b], [0.5, 0.5], "dare_ties", density=0.5, seed=4)
    assert all(torch.equal(one[k], two[k]) for k in one)
    assert not torch.equal(one["w"], other["w"])


def test_dare_at_density_one_is_task_arithmetic_and_ties():
    models = _models(TAU1, TAU2)
    linear = merge_tensor(BASE, models, [0.5, 0.5], "dare_linear", density=1.0)
    assert torch.equal(linear, merge_tensor(BASE, models, [0.5, 0.5], "task_arithmetic"))
    ties = merge_tensor(BASE, models, [1.0, 1.0], "dare_ties", density=1.0)
    assert torch.equal(ties, merge_tensor(BASE, models, [1.0, 1.0], "ties", density=1.0))


def test_slerp_follows_the_arc():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    half = merge_tensor(None, [a, b], [0.5, 0.5], "slerp")
    assert torch.allclose(half, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))
    third = merge_tensor(None, [a, b], [2.0, 1.0], "slerp")  # t = 1/3: 30 degrees
    assert torch.allclose(third, torch.tensor([math.sqrt(3) / 2, 0.5]))


def test_slerp_falls_back_to_lerp_when_colinear():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 4.0])
    assert merge_tensor(None, [a, b], [0.5, 0.5], "slerp").tolist() == [1.5, 3.0]
    zero = torch.zeros(2)
    assert merge_tensor(None, [zero, b], [0.5, 0.5], "slerp").tolist() == [1.0, 2.0]


def test_average_is_the_weighted_mean_of_the_weights():
    a, b = torch.tensor([1.0, 2.0]), torch.tensor([5.0, 6.0])
    assert merge_tensor(None, [a, b], [1.0, 3.0], "average").tolist() == [4.0, 5.0]


def test_non_float_tensors_come_from_the_base():
    base = {"ids": torch.tensor([7, 8]), "w": torch.zeros(2, dtype=torch.bfloat16)}
    a = {"ids": torch.tensor([1, 2]), "w": torch.ones(2, dtype=torch.bfloat16)}
    out = merge(base, [a, a], [0.5, 0.5], "task_arithmetic")
    assert out["ids"].tolist() == [7, 8]
    assert out["w"].dtype == torch.bfloat16 and out["w"].tolist() == [1.0, 1.0]


@pytest.mark.parametrize(
    ("method", "weights", "n", "match"),
    [
        ("tie", [0.5, 0.5], 2, "did you mean 'ties'"),
        ("ties", [0.5], 2, "1 merge weight"),
        ("slerp", [0.3, 0.3, 0.4], 3, "two models"),
    ],
)
def test_bad_merges_are_one_line(method, weights, n, match):
    models = [{"w": torch.ones(2)} for _ in range(n)]
    with pytest.raises(ConfigError, match=match) as e:
        merge({"w": torch.zeros(2)}, models, weights, method)
    assert "\n" not in str(e.value)


def test_lam_scales_the_merged_task_vector():
    """One specialist's TIES merge has its weight cancel in the disjoint mean (the weights that
    agree divide it): lam, the paper's lambda, is what scales it."""
    base = {"w": torch.tensor([1.0, 1.0, 1.0, 1.0])}
    theta = {"w": torch.tensor([3.0, 0.0, 1.5, 1.0])}  # task vector [2, -1, 0.5, 0]
    whole = merge(base, [theta], [0.3], "ties", density=1.0)["w"]
    assert torch.equal(whole, theta["w"])
    # density 0.5 keeps the two largest magnitudes (2 and -1); lam 0.25 scales them
    out = merge(base, [theta], [1.0], "ties", density=0.5, lam=0.25)["w"]
    assert torch.allclose(out, torch.tensor([1.5, 0.75, 1.0, 1.0]))
    ta = merge(base, [theta], [1.0], "task_arithmetic", lam=0.5)["w"]
    assert torch.allclose(ta, torch.tensor([2.0, 0.5, 1.25, 1.0]))
