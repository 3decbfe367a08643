"""What a model is trained and scored on: classification, regression, causal language modelling;
the losses strategies add (distillation); and which way each score is better.

An objective knows how to call the model on a batch, the training loss, and the summable
statistics an evaluation accumulates over batches (so scores are exact over a whole test set and
can be all-reduced across processes before they are divided).

Task identity: a model with ``task_aware = True`` is called as ``model(x, task=ids)`` in the
``task_il`` setting, and with ``task=None`` otherwise, in training as at evaluation
(``task_known``): a task-aware model cannot read the answer in class-IL or domain-IL, and it is
trained the way it is scored (routing replayed samples by their stored task sent them to frozen
columns that evaluation never consults, so replay taught the model nothing).

Task-incremental masking: in the ``task_il`` setting the logits of classes outside each sample's
task are set to the most negative float before the loss and the argmax (``mask`` below, one row
per sample, looked up from the sample's task index). The model's raw logits are left alone, so
strategies that store or distil logits see them unmasked.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

#: The one table of score directions: whether a higher value of each score is better. Metrics
#: (BWT, forgetting, the gap to joint) and reports orient every score by it.
HIGHER_IS_BETTER = {
    "accuracy": True,
    "task_il_accuracy": True,
    "mse": False,
    "r2": True,
    "loss": False,
    "perplexity": False,
    "token_accuracy": True,
}


def task_known(setting: str) -> bool:
    """Whether task-aware models get the task ids (see the module docstring)."""
    return setting == "task_il"


def _task_aware(model: nn.Module) -> bool:
    inner = getattr(model, "module", model)
    return bool(getattr(model, "task_aware", False) or getattr(inner, "task_aware", False))


def _task_kwarg(model: nn.Module, batch: dict[str, torch.Tensor], known: bool) -> dict[str, Any]:
    """``{"task": ids}`` (None where the task is not known) for a task-aware model given
    keyword inputs (tokenised text); nothing for other models, whose signature lacks it."""
    if not _task_aware(model):
        return {}
    return {"task": batch.get("task") if known else None}


def logits_of(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


def masked(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return logits
    return logits.masked_fill(~mask, torch.finfo(logits.dtype).min)


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    temperature: float,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, averaged over rows.

    The last dimension holds the outputs; ``valid`` (the leading dimensions' shape) selects the
    rows that count (tokens that are not padding). T^2 keeps the gradient's scale independent of
    T (Hinton et al. 2015). A teacher logit of -inf (a class the teacher never predicts, as
    generative replay masks them) is a zero probability and contributes nothing.
    """
    p = F.softmax(teacher.float() / temperature, -1)
    log_q = F.log_softmax(student.float() / temperature, -1)
    kl = (torch.xlogy(p, p) - p * log_q).sum(-1)
    if valid is None:
        return kl.mean() * temperature**2
    valid = valid.float()
    return (kl * valid).sum() / valid.sum().clamp_min(1.0) * temperature**2


