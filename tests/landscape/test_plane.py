"""The plane through three models, the loss barrier, and batched evaluation on a plane."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from retain.data.stream import TensorData
from retain.landscape.plane import (
    Evaluator,
    barrier,
    dot,
    layer_chain,
    plane_through,
    random_plane,
)
from retain.objectives import make_objective


def _models(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (4, 3), "a.bias": (4,), "b.weight": (2, 4), "bn.running_var": (4,)}
    out = []
    for _ in range(3):
        m = {n: torch.randn(s, generator=g) for n, s in shapes.items()}
        m["bn.running_var"] = m["bn.running_var"].abs()
        out.append(m)
    return out, ("a.weight", "a.bias", "b.weight")


def test_the_basis_is_orthonormal_and_the_three_models_land_at_their_coordinates():
    (t1, t2, t3), params = _models()
    plane, coords = plane_through(t1, t2, t3, params)
    assert dot(plane.u, plane.u, params) == pytest.approx(1.0, abs=1e-6)
    assert dot(plane.v, plane.v, params) == pytest.approx(1.0, abs=1e-6)
    assert dot(plane.u, plane.v, params) == pytest.approx(0.0, abs=1e-6)
    d12 = math.sqrt(sum(float(((t2[n] - t1[n]) ** 2).sum()) for n in params))
    assert coords[0] == (0.0, 0.0) and coords[1] == (pytest.approx(d12), 0.0)
    assert coords[2][1] > 0
    at = plane.at(torch.tensor(coords))
    for k, model in enumerate((t1, t2, t3)):
        for n in model:  # the buffer too: each point has its own model's statistics
            assert torch.allclose(at[n][k], model[n], atol=1e-5), (k, n)
        x, y, d = plane.project(model)
        assert (x, y) == (
            pytest.approx(coords[k][0], abs=1e-5),
            pytest.approx(coords[k][1], abs=1e-5),
        )
        assert d == pytest.approx(0.0, abs=1e-4)


def test_a_point_off_the_plane_projects_with_its_distance():
    (t1, t2, t3), params = _models()
    plane, _ = plane_through(t1, t2, t3, params)
    # A direction orthogonal to u and v: Gram-Schmidt of a random one against them.
    g = torch.Generator().manual_seed(5)
    w = {n: torch.randn(t1[n].shape, generator=g) for n in params}
    for basis in (plane.u, plane.v):
        c = dot(w, basis, params)
        w = {n: w[n] - c * basis[n] for n in params}
    norm = math.sqrt(dot(w, w, params))
    off = {n: t1[n] + 0.3 * plane.u[n] - 0.2 * plane.v[n] + 0.7 * w[n] / norm for n in params}
    x, y, d = plane.project(off)
    assert (x, y, d) == (
        pytest.approx(0.3, abs=1e-5),
        pytest.approx(-0.2, abs=1e-5),
        pytest.approx(0.7, abs=1e-5),
    )


def test_three_models_on_one_line_are_refused():
    (t1, t2, _), params = _models()
    t3 = {n: t1[n] + 2 * (t2[n] - t1[n]) for n in t1}
    with pytest.raises(ValueError, match="on the line"):
        plane_through(t1, t2, t3, params)
    with pytest.raises(ValueError, match="same point"):
        plane_through(t1, t1, t2, params)


def test_barrier_is_the_largest_excess_over_the_chord():
    assert barrier([1.0, 2.0, 1.0]) == 1.0
    assert barrier([1.0, 3.0, 2.0]) == 1.5  # chord 1, 1.5, 2
    assert barrier([2.0, 1.0, 0.0]) == 0.0  # convex: on or below the chord
    assert barrier([0.0, 0.5, 3.0]) == 0.0


def _product_net():
    """f(x) = w2 * w1 * x: θ = (1, 1) and (-1, -1) both fit y = x exactly, and the straight line
    between them passes through f = 0 (loss 1 on x = y = 1): a barrier of exactly 1."""
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.Linear(1, 1, bias=False))
    data = TensorData(x=torch.ones(4, 1), y=torch.ones(4))
    t = lambda a, b: {"0.weight": torch.tensor([[a]]), "1.weight": torch.tensor([[b]])}  # noqa: E731
    return net, data, t(1.0, 1.0), t(-1.0, -1.0), t(1.0, -1.0)


@pytest.mark.parametrize("batched", [True, False])
def test_the_line_between_two_exact_fits_of_a_product_has_barrier_one(batched):
    net, data, t1, t2, t3 = _product_net()
    assert layer_chain(net) is not None
    ev = Evaluator(net, make_objective("regression", 1), {"d": data})
    if not batched:
        ev.chain = None  # the generic path: functional_call under vmap
    plane, coords = plane_through(t1, t2, t3, ("0.weight", "1.weight"))
    t = torch.linspace(0, 1, 21)
    line = ev.at(plane, torch.stack([t * coords[1][0], t * 0], 1))[:, 0].tolist()
    assert line[0] == pytest.approx(0.0, abs=1e-6) and line[-1] == pytest.approx(0.0, abs=1e-6)
    assert line[10] == pytest.approx(1.0, abs=1e-6)
    assert barrier(line) == pytest.approx(1.0, abs=1e-6)


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))


def test_points_with_batchnorm_score_as_their_own_models():
    """Three models with different weights and BatchNorm statistics: the plane's loss at each
    one's coordinates is that model's own evaluation loss."""
    net = _bn_net()
    data = TensorData(x=torch.randn(40, 5), y=torch.randint(0, 3, (40,)))
    models = []
    for k in range(3):
        m = _bn_net()
        torch.manual_seed(10 + k)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.3 * k * torch.randn_like(p))
            m[1].running_mean.add_(0.5 * k)
            m[1].running_var.mul_(1 + k)
        models.append(m)
    params = tuple(n for n, _ in net.named_parameters())
    states = [
        {n: t.detach().clone() for n, t in m.state_dict().items() if t.is_floating_point()}
        for m in models
    ]
    plane, coords = plane_through(*states, params)
    ev = Evaluator(net, make_objective("classification", 3), {"d": data})
    assert ev.chain is None  # BatchNorm: not a plain feed-forward chain
    got = ev.at(plane, torch.tensor(coords))[:, 0]
    for k, m in enumerate(models):
        m.eval()
        want = nn.functional.cross_entropy(m(data.x), data.y).item()
        assert got[k].item() == pytest.approx(want, rel=1e-5)
    assert ev.of(states)[:, 0].tolist() == pytest.approx(got.tolist(), rel=1e-5)


def test_batched_products_and_vmap_agree_on_an_mlp_with_a_mix():
    from retain.models import MLP

    torch.manual_seed(0)
    net = MLP(12, 4, [8, 8])
    sets = {
        "a": TensorData(x=torch.randn(30, 12), y=torch.randint(0, 4, (30,))),
        "b": TensorData(x=torch.randn(20, 12), y=torch.randint(0, 4, (20,))),
    }
    base = {n: p.detach().clone() for n, p in net.named_parameters()}
    others = [{n: t + 0.5 * torch.randn_like(t) for n, t in base.items()} for _ in range(2)]
    plane, _ = plane_through(base, *others, tuple(base))
    xy = torch.randn(70, 2)  # more than one chunk of points would need no more
    ev = Evaluator(net, make_objective("classification", 4), sets)
    assert ev.chain is not None
    fast = ev.at(plane, xy)
    ev.chain = None
    slow = ev.at(plane, xy)
    assert torch.allclose(fast, slow, atol=1e-5)
    # mix: the union's mean loss, weighted by the sets' sizes
    assert torch.allclose(fast[:, 2], (30 * fast[:, 0] + 20 * fast[:, 1]) / 50, atol=1e-6)


def test_random_directions_are_filter_normalised_and_skip_biases():
    torch.manual_seed(0)
    theta = {"w": torch.randn(6, 3, 2), "b": torch.randn(6)}
    plane = random_plane(theta, ("w", "b"), seed=1)
    for d in (plane.u, plane.v):
        assert torch.allclose(
            d["w"].reshape(6, -1).norm(dim=1), theta["w"].reshape(6, -1).norm(dim=1)
        )
        assert torch.equal(d["b"], torch.zeros(6))
    assert not torch.allclose(plane.u["w"], plane.v["w"])
