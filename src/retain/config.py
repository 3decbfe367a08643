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
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

from retain.binding import check_fields, coerce, field_hints, from_dict
from retain.errors import ConfigError, did_you_mean

__all__ = [
    "SCENARIOS",
    "ByColumnScenario",
    "EvalConfig",
    "FilesScenario",
    "IIDScenario",
    "ModelConfig",
    "OutputConfig",
    "PermutedScenario",
    "PriorShiftScenario",
    "RotatedScenario",
    "RunConfig",
    "SplitScenario",
    "StreamConfig",
    "TrainConfig",
    "apply_overrides",
    "config_diff",
    "from_dict",
    "load_config",
    "load_yaml",
    "parse_override",
    "scenario",
    "scenario_options",
]

T = TypeVar("T")


def _help(
    text: str,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    **kw: Any,
) -> Any:
    """A field with its ``--help`` text and bounds (checked by :func:`retain.binding.check_fields`)."""
    bounds = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    return field(metadata={"help": text, **bounds}, **kw)


# --------------------------------------------------------------------------- scenarios

#: Scenario name -> the dataclass of the stream fields that scenario reads. In YAML they sit
#: beside the other stream fields (``stream: {scenario: split, n_tasks: 5}``); setting one that
#: the chosen scenario does not read is an error, so a misplaced parameter never goes unused.
#: The stream is built by ``retain.data.scenarios.<name>(source, **options)`` (which imports
#: torch, so it cannot live here): a new scenario is a dataclass here and a function there.
SCENARIOS: dict[str, type] = {}


