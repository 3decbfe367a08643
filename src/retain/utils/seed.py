"""Seeding. Every random choice in a run derives from the run's seed and where it is made (task,
epoch), not from the order of earlier calls, so a resumed run draws exactly what the
uninterrupted run drew."""

from __future__ import annotations

import random

import numpy as np
import torch


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed determined by ``seed`` and ``keys``."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, *(int(k) for k in keys)])
    return int(state.generate_state(2, dtype=np.uint32).astype(np.uint64).dot([1 << 31, 1]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def generator(seed: int, *keys: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(seed, *keys))
    return g
