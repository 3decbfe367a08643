"""``retain train``, ``retain package`` and ``retain update``: a model in use, updated with new data.

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
from retain.eval.drift import Fingerprint, drift, fingerprint
from retain.gate import check_rows, judge, predictions, summary
from retain.package import Contents, Package, check_new, new_meta, now, scale, scaler_from, write
from retain.report.history import History
from retain.utils.checkpoint import RunDir, optimizer_state
from retain.utils.seed import derive_seed, seed_everything
from retain.utils.state import rng_state, write_json

NEEDS_TRAINING_DATA = ("joint", "cumulative")


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
        raise ConfigError("data mixing (stream.mix) draws on earlier tasks' training data, which a package does not hold")
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
        first = str(e).splitlines()[0]
        raise ConfigError(f"{where}: its weights do not match its config ({first})") from None
    return r, model, history


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


def contents(r: Any, model: Any, history: History, optimizer: Any, tasks: list[Task],
             fingerprints: list[Fingerprint], scaler: Any, rng: Any = None,
             kept: dict[str, Any] | None = None) -> Contents:
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


def _first_package(r: Any, model: Any, history: History, optimizer: Any, stream: Stream,
                   info: dict[str, Any], scaler: Any, out: Path, event: str,
                   rng: Any = None, kept: Any = None) -> Package:
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
    meta["history"] = [{"event": event, "time": now(), "tasks": stream.task_names,
                        "strategies": meta["strategies"], "data": sources}]
    fps = [task_fingerprint(t, stream, r.cfg.seed) for t in stream.tasks]
    c = contents(r, model, history, optimizer, list(stream.tasks), fps, scaler, rng, kept)
    return Package(write(out, meta, c), meta)


def train_package(cfg: RunConfig, out: str | Path, progress: Any = None,
                  warn: Callable[[str], None] | None = None) -> Package:
    """``retain train CONFIG --out PKG``: train the config's stream and package the model."""
    check_packable(cfg)
    out = Path(out)
    check_new(out)
    stream, info, scaler = first_stream(cfg)
    r, model, history = session(stream, cfg, None, progress, warn, "config")
    model, optimizer = train_from(r, model, history)
    return _first_package(r, model, history, optimizer, stream, info, scaler, out, "train")


def package_run(run_dir: str | Path, out: str | Path, warn: Callable[[str], None] | None = None) -> Package:
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
        raise ConfigError(f"'{run_dir}' holds no finished run; finish it (retain run --resume) first")
    saved = RunDir(run_dir).load_checkpoint()
    if saved is None:
        raise ConfigError(f"'{run_dir}' has no checkpoint (output.checkpoints was off); rerun with checkpoints")
    stream, info, scaler = first_stream(cfg)
    for now_src, then in zip(info.get("sources", []), (record.data or {}).get("sources", [])):
        if now_src.get("sha256") != then.get("sha256"):
            raise DataError(f"'{now_src.get('file')}' changed since the run; package needs the run's data")
    r, model, history = session(stream, cfg, saved, None, warn, f"run '{run_dir}'")
    pkg = _first_package(r, model, history, None, stream, info, scaler, out, "package",
                         rng=saved.get("rng"), kept=saved.get("optimizer"))
    return pkg


# ---------------------------------------------------------------------------------- updates


