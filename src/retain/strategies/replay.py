"""Experience Replay: train every batch together with samples drawn from a memory of past data."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from retain.errors import Unsupported
from retain.strategies import register
from retain.strategies._buffer import POLICIES, Buffer
from retain.strategies.base import Strategy, check_source

if TYPE_CHECKING:
    from torch import nn

    from retain.data.stream import Stream
    from retain.strategies.context import TaskContext


@register("replay", reference_url="https://arxiv.org/abs/1902.10486")
@dataclass(repr=False)  # keep Strategy.__repr__: it shows only non-default fields
class Replay(Strategy):
    """Experience Replay: mix samples kept from earlier data into every training batch.

    A fixed-size memory keeps a random subset of every sample trained on so far. Each incoming
    batch is extended with samples drawn from the memory (appended after the incoming ones and
    marked with a boolean ``batch["replayed"]``, kept on the CPU so that the rows a later
    strategy offers to its memory are counted without a read-back from the GPU), and the ordinary loss is taken over the whole
    batch; then the incoming samples are offered to the memory (samples another strategy already
    marked as replayed are not). For language models this is the "mix 30-40% general data into the
    domain data" recipe: keep general examples in the memory and set ``ratio: 0.3``.

    Args:
        size: Capacity of the memory in samples. Memory use is reported per task in
            ``strategy_stats`` (``buffer_bytes``).
        policy: Which samples the memory keeps. ``reservoir``: a uniform random subset of every
            sample seen so far, so earlier tasks keep a share proportional to their size.
            ``class_balanced``: the same number of samples per class where possible (use it when
            classes or tasks have very different sizes); needs integer labels.
        ratio: Fraction of each training batch taken from the memory, in [0, 1). 0.5 adds as many
            memory samples as incoming ones (mammoth's setting); 0.3 gives a 70/30 mix.
        batch_size: Number of memory samples added to each batch; overrides ``ratio`` when set
            (mammoth's ``minibatch_size``). Under several processes it is per process.
        source: A fixed memory instead of a reservoir: ``size`` samples drawn once (with the
            run's seed) from the stream's source of this name (``Stream.sources``, e.g. general
            English text while the tasks are Spanish), replayed at ``ratio`` and never displaced
            by new data. A reservoir over a stream whose first task is general text ends up
            holding mostly the later tasks' samples; this keeps the general data as it was.

    Reference: Chaudhry et al., "On Tiny Episodic Memories in Continual Learning" (2019);
    mammoth's ``models/er.py``.
    """

    size: int = field(default=500, metadata={"ge": 1})
    policy: str = "reservoir"
    ratio: float = field(default=0.5, metadata={"ge": 0, "lt": 1})
    batch_size: int | None = field(default=None, metadata={"ge": 0})
    source: str | None = None

    rehearsal: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.policy not in POLICIES:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}")
        self.buffer_ = Buffer(self.size, self.policy)

    def check(self, stream: Stream) -> None:
        super().check(stream)
        if self.policy == "class_balanced" and stream.objective != "classification":
            raise Unsupported(
                "strategy 'replay' with policy 'class_balanced' needs class labels, and this "
                f"stream's objective is {stream.objective}; use policy=reservoir (the default)"
            )
        if self.source is not None:
            check_source("replay", self.source, stream)

    def setup(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        self.check(ctx.stream)
        return model

    def _n_memory(self, n_incoming: int) -> int:
        """Memory samples to add to a batch of ``n_incoming`` so they make ``ratio`` of it."""
        if self.batch_size is not None:
            return self.batch_size
        return round(n_incoming * self.ratio / (1.0 - self.ratio))

    def batch(self, batch: dict[str, torch.Tensor], ctx: TaskContext) -> dict[str, torch.Tensor]:
        incoming = {k: v for k, v in batch.items() if k != "replayed"}
        n, device = len(batch["task"]), batch["task"].device
        m = self._n_memory(n)
        out = batch
        if self.source is not None and not len(self.buffer_):
            self._fill(ctx)
        if len(self.buffer_) and m > 0:
            # Draw before adding (mammoth): a batch never replays its own samples.
            mem = self.buffer_.draw(m, ctx, device)
            if self.source is not None:  # source samples train the task at hand
                mem["task"] = torch.full_like(mem["task"], ctx.task_index)
            missing = incoming.keys() - mem.keys()
            if missing:
                raise ValueError(f"replay: the memory has no {sorted(missing)} for this batch")
            out = {k: torch.cat([v, mem[k]]) for k, v in incoming.items()}
            was = batch.get("replayed")
            if was is not None and was.device.type != "cpu":  # another library's mark
                was = was.cpu()
            out["replayed"] = torch.cat(
                [
                    was if was is not None else torch.zeros(n, dtype=torch.bool),
                    torch.ones(len(mem["task"]), dtype=torch.bool),
                ]
            )
        if self.source is None:
            self.buffer_.offer(batch, ctx)
        return out

    def _fill(self, ctx: TaskContext) -> None:
        """The fixed memory: ``size`` samples of the source, chosen with the run's seed (the
        same on every process)."""
        data = ctx.stream.sources[self.source]
        g = torch.Generator().manual_seed(ctx.seed)
        pick = torch.randperm(len(data), generator=g)[: self.size].sort().values
        rows = data.batch(pick)
        rows["task"] = torch.full((len(pick),), ctx.task_index, dtype=torch.long)
        self.buffer_.add(rows, g)  # fewer samples than the capacity: every one is kept

    def stats(self) -> dict[str, Any]:
        return self.buffer_.stats()
