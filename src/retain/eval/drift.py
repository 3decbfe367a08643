"""How far new data is from the data a model was trained on: fingerprints and drift statistics.

A :class:`Fingerprint` summarises a data set in a few kilobytes that can be kept beside a model
(counts, the label histogram, per-feature means and standard deviations, and a fixed-size random
sample of rows; for text, the unigram token counts), so the drift of a later batch can be
measured without the old data. :func:`drift` compares two fingerprints:

- **labels**: the total variation distance between the label distributions
  (``0.5 * sum |p_old - p_new|``, 0 = same shares, 1 = disjoint), and the classes new to the
  batch;
- **features** (tables, images): per feature the two-sample Kolmogorov-Smirnov statistic
  ``D = max_t |F_old(t) - F_new(t)|`` with its asymptotic p-value (Numerical Recipes' series),
  and the maximum mean discrepancy (Gretton et al. 2012; unbiased MMD², Gaussian kernel with the
  median-distance bandwidth on features standardised by the old data) with a permutation
  p-value: one number for the joint distribution, which per-feature tests miss;
- **tokens** (text): the Jensen-Shannon divergence between the unigram distributions, in bits
  (0 = same, 1 = disjoint), and the share of new tokens never seen in the old data.

Only torch is needed; everything is seeded, so the same data gives the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

SAMPLE_ROWS = 512
PERMUTATIONS = 200


@dataclass
class Fingerprint:
    """A data set in brief. ``sample``: up to ``SAMPLE_ROWS`` rows, flattened to float32;
    ``tokens``: unigram counts over the vocabulary (text only)."""

    n: int
    kind: str  # "features" or "tokens"
    class_counts: list[int] | None = None
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    sample: torch.Tensor | None = None
    tokens: torch.Tensor | None = None

    def to_json(self) -> dict[str, Any]:
        """The small part, for a JSON file (the tensors go to safetensors, see ``tensors``)."""
        return {
            "n": self.n,
            "kind": self.kind,
            "class_counts": self.class_counts,
            "mean": self.mean,
            "std": self.std,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        if self.sample is not None:
            out["sample"] = self.sample.contiguous()
        if self.tokens is not None:
            out["tokens"] = self.tokens.contiguous()
        return out

    @classmethod
    def from_parts(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Fingerprint:
        return cls(
            n=int(meta["n"]),
            kind=str(meta["kind"]),
            class_counts=meta.get("class_counts"),
            mean=list(meta.get("mean") or []),
            std=list(meta.get("std") or []),
            sample=tensors.get("sample"),
            tokens=tensors.get("tokens"),
        )


def fingerprint(
    data: Any,
    n_classes: int | None = None,
    vocab_size: int | None = None,
    seed: int = 0,
    rows: int = SAMPLE_ROWS,
) -> Fingerprint:
    """The fingerprint of a :class:`~retain.data.stream.TensorData` (``x`` features, or
    ``input_ids`` tokens; ``y`` labels when ``n_classes`` is given)."""
    n = len(data)
    counts = None
    y = data.get("y")
    if n_classes and y is not None and not y.is_floating_point():
        counts = torch.bincount(y.reshape(-1).long(), minlength=n_classes).tolist()
    ids = data.get("input_ids")
    if ids is not None:
        valid = (
            ids[data.get("attention_mask").bool()]
            if data.get("attention_mask") is not None
            else ids
        )
        size = vocab_size or int(ids.max()) + 1
        tokens = torch.bincount(valid.reshape(-1).long(), minlength=size)
        return Fingerprint(n=n, kind="tokens", class_counts=counts, tokens=tokens)
    x = data.x.reshape(n, -1).float()
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(n, generator=g)[: min(rows, n)].sort().values
    return Fingerprint(
        n=n,
        kind="features",
        class_counts=counts,
        mean=x.mean(0).tolist(),
        std=x.std(0, unbiased=False).tolist(),
        sample=x[pick].clone(),
    )


def total_variation(p_counts: list[int], q_counts: list[int]) -> float:
    """``0.5 * sum |p - q|`` of two count vectors normalised to distributions (shorter one
    padded with zeros).

    Examples:
        >>> total_variation([5, 5], [10, 0])
        0.5
    """
    width = max(len(p_counts), len(q_counts))
    p = torch.tensor(p_counts + [0] * (width - len(p_counts)), dtype=torch.float64)
    q = torch.tensor(q_counts + [0] * (width - len(q_counts)), dtype=torch.float64)
    if p.sum() == 0 or q.sum() == 0:
        return float("nan")
    return float(0.5 * (p / p.sum() - q / q.sum()).abs().sum())


def ks_statistics(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Two-sample KS statistic of every column of ``a`` [n, d] against ``b`` [m, d]: the largest
    gap between the two empirical distribution functions, one value per column."""
    a_s = a.double().T.contiguous().sort(dim=1).values
    b_s = b.double().T.contiguous().sort(dim=1).values
    both = torch.cat([a_s, b_s], dim=1)
    cdf_a = torch.searchsorted(a_s, both, right=True).double() / a_s.shape[1]
    cdf_b = torch.searchsorted(b_s, both, right=True).double() / b_s.shape[1]
    return (cdf_a - cdf_b).abs().max(dim=1).values


