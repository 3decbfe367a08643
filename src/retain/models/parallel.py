"""Parallel stages: a frozen network and a new one that reads the input and its features.

Stage 0 is the original MLP. Stage ``k`` is a copy of the MLP whose first layer also reads the
features of every earlier stage (their penultimate activations, or their logits) through one
Linear map per earlier stage, with no bias::

    h_1^k = f(W_1^k x + sum_{j<k} V^{k:j} feat_j),   logits = output of the last stage

With ``route=True`` the net is task-aware: stage ``k`` was added for task ``k``, so a sample whose
task id is given is answered by the stage trained on its task (a frozen stage keeps answering its
own task exactly); without ids (``task=None``) the last stage answers.

Feeding the new stage every earlier stage's features, not only the newest one's, is what lets a
new stage start as *exactly* the previous function: copy the previous stage's layers and maps,
and set the map from the newest features to zero (adding an exact zero leaves every float
unchanged). The cost is a first layer that grows by one map per stage.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from retain.models.stack import LinearStack, as_flat, fresh_like


class Stage(nn.Module):
    def __init__(self, layers: list[nn.Linear], lateral: list[nn.Linear]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.lateral = nn.ModuleList(lateral)


class ParallelNet(nn.Module):
    """A stack of stages; the last one answers. Parameters: ``stages.<k>.layers.<l>.*`` and
    ``stages.<k>.lateral.<j>.weight`` (the map from stage ``j``'s features)."""

    def __init__(
        self, stack: LinearStack, features: str = "penultimate", route: bool = True
    ) -> None:
        super().__init__()
        self.task_aware = route
        if features not in ("penultimate", "logits"):
            raise ValueError(f"features must be 'penultimate' or 'logits', got {features!r}")
        self.flatten = stack.flatten
        self.features = features
        self.acts = nn.ModuleList(stack.between)
        self.stages = nn.ModuleList([Stage(stack.linears, [])])

    @property
    def n_stages(self) -> int:
        return len(self.stages)

    def add_stage(self, init_from_old: bool = True) -> None:
        """Append a stage; with ``init_from_old`` it computes exactly what the last one does."""
        last = self.stages[-1]
        first = last.layers[0]
        p = first.weight
        # The features passed on: the logits, or the input of the last layer (x itself for a
        # single Linear).
        out = last.layers[-1]
        width = out.out_features if self.features == "logits" else out.in_features
        new_map = nn.Linear(width, first.out_features, bias=False, device=p.device, dtype=p.dtype)
        if init_from_old:
            layers = [copy.deepcopy(lin) for lin in last.layers]
            lateral = [copy.deepcopy(m) for m in last.lateral]
            nn.init.zeros_(new_map.weight)
        else:
            layers, lateral = fresh_like(list(last.layers)), fresh_like(list(last.lateral), False)
        for m in [*layers, *lateral, new_map]:
            m.requires_grad_(True)
        self.stages.append(Stage(layers, [*lateral, new_map]))

    def forward(self, x: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        x = as_flat(x, self.flatten)
        feats: list[torch.Tensor] = []
        outs: list[torch.Tensor] = []
        last = len(self.acts)
        for stage in self.stages:
            h, penultimate = x, x
            for i, layer in enumerate(stage.layers):
                z = layer(h)
                if i == 0:
                    for j, lateral in enumerate(stage.lateral):
                        z = z + lateral(feats[j])
                penultimate = h
                h = self.acts[i](z) if i < last else z
            feats.append(h if self.features == "logits" else penultimate)
            outs.append(h)
        if task is None or len(outs) == 1:
            return h
        which = task.clamp(max=len(outs) - 1)
        return torch.stack(outs).gather(0, which.view(1, -1, 1).expand(1, -1, h.shape[-1]))[0]
