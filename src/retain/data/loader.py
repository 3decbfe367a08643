"""Batches from in-memory tensors by indexing.

``TensorLoader`` replaces ``DataLoader`` for data that fits in memory: one permutation per epoch,
one ``index_select`` per tensor per batch, and no worker processes. Under several processes
(``accelerate launch``) every rank draws the same permutation from the same seed and takes its own
stride of it, and all ranks get the same number of batches, so DDP never waits on a missing one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from retain.data.stream import TensorData


class TensorLoader:
    """Iterate over ``data`` in batches of ``batch_size`` dicts of tensors.

    Args:
        data: the samples.
        batch_size: samples per batch (per process).
        shuffle: draw a new permutation every epoch from ``generator``.
        generator: the source of the permutations (seeded by the caller for reproducibility).
        device: where batches are placed.
        rank, world_size: this process's share when training on several processes.
    """

    def __init__(
        self,
        data: TensorData,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
        even: bool = True,
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.device = torch.device(device) if device is not None else None
        self.rank = rank
        self.world_size = world_size
        self.even = even

    @property
    def samples_per_rank(self) -> int:
        n = len(self.data)
        if self.world_size == 1:
            return n
        if self.even:
            return n // self.world_size
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        return math.ceil(self.samples_per_rank / self.batch_size)

    def _order(self) -> torch.Tensor:
        n = len(self.data)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            if self.even:
                order = order[: (len(order) // self.world_size) * self.world_size]
            order = order[self.rank :: self.world_size]
        return order

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = self._order()
        data = self.data
        first = next(iter(data.tensors.values()))
        if self.device is not None and first.device != self.device:
            order = order.to(first.device)
        for start in range(0, len(order), self.batch_size):
            batch = data.batch(order[start : start + self.batch_size])
            if self.device is not None and first.device != self.device:
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            yield batch
