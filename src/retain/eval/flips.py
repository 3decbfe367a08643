"""Sample-level regressions between an old model and its update: negative and positive flips.

An update can keep the same accuracy while getting different samples right: users who relied on
the old model's answer to a sample see it break. Yan et al. (2021), "Positive-Congruent Training:
Towards Regression-Free Model Updates", name the share of samples the old model got right and
the new one gets wrong the *negative flip rate*::

    NFR = (1/N) * #{i : old_i == y_i and new_i != y_i}
    PFR = (1/N) * #{i : old_i != y_i and new_i == y_i}

so that ``acc_new - acc_old = PFR - NFR``. Both are over all N samples, not over the old model's
correct ones, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Flips:
    """Counts and rates of one comparison of two models' predictions on the same samples."""

    n: int
    negative: int
    positive: int

    @property
    def nfr(self) -> float:
        """Negative flip rate: old right, new wrong, over all samples."""
        return self.negative / self.n if self.n else 0.0

    @property
    def pfr(self) -> float:
        """Positive flip rate: old wrong, new right, over all samples."""
        return self.positive / self.n if self.n else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {
            "n": self.n,
            "negative": self.negative,
            "positive": self.positive,
            "nfr": self.nfr,
            "pfr": self.pfr,
        }


def flips(old: torch.Tensor, new: torch.Tensor, y: torch.Tensor) -> Flips:
    """Flips between two models' predicted labels ``old`` and ``new`` for true labels ``y``.

    Examples:
        >>> f = flips(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1]))
        >>> f.negative, f.positive, f.nfr
        (1, 1, 0.25)
    """
    if not (old.shape == new.shape == y.shape) or old.ndim != 1:
        raise ValueError(
            f"flips need three 1-D tensors of the same length, got {tuple(old.shape)}, "
            f"{tuple(new.shape)} and {tuple(y.shape)}"
        )
    old_ok, new_ok = old == y, new == y
    return Flips(
        n=len(y),
        negative=int((old_ok & ~new_ok).sum()),
        positive=int((~old_ok & new_ok).sum()),
    )
