"""Read an MLP-shaped model as a stack of Linear layers, for strategies that grow new copies of it.

Progressive networks and the parallel strategy build new columns or stages with the same widths
and activations as the user's model. They accept retain's :class:`~retain.models.MLP` and any
``nn.Sequential`` of ``[Flatten,] Linear, <parameter-free modules>, Linear, ...`` (activations and
dropout between the layers); anything else is refused with :class:`~retain.errors.Unsupported`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from retain.errors import Unsupported


@dataclass
class LinearStack:
    """``flatten``, then ``linears[i]`` followed by ``between[i]`` (except after the last)."""

    flatten: bool
    linears: list[nn.Linear]
    between: list[nn.Sequential]


def linear_stack(model: nn.Module, who: str) -> LinearStack:
    """Parse ``model`` (retain's MLP or an nn.Sequential of Linear layers and activations)."""
    from retain.models import MLP

    if isinstance(model, MLP):
        modules = list(model.net)
    elif isinstance(model, nn.Sequential):
        modules = list(model)
    else:
        raise Unsupported(
            f"'{who}' supports MLP-shaped models only (retain's MLP, or an nn.Sequential of Linear "
            f"layers and activations), got {type(model).__name__}; use model.name=mlp"
        )
    flatten = bool(modules) and isinstance(modules[0], nn.Flatten)
    modules = modules[1:] if flatten else modules
    linears: list[nn.Linear] = []
    between: list[list[nn.Module]] = []
    for m in modules:
        if isinstance(m, nn.Linear):
            linears.append(m)
            between.append([])
        elif any(True for _ in m.parameters()) or not linears:
            raise Unsupported(
                f"'{who}' supports MLP-shaped models only: Linear layers with parameter-free "
                f"modules (activations, dropout) between them; found {type(m).__name__} "
                f"{'first' if not linears else 'with parameters'}"
            )
        else:
            between[-1].append(m)
    if not linears or between[-1]:
        raise Unsupported(f"'{who}' needs a model that ends with a Linear layer (the output head)")
    return LinearStack(flatten, linears, [nn.Sequential(*b) for b in between[:-1]])


def fresh_like(layers: list[nn.Linear], bias: bool | None = None) -> list[nn.Linear]:
    """New Linears with the shapes, device and dtype of ``layers`` (PyTorch's default init);
    ``bias`` None keeps each layer's."""
    return [
        nn.Linear(
            lin.in_features,
            lin.out_features,
            bias=(lin.bias is not None) if bias is None else bias,
            device=lin.weight.device,
            dtype=lin.weight.dtype,
        )
        for lin in layers
    ]


def as_flat(x: torch.Tensor, flatten: bool) -> torch.Tensor:
    return x.flatten(1) if flatten else x
