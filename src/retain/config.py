"""Run configuration: dataclasses, YAML files and dotted command-line overrides.

A config file mirrors :class:`RunConfig`::

    seed: 0
    stream: {dataset: mnist, scenario: split, n_tasks: 5}
    model: {name: mlp, hidden: [400, 400]}
    train: {epochs: 1, batch_size: 128, optimizer: adam, lr: 0.001}
    strategies: [{name: finetune}]

Every key is checked: an unknown key is an error with a "did you mean" suggestion, and every value
is checked against the field's type. Overrides use dotted paths (``train.lr=3e-5``,
``strategies.0.lam=50``); their values are parsed as YAML. The stream's fields and the scenario
registry live in :mod:`retain.stream_config` and are re-exported here. This module imports no
torch, so the command line answers ``--help`` quickly.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from retain.binding import DuplicateKeyError, check_fields, from_dict, help_field, load_unique
from retain.errors import ConfigError
from retain.stream_config import (
    SCENARIOS,
    ByColumnScenario,
    FilesScenario,
    IIDScenario,
    PermutedScenario,
    PriorShiftScenario,
    RotatedScenario,
    SplitScenario,
    StreamConfig,
    TextScenario,
    TextSource,
    scenario,
    scenario_options,
)

__all__ = [
    "SCENARIOS",
    "ByColumnScenario",
    "EvalConfig",
    "FilesScenario",
    "GuardConfig",
    "IIDScenario",
    "ModelConfig",
    "OutputConfig",
    "PermutedScenario",
    "PriorShiftScenario",
    "RotatedScenario",
    "RunConfig",
    "SplitScenario",
    "StreamConfig",
    "TextScenario",
    "TextSource",
    "TrainConfig",
    "VocabConfig",
    "apply_overrides",
    "config_diff",
    "from_dict",
    "load_config",
    "load_yaml",
    "parse_override",
    "scenario",
    "scenario_options",
]


@dataclass
class VocabConfig:
    """Vocabulary extension for a new language (model.name hf, scenario text): tokens added to
    the tokenizer, with new embedding rows. Off unless tokens or from_task is set; see
    docs/vocab.md.
    """

    tokens: list[str] = help_field(
        "tokens to add, as they appear in the text (a word-initial token of a byte-level BPE "
        "tokenizer carries its space: ' corazón')",
        default_factory=list,
    )
    from_task: str | None = help_field(
        "a source of stream.sources whose training text gives the tokens: its most frequent "
        "words that the tokenizer cuts into at least min_pieces pieces",
        default=None,
    )
    count: int = help_field("from_task: how many words to add at most", default=1000, ge=1)
    min_pieces: int = help_field(
        "from_task: add a word only if the tokenizer cuts it into at least this many pieces",
        default=3,
        ge=2,
    )
    min_count: int = help_field(
        "from_task: add a word only if it occurs at least this many times", default=2, ge=1
    )
    init: Literal["mean", "mean_all"] = help_field(
        "a new row's initial value: mean (of the rows of the pieces the token replaces) or "
        "mean_all (of all rows of the old vocabulary)",
        default="mean",
    )
    lr_scale: float = help_field(
        "the new rows' learning rate as a multiple of train.lr (their step is scaled after each "
        "optimizer step; exact for sgd, adam and adamw); 0 keeps them at their initial value",
        default=1.0,
        ge=0,
    )

    def __post_init__(self) -> None:
        check_fields(self, "model.vocab")
        if any(not isinstance(t, str) or not t for t in self.tokens):
            raise ConfigError("model.vocab.tokens must be non-empty strings")

    @property
    def enabled(self) -> bool:
        return bool(self.tokens) or self.from_task is not None


@dataclass
class ModelConfig:
    """The network. Input size and number of outputs are read from the stream."""

    name: Literal["mlp", "cnn", "hf"] = help_field(
        "mlp, cnn, or hf (a Hugging Face transformers model)", default="mlp"
    )
    hidden: list[int] = help_field(
        "mlp: hidden layer widths", default_factory=lambda: [100, 100], ge=1
    )
    activation: Literal["relu", "gelu", "tanh"] = help_field("mlp/cnn: activation", default="relu")
    dropout: float = help_field("mlp: dropout after each hidden layer", default=0.0, ge=0, lt=1)
    init: Literal["default", "xavier"] = help_field(
        "weight initialisation: torch's default, or xavier (uniform weights, zero biases, as "
        "mammoth's MNISTMLP)",
        default="default",
    )
    channels: list[int] = help_field(
        "cnn: channels of each conv block", default_factory=lambda: [32, 64], ge=1
    )
    pretrained: str | None = help_field(
        "hf: a local model folder (transformers files, safetensors; or a hub id already in the "
        "local Hugging Face cache: nothing is downloaded)",
        default=None,
    )
    gguf_file: str | None = help_field(
        "hf: a GGUF file, by its name inside model.pretrained or its path (de-quantised by "
        "transformers on load)",
        default=None,
    )
    hf_config: dict[str, Any] | None = help_field(
        "hf: build a fresh model from this config dict", default=None
    )
    tokenizer: str | None = help_field(
        "hf: local folder with the tokenizer files (default: model.pretrained; with "
        "model.gguf_file, the GGUF file in that folder); gives a fresh model (hf_config) the "
        "tokenizer of scenario text. Relative to the config file's folder",
        default=None,
    )
    head: Literal["auto", "causal_lm", "classification"] = help_field(
        "hf: causal_lm (AutoModelForCausalLM) or classification (AutoModelForSequenceClassification"
        ", one output per class of the stream); auto: from the stream's objective",
        default="auto",
    )
    dtype: Literal["float32", "bfloat16"] = help_field(
        "hf: the weights' dtype (bfloat16 halves the memory of weights, gradients and optimizer "
        "state)",
        default="float32",
    )
    vocab: VocabConfig = field(default_factory=VocabConfig)

    def __post_init__(self) -> None:
        check_fields(self, "model")
        if self.name == "hf" and not (self.pretrained or self.gguf_file or self.hf_config):
            raise ConfigError(
                "model.name 'hf' needs model.pretrained (a local folder), model.gguf_file or "
                "model.hf_config"
            )


@dataclass
class TrainConfig:
    """The training loop, applied to every task."""

    epochs: int = help_field("epochs per task (ignored when steps is set)", default=1, ge=1)
    steps: int | None = help_field("optimizer steps per task instead of epochs", default=None, ge=1)
    batch_size: int = help_field("samples per optimizer step (per process)", default=32, ge=1)
    optimizer: Literal["sgd", "adam", "adamw"] = help_field("optimizer", default="sgd")
    lr: float = help_field("peak learning rate", default=0.01, gt=0)
    momentum: float = help_field("sgd momentum", default=0.0, ge=0, lt=1)
    weight_decay: float = help_field("weight decay (decoupled for adamw)", default=0.0, ge=0)
    schedule: Literal["constant", "cosine", "wsd", "linear"] = help_field(
        "constant; cosine (with warmup); wsd: warmup, stable, then decay (continual pre-training)",
        default="constant",
    )
    warmup: float = help_field(
        "warmup: a fraction of the schedule's steps if < 1, else a step count", default=0.0, ge=0
    )
    decay: float = help_field(
        "wsd: fraction of the schedule's steps spent decaying at the end", default=0.1, ge=0, le=1
    )
    min_lr: float = help_field(
        "final learning rate as a fraction of lr (cosine, wsd, linear)", default=0.0, ge=0, le=1
    )
    schedule_scope: Literal["task", "run"] = help_field(
        "task: the schedule restarts each task (re-warming); run: one schedule over all tasks",
        default="task",
    )
    optimizer_state: Literal["reset", "keep"] = help_field(
        "reset: a fresh optimizer each task; keep: carry moments and step counts across tasks "
        "('hot start')",
        default="reset",
    )
    order: Literal["shuffled", "easy_first", "hard_first"] = help_field(
        "order of a task's training samples: shuffled every epoch; or sorted by the model's own "
        "loss on each sample before the task trains, easy_first (lowest loss first) or "
        "hard_first (costs one forward pass over the task's training data)",
        default="shuffled",
    )
    grad_clip: float | None = help_field("clip the gradient norm to this value", default=None, gt=0)
    grad_accum: int = help_field(
        "accumulate gradients over this many batches per step", default=1, ge=1
    )
    patience: int | None = help_field(
        "early stopping: stop a task after this many evaluations without a better validation "
        "loss, and keep the best weights (needs stream.validation > 0)",
        default=None,
        ge=1,
    )
    eval_every: int | None = help_field(
        "early stopping: validate every N steps (default: every epoch)", default=None, ge=1
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = help_field(
        "mixed precision: forwards under autocast (bf16 also on CPUs that support it; fp16 on "
        "GPUs, with a loss scaler)",
        default="no",
    )
    gradient_checkpointing: bool = help_field(
        "recompute activations in backward instead of keeping them (transformers models): less "
        "memory for about a third more compute per step",
        default=False,
    )
    checkpoint_every: int | None = help_field(
        "also checkpoint every N optimizer steps inside a task, so --resume continues from there "
        "(0 or unset: only after each task); needs output.checkpoints",
        default=None,
        ge=0,
    )
    keep_step_checkpoints: int = help_field(
        "how many of those mid-task checkpoints to keep (the latest ones; output.keep_checkpoints "
        "counts the end-of-task ones)",
        default=1,
        ge=1,
    )
    cpu: bool = help_field("force the CPU even when a GPU is available", default=False)
    deterministic: bool = help_field("use deterministic torch kernels", default=True)
    log_with: (
        Literal["tensorboard", "mlflow", "wandb"]
        | list[Literal["tensorboard", "mlflow", "wandb"]]
        | None
    ) = help_field(
        "experiment trackers, through Accelerate: tensorboard, mlflow, wandb, or a list; logs "
        "the training loss, the learning rate, each row of R and the metrics (tensorboard: pip "
        "install 'retain[track]'; mlflow and wandb: install them yourself)",
        default=None,
    )
    logging_dir: str | None = help_field(
        "where local trackers write (default: logs/ in the run directory)", default=None
    )

    def __post_init__(self) -> None:
        check_fields(self, "train")


@dataclass
class EvalConfig:
    """Evaluation after each task, on every task's test set."""

    batch_size: int = help_field("evaluation batch size", default=1024, ge=1)
    split: Literal["test", "val"] = help_field(
        "which split R is scored on: test, or val (the held-out part of each task's training "
        "data, stream.validation > 0) to choose hyperparameters without touching the test sets",
        default="test",
    )
    metric: str = help_field(
        "score of the matrix R: auto (accuracy for classification, mse for regression, loss for "
        "language models) or one of accuracy, mse, r2, loss, perplexity, token_accuracy",
        default="auto",
    )
    every_steps: int | None = help_field(
        "also evaluate on every task and evaluation suite every N optimizer steps while a task "
        "trains (recorded in the run's curves); default: only after each task",
        default=None,
        ge=1,
    )

    def __post_init__(self) -> None:
        check_fields(self, "eval")


