"""``retain train`` and ``retain package``: a model package, and the training steps updates share.

A package (:mod:`retain.package`) is a run's state at a task boundary plus every task's held-out
data, so an update is "resume with one more task whose data is D2": the same steps as
:func:`retain.api.run` (``prepare_task``, ``train_task``, ``finish_task``, ``evaluate_task``),
with the task's seed derived from its position in the chain. Chained updates D1 -> D2 -> D3 then
train exactly what one ``retain run`` over the files D1, D2, D3 trains, and give the same R:

- a file's test and validation splits are drawn from its position (``seed + t``, as scenario
  ``files`` draws them), which a package knows;
- standardisation uses the first task's statistics in a run; a package stores them and scales
  every later batch with them;
- the output layer's width is fixed by the first package (outside class-IL a batch with classes
  the package does not know is refused; in class-IL new classes are allowed within the width).

Two differences, on purpose: a package always expects another update, so strategies that skip
their consolidation after the last task of a run (EWC's and MAS's importance) do it after every
task of a package (R is unchanged: nothing trains after it); and strategies that need the earlier
tasks' training data (``joint``, ``cumulative``) or plan over the whole run
(``train.schedule_scope: run``, data mixing) are refused, since a package holds no training data.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from retain.api import evaluate_all, evaluate_suites, evaluate_task, finish_task, prepare_task
from retain.api import train_task as fit_one
from retain.checkpointing import restore
from retain.config import RunConfig
from retain.data.stream import Stream, Task
from retain.errors import ConfigError, DataError, RunDirError
from retain.eval.drift import Fingerprint, fingerprint
from retain.package import Contents, Package, check_new, new_meta, now, scaler_from, write
from retain.report.history import History
from retain.utils.checkpoint import RunDir, optimizer_state
from retain.utils.seed import derive_seed, seed_everything
from retain.utils.state import rng_state

NEEDS_TRAINING_DATA = ("joint", "cumulative")
# Strategies whose after_task does nothing on a run's last task (``ctx.is_last_task``).
SKIP_LAST_TASK = ("ewc", "mas")


def check_packable(cfg: RunConfig) -> None:
    """Refuse, before anything is read, what a package cannot carry (see the module docstring)."""
    if cfg.stream.scenario == "text":
        raise ConfigError(
            "model packages hold tables and images for now; a text stream (scenario text) "
            "cannot be packaged yet: use retain run"
        )
    if cfg.seeds:
        raise ConfigError("a package holds one model: set seed, not seeds")
    if cfg.train.schedule_scope == "run":
        raise ConfigError(
            "train.schedule_scope run plans one schedule over every task, which later updates "
            "cannot know; set train.schedule_scope=task"
        )
    if cfg.stream.mix:
        raise ConfigError(
            "data mixing (stream.mix) draws on earlier tasks' training data, which a package does not hold"
        )
    for s in cfg.strategies:
        name = s.get("name") if isinstance(s, dict) else s
        if name in NEEDS_TRAINING_DATA:
            raise ConfigError(
                f"strategy '{name}' trains on the earlier tasks' data, which a package does not "
                "hold; use replay (it keeps a buffer) or a regulariser (ewc, lwf, si)"
            )


def first_stream(cfg: RunConfig) -> tuple[Stream, dict[str, Any], dict[str, torch.Tensor] | None]:
    """The config's stream, and its standardisation statistics, exactly (a run's record keeps
    them rounded): built unscaled, then scaled as :func:`retain.data.build.build_stream` does."""
    from retain.data.build import build_stream
    from retain.data.scenarios import standardize

    seed_everything(cfg.seed)
    raw = dataclasses.replace(cfg.stream, standardize=False)
    stream, info = build_stream(raw, cfg.seed)
    x = stream.tasks[0].train.x
    image = x.ndim > 2
    do_scale = x.is_floating_point() and (
        cfg.stream.standardize if cfg.stream.standardize is not None else not image
    )
    if not do_scale:
        return stream, info, None
    stream, stats = standardize(stream, target=stream.objective == "regression")
    return stream, info, scaler_from(stats)


def session(
    stream: Stream,
    cfg: RunConfig,
    saved: dict[str, Any] | None,
    progress: Any = None,
    warn: Callable[[str], None] | None = None,
    where: str = "",
) -> tuple[Any, Any, History]:
    """The run state, the model (weights and strategy state from ``saved``) and its history."""
    from retain import strategies as registry
    from retain.api import _pretrained
    from retain.run_state import start
    from retain.runner import _model

    strategies = registry.build_all(cfg.strategies)
    model = _model(cfg, stream)
    r = start(stream, strategies, cfg, None, False, progress, warn, model)
    r.initial = "pretrained" if _pretrained(model) else "untrained"
    r.saved = saved
    try:
        model, history = restore(r, model)
    except (RunDirError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "state_dict" not in str(e):
            raise  # not a weights mismatch: a real failure, with its traceback
        raise ConfigError(
            f"{where}: its weights do not match its config ({_mismatch(e)}); use the config "
            "they were trained with"
        ) from None
    return r, model, history


def starting_state(pkg: Package, cfg: RunConfig) -> tuple[dict[str, Any], bool]:
    """The package's saved run state for an update with ``cfg``'s strategies, and whether they
    are the package's own: when they are not, their state starts empty (the package's
    consolidation state, EWC's Fisher or a replay buffer, belongs to its own strategies)."""
    from retain import strategies as registry

    saved = pkg.checkpoint()
    same = [s.get("name") for s in cfg.strategies] == [
        s.get("name") for s in pkg.meta["strategies"]
    ]
    if not same:
        saved["strategies"] = [s.state_dict() for s in registry.build_all(cfg.strategies)]
    return saved, same


