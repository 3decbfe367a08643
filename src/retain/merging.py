"""Model merging: combine fine-tuned models (or their task vectors) into one set of weights.

Every method works on state dicts of tensors, one tensor at a time, given a ``base`` (the model
every other one was fine-tuned from), the ``models`` and one weight per model. A task vector is
``tau_t = theta_t - theta_base`` (Ilharco et al. 2023). With weights ``w_t``:

- ``task_arithmetic``: ``theta_base + sum_t w_t tau_t`` (Ilharco et al., "Editing Models with
  Task Arithmetic", ICLR 2023; their lambda is one weight shared by every task vector).
- ``ties``: TIES-merging (Yadav et al., NeurIPS 2023). Trim: keep the ``density`` fraction of
  each task vector's entries with the largest magnitude (per tensor), zero the rest. Elect: per
  entry, the sign of ``sum_t w_t trim(tau_t)``. Disjoint merge: average the entries whose sign
  agrees with the elected one, weighted: ``sum_{t in A} w_t trim(tau_t) / sum_{t in A} w_t``.
  With equal weights this is the paper's disjoint mean (its lambda = 1). PEFT's ``ties`` divides
  by the *number* of agreeing tasks instead, which scales the merge by the weights (weights 0.5,
  0.5 halve it) and does not reduce to the other model when a weight is 0; the normalisation by
  the weights is mergekit's, and it is what makes a weight sweep run from one model to the other.
- ``dare_linear`` / ``dare_ties``: DARE (Yu et al., "Language Models are Super Mario", ICML
  2024): drop each task-vector entry with probability ``1 - density`` and rescale the kept ones
  by ``1 / density`` (so each entry keeps its expectation), then task arithmetic, or TIES's
  election and disjoint merge (DARE's random drop replaces TIES's magnitude trim, as in PEFT and
  mergekit). The drop draws from a ``torch.Generator``: the same seed gives the same merge.
  PEFT's ``random_pruning`` draws from the global generator, so it is not used.
- ``slerp``: spherical interpolation between two models, per tensor (Shoemake 1985; mergekit):
  ``t = w_2 / (w_1 + w_2)``, ``omega`` the angle between the two flattened tensors,
  ``sin((1-t) omega)/sin(omega) theta_1 + sin(t omega)/sin(omega) theta_2``; plain linear
  interpolation when the tensors are nearly colinear (``|cos omega| > 0.9995``) or one is zero,
  where the formula divides by ~0. The base is not used.
- ``average``: ``sum_t w_t theta_t / sum_t w_t`` (a model soup, Wortsman et al. 2022). The base
  is not used.

Tensors that are not floating point (integer buffers, position ids) are copied from the base.
The magnitude trim (``ties``) and the sign election use PEFT's ``merge_utils`` primitives
(``magnitude_based_pruning``, ``calculate_majority_sign_mask``), so those methods need the
``hf`` extra.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from retain.errors import ConfigError, did_you_mean

if TYPE_CHECKING:
    from collections.abc import Mapping

METHODS = ("task_arithmetic", "ties", "dare_linear", "dare_ties", "slerp", "average")
#: Methods whose result depends on the base model (task vectors).
USES_BASE = ("task_arithmetic", "ties", "dare_linear", "dare_ties")
#: Above this ``|cos|`` SLERP falls back to linear interpolation (mergekit's threshold).
DOT_THRESHOLD = 0.9995

__all__ = [
    "DOT_THRESHOLD",
    "METHODS",
    "check_method",
    "merge",
    "merge_folders",
    "merge_tensor",
    "require_peft",
]


def check_method(method: str, n_models: int, n_weights: int, density: float) -> None:
    """One line (``ConfigError``) for a method, weight count or density that cannot merge."""
    if method not in METHODS:
        raise ConfigError(
            f"unknown merge method '{method}'{did_you_mean(method, METHODS)}; "
            f"choose one of {', '.join(METHODS)}"
        )
    if n_weights != n_models:
        raise ConfigError(
            f"{n_weights} merge weight(s) for {n_models} model(s): give one weight per model"
        )
    if method == "slerp" and n_models != 2:
        raise ConfigError(f"slerp interpolates two models, got {n_models}; use average or ties")
    if not 0.0 < density <= 1.0:
        raise ConfigError(f"merge density must be in (0, 1], got {density}")


def require_peft(method: str) -> None:
    """One line now, not after the first task's training, when ``method`` needs peft and it is
    not installed."""
    if method in ("ties", "dare_ties"):
        _merge_utils()


def _merge_utils():
    from retain.utils.adapters import peft_module

    peft_module("merges with ties or dare_ties")  # one line when peft is missing
    from peft.utils import merge_utils

    return merge_utils


def _trim(tau: torch.Tensor, density: float) -> torch.Tensor:
    if density >= 1.0:
        return tau
    return _merge_utils().magnitude_based_pruning(tau, density)


def _drop(tau: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    if density >= 1.0:
        return tau
    keep = torch.rand(tau.shape, generator=generator, device=tau.device) < density
    return tau * keep / density


def _disjoint_mean(taus: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """TIES's elect and disjoint merge over already sparsified task vectors."""
    weighted = torch.stack(taus) * weights.view(-1, *([1] * taus[0].dim()))
    # sign(w_t tau_t) == sign(sum_t w_t tau_t): zeros (trimmed entries, zero weights) never agree.
    agree = _merge_utils().calculate_majority_sign_mask(weighted, method="total")
    w_agree = (agree * weights.view(-1, *([1] * taus[0].dim()))).sum(0)
    total = (weighted * agree).sum(0)
    return torch.where(w_agree != 0, total / torch.where(w_agree != 0, w_agree, 1.0), 0.0)


