"""The rehearsal memory: reservoir sampling is exactly Vitter's algorithm R (also when two samples
of one batch pick the same slot), class-balanced memories end balanced, state survives a
checkpoint, and every decision comes from the generator it is given."""

from __future__ import annotations

import pytest
import torch

from retain.strategies._buffer import Buffer
from retain.utils.state import flatten, unflatten


def _batch(ids, y=None):
    ids = torch.as_tensor(ids)
    return {
        "x": ids.float()[:, None].repeat(1, 3),
        "y": ids % 4 if y is None else torch.as_tensor(y),
        "task": torch.zeros(len(ids), dtype=torch.long),
    }


def _held(buf):
    return sorted(buf.data["x"][: len(buf), 0].long().tolist())


def _offer(buf, n, batch, gen):
    for start in range(0, n, batch):
        buf.add(_batch(range(start, min(start + batch, n))), gen)


def test_reservoir_matches_sequential_algorithm_r():
    """Same random numbers as a one-sample-at-a-time algorithm R, so the same memory."""
    cap, n = 7, 60
    buf = Buffer(cap)
    _offer(buf, n, 9, torch.Generator().manual_seed(3))
    gen = torch.Generator().manual_seed(3)
    slots = list(range(cap))
    for start in range(0, n, 9):
        u = torch.rand(min(9, n - start), generator=gen, dtype=torch.float64).tolist()
        for k, i in enumerate(range(start, min(start + 9, n))):
            j = i if i < cap else int(u[k] * (i + 1))
            if j < cap:
                slots[j] = i  # a later sample overwrites an earlier one
    assert buf.data["x"][:, 0].long().tolist() == slots
    assert len(buf) == cap and buf.seen == n


def test_reservoir_keeps_each_sample_with_probability_capacity_over_seen():
    cap, n, trials = 10, 50, 400
    counts = torch.zeros(n)
    for t in range(trials):
        buf = Buffer(cap)
        _offer(buf, n, 7, torch.Generator().manual_seed(t))
        held = _held(buf)
        assert len(held) == len(set(held)) == cap
        counts[held] += 1
    expected = trials * cap / n  # 80; binomial sd ~8
    assert (counts - expected).abs().max() < 32
    # No drift between early and late samples (a first-wins or last-wins bias would show here).
    assert abs(counts[:25].mean() - counts[25:].mean()) < 8


def test_class_balanced_ends_balanced_and_keeps_rare_classes():
    sizes = {0: 600, 1: 300, 2: 40, 3: 400}  # class-incremental: one class after another
    y = torch.cat([torch.full((k,), c) for c, k in sizes.items()])
    ids = torch.arange(len(y))
    balanced, reservoir = Buffer(200, "class_balanced"), Buffer(200)
    gen_a, gen_b = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for s in range(0, len(y), 16):
        balanced.add(_batch(ids[s : s + 16], y[s : s + 16]), gen_a)
        reservoir.add(_batch(ids[s : s + 16], y[s : s + 16]), gen_b)
    held = torch.bincount(balanced.data["y"], minlength=4).tolist()
    assert held[2] == 40  # a rare class keeps every sample
    assert max(held[0], held[1], held[3]) - min(held[0], held[1], held[3]) <= 1
    assert sum(held) == 200 and balanced.class_seen == [600, 300, 40, 400]
    assert torch.bincount(reservoir.data["y"], minlength=4)[2] < 15  # reservoir: ~200*40/1340


def test_class_balanced_needs_integer_labels():
    with pytest.raises(ValueError, match="integer class labels"):
        Buffer(4, "class_balanced").add({"x": torch.zeros(2, 3), "y": torch.zeros(2)})
    with pytest.raises(ValueError, match="policy must be one of"):
        Buffer(4, "fifo")