def scenario(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: register the options dataclass of scenario ``name``."""

    def deco(cls: type[T]) -> type[T]:
        SCENARIOS[name] = dataclass(cls)
        return SCENARIOS[name]

    return deco


def _required(obj: Any, name: str, scenario_name: str, example: str) -> None:
    if not getattr(obj, name):
        raise ConfigError(f"stream.{name} is required for scenario '{scenario_name}'{example}")


@scenario("split")
class SplitScenario:
    """class groups per task"""

    n_tasks: int | None = _help("number of tasks (default 5)", default=None, ge=1)
    classes_per_task: int | None = _help(
        "classes in each task (default: classes / n_tasks)", default=None, ge=1
    )
    class_order: list[int] | None = _help("order in which classes arrive", default=None)
    classes: list[int] | None = _help("keep only these classes", default=None)

    def __post_init__(self) -> None:
        check_fields(self, "stream")


@scenario("permuted")
class PermutedScenario:
    """every task sees all the data under its own pixel permutation"""

    n_tasks: int | None = _help("number of tasks (default 10)", default=None, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "stream")


@scenario("rotated")
class RotatedScenario:
    """every task sees all the data rotated by its own angle"""

    n_tasks: int | None = _help(
        "number of tasks (default: len(angles), else 10)", default=None, ge=1
    )
    angles: list[float] | None = _help("angle of each task in degrees", default=None)
    max_angle: float = _help("angles drawn uniformly from [0, max_angle)", default=180.0)

    def __post_init__(self) -> None:
        check_fields(self, "stream")


@scenario("iid")
class IIDScenario:
    """random chunks of one distribution"""

    n_tasks: int | None = _help("number of tasks (default 2)", default=None, ge=1)
    classes: list[int] | None = _help("keep only these classes", default=None)

    def __post_init__(self) -> None:
        check_fields(self, "stream")


@scenario("prior_shift")
class PriorShiftScenario:
    """class proportions that change from task to task"""

    proportions: list[list[float]] | None = _help(
        "class proportions per task, e.g. [[0.8,0.1,0.1],[0.1,0.9,0.0]]", default=None, ge=0
    )
    classes: list[int] | None = _help("keep only these classes (one per proportion)", default=None)
    samples_per_task: int | None = _help("training samples per task", default=None, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "stream")
        _required(
            self,
            "proportions",
            "prior_shift",
            ", e.g. proportions: [[0.8, 0.1, 0.1], [0.1, 0.9, 0.0]]",
        )


@scenario("by_column")
class ByColumnScenario:
    """one task per value of a column (a domain, a time period)"""

    column: str | None = _help("the column whose values define the tasks", default=None)
    groups: list[Any] | None = _help("task order as values or lists of values", default=None)
    classes: list[int] | None = _help("keep only these classes", default=None)

    def __post_init__(self) -> None:
        check_fields(self, "stream")
        _required(self, "column", "by_column", ", e.g. column: region")


@scenario("files")
class FilesScenario:
    """one file per task"""

    files: list[str] | None = _help(
        "one data file per task, in order (D1, then D2, ...); relative paths in a config file are "
        "relative to the config file's folder",
        default=None,
    )

    def __post_init__(self) -> None:
        check_fields(self, "stream")
        _required(self, "files", "files", ", e.g. files: [d1.csv, d2.csv]")


def _scenario_defaults() -> dict[str, Any]:
    """Every scenario field with its default, in registry order (the fields config files of every
    scenario may hold: a resolved config lists them all)."""
    out: dict[str, Any] = {}
    for cls in SCENARIOS.values():
        for f in fields(cls):
            out.setdefault(f.name, f.default)
    return out


@dataclass
class StreamConfig:
    """Where the data comes from and how it is cut into tasks.

    The scenario's own settings are ``options`` (an instance of ``SCENARIOS[scenario]``, or a
    mapping bound to it); config files write them beside the other stream fields.
    """

    dataset: str | None = _help(
        "built-in name (digits, diabetes, mnist, fashion_mnist), a file (.csv, .parquet, .npz), "
        "or a Hugging Face datasets folder saved with save_to_disk (default: digits; not used by "
        "scenario files). A relative path in a config file is relative to the config file's folder",
        default=None,
    )
    path: str | None = _help(
        "where the files of a built-in dataset are (else RETAIN_DATA); "
        "relative to the config file's folder",
        default=None,
    )
    target: str | None = _help("target column of a table or HF dataset", default=None)
    input: str | None = _help(
        "input column of an HF dataset (default: all non-target columns)", default=None
    )
    features: list[str] | None = _help(
        "feature columns of a table (default: all but target/column)", default=None
    )
    objective: Literal["auto", "classification", "regression"] = _help(
        "auto: classification for integer targets, regression for float targets", default="auto"
    )
    scenario: str = _help(
        "how tasks are made: " + "; ".join(f"{k} ({c.__doc__})" for k, c in SCENARIOS.items()),
        default="split",
    )
    setting: Literal["auto", "class_il", "task_il", "domain_il"] = _help(
        "class_il: one head over all classes; task_il: other tasks' logits masked; domain_il: "
        "labels mapped within the task. auto: class_il for split, domain_il for permuted/rotated",
        default="auto",
    )
    options: Any = _help(
        "the scenario's settings (SCENARIOS[scenario]; default: its defaults)", default=None
    )
    validation: float = _help(
        "fraction of each task's training data held out for validation", default=0.0, ge=0, lt=1
    )
    test_fraction: float = _help(
        "fraction held out as test set when the source has none", default=0.2, gt=0, lt=1
    )
    standardize: bool | None = _help(
        "standardise features (default: yes for tables, no for images)", default=None
    )
    limit_train: int | None = _help(
        "use at most this many training samples (quick runs)", default=None, ge=1
    )
    limit_test: int | None = _help(
        "use at most this many test samples (quick runs)", default=None, ge=1
    )

    def __post_init__(self) -> None:
        check_fields(self, "stream")
        # Scenario 'files' reads its files only, so the resolved config names no dataset (configs
        # written by older versions say 'dataset: digits' there; it is dropped, not an error).
        self.dataset = None if self.scenario == "files" else self.dataset or "digits"
        cls = scenario_options(self.scenario)
        if self.options is None:
            self.options = cls()
        elif isinstance(self.options, dict):
            self.options = from_dict(cls, self.options, "stream")
        elif not isinstance(self.options, cls):
            raise ConfigError(
                f"stream.options must be a {cls.__name__} for scenario "
                f"'{self.scenario}', got {type(self.options).__name__}"
            )

    @classmethod
    def bind(cls, data: dict[str, Any], where: str) -> StreamConfig:
        """From the flat mapping of a config file: the scenario's fields go to ``options``. A field
        of another scenario is accepted at its default (resolved configs list them all)."""
        hints = field_hints(cls)
        own = [n for n in hints if n != "options"]
        name = data.get("scenario", "split")
        opts_cls = scenario_options(name) if isinstance(name, str) else None
        opt_names = [f.name for f in fields(opts_cls)] if opts_cls else []
        others = _scenario_defaults()
        kwargs, opts = {}, {}
        for key, value in data.items():
            if key in own:
                kwargs[key] = coerce(hints[key], value, f"{where}.{key}")
            elif key in opt_names:
                opts[key] = value
            elif key in others and opts_cls is not None:
                if value != others[key]:
                    reads = ", ".join(opt_names) or "nothing"
                    raise ConfigError(
                        f"{where}.{key} is not used by scenario '{name}' "
                        f"(it reads: {reads}); remove it"
                    )
            else:
                raise ConfigError(
                    f"unknown key '{where}.{key}'{did_you_mean(str(key), own + opt_names)}"
                )
        if opts_cls is not None:
            kwargs["options"] = from_dict(opts_cls, opts, where)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping of a config file: every scenario field, the unused ones at default."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "options":
                out.update(_scenario_defaults())
                out.update(dataclasses.asdict(self.options))
            else:
                out[f.name] = copy.deepcopy(getattr(self, f.name))
        return out


def scenario_options(name: str) -> type:
    """The options dataclass of scenario ``name`` (a config error naming the choices if unknown)."""
    if name not in SCENARIOS:
        raise ConfigError(
            f"stream.scenario must be one of {', '.join(SCENARIOS)}; got {name!r}"
            f"{did_you_mean(str(name), list(SCENARIOS))}"
        )
    return SCENARIOS[name]


@dataclass
class ModelConfig:
    """The network. Input size and number of outputs are read from the stream."""

    name: Literal["mlp", "cnn", "hf"] = _help(
        "mlp, cnn, or hf (a Hugging Face causal LM)", default="mlp"
    )
    hidden: list[int] = _help("mlp: hidden layer widths", default_factory=lambda: [100, 100], ge=1)
    activation: Literal["relu", "gelu", "tanh"] = _help("mlp/cnn: activation", default="relu")
    dropout: float = _help("mlp: dropout after each hidden layer", default=0.0, ge=0, lt=1)
    init: Literal["default", "xavier"] = _help(
        "weight initialisation: torch's default, or xavier (uniform weights, zero biases, as "
        "mammoth's MNISTMLP)",
        default="default",
    )
    channels: list[int] = _help(
        "cnn: channels of each conv block", default_factory=lambda: [32, 64], ge=1
    )
    pretrained: str | None = _help("hf: local model folder (or hub id when online)", default=None)
    hf_config: dict[str, Any] | None = _help(
        "hf: build a fresh model from this config dict", default=None
    )

    def __post_init__(self) -> None:
        check_fields(self, "model")
        if self.name == "hf" and not (self.pretrained or self.hf_config):
            raise ConfigError(
                "model.name 'hf' needs model.pretrained (a folder) or model.hf_config"
            )


@dataclass
class TrainConfig:
    """The training loop, applied to every task."""

    epochs: int = _help("epochs per task (ignored when steps is set)", default=1, ge=1)
    steps: int | None = _help("optimizer steps per task instead of epochs", default=None, ge=1)
    batch_size: int = _help("samples per optimizer step (per process)", default=32, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = _help("optimizer", default="sgd")
    lr: float = _help("peak learning rate", default=0.01, gt=0)
    momentum: float = _help("sgd momentum", default=0.0, ge=0)
    weight_decay: float = _help("weight decay (decoupled for adamw)", default=0.0, ge=0)
    schedule: Literal["constant", "cosine", "wsd", "linear"] = _help(
        "constant; cosine (with warmup); wsd: warmup, stable, then decay (continual pre-training)",
        default="constant",
    )
    warmup: float = _help(
        "warmup: a fraction of the schedule's steps if < 1, else a step count", default=0.0, ge=0
    )
    decay: float = _help(
        "wsd: fraction of the schedule's steps spent decaying at the end", default=0.1, ge=0, le=1
    )
    min_lr: float = _help(
        "final learning rate as a fraction of lr (cosine, wsd, linear)", default=0.0, ge=0, le=1
    )
    schedule_scope: Literal["task", "run"] = _help(
        "task: the schedule restarts each task (re-warming); run: one schedule over all tasks",
        default="task",
    )
    optimizer_state: Literal["reset", "keep"] = _help(
        "reset: a fresh optimizer each task; keep: carry moments and step counts across tasks "
        "('hot start')",
        default="reset",
    )
    grad_clip: float | None = _help("clip the gradient norm to this value", default=None, gt=0)
    grad_accum: int = _help("accumulate gradients over this many batches per step", default=1, ge=1)
    patience: int | None = _help(
        "early stopping: stop a task after this many evaluations without a better validation "
        "loss, and keep the best weights (needs stream.validation > 0)",
        default=None,
        ge=1,
    )
    eval_every: int | None = _help(
        "early stopping: validate every N steps (default: every epoch)", default=None, ge=1
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = _help("mixed precision (GPU)", default="no")
    cpu: bool = _help("force the CPU even when a GPU is available", default=False)
    deterministic: bool = _help("use deterministic torch kernels", default=True)

    def __post_init__(self) -> None:
        check_fields(self, "train")


@dataclass
class EvalConfig:
    """Evaluation after each task, on every task's test set."""

    batch_size: int = _help("evaluation batch size", default=1024, ge=1)
    split: Literal["test", "val"] = _help(
        "which split R is scored on: test, or val (the held-out part of each task's training "
        "data, stream.validation > 0) to choose hyperparameters without touching the test sets",
        default="test",
    )
    metric: str = _help(
        "score of the matrix R: auto (accuracy for classification, mse for regression, loss for "
        "language models) or one of accuracy, mse, r2, loss, perplexity, token_accuracy",
        default="auto",
    )
    every_steps: int | None = _help(
        "also evaluate on every task every N optimizer steps while a task trains (recorded in "
        "the run's curves); default: only after each task",
        default=None,
        ge=1,
    )

    def __post_init__(self) -> None:
        check_fields(self, "eval")