def _slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return torch.lerp(a, b, t)
    cos = torch.clamp((a.flatten() @ b.flatten()) / (na * nb), -1.0, 1.0).item()
    if abs(cos) > DOT_THRESHOLD:
        return torch.lerp(a, b, t)
    omega = math.acos(cos)
    s = math.sin(omega)
    return (math.sin((1 - t) * omega) / s) * a + (math.sin(t * omega) / s) * b


def merge_tensor(
    base: torch.Tensor | None,
    models: Sequence[torch.Tensor],
    weights: Sequence[float],
    method: str,
    density: float = 1.0,
    generator: torch.Generator | None = None,
    lam: float = 1.0,
) -> torch.Tensor:
    """One merged tensor (in the dtype of ``models[0]``); see the module docstring. ``lam``
    scales the merged task vector (the λ of the task-arithmetic and TIES papers:
    ``base + lam * merged``); averaging and SLERP ignore it.

    Examples:
        >>> base = torch.zeros(2)
        >>> merge_tensor(base, [torch.tensor([1.0, -2.0]), torch.tensor([3.0, 2.0])],
        ...              [0.5, 0.5], "task_arithmetic")
        tensor([2., 0.])
    """
    dtype = models[0].dtype
    if not dtype.is_floating_point:
        return (base if base is not None else models[0]).clone()
    thetas = [m.float() for m in models]
    w = torch.tensor([float(x) for x in weights])
    if method == "average":
        out = sum(wi * th for wi, th in zip(w.tolist(), thetas)) / float(w.sum())
    elif method == "slerp":
        t = float(w[1] / w.sum())
        out = _slerp(thetas[0], thetas[1], t)
    else:
        if base is None:
            raise ValueError(f"{method} needs the base model")
        b = base.float()
        taus = [th - b for th in thetas]
        if method == "task_arithmetic":
            delta = sum(wi * tau for wi, tau in zip(w.tolist(), taus))
        elif method == "ties":
            delta = _disjoint_mean([_trim(tau, density) for tau in taus], w)
        elif method == "dare_linear":
            dropped = [_drop(tau, density, generator) for tau in taus]
            delta = sum(wi * tau for wi, tau in zip(w.tolist(), dropped))
        elif method == "dare_ties":
            delta = _disjoint_mean([_drop(tau, density, generator) for tau in taus], w)
        else:
            raise ConfigError(f"unknown merge method '{method}'{did_you_mean(method, METHODS)}")
        out = b + lam * delta
    return out.to(dtype)