def test_a_negative_label_is_refused_before_the_memory_changes():
    # Regression: rows before the bad one had already been counted in seen/class_seen.
    buf = Buffer(4, "class_balanced")
    buf.add({"x": torch.zeros(2, 1), "y": torch.tensor([0, 1])}, torch.Generator().manual_seed(0))
    before = (buf.seen, list(buf.class_seen), buf.filled)
    with pytest.raises(ValueError, match="must be >= 0"):
        buf.add(
            {"x": torch.zeros(3, 1), "y": torch.tensor([1, 0, -1])},
            torch.Generator().manual_seed(0),
        )
    assert (buf.seen, list(buf.class_seen), buf.filled) == before


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_state_round_trips_and_continues_identically(policy):
    a = Buffer(20, policy)
    gen = torch.Generator().manual_seed(1)
    _offer(a, 45, 8, gen)
    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(a.state_dict(), tensors)
    b = Buffer(20, policy)
    b.load_state_dict(unflatten(skeleton, tensors))
    assert flatten(b.state_dict(), {}) == skeleton
    assert all(torch.equal(a.data[k], b.data[k]) for k in a.data)
    gen_a, gen_b = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for s in range(45, 90, 8):
        a.add(_batch(range(s, s + 8)), gen_a)
        b.add(_batch(range(s, s + 8)), gen_b)
    assert all(torch.equal(a.data[k], b.data[k]) for k in a.data)
    assert a.state_dict()["seen"] == b.state_dict()["seen"] == 93


def test_same_generator_same_memory_and_draws():
    def fill(seed):
        buf = Buffer(16)
        gen = torch.Generator().manual_seed(seed)
        _offer(buf, 100, 10, gen)
        return _held(buf), buf.sample(5, gen)["x"][:, 0].tolist()

    assert fill(0) == fill(0)
    assert fill(0) != fill(1)


def test_sample_is_without_replacement_and_sharded_across_ranks():
    buf = Buffer(30)
    _offer(buf, 30, 10, torch.Generator().manual_seed(0))
    one = buf.sample(12, torch.Generator().manual_seed(5))["x"][:, 0].tolist()
    assert len(set(one)) == 12
    assert len(buf.sample(100, torch.Generator())["x"]) == 30  # at most what it holds
    shards = [
        buf.sample(4, torch.Generator().manual_seed(5), rank=r, world_size=3)["x"][:, 0]
        for r in range(3)
    ]
    assert sorted(torch.cat(shards).tolist()) == sorted(one)  # one draw, split between ranks


def test_masked_rows_are_not_offered_and_nbytes_counts_the_memory():
    buf = Buffer(50)
    batch = _batch(range(10))
    buf.add(batch, torch.Generator(), mask=torch.arange(10) % 2 == 0)
    assert _held(buf) == [0, 2, 4, 6, 8] and buf.seen == 5
    # x: 50 x 3 float32, y and task: 50 int64 each; preallocated at the first add.
    assert buf.nbytes == 50 * 3 * 4 + 2 * 50 * 8
    with pytest.raises(ValueError, match="the buffer holds"):
        buf.add({"x": torch.zeros(2, 3)}, torch.Generator())


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_two_ranks_hold_the_memory_one_process_holds_on_the_global_batch(policy):
    # The loader gives rank r the rows r, r + 2, r + 4, ... of each global batch; gathered rank
    # by rank and interleaved back, they reach the memory in the global batch's order, so two
    # processes keep exactly what one process given the global batch keeps.
    from retain.data.loader import TensorLoader
    from retain.data.stream import TensorData

    data = TensorData(**_batch(range(64)))

    def loader(batch_size, rank=0, world_size=1):
        g = torch.Generator().manual_seed(1)
        return TensorLoader(data, batch_size, True, g, rank=rank, world_size=world_size)

    local_mask = torch.tensor([True] * 6 + [False] * 2)  # each shard's last two rows: replayed
    one, g1 = Buffer(10, policy), torch.Generator().manual_seed(0)
    for batch in loader(16):
        one.add(batch, g1, mask=local_mask.repeat_interleave(2))
    two, g2 = Buffer(10, policy), torch.Generator().manual_seed(0)
    for shards in zip(loader(8, 0, 2), loader(8, 1, 2)):

        def gather(t, shards=shards):  # Accelerate's gather: rank 0's rows, then rank 1's
            if isinstance(t, dict):
                return {k: torch.cat([s[k] for s in shards]) for k in t}
            return torch.cat([t, t])  # the ranks' masks are alike

        two.add(shards[0], g2, mask=local_mask, gather=gather)
    assert two.seen == one.seen == 48
    for k, v in one.data.items():
        assert torch.equal(two.data[k], v), k
