from __future__ import annotations

import torch

from retain.data.loader import TensorLoader
from retain.data.stream import TensorData


def _data(n=103):
    return TensorData(x=torch.arange(n).float()[:, None], y=torch.arange(n))


def test_every_sample_once_per_epoch_in_a_seeded_order():
    d = _data()
    a = torch.cat(
        [
            b["y"]
            for b in TensorLoader(d, 10, shuffle=True, generator=torch.Generator().manual_seed(1))
        ]
    )
    b = torch.cat(
        [
            b["y"]
            for b in TensorLoader(d, 10, shuffle=True, generator=torch.Generator().manual_seed(1))
        ]
    )
    assert torch.equal(a, b)
    assert torch.equal(a.sort().values, torch.arange(103))
    assert not torch.equal(a, torch.arange(103))
    assert len(TensorLoader(d, 10)) == 11


def test_ranks_get_disjoint_equal_shares():
    d = _data()
    shares = [
        torch.cat(
            [
                b["y"]
                for b in TensorLoader(
                    d,
                    8,
                    shuffle=True,
                    rank=r,
                    world_size=3,
                    generator=torch.Generator().manual_seed(0),
                )
            ]
        )
        for r in range(3)
    ]
    assert {len(s) for s in shares} == {34}
    allv = torch.cat(shares)
    assert len(set(allv.tolist())) == 102
    # Evaluation keeps every sample.
    ev = [
        torch.cat([b["y"] for b in TensorLoader(d, 8, rank=r, world_size=3, even=False)])
        for r in range(3)
    ]
    assert torch.equal(torch.cat(ev).sort().values, torch.arange(103))