def _mismatch(e: Exception) -> str:
    """The first useful line of a failed ``load_state_dict`` (a size mismatch, the missing and
    unexpected names)."""
    text = str(e)
    found = re.search(r"\((missing .*?)\);", text)
    if found:
        return found.group(1)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return next((line for line in lines if "size mismatch" in line), lines[0] if lines else "?")


def train_from(r: Any, model: Any, history: History, optimizer: Any = None) -> tuple[Any, Any]:
    """Train every task of the plan not yet in ``history``, as :func:`retain.api.run` does; each
    task's context says another task may follow (a package expects updates)."""
    if not history.rows:
        history.rows.append(evaluate_all(r, model, f"eval {r.initial}"))
        history.suites.append(evaluate_suites(r, model))
    for i in range(history.tasks_done, len(r.plan.tasks)):
        seed_everything(derive_seed(r.cfg.seed, i, 1))
        ctx = dataclasses.replace(r.context(i), n_tasks=i + 2)
        model, optimizer, ctx, hook_seconds = prepare_task(r, ctx, model, optimizer)
        stats, extra = fit_one(r, ctx, model, optimizer, history.schedule_offset)
        if r.cfg.train.optimizer_state == "reset":
            optimizer = None
        model, after_seconds = finish_task(r, ctx, model)
        evaluate_task(r, history, model, ctx.task, stats, hook_seconds + after_seconds, extra)
    return model, optimizer


def _value(cell: dict[str, Any] | None, metric: str) -> float | None:
    v = (cell or {}).get(metric)
    return float(v) if isinstance(v, (int, float)) else None


def matrix(rows: list[list[dict[str, Any]]], metric: str, n: int) -> list[list[float | None]]:
    """R for ``metric`` with ``n`` columns; entries a package never measured are None."""
    return [[_value(row[j] if j < len(row) else None, metric) for j in range(n)] for row in rows]


def stream_meta(r: Any, stream: Stream, info: dict[str, Any]) -> dict[str, Any]:
    from retain.objectives import HIGHER_IS_BETTER

    target = info.get("target", {})
    return {
        "stream": {
            "name": stream.name,
            "setting": stream.setting,
            "objective": stream.objective,
            "n_outputs": stream.n_outputs,
            "class_names": list(stream.class_names) if stream.class_names else None,
            "input_shape": list(stream.input_shape),
            "features": info.get("features"),
            "target": target.get("column") if isinstance(target, dict) else None,
        },
        "metric": r.metric,
        "higher_is_better": HIGHER_IS_BETTER.get(r.metric, r.metric != "loss"),
        "split": r.cfg.eval.split,
    }


def task_entry(task: Task, source: dict[str, Any] | None, added: str) -> dict[str, Any]:
    return {
        "name": task.name,
        "data": source,
        "train": len(task.train),
        "validation": len(task.val) if task.val is not None else 0,
        "test": len(task.test),
        "classes": list(task.classes) if task.classes is not None else None,
        "domain": task.domain,
        "added_by": added,
    }


def task_fingerprint(task: Task, stream: Stream, seed: int) -> Fingerprint:
    n = stream.n_outputs if stream.objective == "classification" else None
    return fingerprint(task.train, n_classes=n, seed=seed)


def contents(
    r: Any,
    model: Any,
    history: History,
    optimizer: Any,
    tasks: list[Task],
    fingerprints: list[Fingerprint],
    scaler: Any,
    rng: Any = None,
    kept: dict[str, Any] | None = None,
) -> Contents:
    if optimizer is not None and r.cfg.train.optimizer_state == "keep":
        kept = optimizer_state(optimizer)
    return Contents(
        config=r.cfg,
        model=r.acc.unwrap_model(model),
        strategies_state=[s.state_dict() for s in r.strategies],
        history=history.to_checkpoint(),
        tasks_done=history.tasks_done,
        optimizer_state=kept,
        rng=rng or rng_state(),
        tasks=tasks,
        suites=dict(r.stream.suites),
        scaler=scaler,
        fingerprints=fingerprints,
    )


