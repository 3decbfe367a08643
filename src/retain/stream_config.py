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
    objective: Literal["auto", "classification", "regression"] = help_field(
        "auto: classification for integer targets, regression for float targets", default="auto"
    )
    scenario: str = help_field(
        "how tasks are made: " + "; ".join(f"{k} ({c.__doc__})" for k, c in SCENARIOS.items()),
        default="split",
    )
    setting: Literal["auto", "class_il", "task_il", "domain_il"] = help_field(
        "class_il: one head over all classes; task_il: other tasks' logits masked; domain_il: "
        "labels mapped within the task. auto: class_il for split, domain_il for permuted/rotated",
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
    limit_train: int | None = help_field(
        "use at most this many training samples (quick runs)", default=None, ge=1
    )
    limit_test: int | None = help_field(
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
