"""Progressive network (Rusu et al. 2016): one column per task, lateral links from earlier columns.

Column ``k`` has the same widths as the original MLP. Its layer ``l`` sees its own layer ``l-1``
and, through a lateral Linear map (no bias) per earlier column ``j < k``, column ``j``'s layer
``l-1``: ``h_l^k = f(W_l^k h_{l-1}^k + sum_j U_l^{k:j} h_{l-1}^j)`` (the paper's Eq. 1 without its
adapter MLPs). The first layer needs no laterals: every column sees the same input. The last
layer of each column is that column's output head. Column ``j`` depends on columns ``<= j``
only, so once frozen its output never changes, however many columns come after it.
"""

from __future__ import annotations

import torch
from torch import nn

from retain.models.stack import LinearStack, as_flat, fresh_like


class ProgressiveNet(nn.Module):
    """Columns of an MLP; ``forward(x, task)`` answers each sample with its task's column.

    ``task=None`` (or a task id beyond the last column) uses the last column. Parameters are named
    ``columns.<k>.<layer>.*`` and ``laterals.<k>.<layer-1>.<j>.weight``.
    """

    task_aware = True

    def __init__(self, stack: LinearStack, laterals: bool = True) -> None:
        super().__init__()
        self.flatten = stack.flatten
        self.use_laterals = laterals
        self.acts = nn.ModuleList(stack.between)
        self.columns = nn.ModuleList([nn.ModuleList(stack.linears)])
        self.laterals = nn.ModuleList([nn.ModuleList(nn.ModuleList() for _ in stack.linears[1:])])

    @property
    def n_columns(self) -> int:
        return len(self.columns)

    def add_column(self) -> None:
        """Append a freshly initialised column with laterals from every earlier column."""
        layers = fresh_like(list(self.columns[0]))
        lateral = nn.ModuleList(
            nn.ModuleList(fresh_like([lin] * (self.n_columns if self.use_laterals else 0), False))
            for lin in layers[1:]
        )
        self.columns.append(nn.ModuleList(layers))
        self.laterals.append(lateral)

    def forward(self, x: torch.Tensor, task: torch.Tensor | None = None) -> torch.Tensor:
        x = as_flat(x, self.flatten)
        inputs: list[list[torch.Tensor]] = []  # inputs[k][l]: what column k's layer l reads
        outs = []
        last = len(self.acts)
        for k, column in enumerate(self.columns):
            h, seen = x, []
            for i, layer in enumerate(column):
                seen.append(h)
                z = layer(h)
                if i > 0:
                    for j, lateral in enumerate(self.laterals[k][i - 1]):
                        z = z + lateral(inputs[j][i])
                h = self.acts[i](z) if i < last else z
            inputs.append(seen)
            outs.append(h)
        if task is None or len(outs) == 1:
            return outs[-1]
        idx = task.clamp(max=len(outs) - 1).view(1, -1, 1).expand(1, -1, outs[0].shape[-1])
        return torch.stack(outs).gather(0, idx).squeeze(0)
