"""The stream's configuration: where the data comes from (:class:`StreamConfig`) and how it is cut
into tasks (the scenario registry, :data:`SCENARIOS`).

A scenario's own settings are a dataclass registered under its name; config files write them
beside the other stream fields. Like :mod:`retain.config` (which re-exports every name here), this
module imports no torch, so the command line answers ``--help`` quickly.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Literal, TypeVar

from retain.binding import check_fields, coerce, field_hints, from_dict, help_field
from retain.errors import ConfigError, did_you_mean

__all__ = [
    "SCENARIOS",
    "ByColumnScenario",
    "FilesScenario",
    "IIDScenario",
    "PermutedScenario",
    "PriorShiftScenario",
    "RotatedScenario",
    "SplitScenario",
    "StreamConfig",
    "TextScenario",
    "TextSource",
    "scenario",
    "scenario_options",
]

T = TypeVar("T")

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

    n_tasks: int | None = help_field("number of tasks (default 5)", default=None, ge=1)
    classes_per_task: int | None = help_field(
        "classes in each task (default: classes / n_tasks)", default=None, ge=1
    )
    class_order: list[int] | None = help_field("order in which classes arrive", default=None)
    classes: list[int] | None = help_field("keep only these classes", default=None)

    def __post_init__(self) -> None:
        check_fields(self, "stream")


@scenario("permuted")
class PermutedScenario:
    """every task sees all the data under its own pixel permutation"""

    n_tasks: int | None = help_field("number of tasks (default 10)", default=None, ge=1)

    def __post_init__(self) -> None:
        check_fields(self, "stream")


@scenario("rotated")
class RotatedScenario:
    """every task sees all the data rotated by its own angle"""

    n_tasks: int | None = help_field(
        "number of tasks (default: len(angles), else 10)", default=None, ge=1
    )
    angles: list[float] | None = help_field("angle of each task in degrees", default=None)
    max_angle: float = help_field("angles drawn uniformly from [0, max_angle)", default=180.0)

    def __post_init__(self) -> None:
        check_fields(self, "stream")


@scenario("iid")
class IIDScenario:
    """random chunks of one distribution"""

    n_tasks: int | None = help_field("number of tasks (default 2)", default=None, ge=1)
    classes: list[int] | None = help_field("keep only these classes", default=None)

    def __post_init__(self) -> None:
        check_fields(self, "stream")


@scenario("prior_shift")
class PriorShiftScenario:
    """class proportions that change from task to task"""

    proportions: list[list[float]] | None = help_field(
        "class proportions per task, e.g. [[0.8,0.1,0.1],[0.1,0.9,0.0]]", default=None, ge=0
    )
    classes: list[int] | None = help_field(
        "keep only these classes (one per proportion)", default=None
    )
    samples_per_task: int | None = help_field("training samples per task", default=None, ge=1)

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

    column: str | None = help_field("the column whose values define the tasks", default=None)
    groups: list[Any] | None = help_field("task order as values or lists of values", default=None)
    classes: list[int] | None = help_field("keep only these classes", default=None)

    def __post_init__(self) -> None:
        check_fields(self, "stream")
        _required(self, "column", "by_column", ", e.g. column: region")


@scenario("files")
class FilesScenario:
    """one file per task"""

    files: list[str] | None = help_field(
        "one data file per task, in order (D1, then D2, ...); relative paths in a config file are "
        "relative to the config file's folder",
        default=None,
    )

    labels: Literal["ids", "names"] = help_field(
        "how the files' classes share outputs. ids: a class id is the same class in every file "
        "(one shared head; text labels are matched by name). names: classes with the same name "
        "share an output, every other class gets its own, in the order the files bring them "
        "(e.g. mnist then fashion_mnist: 20 outputs). Text labels in one file and integers in "
        "another are refused",
        default="ids",
    )

    def __post_init__(self) -> None:
        check_fields(self, "stream")
        _required(self, "files", "files", ", e.g. files: [d1.csv, d2.csv]")


@dataclass
class TextSource:
    """One named text source of scenario text: a path, or a mapping with the path and how to read it"""

    path: str = help_field(
        "required: a .txt file or a folder of .txt files, .jsonl/.json, .csv, .parquet, or a "
        "Hugging Face datasets folder (save_to_disk); relative to the config file's folder"
    )
    format: Literal["auto", "txt", "jsonl", "json", "csv", "parquet", "hf"] = help_field(
        "how to read it (auto: from the suffix; a folder with dataset_info.json or "
        "dataset_dict.json is an HF datasets folder, another folder holds .txt files)",
        default="auto",
    )
    field: str | None = help_field(
        "the text field or column (default: stream.text_field)", default=None
    )
    documents: Literal["auto", "file", "blank_line", "line"] | None = help_field(
        "txt: one document per file, per blank-line-separated block, or per line (default: "
        "stream.documents)",
        default=None,
    )
    messages: str = help_field(
        "chat data: the field holding a list of {role, content} messages, rendered with the "
        "tokenizer's chat template; the loss is on the assistant's tokens only",
        default="messages",
    )
    prompt: str = help_field(
        "instruction data: the prompt field (no loss on its tokens)", default="prompt"
    )
    response: str = help_field(
        "instruction data: the response field (the loss is on its tokens)", default="response"
    )
    by_column: str | None = help_field(
        "one task per value of this field or column (a domain, a language) instead of one task "
        "for the whole source",
        default=None,
    )
    values: list[Any] | None = help_field(
        "by_column: the values to keep, in task order (default: all, sorted)", default=None
    )
    label: str | None = help_field(
        "classification data (stream.objective classification): the field or column holding each "
        "row's class; every row is one example, its text truncated and padded to "
        "stream.block_size",
        default=None,
    )

    def __post_init__(self) -> None:
        check_fields(self, "stream.sources")

    @classmethod
    def parse(cls, name: str, value: Any) -> TextSource:
        """``stream.sources.NAME`` as written: a path, or a mapping of this class's fields."""
        where = f"stream.sources.{name}"
        if isinstance(value, str):
            return cls(path=value)
        if not isinstance(value, dict) or "path" not in value:
            raise ConfigError(
                f"{where} must be a path or a mapping with a path, e.g. "
                f"{{path: data/{name}.jsonl, field: text}}; got {value!r}"
            )
        return from_dict(cls, value, where)


