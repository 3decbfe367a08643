"""A fixed-capacity memory of samples for rehearsal strategies (replay, DER, A-GEM).

The memory is a dict of preallocated tensors with the keys of a batch (``x``, ``y``, ``task``, and
extras such as DER's ``logits``), kept on the device of the batches it is given. Every decision is
made on the CPU from a seeded ``torch.Generator`` and applied with one indexed write per key, the
indices copied to the device without waiting (pinned memory), so an ``add`` or a ``sample`` never
synchronises the GPU (except the cases named in ``add``). The ``replayed`` mark of a batch is a
CPU tensor for the same reason: the rows it offers are counted without a read-back.

Several processes: pass ``gather`` (``ctx.gather``) to ``add`` and the incoming samples of every
rank are gathered first, interleaved (rank 0's first row, rank 1's first row, ...: the order of
the global batch that the loader's strided shards came from); with a generator seeded identically
on every rank (``ctx.generator`` is), every rank then makes the same decisions on the same samples
and holds the same memory, the one a single process given the global batch would hold. Without
this, each rank keeps its own buffer and they diverge (arthurdouillard/dytox#5, an erratum).
``sample(..., rank, world_size)`` draws one set for all ranks and gives each its own share, so the
memory part of the global batch holds distinct samples, as in a single-process run.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from retain.data.loader import to_device

POLICIES = ("reservoir", "class_balanced")


def interleave(t: torch.Tensor, world_size: int) -> torch.Tensor:
    """Rows gathered rank by rank (``world_size`` equal blocks) in global-batch order: row ``j``
    of rank ``r`` goes to ``j * world_size + r``, as the loader's strided shard took it."""
    if world_size == 1:
        return t
    return t.reshape(world_size, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


class Buffer:
    """Fixed-capacity sample memory.

    Args:
        capacity: the most samples it holds.
        policy: ``reservoir``: Vitter's algorithm R over every sample ever offered (mammoth's
            ``utils/buffer.py``): the i-th sample (0-based) takes a uniform slot ``j <= i`` and is
            kept if ``j < capacity``, so each sample seen is held with probability capacity/seen.
            ``class_balanced``: once full, a sample of a class that is not the largest in memory
            replaces a random sample of the largest class; a sample of the largest class replaces
            a random one of its own class with probability (held / seen) of that class, which
            keeps each class a uniform sample of its stream. This is the rule of CBRS (Chrysakis
            & Moens, ICML 2020), with "largest" read as largest now.
    """

    def __init__(self, capacity: int, policy: str = "reservoir") -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
        self.capacity, self.policy = int(capacity), policy
        self.data: dict[str, torch.Tensor] = {}
        self.seen = 0  # samples offered so far
        self.filled = 0  # slots in use (the first `filled` rows)
        self.class_seen: list[int] = []  # class_balanced: samples of each class offered
        self._labels: list[int] | None = None  # class_balanced: class of each slot (a cache)
        self._counts: list[int] = []

    def __len__(self) -> int:
        return self.filled

    @property
    def nbytes(self) -> int:
        """Bytes held by the (preallocated) memory tensors."""
        return sum(v.numel() * v.element_size() for v in self.data.values())

    # ------------------------------------------------------------------ in a strategy's hooks

    def offer(self, batch: dict[str, torch.Tensor], ctx: Any, **extra: torch.Tensor) -> None:
        """``add`` the batch's own rows, not those a rehearsal strategy appended (marked
        ``batch["replayed"]``), with ``extra`` fields (DER's logits); all processes' rows."""
        replayed = batch.get("replayed")
        rows = {**{k: v for k, v in batch.items() if k != "replayed"}, **extra}
        self.add(
            rows,
            ctx.generator,
            mask=None if replayed is None else ~replayed,
            gather=ctx.gather if ctx.world_size > 1 else None,
        )

    def draw(self, n: int, ctx: Any, device: torch.device) -> dict[str, torch.Tensor]:
        """``sample`` this process's share of ``n`` per process, with the run's generator."""
        return self.sample(n, ctx.generator, ctx.rank, ctx.world_size, device)

    # ------------------------------------------------------------------ add

    def add(
        self,
        batch: dict[str, torch.Tensor],
        generator: torch.Generator | None = None,
        mask: torch.Tensor | None = None,
        gather: Any = None,
    ) -> None:
        """Offer the samples of ``batch`` (only rows where ``mask`` is true) to the memory.

        Two samples of one batch that pick the same slot: the later one wins, as in a sequential
        pass. The GPU is synchronised to read a ``mask`` that is not on the CPU (the built-in
        strategies' ``replayed`` marks are), to gather one from several GPUs, and, for
        ``class_balanced``, to read the labels.
        """
        if gather is not None:
            n_local = len(next(iter(batch.values())))
            batch = gather(dict(batch))
            world = len(next(iter(batch.values()))) // n_local if n_local else 1
            batch = {k: interleave(v, world) for k, v in batch.items()}
            if mask is not None:  # uint8: not every backend gathers bool; NCCL needs the GPU
                device = next(iter(batch.values())).device
                mask = interleave(gather(mask.to(device, torch.uint8)).cpu().bool(), world)
        n = len(next(iter(batch.values())))
        if mask is None:
            offered = np.arange(n)
        else:
            offered = (mask if mask.device.type == "cpu" else mask.cpu()).nonzero().flatten()
            offered = offered.numpy()
        if len(offered) == 0:
            return
        if not self.data:
            self.data = {k: v.new_zeros((self.capacity, *v.shape[1:])) for k, v in batch.items()}
        elif batch.keys() != self.data.keys():
            raise ValueError(f"the buffer holds {sorted(self.data)}, a batch gave {sorted(batch)}")
        self._to(next(iter(batch.values())).device)
        if self.policy == "reservoir":
            rows, slots = self._reservoir(offered, generator)
        else:
            rows, slots = self._balanced(offered, batch, generator)
        if len(rows) == 0:
            return
        device = next(iter(self.data.values())).device
        rows, slots = (
            to_device(torch.from_numpy(rows), device),
            to_device(torch.from_numpy(slots), device),
        )
        for k, v in batch.items():
            self.data[k][slots] = v[rows].to(self.data[k].dtype)

    def _reservoir(
        self, offered: np.ndarray, generator: torch.Generator | None
    ) -> tuple[np.ndarray, np.ndarray]:
        # NumPy for the decisions: on a batch of 10 it is several times faster than CPU tensor ops.
        n = len(offered)
        count = np.arange(self.seen + 1, self.seen + n + 1)  # samples seen, this one included
        u = torch.rand(n, generator=generator, dtype=torch.float64).numpy()
        slot = (u * count).astype(np.int64)  # uniform in [0, count - 1]
        if self.seen < self.capacity:
            slot = np.where(count <= self.capacity, count - 1, slot)
        self.seen += n
        self.filled = min(self.seen, self.capacity)
        keep = slot < self.capacity
        rows, slot = offered[keep], slot[keep]
        if len(slot) > 1:  # later wins: the last occurrence of each slot
            _, first = np.unique(slot[::-1], return_index=True)
            last = len(slot) - 1 - first
            rows, slot = rows[last], slot[last]
        return rows, slot

    def _balanced(
        self, offered: np.ndarray, batch: dict[str, torch.Tensor], generator: torch.Generator | None
    ) -> tuple[np.ndarray, np.ndarray]:
        y = batch.get("y")
        if y is None or y.dim() != 1 or y.is_floating_point():
            raise ValueError(
                "policy 'class_balanced' needs integer class labels 'y' (one per sample)"
            )
        labels = self._slot_labels()
        counts, seen = self._counts, self.class_seen
        # One draw from the shared generator seeds a local RNG for this call: O(batch) work in
        # Python ints, no pass over the whole memory (avalanche#650/#653 took hours for that).
        rng = random.Random(int(torch.randint(2**62, (1,), generator=generator)))
        writes: dict[int, int] = {}  # slot -> row; a later row overwrites an earlier one
        classes = y[to_device(torch.from_numpy(offered), y.device)].tolist()
        if classes and min(classes) < 0:  # before any state changes
            raise ValueError(f"class labels must be >= 0, got {min(classes)}")
        for row, c in zip(offered.tolist(), classes):
            if c >= len(counts):
                counts.extend([0] * (c + 1 - len(counts)))
                seen.extend([0] * (c + 1 - len(seen)))
            seen[c] += 1
            self.seen += 1
            if self.filled < self.capacity:
                slot = self.filled
                self.filled += 1
                labels.append(c)
            else:
                largest = max(counts)
                if counts[c] < largest:
                    target = largest  # evict a random sample of a largest class
                elif rng.random() * seen[c] < counts[c]:
                    target = -1  # replace a random sample of its own class
                else:
                    continue
                while True:  # rejection sampling: expected capacity / (samples that qualify)
                    slot = rng.randrange(self.capacity)
                    old = labels[slot]
                    if (old == c) if target < 0 else (counts[old] == target):
                        break
                counts[old] -= 1
                labels[slot] = c
            counts[c] += 1
            writes[slot] = row
        return (
            np.fromiter(writes.values(), np.int64, len(writes)),
            np.fromiter(writes.keys(), np.int64, len(writes)),
        )

    def _slot_labels(self) -> list[int]:
        if self._labels is None:
            self._labels = self.data["y"][: self.filled].tolist() if self.filled else []
            self._counts = [0] * max(len(self.class_seen), max(self._labels, default=-1) + 1)
            for c in self._labels:
                self._counts[c] += 1
        return self._labels

    # ------------------------------------------------------------------ sample

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
    ) -> dict[str, torch.Tensor]:
        """``n`` distinct random samples (fewer if the memory holds fewer), as a batch dict.

        Under several processes one set of ``n * world_size`` is drawn (the same on every rank)
        and each rank gets its own share of it. ``device``: where the memory should live (it
        moves there once, e.g. after a resume loaded it on the CPU)."""
        total = min(n * world_size, self.filled)
        idx = torch.randperm(self.filled, generator=generator)[:total]
        if world_size > 1:
            idx = idx[rank::world_size]
        if device is not None:
            self._to(device)
        idx = to_device(idx, next(iter(self.data.values())).device)
        return {k: v.index_select(0, idx) for k, v in self.data.items()}

    # ------------------------------------------------------------------ state

    def _to(self, device: torch.device) -> None:
        if self.data and next(iter(self.data.values())).device != device:
            self.data = {k: v.to(device) for k, v in self.data.items()}

    def stats(self) -> dict[str, int]:
        """What a strategy reports after each task: samples held and their memory."""
        return {"buffer_samples": len(self), "buffer_bytes": self.nbytes}

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "policy": self.policy,
            "seen": self.seen,
            "filled": self.filled,
            "class_seen": list(self.class_seen),
            "data": {k: v[: self.filled] for k, v in self.data.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["capacity"]) != self.capacity or state["policy"] != self.policy:
            raise ValueError(
                f"a buffer of capacity {state['capacity']} ({state['policy']}) cannot be loaded "
                f"into one of capacity {self.capacity} ({self.policy})"
            )
        self.seen, self.filled = int(state["seen"]), int(state["filled"])
        self.class_seen = [int(c) for c in state["class_seen"]]
        self._labels, self._counts = None, []
        self.data = {}
        for k, v in state["data"].items():
            self.data[k] = v.new_zeros((self.capacity, *v.shape[1:]))
            self.data[k][: len(v)] = v
