"""``retain update PKG --data D2 --out NEW``: one more task for a package, its verdict, its gate.

The new data is read like the package's own (the same reader, target column and features), split
by its position in the chain as scenario ``files`` splits its files, checked against the package
(the same features; the same classes outside class-IL) and scaled with the package's
standardisation statistics; then the package's run resumes with it as the next task
(:func:`retain.packaging.train_from`). Before training, the old model is scored on every task
(the new one included) and its predictions kept; after, the new model's. The verdict
(``verdict.json``, docs/packages.md) holds both scores, the flips on each earlier task's held-out
data, BWT, the gain on the new data, the drift from each earlier task's fingerprint, and the
gate's decision (:func:`retain.gate.judge`). A candidate that fails the gate is written to
``NEW.rejected`` (for a look at its verdict) and ``NEW`` is not made; the old package is only read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from retain import autostrategy
from retain.api import evaluate_all, evaluate_suites
from retain.config import RunConfig
from retain.data.stream import Stream, Task
from retain.errors import ConfigError, DataError
from retain.eval.drift import drift
from retain.gate import check_rows, check_thresholds, judge, predictions
from retain.gate import summary as gate_summary
from retain.package import Package, check_new, new_meta, now, scale, source_of, write
from retain.packaging import (
    _value,
    check_packable,
    contents,
    package_stream,
    session,
    starting_state,
    task_entry,
    task_fingerprint,
    train_from,
)
from retain.report.history import History
from retain.utils.state import rng_state


def new_task(
    pkg: Package, cfg: RunConfig, path: str, index: int
) -> tuple[Task, dict[str, Any], list[int]]:
    """D2 as the package's next task: read like the package's data, split by its position,
    checked against the package (features, classes), scaled with its statistics."""
    from retain.data.build import load_source
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
        raise DataError(
            f"--data '{path}' has inputs of shape {shape}; the package's are {s['input_shape']}"
        )
    src = src.with_test_split(sc.test_fraction, cfg.seed + index)
    y, yt = src.y_train, src.y_test
    new_classes: list[int] = []
    if s["objective"] == "classification":
        y, yt, new_classes = _labels(pkg, src, y, yt, path)
    train, val = with_validation(tensors(src.x_train, y), sc.validation, cfg.seed, index)
    if len(train) == 0:
        raise DataError(
            f"--data '{path}' has {n_rows} row(s): too few to hold some out for the verdict and "
            "train on the rest; give more"
        )
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
    return task, source_of(p), new_classes


def _labels(
    pkg: Package, src: Any, y: torch.Tensor, yt: torch.Tensor, path: str
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """D2's class ids in the package's label space; classes it has never seen are refused
    outside class-IL (they have no output), allowed in class-IL within the output width."""
    s = pkg.meta["stream"]
    names, own = s["class_names"], src.class_names
    if names and own:
        index = {str(c): i for i, c in enumerate(names)}
        unknown = sorted({str(c) for c in own} - set(index))
        if unknown:
            raise DataError(
                f"--data '{path}' has classes the package does not know: {', '.join(unknown[:5])}"
            )
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
            f"--data '{path}' has classes up to {ids[-1]} but the package's model has {width} "
            f"outputs (classes 0 to {width - 1}); growing the output layer is not supported"
        )
    if new and s["setting"] != "class_il":
        raise DataError(
            f"--data '{path}' has classes {new} that the package's tasks do not have; new "
            f"classes are allowed in the class_il setting only (this package is {s['setting']})"
        )
    return y, yt, new


def _strategy_specs(cfg: RunConfig, label: str | None) -> list[dict[str, Any]] | None:
    if not label:
        return None
    from retain.runner import specs_for

    return specs_for(label, cfg)


def _update_config(cfg: RunConfig, strategy: str | None, overrides: list[str] | None) -> RunConfig:
    """The package's config with ``--strategy`` and the ``KEY=VALUE`` overrides applied."""
    from retain.config import apply_overrides, from_dict

    specs = _strategy_specs(cfg, strategy)
    if specs is None and not overrides:
        return cfg
    d = cfg.to_dict()
    if specs is not None:
        d["strategies"] = specs
    return from_dict(RunConfig, apply_overrides(d, list(overrides or [])))


def _updated_meta(
    old: Package,
    task: Task,
    source: dict[str, Any],
    r: Any,
    stream: Stream,
    history: History,
    before: list[dict[str, Any]],
) -> dict[str, Any]:
    """The new package's package.json so far: the old one with the new task, its row of R
    (and the old model's score on it, before training), the suites and the strategies."""
    k = len(old.tasks)
    meta = new_meta(old.meta)
    meta["tasks"] = [dict(t) for t in old.tasks] + [
        task_entry(task, source, f"update {len(old.meta['history'])}")
    ]
    R = [list(row) + [None] for row in old.meta["scores"]["matrix"]]
    R[-1][k] = _value(before[k], r.metric)  # the old model on the new task, before training
    R.append([_value(c, r.metric) for c in history.rows[-1]])
    meta["scores"] = {"matrix": R}
    meta["suites"] = {"names": list(stream.suites), "rows": history.suites}
    meta["strategies"] = [s.spec() for s in r.strategies]
    return meta