@scenario("text")
class TextScenario:
    """text for a causal language model, or text classification (sources with a label field): one
    task per named source, or per value of a column"""

    sources: dict[str, Any] | None = help_field(
        "named text sources, {name: path} or {name: {path, format, field, documents, messages, "
        "prompt, response, by_column, values, label}}: .txt files or folders, JSONL/JSON, CSV, "
        "Parquet, HF datasets folders; chat data ('messages') and prompt/response pairs train on "
        "the response tokens only; rows with input_ids are taken as already tokenised",
        default=None,
    )
    tasks: list[str] | None = help_field(
        "the sources trained on, one task each (a by_column source gives one task per value), "
        "in order (default: every source that no suite names)",
        default=None,
    )
    block_size: int = help_field(
        "tokens per training block: documents are joined with the tokenizer's EOS token and "
        "cut into blocks of this length (at most the model's context); classification: the "
        "tokens of each example, truncated and padded to this length",
        default=128,
        ge=2,
    )
    text_field: str = help_field("the text field of JSONL/CSV/Parquet/HF sources", default="text")
    documents: Literal["auto", "file", "blank_line", "line"] = help_field(
        "how .txt files are cut into documents (the unit of the train/test split): one per "
        "file, per blank-line-separated block, per line; auto: per file in a folder, per "
        "blank-line block in a single file",
        default="auto",
    )
    packing: bool = help_field(
        "join documents into full blocks (true), or give each document its own padded blocks "
        "(false, e.g. for instruction data)",
        default=True,
    )
    cache_dir: str | None = help_field(
        "where token tensors are cached, keyed by file contents, tokenizer and reader options "
        "(default: $RETAIN_CACHE/tokens, else ~/.cache/retain/tokens)",
        default=None,
    )
    cache: bool = help_field(
        "cache token tensors (a second run does not tokenise again)", default=True
    )

    def __post_init__(self) -> None:
        check_fields(self, "stream")
        _required(self, "sources", "text", ", e.g. sources: {english: en.txt, spanish: es.jsonl}")
        specs = {n: TextSource.parse(n, v) for n, v in (self.sources or {}).items()}
        for t in self.tasks or []:
            if t not in specs:
                raise ConfigError(
                    f"stream.tasks names '{t}', which is not a source{did_you_mean(t, list(specs))}"
                    f"; sources: {', '.join(specs)}"
                )
        if self.tasks is not None and len(set(self.tasks)) != len(self.tasks):
            raise ConfigError(f"stream.tasks lists a source twice: {self.tasks}")


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

    dataset: str | None = help_field(
        "built-in name (digits, diabetes, mnist, fashion_mnist), a file (.csv, .parquet, .npz), "
        "or a Hugging Face datasets folder saved with save_to_disk (default: digits; not used by "
        "scenario files). A relative path in a config file is relative to the config file's folder",
        default=None,
    )
    path: str | None = help_field(
        "where the files of a built-in dataset are (else RETAIN_DATA); "
        "relative to the config file's folder",
        default=None,
    )
    target: str | None = help_field("target column of a table or HF dataset", default=None)
    input: str | None = help_field(
        "input column of an HF dataset (default: all non-target columns)", default=None
    )
    features: list[str] | None = help_field(
        "feature columns of a table (default: all but target/column)", default=None
    )
    objective: Literal["auto", "classification", "regression", "causal_lm"] = help_field(
        "auto: classification for integer targets, regression for float targets; scenario text: "
        "classification when the sources give a label field, else causal_lm (next-token "
        "prediction)",
        default="auto",
    )
    scenario: str = help_field(
        "how tasks are made: " + "; ".join(f"{k} ({c.__doc__})" for k, c in SCENARIOS.items()),
        default="split",
    )
    setting: Literal["auto", "class_il", "task_il", "domain_il"] = help_field(
        "class_il: one head over all classes; task_il: other tasks' logits masked; domain_il: "
        "labels mapped within the task. auto: class_il for split and text classification, "
        "domain_il for permuted/rotated; files: class_il when a later file brings classes no "
        "earlier file has, else domain_il",
        default="auto",
    )
    options: Any = help_field(
        "the scenario's settings (SCENARIOS[scenario]; default: its defaults)", default=None
    )
    validation: float = help_field(
        "fraction of each task's training data held out for validation", default=0.0, ge=0, lt=1
    )
    test_fraction: float = help_field(
        "fraction held out as test set when the source has none", default=0.2, gt=0, lt=1
    )
    standardize: bool | None = help_field(
        "standardise features (default: yes for tables, no for images)", default=None
    )
    suites: dict[str, str] | None = help_field(
        "named held-out evaluation sets that are not tasks, scored with every row of R and never "
        "trained on, e.g. {general: english.txt}: a file read like the stream's data, or the "
        "name of one of the stream's sources",
        default=None,
    )
    mix: dict[str, Any] | None = help_field(
        "data mixing: per task, the pools its batches are drawn from and their ratios (pools "
        "are task names and the stream's sources). Fixed: {es: {es: 0.7, en: 0.3}}; a schedule "
        "over the task's steps: {es: [{until: 0.5, ratios: {es: 0.8, en: 0.2}}, {until: 1, "
        "ratios: {...}}]}; cyclical: {es: {cycle: [es, en], every: 10}} (one pool per batch, "
        "the next every 10 steps). Ratios sum to 1; batches follow them exactly as integer "
        "counts allow; the task trains for as many steps as without a mix; the realised ratio "
        "is in result.json (curriculum)",
        default=None,
    )
    memory: Literal["auto", "ram", "mapped"] = help_field(
        "where the inputs of a table (CSV, Parquet) or of an HF datasets folder's numeric "
        "columns are kept: ram; mapped, a memory-mapped temporary file under "
        "$RETAIN_CACHE/mapped (else ~/.cache/retain/mapped) that batches are paged in from, so "
        "data larger than memory trains; auto: mapped when they would take more than half the "
        "available memory",
        default="auto",
    )
    limit_train: int | None = help_field(
        "use at most this many training samples (quick runs); scenario text: blocks at evenly "
        "spaced positions",
        default=None,
        ge=1,
    )
    limit_test: int | None = help_field(
        "use at most this many test samples (quick runs); scenario text: blocks at evenly "
        "spaced positions, for the evaluation suites too",
        default=None,
        ge=1,
    )

    def __post_init__(self) -> None:
        check_fields(self, "stream")
        # Scenario 'files' reads its files only, so the resolved config names no dataset (configs
        # written by older versions say 'dataset: digits' there; it is dropped, not an error).
        self.dataset = None if self.scenario in ("files", "text") else self.dataset or "digits"
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
        text = self.scenario == "text"
        if self.objective == "causal_lm" and not text:
            raise ConfigError(
                "stream.objective causal_lm goes with stream.scenario text (a language model "
                f"trained on text); got scenario '{self.scenario}' with objective "
                f"'{self.objective}'"
            )
        if text:
            if self.objective == "regression":
                raise ConfigError(
                    "stream.scenario text trains a language model (objective causal_lm) or a text "
                    "classifier (objective classification, sources with a label field); got "
                    "objective 'regression'"
                )
            self._check_labels()
            self._check_suites()

    def text_objective(self) -> str:
        """Scenario text: ``classification`` or ``causal_lm`` (``auto`` read from the sources:
        classification when they give a label field)."""
        if self.objective != "auto":
            return self.objective
        specs = [TextSource.parse(n, v) for n, v in (self.options.sources or {}).items()]
        return "classification" if specs and all(s.label for s in specs) else "causal_lm"

    def _check_labels(self) -> None:
        """Classification sources name their label field; language-modelling sources do not."""
        objective = self.text_objective()
        for name, value in (self.options.sources or {}).items():
            spec = TextSource.parse(name, value)
            if objective == "classification" and not spec.label:
                raise ConfigError(
                    f"stream.sources.{name} has no label field, which classification needs: add "
                    f"label: COLUMN (the field holding each row's class), e.g. {{path: "
                    f"{spec.path}, label: topic}}"
                )
            if objective == "causal_lm" and spec.label:
                raise ConfigError(
                    f"stream.sources.{name} gives label '{spec.label}', which a language model "
                    "(objective causal_lm) does not read: set stream.objective: classification, "
                    "or remove the label"
                )

    def _check_suites(self) -> None:
        """A suite names one of the text sources, or a file (checked when it is read)."""
        names = list(self.options.sources or {})
        for suite, value in (self.suites or {}).items():
            looks_like_path = "/" in value or "\\" in value or "." in value
            if value not in names and not looks_like_path:
                raise ConfigError(
                    f"stream.suites.{suite} names '{value}', which is neither a source"
                    f"{did_you_mean(value, names)} nor a file; sources: {', '.join(names)}"
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
