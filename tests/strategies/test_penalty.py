"""The example in retain.strategies.penalty's docstring, a new penalty method built on the public
penalty module, works as written: registered, bounded, and penalising ``lam * ||theta - theta*||^2``."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import task_ctx

from retain import strategies
from retain.models import MLP
from retain.strategies import penalty


@pytest.fixture
def L2(monkeypatch):
    """The docstring's class, registered in a copy of the registry (other tests see no 'l2')."""
    strategies.available()  # load the built-in strategies into the real registry first
    monkeypatch.setattr(strategies, "_REGISTRY", dict(strategies._REGISTRY))
    code = re.search(r"in full::\n\n(.*?)\n\n``tests/", penalty.__doc__, re.S).group(1)
    namespace: dict = {}
    source = code.replace("\n    ", "\n").strip()
    exec(compile(source, "penalty-example", "exec", dont_inherit=True), namespace)  # noqa: S102
    return namespace["L2"]


def test_the_docstring_example_is_a_registered_bounded_strategy(L2):
    assert strategies.get("l2") is L2
    assert strategies.build({"name": "l2", "lam": 3}).lam == 3.0
    with pytest.raises(ValueError, match="lam must be >= 0, got -1"):
        L2(lam=-1.0)


def test_the_example_penalises_squared_distance_to_the_last_task_weights(L2, digits_permuted):
    torch.manual_seed(0)
    model = MLP(64, 10, [16])
    l2 = L2(lam=2.0)
    ctx = task_ctx(digits_permuted, 0, model)
    assert l2.penalty(ctx) is None  # nothing to protect before the first task ends
    l2.after_task(model, ctx)
    ctx = task_ctx(digits_permuted, 1, model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    n = sum(p.numel() for p in model.parameters())
    assert l2.penalty(ctx).value() == pytest.approx(2.0 * n * 0.01**2, rel=1e-4)
    # The next task's anchor is the weights reached; the importance stays 1 (not summed).
    l2.after_task(model, ctx)
    assert all(torch.equal(v, torch.ones_like(v)) for v in l2.importance_.values())
    assert l2.penalty(task_ctx(digits_permuted, 1, model)).value() == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_large_penalty_is_lean_and_gives_the_same_value_and_gradient(monkeypatch, dtype):
    """Past LEAN_NUMEL weights the penalty refers to the importance and anchor instead of
    keeping float32 copies (a 135M model's EWC held five copies of the model), with the same
    value and gradient."""
    torch.manual_seed(0)
    params = [torch.randn(5, 3, dtype=dtype, requires_grad=True), torch.randn(4, dtype=dtype)]
    params[1].requires_grad_(True)
    weights = [torch.rand_like(p) for p in params]
    centers = [torch.randn_like(p) for p in params]
    results = {}
    for lean in (False, True):
        monkeypatch.setattr(penalty.QuadraticPenalty, "LEAN_NUMEL", 0 if lean else 10**9)
        q = penalty.QuadraticPenalty(params, weights, centers, scale=3.0, const=0.5)
        assert q.lean is lean
        for p in params:
            p.grad = None
        q.add_to_grad()
        via_grad = [p.grad.float().clone() for p in params]
        for p in params:
            p.grad = None
        q().backward()
        via_loss = [p.grad.float().clone() for p in params]
        results[lean] = (q.value(), via_grad, via_loss)
    tol = {"rtol": 2e-2, "atol": 1e-2} if dtype == torch.bfloat16 else {}
    assert results[True][0] == pytest.approx(results[False][0], rel=1e-3)
    for a, b in zip(results[True][1] + results[True][2], results[False][1] + results[False][2]):
        torch.testing.assert_close(a, b, **tol)
    monkeypatch.setattr(penalty.QuadraticPenalty, "LEAN_NUMEL", 0)
    q = penalty.QuadraticPenalty(params, weights, centers, scale=3.0)
    assert q.weights[0] is weights[0] and q.centers[0] is centers[0]  # references, no copies