def new_task(pkg: Package, cfg: RunConfig, path: str, index: int) -> tuple[Task, dict[str, Any], list[int]]:
    """D2 as the package's next task: read like the package's data, split by its position,
    checked against the package (features, classes), scaled with its statistics."""
    from retain.data.build import _source_file, load_source
    from retain.data.scenarios.common import tensors, with_validation

    s = pkg.meta["stream"]
    p = Path(path)
    if not p.exists():
        raise DataError(f"--data '{path}' does not exist")
    sc = cfg.stream
    src_cfg = dataclasses.replace(sc, target=s["target"] or sc.target, objective=s["objective"])
    src = load_source(src_cfg, str(p)).limit(sc.limit_train, sc.limit_test, cfg.seed)
    n_rows = len(src.x_train) + (len(src.x_test) if src.x_test is not None else 0)
    if n_rows == 0:
        raise DataError(f"--data '{path}' has no rows; give a file with data")
    if s["features"] and src.feature_names and list(src.feature_names) != list(s["features"]):
        raise DataError(
            f"--data '{path}' has features {src.feature_names} but the package was trained on "
            f"{s['features']}; give a file with the same columns"
        )
    shape = list(src.x_train.shape[1:])
    if shape != s["input_shape"]:
        raise DataError(f"--data '{path}' has inputs of shape {shape}; the package's are {s['input_shape']}")
    src = src.with_test_split(sc.test_fraction, cfg.seed + index)
    y, yt = src.y_train, src.y_test
    new_classes: list[int] = []
    if s["objective"] == "classification":
        y, yt, new_classes = _labels(pkg, src, y, yt, path)
    train, val = with_validation(tensors(src.x_train, y), sc.validation, cfg.seed, index)
    test = tensors(src.x_test, yt)
    scaler = pkg.scaler()
    name = p.stem
    k = 2
    while name in pkg.task_names:
        name, k = f"{p.stem}-{k}", k + 1
    if s["objective"] != "classification":
        classes = None
    elif s["setting"] == "class_il":
        classes = tuple(int(c) for c in torch.unique(torch.cat([y, yt])))
    else:
        classes = tuple(range(s["n_outputs"]))
    task = Task(name, scale(train, scaler), scale(test, scaler), scale(val, scaler), classes, name)
    return task, _source_file(str(p)), new_classes


def _labels(pkg: Package, src: Any, y: torch.Tensor, yt: torch.Tensor, path: str) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """D2's class ids in the package's label space; classes it has never seen are refused
    outside class-IL (they have no output), allowed in class-IL within the output width."""
    s = pkg.meta["stream"]
    names, own = s["class_names"], src.class_names
    if names and own:
        index = {str(c): i for i, c in enumerate(names)}
        unknown = sorted({str(c) for c in own} - set(index))
        if unknown:
            raise DataError(f"--data '{path}' has classes the package does not know: {', '.join(unknown[:5])}")
        lut = torch.tensor([index[str(c)] for c in own], dtype=torch.long)
        y, yt = lut[y], lut[yt]
    seen = set()
    for t in pkg.tasks:
        seen |= set(t.get("classes") or [])
    ids = sorted({int(c) for c in torch.unique(torch.cat([y, yt]))})
    new = [c for c in ids if c not in seen]
    width = s["n_outputs"]
    if ids and (ids[0] < 0 or ids[-1] >= width):
        raise DataError(
            f"--data '{path}' has class ids {ids[-1]} and up; the package's model has {width} "
            "outputs (growing the output layer is not supported)"
        )
    if new and s["setting"] != "class_il":
        raise DataError(
            f"--data '{path}' has classes {new} that the package's tasks do not have; new "
            f"classes are allowed in the class_il setting only (this package is {s['setting']})"
        )
    return y, yt, new


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
    r, model, _ = session(package_stream(pkg), cfg, pkg.checkpoint(), None, warn, f"package '{pkg.path}'")
    return r, model


def _strategy_specs(cfg: RunConfig, label: str | None) -> list[dict[str, Any]] | None:
    if not label:
        return None
    from retain.runner import specs_for

    return specs_for(label, cfg)