def merge(
    base: Mapping[str, torch.Tensor] | None,
    models: Sequence[Mapping[str, torch.Tensor]],
    weights: Sequence[float],
    method: str,
    density: float = 1.0,
    seed: int | None = 0,
    lam: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Merge the state dicts ``models`` (fine-tuned from ``base``) with one weight each, the
    merged task vector scaled by ``lam`` (task-vector methods only).

    TIES's weighted disjoint mean divides by the weights that agree, so a single task vector's
    weight cancels: one specialist is scaled through ``lam``, not its weight.

    Every key of ``models[0]`` is merged; non-float tensors come from ``base`` (or the first
    model when no base is given). DARE's drop draws from one generator seeded with ``seed``,
    tensors in ``models[0]``'s key order, so a merge is reproducible.

    Examples:
        >>> base = {"w": torch.zeros(3)}
        >>> a, b = {"w": torch.tensor([1.0, 2.0, -1.0])}, {"w": torch.tensor([3.0, -1.0, -1.0])}
        >>> merge(base, [a, b], [1.0, 1.0], "ties")["w"]
        tensor([ 2.,  2., -1.])
    """
    check_method(method, len(models), len(weights), density)
    if method in USES_BASE and base is None:
        raise ConfigError(f"merge method {method} works on task vectors: give the base model")
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(seed)
    out = {}
    for key in models[0]:
        b = base[key] if base is not None else None
        out[key] = merge_tensor(
            b, [m[key] for m in models], weights, method, density, generator, lam
        )
    return out


def merge_folders(
    base: str | Path,
    models: Sequence[str | Path],
    out: str | Path,
    method: str,
    weights: Sequence[float] | None = None,
    density: float = 0.5,
    seed: int = 0,
) -> Path:
    """``retain merge``: merge model folders into ``out``; see :mod:`retain.utils.merge_io`.

    ``weights`` default to equal ones summing to 1. Every check (method, weight count, folders,
    ``out`` not existing, tensor names and shapes from the safetensors headers) runs before any
    tensor is read. ``out`` gets ``model.safetensors`` (the base's dtype), the base folder's
    other files byte for byte (config, tokenizer) and ``merge.json`` (what was merged, how).
    """
    from safetensors.torch import save_file

    from retain.utils.merge_io import (
        Reader,
        check_compatible,
        copy_companions,
        find_source,
        read_shapes,
    )
    from retain.utils.state import write_json

    if not models:
        raise ConfigError("give at least one model to merge into the base")
    weights = list(weights) if weights is not None else [1.0 / len(models)] * len(models)
    check_method(method, len(models), len(weights), density)
    require_peft(method)
    out = Path(out)
    if out.exists():
        raise ConfigError(
            f"output folder '{out}' exists; choose a new --out (nothing is overwritten)"
        )
    base_src = find_source(base)
    if base_src.kind == "adapter":
        raise ConfigError(f"the base '{base}' is an adapter; give the model it was trained on")
    sources = [find_source(m) for m in models]
    for src in (base_src, *sources):
        read_shapes(src)
    for src in sources:
        check_compatible(base_src, src)

    generator = torch.Generator().manual_seed(seed)
    reader = Reader(base_src, sources)
    merged = {}
    try:
        for name in base_src.shapes:
            b = reader.base_tensor(name)
            tensors = [reader.tensor(i, name, b) for i in range(len(sources))]
            t = merge_tensor(b, tensors, weights, method, density, generator)
            merged[name] = t.to(b.dtype).contiguous()
    finally:
        reader.close()
    out.mkdir(parents=True)
    save_file(merged, str(out / "model.safetensors"), metadata={"format": "pt"})
    copied = copy_companions(base_src, out)
    write_json(
        out / "merge.json",
        {
            "method": method,
            "weights": weights,
            "density": density,
            "seed": seed,
            "base": {"path": str(base), "kind": base_src.describe},
            "models": [{"path": str(m), "kind": s.describe} for m, s in zip(models, sources)],
            "copied_from_base": copied,
        },
    )
    return out