def update(
    path: str | Path,
    data: str,
    out: str | Path,
    strategy: str | None = None,
    overrides: list[str] | None = None,
    max_drop: float = 0.02,
    max_nfr: float = 0.05,
    names: list[str] | None = None,
    union: bool = False,
    progress: Any = None,
    warn: Callable[[str], None] | None = None,
    budget: float | None = None,
    trials: int | None = None,
) -> tuple[dict[str, Any], Path]:
    """``retain update``: train the package at ``path`` on ``data``, write the new package and
    its verdict, and gate it against the old one. Returns the verdict and where the new package
    went: ``out`` when the gate passed, ``out.rejected`` when it failed (the old package is
    never written to either way).

    ``strategy="auto"`` chooses the strategy and its hyperparameters first
    (:func:`retain.autostrategy.search`, at most ``trials`` trials in ``budget`` seconds); the
    verdict's ``search`` holds every trial and the choice."""
    check_thresholds(max_drop, max_nfr)
    auto = strategy == "auto"
    if auto:  # before anything is read: the search's settings and its library
        autostrategy.check_limits(budget, trials)
        autostrategy.require_optuna()
    elif strategy and "auto" in [p.partition(":")[0].strip() for p in strategy.split("+")]:
        raise ConfigError(
            f"--strategy '{strategy}': auto chooses the strategies itself and stands alone; "
            "give --strategy auto, or name the strategies"
        )
    elif budget is not None or trials is not None:
        raise ConfigError("--budget and --trials set the search of --strategy auto; add it")
    old = Package.open(path)
    out = Path(out)
    check_new(out)
    rejected = out.with_name(out.name + ".rejected")
    check_new(rejected)
    cfg = _update_config(old.config, None if auto else strategy, overrides)
    check_packable(cfg)
    if names:
        check_rows(names, old.task_names, old.meta["suites"]["names"])
    k = len(old.tasks)
    task, source, new_classes = new_task(old, cfg, data, k)
    search = None
    if auto:
        cfg, search = autostrategy.search(
            old, cfg, task, max_drop, max_nfr, names, budget, trials, progress
        )
    stream = package_stream(old, task)
    files = union_files(old, data) if union else None
    saved, same = starting_state(old, cfg)
    if not same and warn and search is None:
        warn("--strategy differs from the package's: its consolidation state is not used")
    elif not same and warn:
        chosen = "+".join(s["name"] for s in search["config"]["strategies"])
        warn(
            f"--strategy auto chose {chosen}, not the package's strategies: their consolidation "
            "state (a replay buffer, EWC's Fisher) is not carried into the new package"
        )
    r, model, history = session(stream, cfg, saved, progress, warn, f"package '{old.path}'")
    before = evaluate_all(r, model, "eval before the update")
    suites_before = evaluate_suites(r, model)
    old_pred = predictions(r, model)
    fps = old.fingerprints()
    new_fp = task_fingerprint(task, stream, cfg.seed)
    drift_report = {t: drift(f, new_fp, seed=cfg.seed) for t, f in zip(old.task_names, fps)}
    model, optimizer = train_from(r, model, history)
    rng = rng_state()  # as training left it (a union model trained below draws more)
    new_pred = predictions(r, model)
    after = history.rows[-1]

    meta = _updated_meta(old, task, source, r, stream, history, before)
    verdict = build_verdict(
        old,
        r,
        stream,
        before,
        after,
        suites_before,
        history.suites[-1],
        old_pred,
        new_pred,
        drift_report,
        new_classes,
        meta,
    )
    verdict["data"] = source
    if files is not None:
        joint = evaluate_all(r, union_model(cfg, files, progress, warn), "eval union")
        verdict["union"] = union_report(joint, after, stream, r.metric, meta["higher_is_better"])
    verdict["gate"] = judge(verdict, max_drop, max_nfr, names)
    extra: dict[str, Any] = {}
    if search is not None:
        verdict["search"] = search
        if cfg.output.plots:
            from retain.report.search import png

            extra["search.png"] = png(search)
    meta["history"].append(
        {
            "event": "update",
            "time": now(),
            "parent": old.meta["id"],
            "task": task.name,
            "data": source,
            "strategies": meta["strategies"],
            "gate": verdict["gate"]["pass"],
        }
    )
    if search is not None:
        meta["history"][-1]["search"] = {
            "trials": len(search["trials"]),
            "chosen": search["chosen"],
            "config": search["config"],
        }
    fps = fps + [new_fp]
    c = contents(r, model, history, optimizer, list(stream.tasks), fps, old.scaler(), rng)
    dest = out if verdict["gate"]["pass"] else rejected
    write(dest, meta, c, {"verdict.json": verdict, **extra})
    return verdict, dest


