"""The gate an update passes before it ships, and the predictions its flip rates come from.

:func:`judge` reads a verdict (per task and suite the score before and after, per earlier task
the flips) and fails every earlier task or suite whose score dropped by more than ``max_drop``
(in the metric's units, e.g. 0.02 = two points of accuracy; for a lower-is-better metric a rise)
or whose negative flip rate is above ``max_nfr``. The new task itself is not gated: its score
before the update is the old model's on data it never saw.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from retain.data.loader import TensorLoader
from retain.errors import ConfigError, did_you_mean
from retain.objectives import logits_of, masked, task_known
from retain.package import Package


def predictions(r: Any, model: Any) -> list[torch.Tensor] | None:
    """The predicted class of every held-out sample of every task (the split R is scored on),
    as the accuracy in R counts them (task-IL masks applied); None outside classification."""
    stream = r.stream
    if stream.objective != "classification":
        return None
    known = task_known(stream.setting)
    mask = r.class_mask
    was = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for task in stream.tasks:
            data = getattr(task, r.cfg.eval.split)
            preds = []
            for batch in TensorLoader(data, r.cfg.eval.batch_size, device=r.acc.device, even=False):
                logits = logits_of(r.objective.forward(model, batch, task_known=known)).float()
                m = mask[batch["task"]] if mask is not None else None
                preds.append(masked(logits, m).argmax(-1).cpu())
            out.append(torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long))
    model.train(was)
    return out


def check_thresholds(max_drop: float, max_nfr: float) -> None:
    """A NaN threshold would pass every check (no comparison with NaN is true) and an infinite
    one cannot be written to the verdict's JSON: both are refused before anything is read, as is
    a flip rate limit outside [0, 1]."""
    import math

    for flag, v, e in (("--max-drop", max_drop, 0.02), ("--max-nfr", max_nfr, 0.05)):
        if not math.isfinite(v):
            raise ConfigError(f"{flag} must be a finite number, got {v}; e.g. {flag} {e}")
    if not 0 <= max_nfr <= 1:  # a share of samples: below 0 every update fails, above 1 none
        raise ConfigError(f"--max-nfr is a share of samples, from 0 to 1; got {max_nfr}")


def check_rows(names: list[str], tasks: list[str], suites: list[str]) -> None:
    known = [*tasks, *suites]
    for n in names:
        if n not in known:
            raise ConfigError(
                f"--suite '{n}' is neither a task nor an evaluation suite of the package"
                f"{did_you_mean(n, known)}; it has {', '.join(known)}"
            )


def judge(
    verdict: dict[str, Any], max_drop: float, max_nfr: float, names: list[str] | None = None
) -> dict[str, Any]:
    """Pass or fail, with every check and every threshold that failed."""
    hib = verdict["higher_is_better"]
    flips = verdict.get("flips") or {}
    rows = [("task", t) for t in verdict["tasks"] if not t.get("new")]
    rows += [("suite", s) for s in verdict["suites"]]
    checks, failed = [], []
    for kind, row in rows:
        if names and row["name"] not in names:
            continue
        b, a = row["before"], row["after"]
        drop = None if a is None or b is None else (b - a if hib else a - b)
        f = flips.get(row["name"]) if kind == "task" else None
        check = {
            "name": row["name"],
            "kind": kind,
            "before": b,
            "after": a,
            "drop": drop,
            "nfr": f["nfr"] if f else None,
            "pfr": f["pfr"] if f else None,
            "failed": [],
        }
        if drop is not None and drop > max_drop:
            check["failed"].append("max_drop")
            failed.append(
                {
                    "name": row["name"],
                    "kind": kind,
                    "threshold": "max_drop",
                    "value": drop,
                    "limit": max_drop,
                }
            )
        if f and f["nfr"] > max_nfr:
            check["failed"].append("max_nfr")
            failed.append(
                {
                    "name": row["name"],
                    "kind": kind,
                    "threshold": "max_nfr",
                    "value": f["nfr"],
                    "limit": max_nfr,
                }
            )
        checks.append(check)
    return {
        "pass": not failed,
        "metric": verdict["metric"],
        "thresholds": {"max_drop": max_drop, "max_nfr": max_nfr},
        "checks": checks,
        "failed": failed,
    }


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def summary(verdict: dict[str, Any]) -> list[str]:
    """A few lines for the terminal: the scores before and after, the flips, the gate."""
    m = verdict["metric"]
    lines = [f"update with '{verdict['task']}' ({m}; before -> after):"]
    flips = verdict.get("flips") or {}
    for t in verdict["tasks"]:
        extra = " (new data)" if t.get("new") else ""
        f = flips.get(t["name"])
        if f:
            extra += f"  NFR {f['nfr']:.3f}  PFR {f['pfr']:.3f}"
        lines.append(f"  task {t['name']}: {_fmt(t['before'])} -> {_fmt(t['after'])}{extra}")
    for s in verdict["suites"]:
        lines.append(f"  suite {s['name']}: {_fmt(s['before'])} -> {_fmt(s['after'])}")
    lines.append(f"  gain on the new data {_fmt(verdict['gain'])}, BWT {_fmt(verdict['bwt'])}")
    if verdict.get("new_classes"):
        lines.append(f"  new classes (class-IL): {verdict['new_classes']}")
    worst = [
        (
            t,
            d["labels"]["total_variation"] if "labels" in d else None,
            d["features"]["mmd_p_value"] if "features" in d else None,
        )
        for t, d in verdict["drift"].items()
    ]
    for t, tv, p in worst:
        lines.append(f"  drift from '{t}': label TV {_fmt(tv)}, MMD p-value {_fmt(p)}")
    u = verdict.get("union")
    if u:
        lines.append(
            f"  trained on the union of all the data: average {_fmt(u['avg'])}; the update's "
            f"{_fmt(u['avg_update'])} (gap {_fmt(u['gap'])})"
        )
    g = verdict["gate"]
    if g["pass"]:
        lines.append("gate: pass")
    else:
        bad = ", ".join(
            f"{f['name']} {f['threshold']} ({f['value']:.4f} > {f['limit']})" for f in g["failed"]
        )
        lines.append(f"gate: FAIL: {bad}")
    return lines


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
    check_thresholds(max_drop, max_nfr)
    old, new = Package.open(old_path), Package.open(new_path)
    k = len(old.tasks)
    if new.task_names[:k] != old.task_names:
        raise ConfigError(
            f"'{new.path}' is not an update of '{old.path}': its tasks {new.task_names} do not "
            f"start with {old.task_names}"
        )
    if names:
        check_rows(names, old.task_names, old.meta["suites"]["names"])
    from retain.eval.flips import flips
    from retain.packaging import _value, load_package_model

    r_old, m_old = load_package_model(old)
    r_new, m_new = load_package_model(new)
    old_pred, new_pred = predictions(r_old, m_old), predictions(r_new, m_new)
    before, after = old.last_row(), new.last_row()
    sb, sa = old.last_suites(), new.last_suites()
    metric = old.meta["metric"]
    verdict: dict[str, Any] = {
        "metric": metric,
        "higher_is_better": old.meta["higher_is_better"],
        "tasks": [
            {"name": n, "before": before[j], "after": after[j]}
            for j, n in enumerate(old.task_names)
        ],
        "suites": [
            {"name": n, "before": _value(sb.get(n), metric), "after": _value(sa.get(n), metric)}
            for n in old.meta["suites"]["names"]
        ],
        "flips": None,
    }
    if old_pred is not None and new_pred is not None:
        split = r_old.cfg.eval.split
        verdict["flips"] = {
            t.name: flips(old_pred[j], new_pred[j], getattr(t, split).y).to_dict()
            for j, t in enumerate(r_old.stream.tasks)
        }
    out = judge(verdict, max_drop, max_nfr, names)
    out = {"old": str(old.path), "new": str(new.path), **out}
    return out