@dataclass
class GuardConfig:
    """The regression guard: suites and earlier tasks checked every N steps while a task trains.

    A name in ``relative`` or ``absolute`` turns the guard on. Its baseline is its score just
    before the current task's training starts; a check fails when the score is worse than the
    baseline by more than the threshold (in the score's own direction: a rise in loss or
    perplexity, a fall in accuracy). A task's name is watched while the tasks after it train.
    """

    every_steps: int | None = help_field(
        "check every N optimizer steps (required when the guard watches a name)", default=None, ge=1
    )
    action: Literal["warn", "stop"] = help_field(
        "warn: one warning per breach, training goes on; stop: end the task's training at the "
        "first failed check and restore the weights of the last check that passed (the task's "
        "start if none did), then go on to the next task",
        default="warn",
    )
    metric: str = help_field(
        "the score the guard watches: auto (the score of R, eval.metric) or one of accuracy, mse, "
        "r2, loss, perplexity, token_accuracy",
        default="auto",
    )
    relative: dict[str, float] | None = help_field(
        "name -> largest allowed worsening as a fraction of the baseline, e.g. {general: 0.05}: "
        "at most 5% higher loss on suite general",
        default=None,
    )
    absolute: dict[str, float] | None = help_field(
        "name -> largest allowed worsening in the score's units, e.g. {t1: 0.02}: at most 0.02 "
        "accuracy lost on task t1",
        default=None,
    )

    def __post_init__(self) -> None:
        check_fields(self, "guard")
        for kind in ("relative", "absolute"):
            for name, value in (getattr(self, kind) or {}).items():
                if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                    raise ConfigError(
                        f"guard.{kind}.{name} must be a number > 0 (the largest allowed "
                        f"worsening), got {value!r}"
                    )
        if self.active and self.every_steps is None:
            raise ConfigError(
                "the guard watches "
                + ", ".join(self.names)
                + " but guard.every_steps is not set; set it, e.g. guard.every_steps=50"
            )

    @property
    def names(self) -> list[str]:
        """The watched names, in the order given (relative first)."""
        return list(dict.fromkeys([*(self.relative or {}), *(self.absolute or {})]))

    @property
    def active(self) -> bool:
        return bool(self.names)


