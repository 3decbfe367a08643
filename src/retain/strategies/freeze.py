"""Freeze: after the first task train only some layers, with optional layer-wise learning rates."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from retain.errors import Unsupported
from retain.strategies import register
from retain.strategies.base import Strategy

if TYPE_CHECKING:
    from retain.data.stream import Stream
    from retain.strategies.context import TaskContext


def transformer_blocks(model: nn.Module) -> tuple[str, int] | None:
    """``(name, count)`` of a transformers model's list of blocks (``model.layers``,
    ``encoder.layer``, ``transformer.h``): its largest ``ModuleList`` of modules of one class.
    None for other models, whose layers are the modules that own parameters."""
    if not type(model).__module__.startswith("transformers"):
        return None
    best: tuple[int, str, int] | None = None
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) > 1 and len({type(c) for c in m}) == 1:
            size = sum(p.numel() for p in m.parameters())
            if best is None or size > best[0]:
                best = (size, name, len(m))
    return (best[1], best[2]) if best else None


def layer_depths(model: nn.Module) -> dict[str, int]:
    """Parameter name -> depth of its layer counted from the output (the last layer is 0).

    A layer is a module that owns parameters itself, in registration order (the forward order
    of an ``nn.Sequential``, and of most models). In a transformers model a layer is a
    transformer block: the last block and what follows it (the final norm, an untied output
    head) are at depth 0, the embeddings before the first block at the number of blocks. Tied
    output embeddings are the input embeddings' parameter, so they count as input embeddings.
    """
    blocks = transformer_blocks(model)
    if blocks is not None:
        prefix, count = blocks
        depths, seen_blocks = {}, False
        for name, _ in model.named_parameters():
            if name.startswith(prefix + "."):
                seen_blocks = True
                depths[name] = count - 1 - int(name[len(prefix) + 1 :].split(".")[0])
            else:  # before the blocks: the embeddings; after them: with the last block
                depths[name] = 0 if seen_blocks else count
        return depths
    layers = [
        (name, [pn for pn, _ in m.named_parameters(recurse=False)])
        for name, m in model.named_modules()
    ]
    layers = [(name, pns) for name, pns in layers if pns]
    return {
        f"{name}.{pn}" if name else pn: len(layers) - 1 - d
        for d, (name, pns) in enumerate(layers)
        for pn in pns
    }


def _expand(pattern: str) -> list[str]:
    """``model.layers.0-2`` -> ``model.layers.0``, ``model.layers.1``, ``model.layers.2``: a
    dot-separated part ``a-b`` stands for every integer from a to b."""
    parts = pattern.split(".")
    for i, part in enumerate(parts):
        m = re.fullmatch(r"(\d+)-(\d+)", part)
        if m:
            lo, hi = int(m.group(1)), int(m.group(2))
            return [
                q
                for k in range(lo, hi + 1)
                for q in _expand(".".join([*parts[:i], str(k), *parts[i + 1 :]]))
            ]
    return [pattern]


def matching(model: nn.Module, names: list[str], pattern: str) -> list[str]:
    """Parameter names chosen by ``pattern``: shell-style (fnmatch) on the full name, or a module
    name (``model.layers.3`` covers its parameters), with ``a-b`` ranges of block numbers;
    ``embeddings`` names the input embeddings (and tied output embeddings)."""
    if pattern == "embeddings":
        get = getattr(model, "get_input_embeddings", None)
        modules = [get()] if callable(get) and get() is not None else []
        modules = modules or [m for m in model.modules() if isinstance(m, nn.Embedding)]
        ids = {id(p) for m in modules for p in m.parameters()}
        return [n for n, p in model.named_parameters() if id(p) in ids]
    hits: list[str] = []
    for pat in _expand(pattern):
        hits += [n for n in names if fnmatch.fnmatchcase(n, pat) or n.startswith(pat + ".")]
    return hits


@register("freeze", reference_url="https://arxiv.org/abs/1801.06146")
@dataclass(repr=False)  # keep Strategy.__repr__: only non-default fields
class Freeze(Strategy):
    """Train every layer on the first task, then only the chosen layers.

    The classic transfer-learning recipe applied to continual updates: what the early layers
    learned on earlier tasks is kept as it is, and later tasks only adapt the layers near the
    output, so fewer weights can drift. It trades plasticity for stability: a frozen layer cannot
    learn features the new task needs, so which layers to train depends on what changes between
    tasks. On permuted digits (a new pixel order per task) training only the output layer (the
    default) halves what new tasks reach, while training only the input layer
    (``last_k: 0, trainable: ["net.1.*"]``) forgets a third less than finetune at about the same
    average accuracy. Freezing sets ``requires_grad=False`` on every parameter
    that is not chosen, in ``before_task``; it never unfreezes one, so parameters the user or
    another strategy froze (progressive's earlier columns) stay frozen. Frozen parameters
    get no gradient, no weight decay and no optimizer state. A strategy that adds parameters
    afterwards (a new head, an adapter) decides their ``requires_grad`` itself.

    Args:
        last_k: Train only the last ``k`` layers, counted from the output. A layer is a module
            that owns parameters (a Linear, a convolution, a norm layer), so in an MLP
            ``last_k=1`` trains only the output layer. In a transformers model a layer is a
            transformer block: ``last_k=1`` trains the last block and what follows it (the final
            norm, an output head that is not tied to the input embeddings); the embeddings stay
            frozen unless a pattern names them. None: every layer stays trainable (to use
            ``lr_decay`` alone).
        trainable: Parameter-name patterns, matched against names as
            ``model.named_parameters()`` gives them: shell-style (``["net.4.*"]``), or a module's
            name for all its parameters (``model.layers.3``), with ranges of block numbers
            (``model.layers.0-9``); ``embeddings`` names the input embeddings. Matching
            parameters are trained too (in addition to the last ``last_k`` layers; set
            ``last_k=0`` to choose by pattern only). A pattern that matches nothing is an error.
        from_task: Index of the first task the freezing applies to. 1 (default): the first
            task trains the whole network, later tasks only the chosen layers. 0 also freezes
            during the first task (a pretrained model used as a fixed feature extractor).
        lr_decay: Layer-wise learning-rate decay for the trained layers: the layer at depth
            ``d`` from the output trains at ``lr * lr_decay**d``: the further a layer is from the
            output, the lower its learning rate (ULMFiT's discriminative fine-tuning, with
            decay 1/2.6 there). 1.0 turns it off.
            Applies from ``from_task`` on, like the freezing.

    Reference:
        Howard and Ruder, "Universal Language Model Fine-tuning for Text Classification" (2018):
        gradual unfreezing and discriminative (layer-wise) learning rates.
    """

    last_k: int | None = field(default=1, metadata={"ge": 0})
    trainable: list[str] = field(default_factory=list)
    from_task: int = field(default=1, metadata={"ge": 0})
    lr_decay: float = field(default=1.0, metadata={"gt": 0, "le": 1})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not all(self.trainable):
            raise ValueError(f"trainable must be a list of name patterns, got {self.trainable!r}")
        if self.last_k is None and self.trainable:
            raise ValueError(
                "trainable patterns with last_k=None (train everything) choose "
                "nothing; set last_k=0 to train only the matching parameters"
            )
        if self.last_k == 0 and not self.trainable:
            raise ValueError(
                "last_k=0 with no trainable patterns would freeze every parameter; "
                "give last_k >= 1 or trainable patterns"
            )

    def check(self, stream: Stream) -> None:
        super().check(stream)
        if self.from_task >= len(stream.tasks):
            raise Unsupported(
                f"strategy 'freeze' applies from task {self.from_task} (0-based), but the stream "
                f"has {len(stream.tasks)} task(s), so it would change nothing; set "
                "from_task=0 to freeze from the first task (e.g. a pretrained model's layers)"
            )

    def chosen(self, model: nn.Module) -> set[str]:
        """Names of the parameters that stay trainable."""
        depths = layer_depths(model)
        if self.last_k is None:
            return set(depths)
        names = {n for n, d in depths.items() if d < self.last_k}
        for pattern in self.trainable:
            hits = matching(model, list(depths), pattern)
            if not hits:
                few = ", ".join(list(depths)[:6])
                raise Unsupported(
                    f"freeze: trainable pattern {pattern!r} matches no parameter; "
                    f"the model's parameters are named like: {few}"
                )
            names.update(hits)
        return names

    def check_model(self, model: nn.Module) -> None:
        self.chosen(model)  # a pattern that matches nothing fails before training

    def setup(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        self.chosen(model)
        return model

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        if ctx.task_index >= self.from_task and self.last_k is not None:  # None: lr_decay only
            base = ctx.unwrap(model)
            keep = self.chosen(base)
            for name, p in base.named_parameters():
                if name not in keep:
                    p.requires_grad_(False)
        return model

    def param_groups(
        self, groups: list[dict[str, Any]], model: nn.Module, ctx: TaskContext
    ) -> list[dict[str, Any]]:
        if self.lr_decay == 1.0 or ctx.task_index < self.from_task:
            return groups
        depths = layer_depths(model)
        out = []
        for g in groups:  # split each incoming group by depth, keeping its own scale and keys
            by_depth: dict[int, dict[str, Any]] = {}
            for p, n in zip(g["params"], g["names"]):
                d = depths.get(n, 0)
                if d not in by_depth:
                    scale = float(g.get("lr_scale", 1.0)) * self.lr_decay**d
                    by_depth[d] = {**g, "params": [], "names": [], "lr_scale": scale}
                by_depth[d]["params"].append(p)
                by_depth[d]["names"].append(n)
            out.extend(by_depth[d] for d in sorted(by_depth))
        return out