@dataclass
class OutputConfig:
    """What a run writes."""

    dir: str | None = _help("run directory (default: runs/<config name>-<time>)", default=None)
    checkpoints: bool = _help(
        "write a checkpoint after each task (needed for --resume)", default=True
    )
    keep_checkpoints: int = _help(
        "how many task checkpoints to keep (the latest ones)", default=1, ge=1
    )
    plots: bool = _help("write PNG plots", default=True)

    def __post_init__(self) -> None:
        check_fields(self, "output")


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
            raise ConfigError(
                "strategies is empty: give at least one, e.g. strategies: [{name: finetune}]"
            )
        for i, spec in enumerate(self.strategies):
            if not isinstance(spec, dict) or not ("name" in spec or "preset" in spec):
                raise ConfigError(
                    f"strategies.{i} must be a mapping with a 'name' (or 'preset'), got {spec!r}"
                )
        check_fields(self)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["stream"] = self.stream.to_dict()
        return out

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------- binding


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
                    raise ConfigError(
                        f"override '{text}': index {idx} is past the end (length {len(node)})"
                    )
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
        raise ConfigError(
            f"config file '{p}' not found (looked for {p.absolute()}); give the path "
            "to a YAML file (see examples/, or write one with retain init)"
        )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(
            f"config file '{p}' is not valid YAML{where}: {getattr(e, 'problem', e)}"
        ) from None
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