class Classification:
    name = "classification"
    default_metric = "accuracy"
    metrics = ("accuracy", "task_il_accuracy")

    def __init__(self, n_outputs: int) -> None:
        self.n_outputs = n_outputs

    def forward(
        self, model: nn.Module, batch: dict[str, torch.Tensor], task_known: bool = True
    ) -> Any:
        if "input_ids" in batch:  # tokenised text: a transformers sequence classifier
            kwargs = {
                "input_ids": batch["input_ids"],
                "attention_mask": batch.get("attention_mask"),
            }
            return model(**kwargs, **_task_kwarg(model, batch, task_known))
        if _task_aware(model):
            return model(batch["x"], task=batch["task"] if task_known else None)
        return model(batch["x"])

    def loss(
        self,
        out: Any,
        batch: dict[str, torch.Tensor],
        mask: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        return F.cross_entropy(masked(logits_of(out), mask), batch["y"], reduction=reduction)

    def stats(
        self,
        out: Any,
        batch: dict[str, torch.Tensor],
        mask: torch.Tensor | None,
        task_mask: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        """``mask``: applied to the primary accuracy (task_il). ``task_mask``: the task-aware view
        reported beside class-IL accuracy."""
        logits = logits_of(out).float()
        y = batch["y"]
        pred = masked(logits, mask).argmax(-1)
        correct = pred == y
        s = {
            "n": torch.tensor(float(len(y)), device=y.device),
            "correct": correct.sum().float(),
            "class_n": torch.bincount(y, minlength=self.n_outputs).float(),
            "class_correct": torch.bincount(y[correct], minlength=self.n_outputs).float(),
            "loss_sum": F.cross_entropy(masked(logits, mask), y, reduction="sum"),
        }
        if task_mask is not None:
            s["task_correct"] = (masked(logits, task_mask).argmax(-1) == y).sum().float()
        return s

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, Any]:
        n = max(float(s["n"]), 1.0)
        out: dict[str, Any] = {
            "accuracy": float(s["correct"]) / n,
            "loss": float(s["loss_sum"]) / n,
        }
        if "task_correct" in s:
            out["task_il_accuracy"] = float(s["task_correct"]) / n
        out["class_counts"] = [int(v) for v in s["class_n"].tolist()]
        out["class_correct"] = [int(v) for v in s["class_correct"].tolist()]
        return out


class Regression:
    name = "regression"
    default_metric = "mse"
    metrics = ("mse", "r2")

    def forward(
        self, model: nn.Module, batch: dict[str, torch.Tensor], task_known: bool = True
    ) -> Any:
        if _task_aware(model):
            return model(batch["x"], task=batch["task"] if task_known else None)
        return model(batch["x"])

    @staticmethod
    def _pred(out: Any, y: torch.Tensor) -> torch.Tensor:
        pred = logits_of(out)
        return pred.reshape(y.shape) if pred.numel() == y.numel() else pred

    def loss(
        self,
        out: Any,
        batch: dict[str, torch.Tensor],
        mask: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        y = batch["y"]
        err = F.mse_loss(self._pred(out, y).float(), y.float(), reduction="none")
        if reduction == "none":
            return err.reshape(len(y), -1).mean(1)
        return err.mean() if reduction == "mean" else err.sum()

    def stats(
        self,
        out: Any,
        batch: dict[str, torch.Tensor],
        mask: torch.Tensor | None,
        task_mask: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        y = batch["y"].float()
        pred = self._pred(out, batch["y"]).float()
        return {
            "n": torch.tensor(float(y.numel()), device=y.device),
            "sse": ((pred - y) ** 2).sum(),
            "sum_y": y.sum(),
            "sum_y2": (y**2).sum(),
        }

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, Any]:
        n = max(float(s["n"]), 1.0)
        sse = float(s["sse"])
        sst = float(s["sum_y2"]) - float(s["sum_y"]) ** 2 / n
        return {"mse": sse / n, "r2": 1.0 - sse / sst if sst > 0 else float("nan"), "loss": sse / n}


class CausalLM:
    """A Hugging Face causal LM: ``model(input_ids, attention_mask, labels)`` returns ``.loss``."""

    name = "causal_lm"
    default_metric = "loss"
    metrics = ("loss", "perplexity", "token_accuracy")

    def forward(
        self, model: nn.Module, batch: dict[str, torch.Tensor], task_known: bool = True
    ) -> Any:
        kwargs = {k: batch[k] for k in ("input_ids", "attention_mask", "labels") if k in batch}
        return model(**kwargs, **_task_kwarg(model, batch, task_known))

    def loss(
        self,
        out: Any,
        batch: dict[str, torch.Tensor],
        mask: torch.Tensor | None = None,
        reduction: str = "mean",
    ) -> torch.Tensor:
        if reduction == "mean" and getattr(out, "loss", None) is not None:
            return out.loss
        logits, labels = out.logits[:, :-1].float(), batch["labels"][:, 1:]
        tok = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
        valid = (labels != -100).float()
        if reduction == "none":
            return (tok * valid).sum(1) / valid.sum(1).clamp_min(1.0)
        return tok.sum() / valid.sum().clamp_min(1.0)

    def stats(
        self,
        out: Any,
        batch: dict[str, torch.Tensor],
        mask: torch.Tensor | None,
        task_mask: torch.Tensor | None,
    ) -> dict[str, torch.Tensor]:
        logits, labels = out.logits[:, :-1].float(), batch["labels"][:, 1:]
        valid = labels != -100
        nll = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="sum")
        correct = ((logits.argmax(-1) == labels) & valid).sum().float()
        return {"n": valid.sum().float(), "nll": nll, "correct": correct}

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, Any]:
        import math

        n = max(float(s["n"]), 1.0)
        loss = float(s["nll"]) / n
        return {
            "loss": loss,
            "perplexity": math.exp(min(loss, 50.0)),
            "token_accuracy": float(s["correct"]) / n,
        }


def make_objective(kind: str, n_outputs: int | None) -> Classification | Regression | CausalLM:
    if kind == "classification":
        if not n_outputs:
            raise ValueError("classification needs n_outputs")
        return Classification(n_outputs)
    if kind == "regression":
        return Regression()
    if kind == "causal_lm":
        return CausalLM()
    raise ValueError(f"unknown objective {kind!r}")