def ks_pvalue(d: float, n: int, m: int) -> float:
    """Asymptotic p-value of a two-sample KS statistic ``d`` for sample sizes ``n`` and ``m``:
    ``Q(lambda) = 2 sum_j (-1)^(j-1) exp(-2 j^2 lambda^2)`` at
    ``lambda = (sqrt(e) + 0.12 + 0.11 / sqrt(e)) * d`` with ``e = n m / (n + m)``."""
    e = math.sqrt(n * m / (n + m))
    lam = (e + 0.12 + 0.11 / e) * d
    if lam < 1e-3:
        return 1.0
    total = sum((-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam) for j in range(1, 101))
    return min(1.0, max(0.0, 2.0 * total))


def mmd(
    a: torch.Tensor, b: torch.Tensor, seed: int = 0, permutations: int = PERMUTATIONS
) -> tuple[float, float]:
    """Unbiased MMD² between rows of ``a`` and ``b`` with a Gaussian kernel whose bandwidth is
    the median pairwise distance of the pooled rows, and its permutation p-value
    (``(1 + #{perm >= observed}) / (1 + permutations)``)."""
    pooled = torch.cat([a, b]).double()
    dist2 = torch.cdist(pooled, pooled).pow(2)
    off = dist2[~torch.eye(len(pooled), dtype=torch.bool)]
    bandwidth2 = float(off.median()) or 1.0
    k = torch.exp(-dist2 / bandwidth2)
    n = len(a)

    def stat(idx: torch.Tensor) -> float:
        kk = k[idx][:, idx]
        kx, ky, kxy = kk[:n, :n], kk[n:, n:], kk[:n, n:]
        m = len(idx) - n
        sx = (kx.sum() - kx.diagonal().sum()) / (n * (n - 1))
        sy = (ky.sum() - ky.diagonal().sum()) / (m * (m - 1))
        return float(sx + sy - 2.0 * kxy.mean())

    observed = stat(torch.arange(len(pooled)))
    g = torch.Generator().manual_seed(seed)
    above = sum(
        stat(torch.randperm(len(pooled), generator=g)) >= observed for _ in range(permutations)
    )
    return observed, (1 + above) / (1 + permutations)


def js_divergence_bits(p_counts: torch.Tensor, q_counts: torch.Tensor) -> float:
    """Jensen-Shannon divergence between two count vectors' distributions, in bits (0 to 1).

    Examples:
        >>> js_divergence_bits(torch.tensor([1, 0]), torch.tensor([0, 1]))
        1.0
    """
    width = max(len(p_counts), len(q_counts))
    p = torch.zeros(width, dtype=torch.float64)
    q = torch.zeros(width, dtype=torch.float64)
    p[: len(p_counts)] = p_counts.double()
    q[: len(q_counts)] = q_counts.double()
    p, q = p / p.sum(), q / q.sum()
    mid = 0.5 * (p + q)

    def kl(x: torch.Tensor) -> float:
        keep = x > 0
        return float((x[keep] * (x[keep] / mid[keep]).log2()).sum())

    return 0.5 * kl(p) + 0.5 * kl(q)


def drift(old: Fingerprint, new: Fingerprint, seed: int = 0) -> dict[str, Any]:
    """The drift from ``old`` to ``new`` (see the module docstring), as JSON-ready numbers."""
    if old.kind != new.kind:
        raise ValueError(f"cannot compare a {old.kind} fingerprint with a {new.kind} one")
    out: dict[str, Any] = {"old_n": old.n, "new_n": new.n}
    if old.class_counts is not None and new.class_counts is not None:
        new_classes = [
            c
            for c, v in enumerate(new.class_counts)
            if v and (c >= len(old.class_counts) or not old.class_counts[c])
        ]
        out["labels"] = {
            "total_variation": total_variation(old.class_counts, new.class_counts),
            "new_classes": new_classes,
        }
    if old.kind == "tokens" and old.tokens is not None and new.tokens is not None:
        seen = torch.zeros(len(new.tokens), dtype=torch.bool)
        seen[: len(old.tokens)] = old.tokens[: len(new.tokens)] > 0
        unseen = float(new.tokens[~seen].sum()) / max(float(new.tokens.sum()), 1.0)
        out["tokens"] = {
            "js_divergence_bits": js_divergence_bits(old.tokens, new.tokens),
            "unseen_token_share": unseen,
        }
    if old.kind == "features" and old.sample is not None and new.sample is not None:
        a, b = old.sample, new.sample
        if a.shape[1] != b.shape[1]:
            raise ValueError(f"the data have {a.shape[1]} and {b.shape[1]} features")
        d = ks_statistics(a, b)
        p = [ks_pvalue(float(v), len(a), len(b)) for v in d]
        mean = torch.tensor(old.mean, dtype=torch.float64)
        std = torch.tensor(old.std, dtype=torch.float64).clamp_min(1e-8)
        value, p_mmd = mmd((a - mean) / std, (b - mean) / std, seed=seed)
        worst = int(d.argmax())
        out["features"] = {
            "ks_max": float(d[worst]),
            "ks_max_feature": worst,
            "ks_mean": float(d.mean()),
            "ks_share_p_below_0.01": sum(v < 0.01 for v in p) / len(p),
            "mmd2": value,
            "mmd_p_value": p_mmd,
        }
    return out
