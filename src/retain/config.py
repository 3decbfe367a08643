"""Run configuration: dataclasses, YAML files and dotted command-line overrides.

A config file mirrors :class:`RunConfig`::

    seed: 0
    stream: {dataset: mnist, scenario: split, n_tasks: 5}
    model: {name: mlp, hidden: [400, 400]}
    train: {epochs: 1, batch_size: 128, optimizer: adam, lr: 0.001}
    strategies: [{name: finetune}]

Every key is checked: an unknown key is an error with a "did you mean" suggestion, and every value
is checked against the field's type. Overrides use dotted paths (``train.lr=3e-5``,
``strategies.0.lam=50``); their values are parsed as YAML. This module imports no torch, so the
command line answers ``--help`` quickly.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from retain.errors import ConfigError, did_you_mean

SCENARIOS = ("split", "permuted", "rotated", "iid", "prior_shift", "by_column", "files")
# Which stream fields each scenario reads; setting any other scenario field is an error, so a typo
# in the scenario name or a misplaced parameter never goes silently unused.
SCENARIO_FIELDS: dict[str, tuple[str, ...]] = {
    "split": ("n_tasks", "classes_per_task", "class_order", "classes", "setting"),
    "permuted": ("n_tasks", "setting"),
    "rotated": ("n_tasks", "angles", "max_angle", "setting"),
    "iid": ("n_tasks", "classes", "setting"),
    "prior_shift": ("proportions", "classes", "samples_per_task", "setting"),
    "by_column": ("column", "groups", "classes", "setting"),
    "files": ("files", "setting"),
}
_SCENARIO_ONLY = {f for fs in SCENARIO_FIELDS.values() for f in fs} - {"setting"}


def _help(text: str, **kw: Any) -> Any:
    return field(metadata={"help": text}, **kw)


@dataclass
class StreamConfig:
    """Where the data comes from and how it is cut into tasks."""

    dataset: str | None = _help(
        "built-in name (digits, diabetes, mnist, fashion_mnist), a file (.csv, .parquet, .npz), "
        "or a Hugging Face datasets folder saved with save_to_disk (default: digits; not used by "
        "scenario files). A relative path in a config file is relative to the config file's folder",
        default=None,
    )
    path: str | None = _help("where the files of a built-in dataset are (else RETAIN_DATA); "
                             "relative to the config file's folder", default=None)
    target: str | None = _help("target column of a table or HF dataset", default=None)
    input: str | None = _help("input column of an HF dataset (default: all non-target columns)", default=None)
    features: list[str] | None = _help("feature columns of a table (default: all but target/column)", default=None)
    objective: Literal["auto", "classification", "regression"] = _help(
        "auto: classification for integer targets, regression for float targets", default="auto"
    )
    scenario: Literal["split", "permuted", "rotated", "iid", "prior_shift", "by_column", "files"] = _help(
        "how tasks are made: split (class groups), permuted, rotated, iid (random chunks), "
        "prior_shift (class proportions), by_column (a column's values), files (one file per task)",
        default="split",
    )
    setting: Literal["auto", "class_il", "task_il", "domain_il"] = _help(
        "class_il: one head over all classes; task_il: other tasks' logits masked; domain_il: "
        "labels mapped within the task. auto: class_il for split, domain_il for permuted/rotated",
        default="auto",
    )
    n_tasks: int | None = _help("number of tasks (split: default 5; permuted/rotated: 10; iid: 2)", default=None)
    classes_per_task: int | None = _help("split: classes in each task (default: classes / n_tasks)", default=None)
    class_order: list[int] | None = _help("split: order in which classes arrive", default=None)
    classes: list[int] | None = _help("keep only these classes (e.g. 3 classes for prior_shift)", default=None)
    proportions: list[list[float]] | None = _help(
        "prior_shift: class proportions per task, e.g. [[0.8,0.1,0.1],[0.1,0.9,0.0]]", default=None
    )
    samples_per_task: int | None = _help("prior_shift: training samples per task", default=None)
    column: str | None = _help("by_column: the column whose values define the tasks", default=None)
    groups: list[Any] | None = _help("by_column: task order as values or lists of values", default=None)
    files: list[str] | None = _help(
        "files: one data file per task, in order (D1, then D2, ...); relative paths in a config "
        "file are relative to the config file's folder", default=None)
    angles: list[float] | None = _help("rotated: angle of each task in degrees", default=None)
    max_angle: float = _help("rotated: angles drawn uniformly from [0, max_angle)", default=180.0)
    validation: float = _help("fraction of each task's training data held out for validation", default=0.0)
    test_fraction: float = _help("fraction held out as test set when the source has none", default=0.2)
    standardize: bool | None = _help("standardise features (default: yes for tables, no for images)", default=None)
    limit_train: int | None = _help("use at most this many training samples (quick runs)", default=None)
    limit_test: int | None = _help("use at most this many test samples (quick runs)", default=None)

    def __post_init__(self) -> None:
        if not 0.0 <= self.validation < 1.0:
            raise ConfigError(f"stream.validation must be in [0, 1), got {self.validation}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"stream.test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.n_tasks is not None and self.n_tasks < 1:
            raise ConfigError(f"stream.n_tasks must be >= 1, got {self.n_tasks}")
        # Scenario 'files' reads its files only, so the resolved config names no dataset (configs
        # written by older versions say 'dataset: digits' there; it is dropped, not an error).
        self.dataset = None if self.scenario == "files" else self.dataset or "digits"
        defaults = StreamConfig.__dataclass_fields__
        used = SCENARIO_FIELDS[self.scenario]
        for name in sorted(_SCENARIO_ONLY - set(used)):
            d = defaults[name].default
            if getattr(self, name) != d:
                raise ConfigError(
                    f"stream.{name} is not used by scenario '{self.scenario}' "
                    f"(it reads: {', '.join(u for u in used if u != 'setting') or 'nothing'}); remove it"
                )
        if self.scenario == "prior_shift" and not self.proportions:
            raise ConfigError("stream.proportions is required for scenario 'prior_shift', "
                              "e.g. proportions: [[0.8, 0.1, 0.1], [0.1, 0.9, 0.0]]")
        if self.scenario == "files" and not self.files:
            raise ConfigError("stream.files is required for scenario 'files', e.g. files: [d1.csv, d2.csv]")
        if self.scenario == "by_column" and not self.column:
            raise ConfigError("stream.column is required for scenario 'by_column'")


@dataclass
class ModelConfig:
    """The network. Input size and number of outputs are read from the stream."""

    name: Literal["mlp", "cnn", "hf"] = _help("mlp, cnn, or hf (a Hugging Face causal LM)", default="mlp")
    hidden: list[int] = _help("mlp: hidden layer widths", default_factory=lambda: [100, 100])
    activation: Literal["relu", "gelu", "tanh"] = _help("mlp/cnn: activation", default="relu")
    dropout: float = _help("mlp: dropout after each hidden layer", default=0.0)
    init: Literal["default", "xavier"] = _help(
        "weight initialisation: torch's default, or xavier (uniform weights, zero biases, as "
        "mammoth's MNISTMLP)", default="default")
    channels: list[int] = _help("cnn: channels of each conv block", default_factory=lambda: [32, 64])
    pretrained: str | None = _help("hf: local model folder (or hub id when online)", default=None)
    hf_config: dict[str, Any] | None = _help("hf: build a fresh model from this config dict", default=None)

    def __post_init__(self) -> None:
        if any(h < 1 for h in self.hidden):
            raise ConfigError(f"model.hidden widths must be >= 1, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.name == "hf" and not (self.pretrained or self.hf_config):
            raise ConfigError("model.name 'hf' needs model.pretrained (a folder) or model.hf_config")


@dataclass
class TrainConfig:
    """The training loop, applied to every task."""

    epochs: int = _help("epochs per task (ignored when steps is set)", default=1)
    steps: int | None = _help("optimizer steps per task instead of epochs", default=None)
    batch_size: int = _help("samples per optimizer step (per process)", default=32)
    optimizer: Literal["sgd", "adam", "adamw"] = _help("optimizer", default="sgd")
    lr: float = _help("peak learning rate", default=0.01)
    momentum: float = _help("sgd momentum", default=0.0)
    weight_decay: float = _help("weight decay (decoupled for adamw)", default=0.0)
    schedule: Literal["constant", "cosine", "wsd", "linear"] = _help(
        "constant; cosine (with warmup); wsd: warmup, stable, then decay (continual pre-training)",
        default="constant",
    )
    warmup: float = _help("warmup: a fraction of the schedule's steps if < 1, else a step count", default=0.0)
    decay: float = _help("wsd: fraction of the schedule's steps spent decaying at the end", default=0.1)
    min_lr: float = _help("final learning rate as a fraction of lr (cosine, wsd, linear)", default=0.0)
    schedule_scope: Literal["task", "run"] = _help(
        "task: the schedule restarts each task (re-warming); run: one schedule over all tasks", default="task"
    )
    optimizer_state: Literal["reset", "keep"] = _help(
        "reset: a fresh optimizer each task; keep: carry moments and step counts across tasks "
        "('hot start')",
        default="reset",
    )
    grad_clip: float | None = _help("clip the gradient norm to this value", default=None)
    grad_accum: int = _help("accumulate gradients over this many batches per step", default=1)
    patience: int | None = _help(
        "early stopping: stop a task after this many evaluations without a better validation "
        "loss, and keep the best weights (needs stream.validation > 0)",
        default=None,
    )
    eval_every: int | None = _help("early stopping: validate every N steps (default: every epoch)", default=None)
    mixed_precision: Literal["no", "fp16", "bf16"] = _help("mixed precision (GPU)", default="no")
    cpu: bool = _help("force the CPU even when a GPU is available", default=False)
    deterministic: bool = _help("use deterministic torch kernels", default=True)

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.steps is not None and self.steps < 1:
            raise ConfigError(f"train.steps must be >= 1, got {self.steps}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be > 0, got {self.lr}")
        if self.warmup < 0 or not 0.0 <= self.decay <= 1.0 or not 0.0 <= self.min_lr <= 1.0:
            raise ConfigError("train.warmup must be >= 0, train.decay and train.min_lr in [0, 1]")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise ConfigError(f"train.grad_clip must be > 0, got {self.grad_clip}")
        if self.patience is not None and self.patience < 1:
            raise ConfigError(f"train.patience must be >= 1, got {self.patience}")


@dataclass
class EvalConfig:
    """Evaluation after each task, on every task's test set."""

    batch_size: int = _help("evaluation batch size", default=1024)
    split: Literal["test", "val"] = _help(
        "which split R is scored on: test, or val (the held-out part of each task's training "
        "data, stream.validation > 0) to choose hyperparameters without touching the test sets",
        default="test")
    metric: str = _help(
        "score of the matrix R: auto (accuracy for classification, mse for regression, loss for "
        "language models) or one of accuracy, mse, r2, loss, perplexity, token_accuracy",
        default="auto",
    )

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"eval.batch_size must be >= 1, got {self.batch_size}")