def _first_package(
    r: Any,
    model: Any,
    history: History,
    optimizer: Any,
    stream: Stream,
    info: dict[str, Any],
    scaler: Any,
    out: Path,
    event: str,
    rng: Any = None,
    kept: Any = None,
) -> Package:
    sources = info.get("sources") or [None]
    per_file = len(sources) == len(stream.tasks)
    meta = new_meta()
    meta.update(stream_meta(r, stream, info))
    meta["tasks"] = [
        task_entry(t, sources[j] if per_file else sources[0], event)
        for j, t in enumerate(stream.tasks)
    ]
    meta["scores"] = {"matrix": matrix(history.rows, r.metric, len(stream.tasks))}
    meta["suites"] = {"names": list(stream.suites), "rows": history.suites}
    meta["strategies"] = [s.spec() for s in r.strategies]
    meta["history"] = [
        {
            "event": event,
            "time": now(),
            "tasks": stream.task_names,
            "strategies": meta["strategies"],
            "data": sources,
        }
    ]
    fps = [task_fingerprint(t, stream, r.cfg.seed) for t in stream.tasks]
    c = contents(r, model, history, optimizer, list(stream.tasks), fps, scaler, rng, kept)
    return Package(write(out, meta, c), meta)


def train_package(
    cfg: RunConfig, out: str | Path, progress: Any = None, warn: Callable[[str], None] | None = None
) -> Package:
    """``retain train CONFIG --out PKG``: train the config's stream and package the model."""
    check_packable(cfg)
    out = Path(out)
    check_new(out)
    stream, info, scaler = first_stream(cfg)
    r, model, history = session(stream, cfg, None, progress, warn, "config")
    model, optimizer = train_from(r, model, history)
    return _first_package(r, model, history, optimizer, stream, info, scaler, out, "train")


def package_run(
    run_dir: str | Path, out: str | Path, warn: Callable[[str], None] | None = None
) -> Package:
    """``retain package RUN_DIR --out PKG``: a finished run's model as a package; its data
    files are read again for the held-out sets and fingerprints (and must be unchanged)."""
    from retain.config import load_config
    from retain.report.record import RunRecord, load_record

    run_dir, out = Path(run_dir), Path(out)
    check_new(out)
    if not (run_dir / "config.resolved.yaml").is_file():
        raise ConfigError(f"'{run_dir}' is not a run directory (no config.resolved.yaml)")
    cfg = load_config(run_dir / "config.resolved.yaml")
    check_packable(cfg)
    record = load_record(run_dir / "result.json") if (run_dir / "result.json").is_file() else None
    if not isinstance(record, RunRecord) or not record.complete:
        raise ConfigError(
            f"'{run_dir}' holds no finished run; finish it (retain run --resume) first"
        )
    saved = RunDir(run_dir).load_checkpoint()
    if saved is None:
        raise ConfigError(
            f"'{run_dir}' has no checkpoint (output.checkpoints was off); rerun with checkpoints"
        )
    stream, info, scaler = first_stream(cfg)
    for now_src, then in zip(info.get("sources", []), (record.data or {}).get("sources", [])):
        if now_src.get("sha256") != then.get("sha256"):
            raise DataError(
                f"'{now_src.get('file')}' changed since the run; package needs the run's data"
            )
    r, model, history = session(stream, cfg, saved, None, warn, f"run '{run_dir}'")
    skipped = [s.name for s in r.strategies if s.name in SKIP_LAST_TASK]
    if skipped and warn:
        warn(
            f"the run ended with its last task, so {', '.join(skipped)} skipped its importance "
            "for it: later updates will not protect that task with it (retain train makes a "
            "package that keeps it)"
        )
    return _first_package(
        r,
        model,
        history,
        None,
        stream,
        info,
        scaler,
        out,
        "package",
        rng=saved.get("rng"),
        kept=saved.get("optimizer"),
    )


def package_stream(pkg: Package, extra: Task | None = None) -> Stream:
    s = pkg.meta["stream"]
    tasks = pkg.heldout() + ([extra] if extra is not None else [])
    return Stream(
        tuple(tasks),
        setting=s["setting"],
        objective=s["objective"],
        n_outputs=s["n_outputs"],
        class_names=tuple(s["class_names"]) if s["class_names"] else None,
        name=s["name"],
        suites=pkg.suites(),
    )


def load_package_model(pkg: Package, warn: Callable[[str], None] | None = None) -> tuple[Any, Any]:
    """The run state and model of a package (its weights checked against its config)."""
    cfg = pkg.config
    r, model, _ = session(
        package_stream(pkg), cfg, pkg.checkpoint(), None, warn, f"package '{pkg.path}'"
    )
    return r, model