def update(
    path: str | Path,
    data: str,
    out: str | Path,
    strategy: str | None = None,
    overrides: list[str] | None = None,
    max_drop: float = 0.02,
    max_nfr: float = 0.05,
    names: list[str] | None = None,
    progress: Any = None,
    warn: Callable[[str], None] | None = None,
) -> tuple[dict[str, Any], Path]:
    """``retain update``: train the package at ``path`` on ``data``, write the new package and
    its verdict, and gate it against the old one. Returns the verdict and where the new package
    went: ``out`` when the gate passed, ``out.rejected`` when it failed (the old package is
    never written to either way)."""
    from retain.config import apply_overrides, from_dict

    old = Package.open(path)
    out = Path(out)
    check_new(out)
    rejected = out.with_name(out.name + ".rejected")
    check_new(rejected)
    cfg = old.config
    specs = _strategy_specs(cfg, strategy)
    if specs is not None or overrides:
        d = cfg.to_dict()
        if specs is not None:
            d["strategies"] = specs
        cfg = from_dict(RunConfig, apply_overrides(d, list(overrides or [])))
    check_packable(cfg)
    if names:
        check_rows(names, old.task_names, old.meta["suites"]["names"])
    k = len(old.tasks)
    task, source, new_classes = new_task(old, cfg, data, k)
    stream = package_stream(old, task)
    saved = old.checkpoint()
    same = [s.get("name") for s in cfg.strategies] == [s.get("name") for s in old.meta["strategies"]]
    if not same:  # another strategy: the package's consolidation state is not its own
        from retain import strategies as registry

        saved["strategies"] = [s.state_dict() for s in registry.build_all(cfg.strategies)]
        if warn:
            warn("--strategy differs from the package's: its consolidation state is not used")
    r, model, history = session(stream, cfg, saved, progress, warn, f"package '{old.path}'")
    before = evaluate_all(r, model, "eval before the update")
    suites_before = evaluate_suites(r, model)
    old_pred = predictions(r, model)
    fps = old.fingerprints()
    new_fp = task_fingerprint(task, stream, cfg.seed)
    drift_report = {t: drift(f, new_fp, seed=cfg.seed) for t, f in zip(old.task_names, fps)}
    model, optimizer = train_from(r, model, history)
    new_pred = predictions(r, model)
    after = history.rows[-1]

    meta = new_meta(old.meta)
    meta["tasks"] = [dict(t) for t in old.tasks] + [task_entry(task, source, f"update {len(old.meta['history'])}")]
    n = k + 1
    m = matrix(history.rows[:-1], r.metric, n)
    m[-1][k] = _value(before[k], r.metric)  # the old model on the new task: R's entry above the diagonal
    m.append(matrix([after], r.metric, n)[0])
    meta["scores"] = {"matrix": [row[:n] for row in _merge(old.meta["scores"]["matrix"], m)]}
    meta["suites"] = {"names": list(stream.suites), "rows": history.suites}
    meta["strategies"] = [s.spec() for s in r.strategies]
    verdict = build_verdict(old, r, stream, before, after, suites_before, history.suites[-1],
                            old_pred, new_pred, drift_report, new_classes, meta)
    verdict["data"] = source
    verdict["gate"] = judge(verdict, max_drop, max_nfr, names)
    meta["history"].append({
        "event": "update", "time": now(), "parent": old.meta["id"], "task": task.name,
        "data": source, "strategies": meta["strategies"], "gate": verdict["gate"]["pass"],
    })
    fps = fps + [new_fp]
    c = contents(r, model, history, optimizer, list(stream.tasks), fps, old.scaler())
    c.suites = old.suites()
    dest = out if verdict["gate"]["pass"] else rejected
    write(dest, meta, c)
    write_json(dest / "verdict.json", verdict)
    return verdict, dest


def _merge(old: list[list[float | None]], new: list[list[float | None]]) -> list[list[float | None]]:
    """The package's R so far (its entries above the diagonal kept) with this update's rows."""
    out = [list(row) + [None] * (len(new[0]) - len(row)) for row in old]
    for i, row in enumerate(new):
        if i < len(out):
            out[i] = [a if b is None else b for a, b in zip(out[i], row)]
        else:
            out.append(list(row))
    return out