def union_files(old: Package, data: str) -> list[str]:
    """The files of every earlier task and ``data``, for ``--union``; refused (one line) when a
    task has no file of its own, or its file is gone or changed since it was trained on."""
    files = []
    for t in old.tasks:
        d = t.get("data") or {}
        if old.config.stream.scenario != "files" or "file" not in d:
            raise ConfigError(
                f"--union trains on the earlier tasks' files, and task '{t['name']}' has none of "
                "its own (only packages of a files stream have them)"
            )
        if not Path(d["file"]).is_file() or source_of(d["file"])["sha256"] != d["sha256"]:
            raise DataError(
                f"--union: '{d['file']}' (task '{t['name']}') is missing or changed since the "
                "package was trained on it"
            )
        files.append(d["file"])
    return [*files, str(Path(data).absolute())]


def union_model(
    cfg: RunConfig, files: list[str], progress: Any, warn: Callable[[str], None] | None
) -> Any:
    """A model trained from scratch on all ``files`` at once (the ``joint`` reference): the
    same stream, splits and initial weights as ``retain run`` over those files with joint."""
    from retain.api import run
    from retain.config import from_dict
    from retain.packaging import first_stream
    from retain.runner import _model

    d = cfg.to_dict()
    d["stream"]["files"] = files
    d["strategies"] = [{"name": "joint"}]
    ucfg = from_dict(RunConfig, d)
    stream, _, _ = first_stream(ucfg)
    return run(_model(ucfg, stream), stream, None, ucfg, progress=progress, warn=warn).model


def union_report(
    joint: list[dict[str, Any]], after: list[dict[str, Any]], stream: Stream, metric: str, hib: bool
) -> dict[str, Any]:
    """The union model's score on every task's held-out data, and the gap: how far the updated
    model's average is below it (positive: the update is worse than training on the union)."""
    scores = [_value(c, metric) for c in joint]
    mine = [_value(c, metric) for c in after]
    avg_u = sum(v for v in scores if v is not None) / len(scores)
    avg_m = sum(v for v in mine if v is not None) / len(mine)
    return {
        "tasks": [{"name": t.name, "score": v} for t, v in zip(stream.tasks, scores)],
        "avg": avg_u,
        "avg_update": avg_m,
        "gap": (avg_u - avg_m) if hib else (avg_m - avg_u),
    }


def build_verdict(
    old: Package,
    r: Any,
    stream: Stream,
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    suites_before: dict[str, Any],
    suites_after: dict[str, Any],
    old_pred: Any,
    new_pred: Any,
    drift_report: dict[str, Any],
    new_classes: list[int],
    meta: dict[str, Any],
) -> dict[str, Any]:
    """What changed with the update (see docs/packages.md for every field)."""
    from retain.eval.flips import flips

    metric, hib = r.metric, meta["higher_is_better"]
    sign = 1.0 if hib else -1.0
    tasks, flip = [], {}
    for j, t in enumerate(stream.tasks):
        b, a = _value(before[j], metric), _value(after[j], metric)
        tasks.append(
            {
                "name": t.name,
                "before": b,
                "after": a,
                "change": None if a is None or b is None else a - b,
                "new": j == len(stream.tasks) - 1,
            }
        )
        if old_pred is not None and j < len(stream.tasks) - 1:
            y = getattr(t, r.cfg.eval.split).y
            flip[t.name] = flips(old_pred[j], new_pred[j], y).to_dict()
    suites = [
        {
            "name": n,
            "before": _value(suites_before.get(n), metric),
            "after": _value(suites_after.get(n), metric),
        }
        for n in stream.suites
    ]
    for s in suites:
        s["change"] = (
            None if s["after"] is None or s["before"] is None else s["after"] - s["before"]
        )
    earlier = [t["change"] for t in tasks[:-1] if t["change"] is not None]
    full = meta["scores"]["matrix"]
    T = len(full) - 1
    pkg_bwt = [
        full[T][i] - full[i + 1][i]
        for i in range(T - 1)
        if full[T][i] is not None and full[i + 1][i] is not None
    ]
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
        "flips_note": None
        if old_pred is not None
        else "no flips for regression: a prediction is not right or wrong; see each task's change",
        "bwt": sign * sum(earlier) / len(earlier) if earlier else None,
        "bwt_package": sign * sum(pkg_bwt) / len(pkg_bwt) if pkg_bwt else None,
        "gain": sign * new["change"] if new["change"] is not None else None,
        "new_classes": new_classes,
        "drift": drift_report,
    }


def summary(verdict: dict[str, Any]) -> list[str]:
    """The verdict's terminal lines, after the search's table when there was one."""
    head = autostrategy.lines(verdict["search"]) if verdict.get("search") else []
    return head + gate_summary(verdict)


__all__ = ["summary", "update"]