@dataclass
class OutputConfig:
    """What a run writes."""

    dir: str | None = help_field("run directory (default: runs/<config name>-<time>)", default=None)
    checkpoints: bool = help_field(
        "write a checkpoint after each task (needed for --resume)", default=True
    )
    keep_checkpoints: int = help_field(
        "how many task checkpoints to keep (the latest ones)", default=1, ge=1
    )
    plots: bool = help_field("write PNG plots", default=True)
    snapshots: int = help_field(
        "parameter snapshots per task written to RUN/snapshots (safetensors: trainable "
        "parameters and BatchNorm statistics): N - 1 evenly spaced inside each task and one at "
        "its end, plus the model before training; the training path that retain landscape "
        "draws (0: none)",
        default=0,
        ge=0,
    )
    save_model: bool = help_field(
        "transformers models: write the trained model (save_pretrained, safetensors) and its "
        "tokenizer to RUN/model at the end of the run, loadable without retain (with the lora "
        "strategy, whose base is unchanged: the adapters and tokenizer to RUN/adapters only)",
        default=True,
    )

    def __post_init__(self) -> None:
        check_fields(self, "output")


MAX_SEED = 2**32 - 1


@dataclass
class RunConfig:
    """Everything a run needs. ``config.resolved.yaml`` in a run directory is this, in full."""

    name: str | None = help_field("run name (default: the config file's name)", default=None)
    # Seeds are 32-bit: the per-task generators are derived from the seed's low 32 bits, so two
    # larger seeds could silently give the same run.
    seed: int = help_field(
        "seed for data order, model init and every random choice",
        default=0,
        ge=0,
        le=MAX_SEED,
    )
    seeds: list[int] | None = help_field(
        "run once per seed (each in its own seed-<s> folder) and report mean ± std over them, "
        "e.g. [0, 1, 2]; replaces seed",
        default=None,
        ge=0,
        le=MAX_SEED,
    )
    stream: StreamConfig = field(default_factory=StreamConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    strategies: list[dict[str, Any]] = help_field(
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
        if self.seeds is not None:
            if not self.seeds:
                raise ConfigError("seeds is empty: give at least one, e.g. seeds: [0, 1, 2]")
            if len(set(self.seeds)) != len(self.seeds):
                raise ConfigError(f"seeds has repeated values {self.seeds}: list each seed once")
        check_fields(self)
        if self.stream.scenario == "text" and self.model.name != "hf":
            raise ConfigError(
                "stream.scenario text trains a language model: set model.name: hf (with "
                "model.pretrained, or model.hf_config and model.tokenizer)"
            )
        if self.train.checkpoint_every and not self.output.checkpoints:
            raise ConfigError(
                "train.checkpoint_every resumes a task from the checkpoint of the task before it, "
                "and output.checkpoints is false: set output.checkpoints: true, or unset "
                "train.checkpoint_every"
            )
        if self.model.vocab.enabled and self.stream.scenario != "text":
            raise ConfigError(
                "model.vocab extends a tokenizer's vocabulary, and this stream holds no text "
                f"(scenario {self.stream.scenario}): use stream.scenario text, or remove model.vocab"
            )

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
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file '{p}' is not UTF-8 text (byte {e.start} cannot be decoded); "
            "save it as UTF-8"
        ) from None
    try:
        data = load_unique(text)
    except DuplicateKeyError as e:
        raise ConfigError(f"config file '{p}': {e.problem}") from None
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
    model = data.get("model")
    if isinstance(model, dict) and isinstance(model.get("pretrained"), str):
        # A model folder beside the config; anything else (a hub id such as org/name) stays.
        p = Path(model["pretrained"]).expanduser()
        if not p.is_absolute() and (folder / p).exists():
            model["pretrained"] = str(folder / p)
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
    sources = stream.get("sources")
    if isinstance(sources, dict):
        for name, src in sources.items():
            if isinstance(src, str):
                sources[name] = absolute(src, always=True)
            elif isinstance(src, dict) and "path" in src:
                src["path"] = absolute(src["path"], always=True)
    if isinstance(stream.get("suites"), dict):
        names = sources if isinstance(sources, dict) else {}
        for name, value in stream["suites"].items():
            if value not in names:  # a source's name stays a name
                stream["suites"][name] = absolute(value, always=False)
    if "cache_dir" in stream:
        stream["cache_dir"] = absolute(stream["cache_dir"], always=True)
    model = data.get("model")
    if isinstance(model, dict) and "tokenizer" in model:
        model["tokenizer"] = absolute(model["tokenizer"], always=False)


def _resolve_model_paths(data: dict[str, Any], folder: Path) -> None:
    """``model.pretrained`` and ``model.gguf_file`` relative to the config file's folder, where
    they exist there: a hub id (``org/name``) or a GGUF file named inside ``model.pretrained``
    stays as written."""
    model = data.get("model")
    if not isinstance(model, dict):
        return
    for key in ("pretrained", "gguf_file"):
        value = model.get(key)
        if key == "gguf_file" and model.get("pretrained"):
            continue  # a name inside the model folder
        relative = isinstance(value, str) and value and not Path(value).expanduser().is_absolute()
        if relative and (folder / value).exists():
            model[key] = str((folder / value).resolve())


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides.

    Relative data paths in the file (``stream.dataset``, ``stream.path``, ``stream.files``, the
    text scenario's ``stream.sources``, ``stream.suites`` and ``stream.cache_dir``, and
    ``model.tokenizer``) are relative to the file's folder; see :func:`_resolve_data_paths`.
    """
    data = load_yaml(path) if path is not None else {}
    if path is not None:
        _resolve_data_paths(data, Path(path).resolve().parent)
        _resolve_model_paths(data, Path(path).resolve().parent)
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
