"""A base model with one LoRA adapter per task, and the routing that picks an adapter per input.

``AdapterModel`` is task-aware (``task_aware = True``): called with task ids (the ``task_il``
setting) each sample goes through its task's adapter; without them (``task=None``) each sample is
routed. In training mode every sample goes through the active adapter, the one being trained
(replayed samples of earlier tasks included: a frozen adapter could not learn from them).

Routing (``route``):

- ``prototype``: the base model's features of the input (adapters disabled): the input of the
  output layer of a plain MLP/CNN, the last hidden state mean-pooled over the attention mask of a
  transformers model; L2-normalised, compared with each task's prototype (the mean normalised
  feature of its training data, computed after the task); the nearest prototype's adapter
  answers. Cost: one base forward (for a transformers model, the backbone without its output
  layer) plus one forward with per-sample adapters.
- ``entropy``: every adapter answers every sample (the batch repeated once per adapter, in one
  forward); the answer with the lowest prediction entropy (mean over tokens for a language
  model) is kept. Cost: T times the forward, T times the activations.
- ``newest``: the newest adapter answers every sample (no routing; the baseline).

Mixed batches use PEFT's ``adapter_names=`` (one adapter name per sample): each LoRA layer runs
the shared base weights once and each adapter on its own samples, so evaluating T adapters costs
one base forward plus the adapters, not T full models.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from retain.utils.adapters import is_transformers, output_layer

ROUTES = ("prototype", "entropy", "newest")


class AdapterModel(nn.Module):
    """``peft_model`` (a ``peft.PeftModel``) and the routing of inputs to its adapters.

    Attributes:
        names: adapter names, in task order (adapter ``k`` was trained on task ``k``).
        route: ``prototype``, ``entropy`` or ``newest`` (see the module docstring).
        prototypes: one row per task with a prototype (``[K, D]``), or None.
    """

    task_aware = True

    def __init__(self, peft_model: nn.Module, names: list[str], route: str = "prototype") -> None:
        super().__init__()
        if route not in ROUTES:
            raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
        self.peft_model = peft_model
        self.names = list(names)
        self.route = route
        self.prototypes: torch.Tensor | None = None
        base = peft_model.get_base_model()
        self.text = is_transformers(base)
        self.head = None if self.text else output_layer(base)

    @property
    def config(self) -> Any:
        """The transformers config of the base (evaluation reads its vocabulary size)."""
        return getattr(self.peft_model.get_base_model(), "config", None)

    def forward(
        self, x: torch.Tensor | None = None, task: torch.Tensor | None = None, **inputs: Any
    ) -> Any:
        args = () if x is None else (x,)
        if self.training or len(self.names) == 1:
            return self.peft_model(*args, **inputs)
        if task is None and self.route == "entropy":
            return self._lowest_entropy(args, inputs)[0]
        which = self.choose(args, inputs, task)
        return self.peft_model(*args, **inputs, adapter_names=[self.names[i] for i in which])

    def choose(
        self, args: tuple, inputs: dict[str, Any], task: torch.Tensor | None = None
    ) -> list[int]:
        """The adapter index of every sample: its task's (clamped to the newest adapter, for
        tasks not trained yet) when ``task`` is given, else the route's choice."""
        n = self._batch_size(args, inputs)
        newest = len(self.names) - 1
        if task is not None:
            return task.clamp(max=newest).tolist()
        if self.route == "entropy":
            return self._lowest_entropy(args, inputs)[1]
        if self.route == "newest" or self.prototypes is None or len(self.prototypes) == 0:
            return [newest] * n
        return self.nearest(self.features(args, inputs)).tolist()

    def nearest(self, feats: torch.Tensor) -> torch.Tensor:
        """The index of the nearest prototype to each row of base features ``feats``."""
        feats = F.normalize(feats.float(), dim=-1)
        return torch.cdist(feats, self.prototypes.to(feats.device)).argmin(-1)

    def features(self, args: tuple, inputs: dict[str, Any]) -> torch.Tensor:
        """The base model's features of a batch, adapters disabled: the mean-pooled last hidden
        state of a transformers model, the input of a plain model's output layer."""
        base = self.peft_model.get_base_model()
        with self.peft_model.disable_adapter():
            if self.text:
                backbone = getattr(base, "base_model", base)
                mask = inputs.get("attention_mask")
                ids = inputs["input_ids"]
                hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
                if mask is None:
                    return hidden.mean(1)
                m = mask.unsqueeze(-1).to(hidden.dtype)
                return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
            seen: list[torch.Tensor] = []
            layer = base.get_submodule(self.head)
            handle = layer.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0]))
            try:
                self.peft_model(*args, **inputs)
            finally:
                handle.remove()
            return seen[0].flatten(1)

    def _lowest_entropy(self, args: tuple, inputs: dict[str, Any]) -> tuple[Any, list[int]]:
        t, n = len(self.names), self._batch_size(args, inputs)
        rep_args = tuple(torch.cat([a] * t) for a in args)
        rep = {k: torch.cat([v] * t) if torch.is_tensor(v) else v for k, v in inputs.items()}
        names = [name for name in self.names for _ in range(n)]
        out = self.peft_model(*rep_args, **rep, adapter_names=names)
        logits = out if torch.is_tensor(out) else out.logits
        logits = logits.reshape(t, n, *logits.shape[1:])
        logp = F.log_softmax(logits.float(), -1)
        ent = -(logp.exp() * logp).sum(-1)  # [T, N] or [T, N, L] for a language model
        if ent.ndim == 3:
            mask = inputs.get("attention_mask")
            m = torch.ones_like(ent[0]) if mask is None else mask.to(ent.dtype)
            ent = (ent * m).sum(-1) / m.sum(-1).clamp_min(1.0)
        which = ent.argmin(0)
        picked = logits[which, torch.arange(n, device=logits.device)]
        if torch.is_tensor(out):
            return picked, which.tolist()
        return type(out)(logits=picked), which.tolist()

    @staticmethod
    def _batch_size(args: tuple, inputs: dict[str, Any]) -> int:
        first = args[0] if args else inputs["input_ids"]
        return len(first)
