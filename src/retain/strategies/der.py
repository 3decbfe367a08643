"""Dark Experience Replay (DER, DER++): replay past samples and match the logits they had."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

from retain.strategies import register
from retain.strategies._buffer import Buffer
from retain.strategies.base import Strategy

if TYPE_CHECKING:
    from torch import nn

    from retain.strategies.context import TaskContext


@register("der", reference_url="https://arxiv.org/abs/2004.07211")
@dataclass(repr=False)  # keep Strategy.__repr__: it shows only non-default fields
class DER(Strategy):
    """Dark Experience Replay: keep past samples with the model's outputs and match them later.

    A reservoir memory keeps a random subset of every training sample seen, together with the
    logits the model gave it when it was trained on (its "dark knowledge"). At each step a batch
    drawn from the memory is passed through the current model, and the squared distance between
    the new and the stored logits is added to the loss, so old answers change only slowly.
    DER++ (``beta > 0``) also adds the ordinary loss on a second, independent memory batch with
    its stored labels, which corrects stored logits that were wrong. The ``derpp`` preset holds
    mammoth's DER++ setting.

    Args:
        size: Capacity of the memory in samples (each kept with its input, label, task and
            logits). Memory use is reported per task in ``strategy_stats`` (``buffer_bytes``).
        alpha: Weight of the logit-matching term, a mean squared error over samples and outputs
            (mammoth's ``F.mse_loss``, so it does not grow with the number of outputs). Larger
            values hold past outputs more firmly. Default 0.5: the median of mammoth's 12 tuned
            DER settings (0.2-1.0 over 4 benchmarks x 3 buffer sizes). A model trained only
            briefly on each task (its stored logits still unsure) needs a larger value.
        beta: Weight of the loss on stored labels of a second memory batch (DER++). 0 is plain
            DER; mammoth's tuned values are 0.5-1.0.
        batch_size: Memory samples per draw (each of the one or two draws per step); default:
            the training batch size (mammoth's ``minibatch_size``). Per process.
        top_k: Causal language models: per token, only the ``top_k`` largest logits are stored
            (with their token ids), and the current model's logits for those tokens are matched
            to them. Every logit of every token would take ``size x block x vocabulary`` floats:
            25 GB for 500 blocks of 128 tokens over a 49k vocabulary; with ``top_k=32`` it is
            25 MB. The tokens the model found likely carry nearly all of its distribution. Not
            used for other objectives, whose logits are stored whole.

    Reference: Buzzega et al., "Dark Experience for General Continual Learning: a Strong,
    Simple Baseline", NeurIPS 2020; mammoth's ``models/der.py`` and ``models/derpp.py``.
    """

    size: int = field(default=500, metadata={"ge": 1})
    alpha: float = field(default=0.5, metadata={"ge": 0})
    beta: float = field(default=0.0, metadata={"ge": 0})
    batch_size: int | None = field(default=None, metadata={"ge": 1})
    top_k: int = field(default=32, metadata={"ge": 1})

    rehearsal: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.buffer_ = Buffer(self.size, "reservoir")
        self._fuse = False

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        # Batch norm makes a sample's output depend on the rest of its batch: then the two draws
        # get separate forwards (as mammoth's); otherwise one forward over both (same outputs).
        self._fuse = not any(isinstance(m, _BatchNorm) for m in model.modules())
        return model

    def _draw(self, ctx: TaskContext, device: torch.device) -> dict[str, torch.Tensor]:
        return self.buffer_.draw(self.batch_size or ctx.batch_size, ctx, device)

    def loss(
        self, loss: torch.Tensor, out: Any, batch: dict[str, torch.Tensor], ctx: TaskContext
    ) -> torch.Tensor:
        logits = ctx.logits(out)
        device = logits.device
        # mammoth's order: draw from the memory, take the loss, then store the current batch.
        if len(self.buffer_):
            a = self._draw(ctx, device)
            b = self._draw(ctx, device) if self.beta > 0 else None  # independent (DER++)
            if b is not None and self._fuse and ctx.objective.name != "causal_lm":
                both = ctx.logits(ctx.forward(ctx.model, {k: torch.cat([a[k], b[k]]) for k in a}))
                out_a, out_b = both.split([len(a["task"]), len(b["task"])])
            else:
                out_a = ctx.forward(ctx.model, a)
                out_b = ctx.forward(ctx.model, b) if b is not None else None
            loss = loss + self.alpha * self._match(ctx.logits(out_a), a)
            if b is not None:
                loss = loss + self.beta * ctx.task_loss(out_b, b)
        # Store raw logits (no task-IL mask) of the incoming samples only, as trained on now.
        self.buffer_.offer(batch, ctx, **self._stored(logits.detach()))
        return loss

    def _stored(self, logits: torch.Tensor) -> dict[str, torch.Tensor]:
        if logits.dim() < 3:  # one row of outputs per sample: kept whole
            return {"logits": logits}
        k = min(self.top_k, logits.shape[-1])
        values, index = logits.topk(k, dim=-1)  # per token (see top_k)
        return {"logit_values": values, "logit_index": index.to(torch.int32)}

    @staticmethod
    def _match(logits: torch.Tensor, stored: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean squared distance to the stored logits; per token over the stored top-k, and only
        on attended tokens, for sequences."""
        if "logits" in stored:
            return F.mse_loss(logits.float(), stored["logits"].float())
        now = logits.gather(-1, stored["logit_index"].long()).float()
        err = (now - stored["logit_values"].float()).square().mean(-1)
        mask = stored.get("attention_mask")
        if mask is None:
            return err.mean()
        mask = mask.float()
        return (err * mask).sum() / mask.sum().clamp_min(1.0)

    def stats(self) -> dict[str, Any]:
        return self.buffer_.stats()
