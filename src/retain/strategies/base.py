"""The strategy interface.

A strategy is a dataclass whose fields are its hyperparameters and whose learned state lives in
attributes ending in ``_``. It changes training only through hooks that *return* what they change;
it never calls ``backward()`` or ``optimizer.step()``: the loop owns those. All hooks are optional.

Order of calls for each task ``i`` (strategies are applied in list order at every hook)::

    setup(model, ctx) -> model                     once, before the first task (and on resume)
    before_task(model, ctx) -> model               grow a column, snapshot a teacher, freeze layers
    param_groups(groups, model, ctx) -> groups     per-group learning-rate scales (layer-wise decay)
    train_data(data, ctx) -> data                  what this task trains on (cumulative: all so far)
    for each batch:
        batch(batch, ctx) -> batch                 mix in replay samples
        loss(loss, out, batch, ctx) -> loss        add a penalty or a distillation term
        after_backward(model, ctx)                 gradient surgery on .grad (A-GEM)
        after_step(model, ctx)                     per-step bookkeeping (SI's path integral)
    after_task(model, ctx) -> model                Fisher, buffer update, merging

Why ten hooks rather than six: A-GEM must see gradients before the step and SI must see the
parameter change after it, and layer-wise learning rates must reach the optimizer. Each of those
is one narrow hook instead of access to the trainer's internals.

Resume contract: on resume the loop calls ``load_state_dict`` *before* ``setup``, so a strategy
that changes the model's structure (new columns, adapters) rebuilds the same structure from its
state in ``setup``; then the saved weights are loaded into it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from retain.binding import check_fields
from retain.errors import Unsupported

if TYPE_CHECKING:
    import torch
    from torch import nn

    from retain.data.stream import Stream, TensorData
    from retain.strategies.context import TaskContext

HOOKS = (
    "setup",
    "before_task",
    "param_groups",
    "train_data",
    "batch",
    "loss",
    "after_backward",
    "after_step",
    "after_task",
)


def fails_in_class_il(what: str) -> str:
    """The ``known_failures["class_il"]`` message of a method that protects old tasks by ``what``
    alone (regularisation, distillation)."""
    return (
        f"{what} alone does not prevent forgetting in class-incremental learning without "
        "replay or task labels (van de Ven et al. 2022); compose it with a rehearsal "
        "strategy (e.g. replay) or use the task_il setting"
    )


@dataclass
class Strategy:
    """Base class: every hook is a no-op. Subclass it, add fields, override hooks, register it."""

    name: ClassVar[str] = ""
    reference_url: ClassVar[str | None] = None
    #: Settings in which the method is known not to work, with the reason, shown once as a warning
    #: (not when a rehearsal strategy is composed with it, which is the usual remedy).
    known_failures: ClassVar[dict[str, str]] = {}
    #: Keeps or regenerates past data (replay, DER, A-GEM, generative replay, cumulative).
    rehearsal: ClassVar[bool] = False
    #: Objectives (``regression``, ``causal_lm``, ...) or settings (``task_il``, ...) in which the
    #: method cannot run or means nothing, with why and what to use instead. Unlike
    #: ``known_failures`` (a warning), :meth:`check` refuses these before anything trains.
    unsupported: ClassVar[dict[str, str]] = {}

    def __post_init__(self) -> None:
        """Checks every hyperparameter against its type and the bounds in its field's metadata
        (``field(default=1.0, metadata={"ge": 0})``); a subclass calls it first."""
        check_fields(self, error=ValueError)

    def check(self, stream: Stream) -> None:
        """Refuse a stream this strategy, with these hyperparameters, cannot serve.

        Called before the first step of the first run (and by ``setup`` where a strategy relies on
        it), so an inapplicable choice costs no training time. Raises
        :class:`~retain.errors.Unsupported` with one line: the strategy, why, what to use instead.
        The default refuses the objectives and settings listed in ``unsupported``; a strategy whose
        applicability depends on a hyperparameter overrides it (and calls ``super().check``).
        """
        for kind in (stream.objective, stream.setting):
            if kind in self.unsupported:
                what = "objective" if kind == stream.objective else "setting"
                raise Unsupported(
                    f"strategy '{self.name}' does not apply to this stream ({what} {kind}): "
                    f"{self.unsupported[kind]}"
                )

    def check_model(self, model: nn.Module) -> None:
        """Refuse a model this strategy cannot work on (its layers, its parameter names).

        Called before the first step of the first run on the freshly built model, like
        :meth:`check`; raises :class:`~retain.errors.Unsupported` with one line. It must not
        change ``model``. The default accepts every model.
        """
        return None

    def setup(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        return model

    def before_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        return model

    def param_groups(
        self, groups: list[dict[str, Any]], model: nn.Module, ctx: TaskContext
    ) -> list[dict[str, Any]]:
        return groups

    def train_data(self, data: TensorData, ctx: TaskContext) -> TensorData:
        return data

    def batch(self, batch: dict[str, torch.Tensor], ctx: TaskContext) -> dict[str, torch.Tensor]:
        return batch

    def loss(
        self, loss: torch.Tensor, out: Any, batch: dict[str, torch.Tensor], ctx: TaskContext
    ) -> torch.Tensor:
        return loss

    def after_backward(self, model: nn.Module, ctx: TaskContext) -> None:
        return None

    def after_step(self, model: nn.Module, ctx: TaskContext) -> None:
        return None

    def after_task(self, model: nn.Module, ctx: TaskContext) -> nn.Module:
        return model

    def stats(self) -> dict[str, Any]:
        """Numbers worth reporting after each task (buffer memory, parameter growth, ...)."""
        return {}

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Learned state: every public attribute whose name ends in ``_``. An attribute that has
        its own ``state_dict``/``load_state_dict`` (a buffer, a module) is saved through them."""
        return {
            k: v.state_dict() if _stateful(v) else v
            for k, v in vars(self).items()
            if k.endswith("_") and not k.startswith("_")
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            current = getattr(self, k, None)
            if _stateful(current):
                current.load_state_dict(v)
            else:
                setattr(self, k, v)

    # ------------------------------------------------------------------ description

    @classmethod
    def hparam_fields(cls) -> list[dataclasses.Field]:
        """Dataclass fields that are hyperparameters (learned state ends in ``_``)."""
        return [f for f in dataclasses.fields(cls) if not f.name.endswith("_")]

    def hparams(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in self.hparam_fields()}

    def non_default_hparams(self) -> dict[str, Any]:
        out = {}
        for f in self.hparam_fields():
            default = (
                f.default
                if f.default is not dataclasses.MISSING
                else (f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
            )
            if getattr(self, f.name) != default:
                out[f.name] = getattr(self, f.name)
        return out

    def spec(self) -> dict[str, Any]:
        return {"name": self.name, **self.hparams()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.non_default_hparams().items())
        return f"{type(self).__name__}({args})"

    @classmethod
    def summary(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""


def _stateful(value: Any) -> bool:
    return callable(getattr(value, "state_dict", None)) and callable(
        getattr(value, "load_state_dict", None)
    )


def overrides(strategy: Strategy, hook: str) -> bool:
    """Whether ``strategy`` implements ``hook`` (the loop skips hooks nobody implements)."""
    return getattr(type(strategy), hook) is not getattr(Strategy, hook)


def check_source(who: str, name: str, stream: Stream) -> None:
    """Strategy ``who``'s ``source`` names one of the stream's sources (``Stream.sources``) whose
    samples fit the tasks' batches (the same fields, shapes and dtypes); one line if not."""
    from retain.data.mixing import check_fits

    if name not in stream.sources:
        known = ", ".join(stream.sources) or "none"
        raise Unsupported(
            f"strategy '{who}': source '{name}' is not one of the stream's sources ({known}); "
            "name one of them, or leave source unset"
        )
    task = stream.tasks[0]
    check_fits(task.train, stream.sources[name], f"strategy '{who}': source '{name}'", task.name)
