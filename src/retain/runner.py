"""Config-driven runs: what ``retain run``, ``retain compare`` and ``retain demo`` do.

``compare`` trains the same stream under each strategy (each from the same initial weights, in its
own sub-directory with its own checkpoints), then writes one ``result.json`` holding a
:class:`~retain.report.record.CompareRecord` (``runs: {label: run record}``), and adds
``gap_to_joint`` to every run's metrics when ``joint`` is among them.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from retain.config import RunConfig
from retain.errors import ConfigError, RunDirError
from retain.labels import format_value, parse_label
from retain.labels import parse_labels as parse_labels  # `retain compare` reads it here
from retain.report.record import CompareRecord, RunRecord, load_record
from retain.report.result import versions
from retain.utils.checkpoint import RunDir, is_main_process


def default_out(cfg: RunConfig, kind: str = "") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = cfg.name or "run"
    return Path("runs") / f"{name}{'-' + kind if kind else ''}-{stamp}"


def prepare_stream(cfg: RunConfig) -> tuple[Any, dict[str, Any]]:
    from retain.data.build import build_stream
    from retain.utils.seed import seed_everything

    seed_everything(cfg.seed)
    return build_stream(cfg.stream, cfg.seed)


def _model(cfg: RunConfig, stream: Any) -> Any:
    from retain.models import build_model
    from retain.utils.seed import seed_everything

    # The same seed gives every strategy of a comparison the same initial weights.
    seed_everything(cfg.seed)
    return build_model(cfg.model, stream)


def run_config(
    cfg: RunConfig,
    out: str | Path | None,
    resume: bool = False,
    progress: Any = None,
    warn: Callable[[str], None] | None = None,
    stream_info: tuple[Any, dict[str, Any]] | None = None,
    name: str | None = None,
) -> RunRecord:
    """Run ``cfg`` into ``out``; return the run record (also in ``out/result.json``).

    ``name`` names the run in its record (a comparison's variant, ``ewc (lam=100)``)."""
    from retain import strategies as registry
    from retain.api import run
    from retain.run_state import check_settings

    strategies = registry.build_all(cfg.strategies)  # config errors before any data is loaded
    out = (
        Path(out)
        if out is not None
        else Path(cfg.output.dir)
        if cfg.output.dir
        else default_out(cfg)
    )
    # The data is read before the run directory is made: a missing or bad file leaves no folder.
    stream, info = stream_info or prepare_stream(cfg)
    check_strategies(strategies, stream)
    check_settings(cfg, stream)
    check_out(out)
    with _removed_on_failure(out):
        RunDir(out).ensure_new_or_resumable(resume)
        model = _model(cfg, stream)
        result = run(
            model, stream, strategies, cfg, out_dir=out, resume=resume, progress=progress, warn=warn
        )
    record = result.record
    record.data = info
    if name:
        record.strategy = name
    record.out_dir = str(out)
    if is_main_process():
        from retain.report.render import write_reports
        from retain.utils.state import write_json

        write_json(out / "result.json", record.to_dict())
        write_reports(out, record, plots=cfg.output.plots)
    return record


def specs_for(label: str, cfg: RunConfig) -> list[dict[str, Any]]:
    """Strategy specs for ``"ewc:lam=100+replay"``: the inline hyperparameters over the config's
    entry for each strategy (or its defaults)."""
    from retain import strategies as registry

    by_name = {s.get("name"): s for s in cfg.strategies if isinstance(s, dict)}
    specs = []
    for name, params in parse_label(label):
        registry.get(name)  # unknown names fail here, with a suggestion
        specs.append({**copy.deepcopy(by_name.get(name, {"name": name})), **params})
    return specs


@dataclass
class Plan:
    """One label of a comparison: its specs, and the name its run has in records and reports."""

    label: str  # as written on the command line
    name: str  # "ewc (lam=100)+replay": the inline hyperparameters that change something
    folder: str  # the sub-run directory's name (filesystem-safe)
    specs: list[dict[str, Any]]


def plan_labels(labels: list[str], cfg: RunConfig) -> list[Plan]:
    """Bind every label's hyperparameters (unknown keys fail with a suggestion) and name its run.

    A variant is named by the inline hyperparameters that differ from what the plain label would
    use (``ewc (lam=100)``); two labels that bind to the same strategies are refused.
    """
    from retain import strategies as registry

    plans: list[Plan] = []
    seen: dict[str, str] = {}
    for label in labels:
        specs = specs_for(label, cfg)
        built = registry.build_all(specs)
        plain = registry.build_all(specs_for("+".join(n for n, _ in parse_label(label)), cfg))
        names, folders = [], []
        for (name, params), s, base in zip(parse_label(label), built, plain):
            new, old = s.hparams(), base.hparams()
            diff = [f"{k}={format_value(new[k])}" for k in params if new[k] != old[k]]
            names.append(f"{name} ({', '.join(diff)})" if diff else name)
            folders.append("_".join([name, *diff]))
        key = json.dumps([s.spec() for s in built], sort_keys=True, default=str)
        if key in seen:
            raise ConfigError(
                f"--strategies: '{label}' and '{seen[key]}' are the same strategy with the same "
                "hyperparameters; list it once"
            )
        seen[key] = label
        folder = re.sub(r"[^\w.=+-]", "_", "+".join(folders))
        plans.append(Plan(label, "+".join(names), folder, specs))
    folders = [p.folder for p in plans]
    if len(set(folders)) != len(folders):
        raise ConfigError(f"--strategies: two labels share the folder name in {folders}")
    return plans


def check_strategies(strategies: list[Any], stream: Any) -> None:
    """Refuse, before anything trains, a strategy that cannot serve this stream (one line)."""
    for s in strategies:
        s.check(stream)


def check_out(out: Path) -> None:
    """Refuse an output folder that cannot be made or written, before anything trains."""
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise RunDirError(f"cannot make the run directory '{out}': '{parent}' is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write the run directory '{out}': '{parent}' is not writable")


@contextmanager
def _removed_on_failure(out: Path) -> Iterator[None]:
    """Remove ``out`` when the block fails, if the block made it and it holds only its config.

    A run that failed before saving anything (a model or strategy error, a crash in the first
    task) would otherwise leave a folder that makes the same command answer "already exists; pass
    --resume". A folder that existed before, or that holds a result or a checkpoint, is kept.
    """
    existed = out.exists()
    try:
        yield
    except Exception:
        only_config = out.is_dir() and {p.name for p in out.iterdir()} <= {"config.resolved.yaml"}
        if not existed and is_main_process() and only_config:
            shutil.rmtree(out)
        raise


def compare_config(
    cfg: RunConfig,
    labels: list[str],
    out: str | Path | None,
    resume: bool = False,
    progress: Any = None,
    warn: Callable[[str], None] | None = None,
    announce: Callable[[str, int, int, int], None] | None = None,
) -> CompareRecord:
    """Run every strategy label on the same stream; return the comparison record.

    ``announce(label, index, count, steps_left)`` is called before each strategy trains: its
    position (1-based) among ``count``, and the optimizer steps planned for it and the ones after
    it (for an ETA over the whole comparison)."""
    out = (
        Path(out)
        if out is not None
        else Path(cfg.output.dir)
        if cfg.output.dir
        else default_out(cfg, "compare")
    )
    with _removed_on_failure(out):
        return _compare_config(cfg, labels, out, resume, progress, warn, announce)


def _compare_config(
    cfg: RunConfig,
    labels: list[str],
    out: Path,
    resume: bool,
    progress: Any,
    warn: Callable[[str], None] | None,
    announce: Callable[[str, int, int, int], None] | None,
) -> CompareRecord:
    from retain import strategies as registry
    from retain.run_state import check_settings
    from retain.utils.files import write_atomic
    from retain.utils.state import write_json

    # Everything that can fail before training fails here, before the first step of the first
    # run: every label's hyperparameters, the data, every strategy against the stream, the folder.
    plans = plan_labels(labels, cfg)
    prepared = prepare_stream(cfg)  # before the run directory is made (see run_config)
    for plan in plans:
        check_strategies(registry.build_all(plan.specs), prepared[0])
    check_settings(cfg, prepared[0])
    check_out(out)
    root = RunDir(out)
    root.ensure_new_or_resumable(resume)
    if is_main_process():
        write_atomic(out / "config.resolved.yaml", cfg.to_yaml())
    runs: dict[str, RunRecord] = {}
    for plan in plans:
        sub = out / plan.folder
        done = sub / "result.json"
        if resume and done.is_file():
            rec = load_record(done)
            if isinstance(rec, RunRecord) and rec.complete:
                runs[plan.name] = rec
                continue
        if announce:
            announce(
                plan.name, *_position(cfg, prepared[0], {p.name: p.specs for p in plans}, plan.name)
            )
        sub_cfg = copy.deepcopy(cfg)
        sub_cfg.strategies = plan.specs
        sub_cfg.name = cfg.name
        runs[plan.name] = run_config(
            sub_cfg,
            sub,
            resume=resume and sub.exists(),
            progress=progress,
            warn=warn,
            stream_info=prepared,
            name=plan.name,
        )
    record = compare_record(cfg, runs)
    if is_main_process():
        from retain.report.render import write_reports

        write_json(out / "result.json", record.to_dict())
        write_reports(out, record, plots=cfg.output.plots)
    return record


def compare_record(cfg: RunConfig, runs: dict[str, RunRecord]) -> CompareRecord:
    """The comparison of finished runs; with a joint run, each run's ``gap_to_joint``."""
    from retain.eval.metrics import gap_to_joint

    joint = next((r.metrics for r in runs.values() if r.joint and r.metrics), None)
    if joint is not None:
        for rec in runs.values():
            if rec.metrics is not None:
                rec.metrics.gap_to_joint = gap_to_joint(
                    joint.avg_accuracy, rec.metrics.avg_accuracy, rec.higher_is_better
                )
    first = next(iter(runs.values()))
    return CompareRecord(
        name=cfg.name,
        tasks=first.tasks,
        score=first.score,
        split=first.split,
        higher_is_better=first.higher_is_better,
        stream=first.stream,
        runs=runs,
        seed=cfg.seed,
        versions=versions(),
        config=cfg.to_dict(),
    )


def _position(
    cfg: RunConfig, stream: Any, plans: dict[str, list[dict[str, Any]]], label: str
) -> tuple[int, int, int]:
    """``(index, count, steps_left)`` of ``label`` in a comparison; see :func:`compare_config`.

    The steps are planned from the data sizes and ``cfg.train`` (one union task for ``joint``);
    strategies that change a task's data (``cumulative``) or stop early make it an estimate.
    """
    from retain import strategies as registry
    from retain.run_state import Plan as TaskPlan
    from retain.train.optim import steps_for

    labels = list(plans)
    index = labels.index(label)
    steps = 0
    for later in labels[index:]:
        plan = TaskPlan.for_strategies(stream, registry.build_all(plans[later]))
        steps += sum(steps_for(len(t.train), cfg.train) for t in plan.tasks)
    return index + 1, len(labels), steps
