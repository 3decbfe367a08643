"""Experiment trackers (TensorBoard, MLflow, Weights & Biases) through Accelerate's tracker API.

Opt-in with ``train.log_with``. The run logs, on one global step axis (optimizer steps summed
over the tasks trained so far): ``train/loss`` and ``train/lr`` every time the loop reads the
loss back, ``R/<task>`` (and ``R/avg_seen``) each time a row of R is filled, and
``metrics/<name>`` at the end. The settings go in as hyperparameters, flattened to dotted keys.

Trackers write only on the main process (Accelerate's ``on_main_process``). The run's record
(``result.json``) stays the source of truth; a tracker is a live view of it.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retain.errors import ConfigError

if TYPE_CHECKING:
    from retain.config import RunConfig, TrainConfig

# Tracker name -> (module that must import, what to install).
PACKAGES = {
    "tensorboard": ("tensorboard", "pip install 'retain[track]'"),
    "mlflow": ("mlflow", "pip install mlflow"),
    "wandb": ("wandb", "pip install wandb"),
}
LOGS = "logs"  # the default logging directory, inside the run directory


def names(train: TrainConfig) -> list[str]:
    """``train.log_with`` as a list without repeats (empty when tracking is off)."""
    wanted = train.log_with
    if wanted is None:
        return []
    wanted = [wanted] if isinstance(wanted, str) else list(wanted)
    return list(dict.fromkeys(wanted))


def check_installed(train: TrainConfig) -> None:
    """Refuse, before anything is written, a tracker whose package is missing.

    Examples:
        >>> from retain.config import TrainConfig
        >>> check_installed(TrainConfig())  # tracking off: nothing to check
    """
    for name in names(train):
        module, install = PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"train.log_with {name} needs the {module} package, which is not installed: "
                f"{install}"
            )


def logging_dir(train: TrainConfig, run_dir: Path | None) -> Path | None:
    """Where local trackers write: ``train.logging_dir``, else ``RUN/logs`` (``./logs`` for a
    run kept in memory); None when tracking is off."""
    if not names(train):
        return None
    if train.logging_dir is not None:
        return Path(train.logging_dir)
    return (run_dir if run_dir is not None else Path(".")) / LOGS


def accelerator_options(train: TrainConfig, run_dir: Path | None) -> dict[str, Any]:
    """The ``Accelerator(...)`` arguments that turn the trackers on (``{}`` when off)."""
    where = logging_dir(train, run_dir)
    if where is None:
        return {}
    from accelerate.utils import ProjectConfiguration

    return {
        "log_with": names(train),
        "project_config": ProjectConfiguration(project_dir=str(where), logging_dir=str(where)),
    }


def flat(values: Any, prefix: str = "") -> dict[str, Any]:
    """Nested settings as ``{"train.lr": 0.01, ...}`` with scalar values (lists as text), the
    form every tracker accepts for hyperparameters.

    Examples:
        >>> flat({"train": {"lr": 0.1, "hidden": [10, 10]}, "seed": None})
        {'train.lr': 0.1, 'train.hidden': '[10, 10]', 'seed': 'None'}
    """
    if isinstance(values, dict):
        out: dict[str, Any] = {}
        for k, v in values.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out
    key = prefix[:-1]
    if isinstance(values, (bool, int, float, str)):
        return {key: values}
    return {key: str(values)}


class Tracker:
    """Logs one run to the Accelerator's trackers; ``offset`` is the global step where the
    current task's training starts."""

    def __init__(self, acc: Any, lr: float, offset: int = 0) -> None:
        self.acc, self.lr, self.offset = acc, lr, offset

    @classmethod
    def start(cls, acc: Any, cfg: RunConfig, label: str, offset: int = 0) -> Tracker | None:
        """Open the trackers (``init_trackers``) of a run named ``label``; None when off."""
        wanted = names(cfg.train)
        if not wanted:
            return None
        project = cfg.name or "retain"
        options = {"mlflow": {"run_name": label}, "wandb": {"name": label}}
        acc.init_trackers(
            project,
            config=flat(cfg.to_dict()),
            init_kwargs={k: v for k, v in options.items() if k in wanted},
        )
        return cls(acc, cfg.train.lr, offset)

    def train_step(self, step: int, loss: float, factor: float) -> None:
        """The mean training loss since the last log, and the learning rate, at ``step`` of the
        task being trained."""
        self.acc.log({"train/loss": loss, "train/lr": self.lr * factor}, step=self.offset + step)

    def row(
        self, step: int, tasks: list[str], row: list[dict[str, Any]], metric: str, seen: int
    ) -> None:
        """A row of R just filled at global ``step``, after ``seen`` trained tasks."""
        values = {f"R/{t}": cell[metric] for t, cell in zip(tasks, row) if _number(cell[metric])}
        scores = [cell[metric] for cell in row[:seen] if _number(cell[metric])]
        if scores:
            values["R/avg_seen"] = sum(scores) / len(scores)
        self.acc.log(values, step=step)
        self.offset = step  # the next task's training starts where this row was taken
        self._flush()

    def end(self, step: int, metrics: dict[str, Any] | None) -> None:
        """The run's metrics at global ``step``, then close every tracker (their files are
        complete)."""
        values = {f"metrics/{k}": v for k, v in (metrics or {}).items() if _number(v)}
        if values:
            self.acc.log(values, step=step)
        # Not acc.end_training(): it would also end the process group, which the next run of a
        # comparison under a multi-process launch still needs.
        for t in self.acc.trackers:
            t.finish()
        self.acc.trackers.clear()

    def _flush(self) -> None:
        """Write TensorBoard's buffered events now: a run stopped later keeps what came before."""
        for t in self.acc.trackers:
            writer = getattr(t, "writer", None)
            if writer is not None:
                writer.flush()


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
