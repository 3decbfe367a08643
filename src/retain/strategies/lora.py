"""LoRA: a low-rank adapter per task on a frozen base, routed per input when no task id is given."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from retain.errors import Unsupported
from retain.models.adapters import AdapterModel
from retain.strategies import register
from retain.strategies.base import Strategy
from retain.utils import adapters as peftutil

if TYPE_CHECKING:
    from torch import nn

    from retain.data.stream import Stream
    from retain.strategies.context import TaskContext


@register("lora", reference_url="https://arxiv.org/abs/2106.09685")
@dataclass(repr=False)  # keep Strategy.__repr__: only non-default fields
class LoRA(Strategy):
    """LoRA adapters (through peft): a new one per task on a frozen base, or one continued.

    Each adapted layer computes ``W x + (alpha / rank) * B A x``: the base weight ``W`` stays
    frozen and only the small matrices ``A`` (rank x in) and ``B`` (out x rank) train. With
    ``per_task`` every task gets its own adapter and the base model's weights stay bit-identical
    whatever the number of tasks, so nothing the base knew is lost; the model keeps one base in
    memory plus T small adapters. Which adapter answers an input: with task ids (the task_il
    setting) its task's; without them the input is routed (``route``), and ``stats()`` reports
    the routing accuracy (the fraction of each seen task's test samples sent to that task's own
    adapter) after each task. The adapter library is saved in PEFT's format in ``RUN/adapters``
    (see docs/adapters.md).

    Args:
        rank: Rank of each adapter's update: its size and capacity (parameters per adapted layer:
            rank x (inputs + outputs)).
        alpha: Scale of the update, applied as alpha / rank (the LoRA paper keeps alpha fixed
            while varying rank, so the learning rate need not be retuned).
        dropout: Dropout on the adapter's input during training (0 disables it).
        target_modules: Which layers get an adapter: ``auto`` (q/v projections of a transformer,
            peft's defaults; every Linear and Conv2d of a plain MLP/CNN, output layer included
            so new classes can be learned), ``all-linear``, or a list of module names or name
            suffixes. A name that matches no layer is refused before training.
        per_task: A new adapter per task (true), or one adapter trained on every task in turn
            (false): the setting of Biderman et al. 2024, "LoRA learns less and forgets less",
            where the frozen base limits forgetting but the adapter itself can forget.
        route: How an input without a task id picks its adapter: ``prototype`` (the task whose
            mean base-model feature is nearest, one extra base forward), ``entropy`` (the adapter
            most confident about the input, one forward per adapter), ``newest`` (no routing).
        lr_scale: Multiplies ``train.lr`` for the adapters' parameters. LoRA usually wants a
            learning rate about ten times that of full fine-tuning, so a comparison with
            finetune at one ``train.lr`` can give lora ``lr_scale=10``.

    Reference:
        Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models" (2021); routing by task
        prototypes as in TRACE (Wang et al. 2023) and Renate's task identification.
    """

    rank: int = field(default=8, metadata={"ge": 1})
    alpha: float = field(default=16.0, metadata={"gt": 0})
    dropout: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
    target_modules: str | list[str] = "auto"
    per_task: bool = True
    route: Literal["prototype", "entropy", "newest"] = "prototype"
    lr_scale: float = field(default=1.0, metadata={"gt": 0})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.adapters_: list[str] = []
        self.prototypes_: torch.Tensor | None = None
        self.routing_: list[list[float]] = []
        self.adapter_params_: list[int] = []
        self._test_features: dict[int, torch.Tensor] = {}

    def check(self, stream: Stream) -> None:
        super().check(stream)
        if self.route == "entropy" and stream.objective == "regression":
            raise Unsupported(
                "strategy 'lora': route=entropy needs predicted probabilities, which regression "
                "has not; use route=prototype"
            )

    def check_model(self, model: nn.Module) -> None:
        peftutil.peft_module()
        peftutil.resolve_targets(model, self.target_modules, self.name)

    def _config(self, base: nn.Module) -> Any:
        targets = peftutil.resolve_targets(base, self.target_modules, self.name)
        return peftutil.lora_config(base, targets, self.rank, self.alpha, self.dropout)

    def setup(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        if isinstance(model, AdapterModel):
            raise Unsupported("'lora' was given a model with adapters: list it once per run")
        self.check_model(model)
        config = self._config(model)
        # Resume: the same adapters as the checkpoint, whose weights are loaded next. A fresh run
        # starts with the first task's adapter, which computes the base's function (B = 0).
        names = self.adapters_ or [self._name(0)]
        peft_model = peftutil.wrap(model, config, names[0])
        for name in names[1:]:
            peftutil.add_adapter(peft_model, config, name)
        net = AdapterModel(peft_model, names, self.route)
        net.prototypes = self.prototypes_
        self._activate(net, names[-1])
        return net

    def _name(self, index: int) -> str:
        return f"task_{index}" if self.per_task else "shared"

    def _activate(self, net: AdapterModel, name: str) -> None:
        peft_model = net.peft_model
        if name not in net.names:  # the same configuration as the first adapter
            config = copy.deepcopy(peft_model.peft_config[net.names[0]])
            peftutil.add_adapter(peft_model, config, name)
            net.names.append(name)
        peftutil.train_only(peft_model, name)
        self.adapters_ = list(net.names)
        self.adapter_params_ = [peftutil.adapter_parameters(peft_model, n) for n in net.names]

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        net = ctx.unwrap(model)
        if not isinstance(net, AdapterModel):
            raise Unsupported(
                f"'lora' expected its adapter model before task {ctx.task_index}, got "
                f"{type(net).__name__}: another strategy replaced the model"
            )
        self._activate(net, self._name(ctx.task_index))
        return net

    def param_groups(
        self, groups: list[dict[str, Any]], model: nn.Module, ctx: TaskContext
    ) -> list[dict[str, Any]]:
        return [{**g, "lr_scale": g.get("lr_scale", 1.0) * self.lr_scale} for g in groups]

    def after_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        net = ctx.unwrap(model)
        if not self.per_task:
            return model
        was_training = net.training
        net.eval()
        with torch.no_grad(), ctx.autocast():
            if self.route == "prototype":
                proto = self._prototype(net, ctx)
                rows = [] if self.prototypes_ is None else [self.prototypes_[: ctx.task_index]]
                self.prototypes_ = torch.cat([*rows, proto[None].cpu()])
                net.prototypes = self.prototypes_
            if not ctx.task_known:
                self.routing_.append(self._routing_accuracy(net, ctx))
        net.train(was_training)
        return model

    def _prototype(self, net: AdapterModel, ctx: TaskContext) -> torch.Tensor:
        """The mean L2-normalised base feature of the task's training data (every process sees
        all of it, so every rank holds the same prototype)."""
        total, n = None, 0
        for batch in ctx.make_loader(ctx.task.train, shard=False):
            args, inputs = _model_inputs(batch)
            f = torch.nn.functional.normalize(net.features(args, inputs).float(), dim=-1)
            total = f.sum(0) if total is None else total + f.sum(0)
            n += len(f)
        return total / max(n, 1)

    def _routing_accuracy(self, net: AdapterModel, ctx: TaskContext) -> list[float]:
        """Per seen task, the fraction of its test samples routed to its own adapter. The base
        never changes, so with prototype routing each test set's base features are computed
        once and kept (not saved: a resumed run computes them again)."""
        out = []
        for j, task in enumerate(ctx.seen_tasks):
            if self.route == "prototype":
                if j not in self._test_features:
                    self._test_features[j] = torch.cat(
                        [
                            net.features(*_model_inputs(b)).float().cpu()
                            for b in ctx.make_loader(task.test, shard=False)
                        ]
                    )
                which = net.nearest(self._test_features[j])
                out.append(float((which == j).float().mean()))
                continue
            hits, n = 0, 0
            for batch in ctx.make_loader(task.test, shard=False):
                hits += sum(int(k == j) for k in net.choose(*_model_inputs(batch)))
                n += len(batch["task"])
            out.append(hits / max(n, 1))
        return out

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "adapters": len(self.adapters_),
            "adapter_params": sum(self.adapter_params_),
        }
        if self.routing_:
            out["routing_accuracy"] = list(self.routing_[-1])
        return out


def _model_inputs(batch: dict[str, torch.Tensor]) -> tuple[tuple, dict[str, Any]]:
    """A retain batch as the model's positional and keyword inputs (no labels, no task)."""
    if "input_ids" in batch:
        keys = ("input_ids", "attention_mask")
        return (), {k: batch[k] for k in keys if k in batch}
    return (batch["x"],), {}
