"""Progressive networks: a new column of layers per task; earlier columns are frozen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from retain.models.progressive import ProgressiveNet
from retain.models.stack import linear_stack
from retain.strategies import register
from retain.strategies._growing import Growing

_NEEDS_IDS = (
    "it answers each sample with the column of that sample's task, so it needs task "
    "labels at test time; without them every sample goes to the newest column, which "
    "has only been trained on the newest task. Use stream.setting=task_il"
)


@register("progressive", reference_url="https://arxiv.org/abs/1606.04671")
@dataclass(repr=False)  # keep Strategy.__repr__: only non-default fields
class Progressive(Growing):
    """Progressive networks: a new column of layers per task; earlier columns frozen, never forget.

    The model (retain's MLP, or an ``nn.Sequential`` of Linear layers and activations) becomes
    the first column. Before each later task a new column with the same widths is added and
    every earlier column is frozen (``requires_grad=False``, so it gets no optimizer state).
    Layer ``l`` of the new column also reads layer ``l-1`` of every earlier column through a
    lateral Linear map, so it can reuse what they learned without changing them. Each column
    ends in its own output head, and each sample is answered by its task's column: earlier
    tasks' answers stay bit-identical (zero forgetting) in the task-incremental setting, where
    task labels are given at test time. The cost is growth: column ``k`` holds a copy of the
    network plus ``k`` lateral maps per layer, so the parameter count grows quadratically with
    the number of tasks (``stats()`` reports it per column).

    Args:
        laterals: Connect each new column to the earlier ones (forward transfer). False trains
            independent networks, one per task: the ablation that shows what the lateral
            connections add.

    Reference:
        Rusu et al., "Progressive Neural Networks" (2016), Eq. 1, with linear lateral maps
        instead of the paper's adapter MLPs.
    """

    known_failures: ClassVar[dict[str, str]] = {"class_il": _NEEDS_IDS, "domain_il": _NEEDS_IDS}
    unit: ClassVar[str] = "column"
    net_type: ClassVar[type] = ProgressiveNet

    laterals: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()

    @property
    def columns_(self) -> int:
        return self.units_

    def build(self, model: nn.Module) -> nn.Module:
        return ProgressiveNet(linear_stack(model, "progressive"), laterals=self.laterals)

    def grow(self, net: ProgressiveNet) -> None:
        net.add_column()

    def parts(self, net: ProgressiveNet) -> list[nn.Module]:
        return [nn.ModuleList([c, lat]) for c, lat in zip(net.columns, net.laterals)]