@dataclass
class OutputConfig:
    """What a run writes."""

    dir: str | None = _help("run directory (default: runs/<config name>-<time>)", default=None)
    checkpoints: bool = _help("write a checkpoint after each task (needed for --resume)", default=True)
    keep_checkpoints: int = _help("how many task checkpoints to keep (the latest ones)", default=1)
    plots: bool = _help("write PNG plots", default=True)

    def __post_init__(self) -> None:
        if self.keep_checkpoints < 1:
            raise ConfigError(f"output.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")


@dataclass
class RunConfig:
    """Everything a run needs. ``config.resolved.yaml`` in a run directory is this, in full."""

    name: str | None = _help("run name (default: the config file's name)", default=None)
    seed: int = _help("seed for data order, model init and every random choice", default=0)
    stream: StreamConfig = field(default_factory=StreamConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    strategies: list[dict[str, Any]] = _help(
        "strategies applied in order, e.g. [{name: ewc, lam: 100}, {name: replay, size: 500}]",
        default_factory=lambda: [{"name": "finetune"}],
    )

    def __post_init__(self) -> None:
        if not self.strategies:
            raise ConfigError("strategies is empty: give at least one, e.g. strategies: [{name: finetune}]")
        for i, spec in enumerate(self.strategies):
            if not isinstance(spec, dict) or not ("name" in spec or "preset" in spec):
                raise ConfigError(f"strategies.{i} must be a mapping with a 'name' (or 'preset'), got {spec!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- binding


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        (arg,) = typing.get_args(tp) or (Any,)
        return f"a list of {_type_name(arg)}"
    if origin is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` and return it (converted where lossless)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            hint = did_you_mean(str(value), [str(c) for c in choices])
            raise ConfigError(
                f"{where} must be one of {', '.join(map(str, choices))}; got {value!r}{hint}"
            )
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be {_type_name(tp)}, got {value!r}")
        (arg,) = typing.get_args(tp) or (Any,)
        return [_coerce(arg, v, f"{where}.{i}") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where} must be a number, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")  # a bug in retain


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    label = where or "config"
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            full = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"unknown key '{full}'{did_you_mean(str(key), names)}")
        kwargs[key] = _coerce(hints[key], value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value`` into (["a", "b", "c"], value); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value, e.g. train.lr=0.01")
    key, raw = text.split("=", 1)
    if not key or any(not p for p in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with ``key.path=value`` overrides applied."""
    data = copy.deepcopy(data)
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit():
                    raise ConfigError(f"override '{text}': '{part}' must be a list index")
                idx = int(part)
                if idx > len(node):
                    raise ConfigError(f"override '{text}': index {idx} is past the end (length {len(node)})")
                if idx == len(node):
                    node.append({} if not last else value)
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            else:
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = [] if parts[i + 1].isdigit() else {}
                    node = node[part]
                    if not isinstance(node, (dict, list)):
                        raise ConfigError(f"override '{text}': '{part}' is not a section")
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' not found (looked for {p.absolute()}); give the path "
                          "to a YAML file (see examples/, or write one with retain init)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file '{p}' is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping at the top level")
    return data


def _resolve_data_paths(data: dict[str, Any], folder: Path) -> None:
    """Make the relative data paths of a config file absolute, against the file's folder.

    A config names its data as it sits beside it, so it runs the same from any working directory.
    ``stream.dataset`` is taken as a path only when it looks like one (a suffix or a separator) or
    exists beside the config, so built-in names such as ``digits`` stay names. Command-line
    overrides are applied afterwards and stay relative to the working directory, like any path
    typed in a shell.
    """
    stream = data.get("stream")
    if not isinstance(stream, dict):
        return

    def absolute(value: Any, always: bool) -> Any:
        if not isinstance(value, str) or not value:
            return value
        p = Path(value).expanduser()
        if p.is_absolute():
            return value
        looks_like_path = bool(p.suffix) or "/" in value or (folder / p).exists()
        return str((folder / p).resolve()) if always or looks_like_path else value

    if "dataset" in stream:
        stream["dataset"] = absolute(stream["dataset"], always=False)
    if "path" in stream:
        stream["path"] = absolute(stream["path"], always=True)
    if isinstance(stream.get("files"), list):
        stream["files"] = [absolute(f, always=True) for f in stream["files"]]


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides.

    Relative data paths in the file (``stream.dataset``, ``stream.path``, ``stream.files``) are
    relative to the file's folder; see :func:`_resolve_data_paths`.
    """
    data = load_yaml(path) if path is not None else {}
    if path is not None:
        _resolve_data_paths(data, Path(path).resolve().parent)
    data = apply_overrides(data, list(overrides or []))
    cfg = from_dict(RunConfig, data)
    if cfg.name is None and path is not None:
        cfg.name = Path(path).stem
    return cfg


def config_diff(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        path = f"{prefix}{key}"
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_diff(va, vb, path + ".")
        elif va != vb:
            out.append(f"{path}: {va!r} -> {vb!r}")
    return out