def build_verdict(old: Package, r: Any, stream: Stream, before: list[dict[str, Any]],
                  after: list[dict[str, Any]], suites_before: dict[str, Any],
                  suites_after: dict[str, Any], old_pred: Any, new_pred: Any,
                  drift_report: dict[str, Any], new_classes: list[int], meta: dict[str, Any]) -> dict[str, Any]:
    """What changed with the update (see docs/packages.md for every field)."""
    from retain.eval.flips import flips

    metric, hib = r.metric, meta["higher_is_better"]
    sign = 1.0 if hib else -1.0
    tasks, flip = [], {}
    for j, t in enumerate(stream.tasks):
        b, a = _value(before[j], metric), _value(after[j], metric)
        tasks.append({"name": t.name, "before": b, "after": a,
                      "change": None if a is None or b is None else a - b, "new": j == len(stream.tasks) - 1})
        if old_pred is not None and j < len(stream.tasks) - 1:
            y = getattr(t, r.cfg.eval.split).y
            flip[t.name] = flips(old_pred[j], new_pred[j], y).to_dict()
    suites = [{"name": n, "before": _value(suites_before.get(n), metric),
               "after": _value(suites_after.get(n), metric)} for n in stream.suites]
    for s in suites:
        s["change"] = None if s["after"] is None or s["before"] is None else s["after"] - s["before"]
    earlier = [t["change"] for t in tasks[:-1] if t["change"] is not None]
    full = meta["scores"]["matrix"]
    T = len(full) - 1
    pkg_bwt = [full[T][i] - full[i + 1][i] for i in range(T - 1)
               if full[T][i] is not None and full[i + 1][i] is not None]
    new = tasks[-1]
    return {
        "old": {"path": str(old.path), "id": old.meta["id"]},
        "task": new["name"],
        "metric": metric,
        "higher_is_better": hib,
        "strategies": meta["strategies"],
        "tasks": tasks,
        "suites": suites,
        "flips": flip if old_pred is not None else None,
        "flips_note": None if old_pred is not None else
            "no flips for regression: a prediction is not right or wrong; see each task's change",
        "bwt": sign * sum(earlier) / len(earlier) if earlier else None,
        "bwt_package": sign * sum(pkg_bwt) / len(pkg_bwt) if pkg_bwt else None,
        "gain": sign * new["change"] if new["change"] is not None else None,
        "new_classes": new_classes,
        "drift": drift_report,
    }


def gate_packages(
    old_path: str | Path,
    new_path: str | Path,
    max_drop: float = 0.02,
    max_nfr: float = 0.05,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """``retain gate OLD NEW``: NEW against OLD on OLD's tasks and suites. The scores are the
    packages' own (R's last rows); the flips come from both models' predictions on OLD's
    held-out data."""
    old, new = Package.open(old_path), Package.open(new_path)
    k = len(old.tasks)
    if new.task_names[:k] != old.task_names:
        raise ConfigError(
            f"'{new.path}' is not an update of '{old.path}': its tasks {new.task_names} do not "
            f"start with {old.task_names}"
        )
    if names:
        check_rows(names, old.task_names, old.meta["suites"]["names"])
    r_old, m_old = load_package_model(old)
    r_new, m_new = load_package_model(new)
    old_pred, new_pred = predictions(r_old, m_old), predictions(r_new, m_new)
    before, after = old.last_row(), new.last_row()
    sb, sa = old.last_suites(), new.last_suites()
    metric = old.meta["metric"]
    verdict: dict[str, Any] = {
        "metric": metric,
        "higher_is_better": old.meta["higher_is_better"],
        "tasks": [{"name": n, "before": before[j], "after": after[j]} for j, n in enumerate(old.task_names)],
        "suites": [{"name": n, "before": _value(sb.get(n), metric), "after": _value(sa.get(n), metric)}
                   for n in old.meta["suites"]["names"]],
        "flips": None,
    }
    if old_pred is not None and new_pred is not None:
        from retain.eval.flips import flips

        split = r_old.cfg.eval.split
        verdict["flips"] = {
            t.name: flips(old_pred[j], new_pred[j], getattr(t, split).y).to_dict()
            for j, t in enumerate(r_old.stream.tasks)
        }
    out = judge(verdict, max_drop, max_nfr, names)
    out = {"old": str(old.path), "new": str(new.path), **out}
    return out


__all__ = ["gate_packages", "package_run", "summary", "train_package", "update"]
