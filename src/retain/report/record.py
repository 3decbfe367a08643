"""Typed run records: what ``result.json`` holds, as dataclasses with a schema version.

A run record (``kind: "run"``, :class:`RunRecord`) holds one strategy's score matrices, metrics,
timing and provenance; a comparison (``kind: "compare"``, :class:`CompareRecord`) holds one run
record per strategy label. The JSON written by :meth:`RunRecord.to_dict` has the same keys and
meanings as every ``result.json`` retain has written, so scripts that read the file keep working.

Schema version 1 grew over time: records from before a key existed load with its default
(``split`` "test", ``hook_seconds`` 0, empty ``strategy_stats`` and learning-rate curves). A
record from a newer schema is refused with :class:`RecordVersionError` rather than half-read.

Only the standard library is imported, so reading a record never imports torch.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

from retain.errors import RecordVersionError, RunDirError

SCHEMA_VERSION = 1

Matrix = list[list[float]]


def _convert(tp: Any, value: Any, where: str = "") -> Any:
    """``value`` (parsed JSON) as type ``tp``: dataclasses are built, containers walked, and a
    value of the wrong kind (a string where R's rows should be) is a TypeError naming where it
    is, so a damaged or hand-edited file is refused in one line rather than failing later."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner[0], value, where) if len(inner) == 1 else value
    if dataclasses.is_dataclass(tp):
        _expect(isinstance(value, dict), "an object", value, where)
        return tp.from_dict(value)
    if origin is list:
        _expect(isinstance(value, (list, tuple)), "a list", value, where)
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _expect(isinstance(value, dict), "an object", value, where)
        _, item = typing.get_args(tp)
        return {k: _convert(item, v, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        _expect(
            isinstance(value, (int, float)) and not isinstance(value, bool),
            "a number",
            value,
            where,
        )
    elif tp in (int, str, bool):
        _expect(type(value) is tp, f"{'an' if tp is int else 'a'} {tp.__name__}", value, where)
    return value


def _expect(ok: bool, what: str, value: Any, where: str) -> None:
    if not ok:
        raise TypeError(f"{where or 'the record'}: expected {what}, got {type(value).__name__}")


def _from_dict(cls: Any, data: dict[str, Any]) -> Any:
    """Build dataclass ``cls`` from a JSON object; missing keys take the field defaults."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "extra"}
    kwargs = {name: _convert(hints[name], data[name], name) for name in known if name in data}
    if "extra" in {f.name for f in dataclasses.fields(cls)}:
        kwargs["extra"] = {k: v for k, v in data.items() if k not in known and k not in cls._FIXED}
    return cls(**kwargs)


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return value.to_dict()
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    return value


class _Part:
    """JSON round trip for the record's dataclasses: fields in order, ``_OMIT`` left out when
    ``None`` (keys that older writers only wrote when they had a value)."""

    _OMIT: ClassVar[frozenset[str]] = frozenset()
    _FIXED: ClassVar[frozenset[str]] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if f.name == "extra":
                out.update(value)
            elif not (value is None and f.name in self._OMIT):
                out[f.name] = _to_json(value)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        return _from_dict(cls, data)


@dataclass
class StreamInfo(_Part):
    """The stream a run was trained on (``class_names`` index the model's outputs)."""

    name: str | None = None
    setting: str | None = None
    objective: str | None = None
    n_outputs: int | None = None
    class_names: list[str] | None = None


@dataclass
class Metrics(_Part):
    """The summary metrics of one score matrix (:mod:`retain.eval.metrics`).

    A joint run has only ``avg_accuracy``; ``gap_to_joint`` exists in a comparison with joint
    training.
    """

    _OMIT: ClassVar[frozenset[str]] = frozenset({"gap_to_joint"})

    avg_accuracy: float
    bwt: float | None = None
    fwt: float | None = None
    forgetting: float | None = None
    plasticity: float | None = None
    plasticity_per_task: list[float] | None = None
    forgetting_per_task: list[float] | None = None
    gap_to_joint: float | None = None


@dataclass
class PerClass(_Part):
    """Per-class test counts and correct predictions, indexed ``[row][task][class]``."""

    counts: list[list[list[int]]]
    correct: list[list[list[int]]]


@dataclass
class TaskTiming(_Part):
    """One training step of a run (a task, or the single joint training)."""

    task: str
    steps: int | None = None
    samples: int | None = None
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    samples_per_s: float = 0.0
    # Strategies' work between tasks (Fisher passes, buffer selection, generator training).
    hook_seconds: float = 0.0
    tokens_per_s: float | None = None  # language models

    _OMIT: ClassVar[frozenset[str]] = frozenset({"tokens_per_s"})


@dataclass
class Timing(_Part):
    per_task: list[TaskTiming] = field(default_factory=list)
    train_seconds: float = 0.0
    hook_seconds: float = 0.0
    eval_seconds: float = 0.0
    samples_per_s: float = 0.0
    tokens_per_s: float | None = None  # language models

    _OMIT: ClassVar[frozenset[str]] = frozenset({"tokens_per_s"})


@dataclass
class Memory(_Part):
    _OMIT: ClassVar[frozenset[str]] = frozenset({"peak_rss_mb", "peak_cuda_mb"})

    peak_rss_mb: float | None = None
    peak_cuda_mb: float | None = None


@dataclass
class Params(_Part):
    after_task: list[int] = field(default_factory=list)


@dataclass
class Curves(_Part):
    """Per task: ``[step, training loss]`` and ``[step, learning-rate factor]`` pairs; with
    ``eval.every_steps``, ``eval`` holds per task the evaluations made while it trained
    (``{"step": s, "scores": [per task {metric: value}]}``, and ``"suites": {suite: {metric:
    value}}`` when the stream has evaluation suites)."""

    _OMIT: ClassVar[frozenset[str]] = frozenset({"eval"})

    loss: list[list[list[float]]] = field(default_factory=list)
    lr_factor: list[list[list[float]]] = field(default_factory=list)
    eval: list[list[dict[str, Any]]] | None = None


@dataclass
class EarlyStop(_Part):
    task: str
    best_val_loss: float | None = None
    stopped_at: int | None = None


@dataclass
class GuardTask(_Part):
    """What the regression guard did while one task trained (:mod:`retain.eval.guard`).

    ``limits``: per watched name its thresholds (``relative``, ``absolute``), ``baseline`` (the
    score before the task) and ``limit`` (the worst score that passes). ``checks``: every check,
    ``{"step", "scores": {name: {score: value}}, "failed": [names]}``, step 0 being the
    baselines. ``breaches``: each time a name went from passing to failing, ``{"step", "name",
    "baseline", "score", "limit"}``. ``stopped_at``/``restored_step`` (action ``stop``): the
    step training ended at, and the step whose weights were loaded back.
    """

    task: str
    metric: str = "loss"
    action: str = "warn"
    limits: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: list[dict[str, Any]] = field(default_factory=list)
    breaches: list[dict[str, Any]] = field(default_factory=list)
    stopped_at: int | None = None
    restored_step: int | None = None


@dataclass
class TrainSummary(_Part):
    optimizer: str | None = None
    lr: float | None = None
    batch_size: int | None = None
    epochs: int | None = None
    steps: int | None = None
    schedule: str | None = None


@dataclass
class Spread(_Part):
    """A run over several seeds (``seeds: [...]`` in the config): the record's scores, metrics
    and timings are means over the seeds; these are the sample standard deviations (n - 1), for
    every entry of R (``matrix_std``, ``None`` with one seed) and every metric that has one."""

    seeds: list[int] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)
    matrix_std: Matrix | None = None
    matrices_std: dict[str, Matrix] = field(default_factory=dict)
    metrics_std: dict[str, Any] = field(default_factory=dict)
    avg_per_seed: list[float | None] = field(default_factory=list)


@dataclass
class RunRecord(_Part):
    """One strategy's run: ``matrix`` is R (row 0 the model before training, ``initial``:
    "pretrained", or None for an untrained one; row i after task i, column j task j; a joint run has two rows),
    ``metrics`` is ``None`` until the run completes.
    """

    _OMIT: ClassVar[frozenset[str]] = frozenset(
        {"per_class", "data", "out_dir", "spread", "curriculum", "suites", "guard", "initial"}
    )
    _FIXED: ClassVar[frozenset[str]] = frozenset({"schema_version", "kind"})
    kind: ClassVar[str] = "run"

    name: str | None = None
    strategy: str = "run"
    strategies: list[dict[str, Any]] = field(default_factory=list)
    joint: bool = False
    initial: str | None = None  # None: "untrained"
    stream: StreamInfo = field(default_factory=StreamInfo)
    tasks: list[str] = field(default_factory=list)
    task_classes: list[list[int] | None] = field(default_factory=list)
    score: str = "accuracy"
    split: str = "test"
    higher_is_better: bool = True
    matrix: Matrix = field(default_factory=list)
    matrices: dict[str, Matrix] = field(default_factory=dict)
    per_class: PerClass | None = None
    metrics: Metrics | None = None
    metrics_by_score: dict[str, Metrics] = field(default_factory=dict)
    timing: Timing = field(default_factory=Timing)
    memory: Memory = field(default_factory=Memory)
    params: Params = field(default_factory=Params)
    strategy_stats: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    curves: Curves = field(default_factory=Curves)
    early_stopping: list[EarlyStop] = field(default_factory=list)
    # Per trained task with data mixing or a difficulty order: {"task", and "mix", "drawn",
    # "ratio", "phases" (each: "steps", "target", "drawn", "ratio") for a mix; "order",
    # "first_loss", "last_loss", "seconds" for an order}. Absent when no task had either.
    curriculum: list[dict[str, Any]] | None = None
    # Evaluation suites (held-out sets that are not tasks): per suite, per row of ``matrix``,
    # ``{score: value}``. Absent from records of streams without suites.
    suites: dict[str, list[dict[str, float]]] | None = None
    # The regression guard, per trained task; absent when the run had none.
    guard: list[GuardTask] | None = None
    warnings: list[str] = field(default_factory=list)
    seed: int | None = None
    train: TrainSummary | None = None
    versions: dict[str, str] = field(default_factory=dict)
    git_sha: str | None = None
    device: str | None = None
    num_processes: int = 1
    config: dict[str, Any] | None = None
    started: str | None = None
    finished: str | None = None
    status: str = "complete"
    # Written by ``retain run``: how the data was built and where the run directory is.
    data: dict[str, Any] | None = None
    out_dir: str | None = None
    # A run over several seeds: the spread across them (the values above are means).
    spread: Spread | None = None
    # Keys this version does not know (kept so a rewrite loses nothing).
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Whether the run finished: its status says so and its metrics were computed."""
        return self.status == "complete" and self.metrics is not None

    def to_dict(self) -> dict[str, Any]:
        out = {"schema_version": SCHEMA_VERSION, "kind": self.kind, **super().to_dict()}
        out["metrics"] = out["metrics"] or {}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        _check(data, cls.kind)
        data = dict(data)
        if not data.get("metrics"):  # older and incomplete records hold {} for "not computed"
            data["metrics"] = None
        if "curves" in data:
            data["curves"] = {"lr_factor": [], **data["curves"]}
        return _from_dict(cls, data)

    def matrix_std(self, key: str | None = None) -> Matrix | None:
        """The std over seeds of score matrix ``key`` (default: the run's score) of a run over
        several seeds, else ``None``."""
        if self.spread is None:
            return None
        key = key or self.score
        if key in self.spread.matrices_std:
            return self.spread.matrices_std[key]
        return self.spread.matrix_std if key == self.score else None

    @property
    def runs(self) -> dict[str, RunRecord]:
        """``{strategy: self}``: a run reads like a comparison of one."""
        return {self.strategy or "run": self}


@dataclass
class CompareRecord(_Part):
    """Several strategies trained on the same stream from the same initial weights."""

    _FIXED: ClassVar[frozenset[str]] = frozenset({"schema_version", "kind"})
    kind: ClassVar[str] = "compare"

    runs: dict[str, RunRecord] = field(default_factory=dict)
    name: str | None = None
    tasks: list[str] = field(default_factory=list)
    score: str = "accuracy"
    split: str = "test"
    higher_is_better: bool = True
    stream: StreamInfo = field(default_factory=StreamInfo)
    seed: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        body = super().to_dict()
        runs = body.pop("runs")
        order = ("name", "tasks", "score", "split", "higher_is_better", "stream")
        out = {"schema_version": SCHEMA_VERSION, "kind": self.kind}
        out.update({k: body.pop(k) for k in order})
        return {**out, "runs": runs, **body}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareRecord:
        _check(data, cls.kind)
        return _from_dict(cls, data)


Record = RunRecord | CompareRecord


def _check(data: Any, kind: str) -> None:
    if not isinstance(data, dict):
        raise RunDirError(f"a {kind} record must be a JSON object, got {type(data).__name__}")
    version = data.get("schema_version", 1)
    if not isinstance(version, int) or version > SCHEMA_VERSION:
        raise RecordVersionError(
            f"result.json has schema version {version}; this retain reads up to version "
            f"{SCHEMA_VERSION}: upgrade retain to read it"
        )
    if data.get("kind", "run") != kind:
        raise RunDirError(f"expected a '{kind}' record, got kind '{data.get('kind')}'")


def record_from_dict(data: Any) -> Record:
    """A run or comparison record from parsed ``result.json`` (checked, defaults filled).

    Examples:
        >>> rec = record_from_dict({"schema_version": 1, "kind": "run", "strategy": "finetune"})
        >>> rec.strategy, rec.split, rec.complete
        ('finetune', 'test', False)
    """
    kind = data.get("kind", "run") if isinstance(data, dict) else "run"
    if kind not in ("run", "compare"):
        _check(data, kind)  # a newer schema explains an unknown kind better than the kind does
        raise RunDirError(f"unknown record kind '{kind}'; expected 'run' or 'compare'")
    return (CompareRecord if kind == "compare" else RunRecord).from_dict(data)


def load_record(path: str | Path) -> Record:
    """Read a ``result.json``; a missing, invalid or newer-schema file is a :class:`RunDirError`."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"'{path}' not found; give a run directory written by retain run/compare")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunDirError(f"'{path}' is not valid JSON ({e.msg} at line {e.lineno})") from None
    try:
        return record_from_dict(data)
    except (TypeError, ValueError, AttributeError) as e:
        raise RunDirError(f"'{path}' is not a retain run record ({e})") from None
