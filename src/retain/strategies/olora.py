"""O-LoRA: one LoRA adapter per task, each trained orthogonal to the earlier tasks' adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from retain.errors import Unsupported
from retain.strategies import register
from retain.strategies.base import Strategy, fails_in_class_il
from retain.utils import adapters as peftutil
from retain.utils.adapters import is_peft, lora_layers, safe_name

if TYPE_CHECKING:
    from torch import nn

    from retain.strategies.context import TaskContext


def orthogonality(earlier: list[torch.Tensor], current: torch.Tensor) -> torch.Tensor:
    """``sum_i ||A_i A_t^T||_F^2`` for one layer, with the ``A`` matrices in PEFT's layout
    (``lora_A.weight``, ``[r, in_features]``); 0 when ``earlier`` is empty.

    Examples:
        >>> a1 = torch.tensor([[1.0, 0.0]])
        >>> float(orthogonality([a1], torch.tensor([[3.0, 4.0]])))
        9.0
    """
    if not earlier:
        return current.new_zeros(())
    stacked = torch.cat([a.flatten(1) for a in earlier])  # [sum_i r_i, in]: one product
    return (stacked.float() @ current.flatten(1).float().T).pow(2).sum()


@register("olora", reference_url="https://arxiv.org/abs/2310.14152")
@dataclass(repr=False)  # keep Strategy.__repr__: only non-default fields
class OLoRA(Strategy):
    """O-LoRA: a LoRA adapter per task, kept orthogonal to the earlier ones; no task id needed.

    The base model is frozen. Before each task a new LoRA adapter (through ``peft``) is added to
    the chosen layers; the earlier tasks' adapters stay frozen but active, so the model that
    trains (and is evaluated) is always the base plus every adapter so far: each layer computes
    ``W x + sum_i s B_i A_i x`` with ``s = alpha / rank``. To keep a new task from overwriting
    what the earlier adapters do, the loss adds, for every adapted layer,

        ``lam1 * sum_{i<t} ||A_i A_t^T||_F^2  +  lam2 * (||A_t||_F^2 + ||B_t||_F^2)``

    with ``A`` as PEFT stores ``lora_A.weight`` (``[rank, in_features]``; the paper writes the
    transpose, ``in x rank``, hence its ``A_i^T A_t``). The first term is zero when the rows of
    ``A_t`` (the input directions the new adapter reads) are orthogonal to every earlier
    adapter's, so the new update lives in a subspace the old ones do not use (Wang et al. 2023,
    Eq. 5-6). Inference uses all adapters at once (equivalent to adding every ``B_i A_i`` to the
    weights) and needs no task id. The base's weights stay bit-identical; the adapters are
    saved in PEFT's own format in ``RUN/adapters/<task>/`` (loadable with plain
    ``PeftModel.from_pretrained``). ``stats()`` reports the adapters, their parameters and the
    unweighted orthogonality term at the end of each task.

    Differences from the authors' code (github.com/cmnfriend/O-LoRA, ``uie_trainer_lora.py``):
    it sums absolute values, ``sum |A_i A_t^T|``, where the paper squares them (used here);
    its second term, a sum of the current adapter's per-matrix L2 norms (A and B, unsquared),
    is here the squared norm of the current adapter's A and B (``lam2 * ||Delta theta_t||^2``
    over the current task's LoRA parameters); every script of theirs sets it to 0, the
    default here.

    Args:
        rank: Rank r of each task's adapter (the paper: 8). Each task adds
            ``r * (in + out)`` parameters per adapted layer.
        alpha: LoRA scaling numerator: each adapter's update is multiplied by
            ``alpha / rank`` (the authors' code: 32 with rank 8).
        dropout: Dropout on the adapters' inputs while training (the authors' code: 0.1).
        target_modules: Layers that get adapters. ``auto``: the attention query and value
            projections of a transformers model (Llama ``q_proj, v_proj``, BERT
            ``query, value``; a sequence classifier's head too), every Linear layer of any
            other model (retain's MLP or CNN, Conv2d layers too). ``all-linear``: every Linear layer
            but a language model's output layer. Or a list of module names or their last
            parts (``[q_proj, k_proj, v_proj]``); a name that matches no Linear layer is an
            error before training.
        lam1: Weight of the orthogonality term (the paper: 0.5). 0 trains plain per-task LoRA
            adapters that all stay active.
        lam2: Weight of the squared L2 norm of the current task's adapter (0 in the paper's
            scripts).

    Reference:
        Wang et al., "Orthogonal Subspace Learning for Language Model Continual Learning"
        (Findings of EMNLP 2023). Not PEFT's ``init_lora_weights="olora"``, an initialisation.
    """

    known_failures: ClassVar[dict[str, str]] = {
        "class_il": fails_in_class_il("keeping adapters orthogonal")
    }

    rank: int = field(default=8, metadata={"ge": 1})
    alpha: float = field(default=32.0, metadata={"gt": 0})
    dropout: float = field(default=0.1, metadata={"ge": 0, "lt": 1})
    target_modules: Literal["auto", "all-linear"] | list[str] = "auto"
    lam1: float = field(default=0.5, metadata={"ge": 0})
    lam2: float = field(default=0.0, metadata={"ge": 0})

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.target_modules, list) and not all(self.target_modules):
            raise ValueError(
                f"target_modules must be auto, all-linear or a list of module names, got "
                f"{self.target_modules!r}"
            )
        self.adapters_: list[str] = []  # one per task trained or being trained, oldest first
        self._layers: list[tuple[Any, list[torch.Tensor], list[Any]]] | None = None
        self._targets: Any = []  # resolved in setup, on the model without adapters
        self._last: dict[str, Any] = {}

    # ------------------------------------------------------------------ structure

    def check_model(self, model: nn.Module) -> None:
        peftutil.peft_module()
        if is_peft(model):
            raise Unsupported(
                f"strategy '{self.name}' adds its own adapters, and this model already has "
                "PEFT adapters; give it the base model (and list one adapter strategy)"
            )
        self._resolve(model)

    def _resolve(self, model: nn.Module) -> list[str]:
        """The shared target resolution; with ``auto``, a transformers sequence classifier's
        head is a target too. ``lora`` gives each adapter its own copy of the head instead
        (PEFT's ``modules_to_save``), but such a copy answers for one adapter at a time, and
        here every adapter is active at once; an adapter on the head sums like the others."""
        targets = peftutil.resolve_targets(model, self.target_modules, self.name)
        if not isinstance(targets, list):  # transformers' all-linear: PEFT resolves it
            return targets
        if self.target_modules == "auto" and type(model).__name__.endswith(
            "ForSequenceClassification"
        ):
            heads = [
                n for n, _ in model.named_modules() if n.split(".")[0] in ("classifier", "score")
            ]
            targets += [
                n for n in heads if isinstance(dict(model.named_modules())[n], torch.nn.Linear)
            ]
        return targets

    def lora_config(self) -> Any:
        """A fresh ``LoraConfig`` (one per adapter: PEFT keeps and may change it)."""
        peft = peftutil.peft_module()
        return peft.LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self._targets if isinstance(self._targets, str) else list(self._targets),
            bias="none",
        )

    def setup(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        self.check_model(model)
        # Resolved once, on the model without adapters (whose Linear layers they wrap).
        self._targets = self._resolve(model)
        for name in self.adapters_:  # resume: the same adapters, before their weights load
            model = self._add(model, name)
        if self.adapters_:
            self._activate(model)
        return model

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        model = ctx.unwrap(model)
        if len(self.adapters_) <= ctx.task_index:
            name = safe_name(ctx.task.name, ctx.task_index, self.adapters_)
            model = self._add(model, name)
            self.adapters_.append(name)
        self._activate(model)
        self._layers = None
        return model

    def _add(self, model: nn.Module, name: str) -> nn.Module:
        """``model`` with adapter ``name``: wrapped in a ``PeftModel`` on the first call."""
        if is_peft(model):
            peftutil.add_adapter(model, self.lora_config(), name)
            return model
        return peftutil.wrap(model, self.lora_config(), name)

    def _activate(self, model: nn.Module) -> None:
        """Every adapter active (the forward is base + all of them); only the newest trains."""
        model.base_model.set_adapter(list(self.adapters_))
        model.requires_grad_(False)
        newest = self.adapters_[-1]
        for _, layer in lora_layers(model):
            layer.lora_A[newest].requires_grad_(True)
            layer.lora_B[newest].requires_grad_(True)

    # ------------------------------------------------------------------ penalty

    def _collect(self, model: nn.Module) -> list[tuple[Any, list[torch.Tensor], list[Any]]]:
        """Per adapted layer: the current ``A_t`` parameter, the earlier ``A_i`` stacked (the
        sum of their terms is the term of the stack) and the current adapter's parameters."""
        if self._layers is None:
            newest, earlier = self.adapters_[-1], self.adapters_[:-1]
            self._layers = [
                (
                    layer.lora_A[newest].weight,
                    # frozen: stacked once per task, [sum_i r_i, in] (one product per step)
                    [torch.cat([layer.lora_A[a].weight.detach().flatten(1) for a in earlier])]
                    if earlier
                    else [],
                    [layer.lora_A[newest].weight, layer.lora_B[newest].weight],
                )
                for _, layer in lora_layers(model)
            ]
        return self._layers

    def penalty(self, model: nn.Module) -> torch.Tensor:
        """``lam1 * sum_layers sum_{i<t} ||A_i A_t^T||_F^2 + lam2 * ||A_t, B_t||^2`` (float32)."""
        layers = self._collect(model)
        with torch.autocast(layers[0][0].device.type, enabled=False):
            total = layers[0][0].new_zeros((), dtype=torch.float32)
            for current, earlier, own in layers:
                if self.lam1 and earlier:
                    total = total + self.lam1 * orthogonality(earlier, current)
                if self.lam2:
                    total = total + self.lam2 * sum(p.float().pow(2).sum() for p in own)
        return total

    def loss(
        self, loss: torch.Tensor, out: Any, batch: dict[str, torch.Tensor], ctx: TaskContext
    ) -> torch.Tensor:
        if not self.lam2 and (not self.lam1 or len(self.adapters_) < 2):
            return loss
        return loss + self.penalty(ctx.unwrap(ctx.model))

    def after_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        layers = self._collect(ctx.unwrap(model))
        with torch.no_grad():
            orth = sum(float(orthogonality(e, c)) for c, e, _ in layers)
            params = sum(p.numel() for _, _, own in layers for p in own)
        self._last = {"adapters": len(self.adapters_), "adapter_params": params}
        self._last["orthogonality"] = orth
        self._layers = None
        return model

    def stats(self) -> dict[str, Any]:
        return dict(self._last)
