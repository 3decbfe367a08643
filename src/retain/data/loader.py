"""Batches from in-memory tensors by indexing.

``TensorLoader`` replaces ``DataLoader`` for data that fits in memory: one permutation per epoch,
one ``index_select`` per tensor per batch, and no worker processes. Under several processes
(``accelerate launch``) every rank draws the same permutation from the same seed and takes its own
stride of it, and all ranks get the same number of batches, so DDP never waits on a missing one.

On a GPU the data is copied to the device once (while it fits in a quarter of the free memory)
and batches are indexed there, so a step makes no host-to-device copy of its batch; the epoch's
permutation goes over once per epoch, from pinned memory, without making the host wait.

A loader knows where it is in the current epoch: ``state_dict()`` holds the generator's state from
just before the epoch's permutation was drawn and the batches given out so far, and
``load_state_dict`` makes the next pass draw that same permutation and start after those batches
(a run resumed inside a task, ``train.checkpoint_every``). Saving the generator's state rather
than the permutation keeps it a few kilobytes for any data size.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from retain.data.stream import TensorData


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` (on the CPU) on ``device``; to a GPU without making the host wait: from pinned
    memory, asynchronously (a plain copy from pageable memory synchronises the stream)."""
    if device.type == "cpu":
        return t
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


#: Device copies of in-memory data take at most this fraction of the device's free memory.
DEVICE_SHARE = 0.25


def on_device(data: TensorData, device: torch.device) -> TensorData:
    """``data`` on ``device``: copied there on the first call and kept with ``data`` (it is never
    modified in place), or ``data`` itself where the copy would not fit (see ``DEVICE_SHARE``)."""
    first = next(iter(data.tensors.values()))
    if device.type != "cuda" or first.device == device:
        return data
    copies = data.__dict__.setdefault("_device_copies", {})
    if device not in copies:
        nbytes = sum(t.numel() * t.element_size() for t in data.tensors.values())
        free, _ = torch.cuda.mem_get_info(device)
        copies[device] = data.to(device) if nbytes <= DEVICE_SHARE * free else data
    return copies[device]


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
        self._epoch_rng: torch.Tensor | None = None  # the generator before this epoch's order
        self._position = 0  # batches given out in the current pass
        self._resume: tuple[torch.Tensor, int] | None = None  # (order, batches to skip)

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
            self._epoch_rng = self._rng_state()
            order = torch.randperm(n, generator=self.generator)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            if self.even:
                order = order[: (len(order) // self.world_size) * self.world_size]
            order = order[self.rank :: self.world_size]
        return order

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self._resume is not None:
            (order, skip), self._resume = self._resume, None
        else:
            order, skip = self._order(), 0
        data = self.data if self.device is None else on_device(self.data, self.device)
        first = next(iter(data.tensors.values()))
        order = to_device(order, first.device)
        self._position = skip
        for start in range(skip * self.batch_size, len(order), self.batch_size):
            batch = data.batch(order[start : start + self.batch_size])
            if self.device is not None and first.device != self.device:
                batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            self._position += 1
            yield batch

    def _rng_state(self) -> torch.Tensor:
        return self.generator.get_state() if self.generator is not None else torch.get_rng_state()

    def _set_rng_state(self, state: torch.Tensor) -> None:
        if self.generator is not None:
            self.generator.set_state(state)
        else:
            torch.set_rng_state(state)

    def state_dict(self) -> dict[str, Any]:
        """Where the current pass is: the generator before its permutation, batches given."""
        return {"epoch_rng": self._epoch_rng, "position": self._position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """The next pass draws the saved pass's permutation and starts after its given batches.

        The permutation is drawn here, and the generator is left as it was found: the caller
        restores the generator's own state (which later draws continue from) separately."""
        rng = state.get("epoch_rng")
        if rng is None:
            order = self._order()
        else:
            now = self._rng_state()
            self._set_rng_state(rng)
            order = self._order()
            self._set_rng_state(now)
        self._epoch_rng = rng
        self._resume = (order, int(state["position"]))
