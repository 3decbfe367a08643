"""``retain update --strategy auto``: choose the update's strategy on the user's own data.

A short search (Optuna's TPE sampler, seeded with the config's seed) over the strategies an
update can use and their main hyperparameters, each trial a whole update trained from the
package. A trial is scored on what the search may read, never on test data:

- **learned**: the score on a validation split of the new data (its ``stream.validation`` split
  when it has one, else ``VAL_FRACTION`` of its training rows, held out of the trials' training);
- **kept**: for every earlier task, the drop of its score from the old model's on the held-out
  data the package keeps (its validation split when the package has one, else its held-out test
  split: the data the gate reads), and on every evaluation suite; the negative flip rate there.

The candidates are the package's own strategies (keeping their state: EWC's Fisher, the replay
buffer) with their main hyperparameters (:data:`SEARCHED`), and the stateless ones that need
nothing from earlier tasks: ``finetune`` and, for classification, ``lwf``; every one at a
learning rate between a tenth of the config's and the config's. A stateful strategy the package
does not hold (EWC on a finetune package) is not a candidate: started in an update, it has
nothing of the earlier data to protect. The first trial is the package's own setting, so the
search always holds what a plain update would do.

The choice (:func:`choose`): the best validation score among the trials whose every drop is at
most ``max_drop`` and every flip rate at most ``max_nfr`` (the gate's thresholds); when none is,
the trial with the smallest worst drop. Its config then trains on all of the new data, and the
update goes on as usual (verdict, gate). Determinism: the same package, data, seed and number of
trials give the same trials and choice on CPU; the time budget may end the search earlier on a
slower machine (it stops before a trial that would end past it, judged by the mean trial time).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

from retain.api import evaluate_all, evaluate_suites
from retain.config import RunConfig
from retain.data.stream import Stream, Task, TensorData
from retain.errors import ConfigError, DataError, RetainError
from retain.gate import predictions
from retain.package import Package
from retain.packaging import (
    _value,
    check_packable,
    session,
    starting_state,
    train_from,
)
from retain.utils.seed import generator

VAL_FRACTION = 0.2
LR_RANGE = (0.1, 1.0)  # times the config's train.lr
# Per strategy, the hyperparameters searched: "log" spans a tenth to ten times the package's
# value (log-uniform); a pair is a fixed range (widened to hold the package's value).
SEARCHED: dict[str, dict[str, Any]] = {
    "ewc": {"lam": "log"},
    "mas": {"lam": "log"},
    "si": {"c": "log"},
    "lwf": {"alpha": "log", "temperature": (1.0, 4.0)},
    "replay": {"ratio": (0.1, 0.9)},  # size is fixed: the kept buffer has its capacity
    "der": {"alpha": "log", "beta": (0.0, 1.0)},
}
DEFAULT_TRIALS = 20
DEFAULT_BUDGET = 600.0
RULE = (
    "the best validation score on the new data among trials whose every drop on the earlier "
    "tasks and suites is at most max_drop and every negative flip rate at most max_nfr; "
    "when no trial is, the one with the smallest worst drop"
)


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise ConfigError(
            "--strategy auto searches with optuna, which is not installed: "
            "pip install 'retain[auto]'"
        ) from None
    return optuna


def check_limits(budget: float | None, trials: int | None) -> tuple[float, int]:
    """``--budget`` and ``--trials``, or their defaults; refused in one line when unusable."""
    b = DEFAULT_BUDGET if budget is None else budget
    n = DEFAULT_TRIALS if trials is None else trials
    if not math.isfinite(b) or b <= 0:
        raise ConfigError(f"--budget must be a positive number of seconds, got {budget}")
    if n < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    return float(b), int(n)


@dataclasses.dataclass
class Candidate:
    """One strategy list the search may choose: its specs and the fields it tunes."""

    label: str
    specs: list[dict[str, Any]]
    ranges: dict[tuple[int, str], tuple[float, float, bool]]  # (spec index, field): lo, hi, log


def _range(how: Any, value: Any) -> tuple[float, float, bool] | None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return None
    v = float(value)
    if how == "log":
        return (v / 10, v * 10, True) if v > 0 else None
    lo, hi = how
    return min(lo, v), max(hi, v), False


def candidates(cfg: RunConfig, objective: str) -> list[Candidate]:
    """The package's own strategies (first), then finetune and, for classification, lwf."""
    from retain import strategies as registry

    own = [s.spec() for s in registry.build_all(cfg.strategies)]
    out = [_candidate(own)]
    for name in ("finetune", "lwf"):
        if name == "lwf" and objective != "classification":
            continue
        if [s["name"] for s in own] != [name]:
            out.append(_candidate([registry.build_all([{"name": name}])[0].spec()]))
    return out


def _candidate(specs: list[dict[str, Any]]) -> Candidate:
    ranges = {}
    for i, s in enumerate(specs):
        for f, how in SEARCHED.get(s["name"], {}).items():
            r = _range(how, s.get(f))
            if r is not None:
                ranges[(i, f)] = r
    return Candidate("+".join(s["name"] for s in specs), specs, ranges)


def search_split(task: Task, seed: int) -> tuple[TensorData, TensorData, str]:
    """What the trials train on and the new data's validation split: the task's own validation
    split, or ``VAL_FRACTION`` of its training rows (seeded). Its test split is never read."""
    if task.val is not None and len(task.val):
        return task.train, task.val, "validation split"
    n = len(task.train)
    k = max(1, round(n * VAL_FRACTION))
    if n - k < 1:
        raise DataError(
            f"--strategy auto holds {VAL_FRACTION:.0%} of the new data's training rows out for "
            f"its search, and '{task.name}' has {n}: give more data or set stream.validation"
        )
    train, val = task.train.split(k / n, generator(seed, 13))
    return train, val, f"{k} of {n} training rows"


def search_stream(old: Package, task: Task, seed: int) -> tuple[Stream, dict[str, Any]]:
    """The stream the trials train and are scored on: every earlier task's validation data (or
    held-out data, when the package has no validation split), the new task's training part and
    validation split in place of its test split; the evaluation suites as they are."""
    train, val, how = search_split(task, seed)
    tasks, used = [], []
    for t in old.heldout():
        has_val = t.val is not None and len(t.val) > 0
        data = t.val if has_val else t.test
        used.append({"name": t.name, "split": "val" if has_val else "test", "n": len(data)})
        tasks.append(Task(t.name, data, data, data, t.classes, t.domain))
    tasks.append(Task(task.name, train, val, val, task.classes, task.domain))
    s = old.meta["stream"]
    stream = Stream(
        tuple(tasks),
        setting=s["setting"],
        objective=s["objective"],
        n_outputs=s["n_outputs"],
        class_names=tuple(s["class_names"]) if s["class_names"] else None,
        name=s["name"],
        suites=old.suites(),
    )
    info = {
        "task": task.name,
        "validation": {"from": how, "n": len(val), "train": len(train)},
        "earlier": used,
        "suites": list(stream.suites),
    }
    return stream, info


def trial_config(cfg: RunConfig, specs: list[dict[str, Any]], lr: float) -> RunConfig:
    from retain.config import from_dict

    d = cfg.to_dict()
    d["strategies"] = copy.deepcopy(specs)
    d["train"]["lr"] = lr
    return from_dict(RunConfig, d)


def _scores(r: Any, rows: list[dict[str, Any]], suites: dict[str, Any]) -> list[float | None]:
    """Every task's score, then every suite's (None where the metric is missing)."""
    values = [_value(c, r.metric) for c in rows]
    return values + [_value(suites.get(n), r.metric) for n in r.stream.suites]


def measure(
    before: dict[str, Any],
    r: Any,
    model: Any,
    row: list[dict[str, Any]],
    suites: dict[str, Any],
    hib: bool,
    names: list[str] | None,
) -> dict[str, Any]:
    """A trial's numbers against the old model's: the new data's validation score and gain;
    per earlier task and suite the drop (positive: worse), their worst and mean; the worst
    negative flip rate."""
    from retain.eval.flips import flips

    sign = 1.0 if hib else -1.0
    after = _scores(r, row, suites)
    if any(v is None or not math.isfinite(v) for v in after):
        raise RetainError(f"a score ({r.metric}) is missing or not finite after training")
    k = len(r.stream.tasks) - 1
    labels = [*r.stream.task_names[:k], *r.stream.suites]
    kept = [j for j in range(k)] + [k + 1 + i for i in range(len(r.stream.suites))]
    drops = {}
    for name, j in zip(labels, kept):
        if names and name not in names:
            continue
        drops[name] = sign * (before["scores"][j] - after[j])
    nfr = None
    pred = predictions(r, model)
    if pred is not None and before["pred"] is not None:
        rates = [
            flips(before["pred"][j], pred[j], r.stream.tasks[j].test.y).nfr
            for j in range(k)
            if not names or r.stream.task_names[j] in names
        ]
        nfr = max(rates) if rates else None
    score = after[k]
    return {
        "score": score,
        "gain": sign * (score - before["scores"][k]),
        "drops": drops,
        "worst_drop": max(drops.values()) if drops else 0.0,
        "mean_drop": sum(drops.values()) / len(drops) if drops else 0.0,
        "nfr": nfr,
    }


def _old_model(old: Package, cfg: RunConfig, stream: Stream) -> dict[str, Any]:
    saved, _ = starting_state(old, cfg)
    r, model, _ = session(stream, cfg, saved, None, None, f"package '{old.path}'")
    row = evaluate_all(r, model, "eval before the search")
    scores = _scores(r, row, evaluate_suites(r, model))
    if any(v is None for v in scores):
        raise DataError(f"--strategy auto: the old model has no {r.metric} on some held-out data")
    return {"scores": scores, "pred": predictions(r, model)}


def _suggest(trial: Any, cands: list[Candidate], lr: float) -> tuple[Candidate, list[dict], float]:
    labels = [c.label for c in cands]
    c = cands[labels.index(trial.suggest_categorical("strategy", labels))]
    specs = copy.deepcopy(c.specs)
    for (i, f), (lo, hi, log) in c.ranges.items():
        specs[i][f] = trial.suggest_float(f"{c.label}.{i}.{f}", lo, hi, log=log)
    lo, hi = LR_RANGE
    return c, specs, trial.suggest_float("lr", lr * lo, lr * hi, log=True)


def _describe(specs: list[dict[str, Any]], c: Candidate, lr: float) -> str:
    parts = []
    for i, s in enumerate(specs):
        tuned = [f"{f}={s[f]:.3g}" for (j, f) in c.ranges if j == i]
        parts.append(s["name"] + (f" ({', '.join(tuned)})" if tuned else ""))
    return f"{'+'.join(parts)}, lr {lr:.3g}"


def pareto(trials: list[dict[str, Any]]) -> list[int]:
    """The trials no other trial beats on both the gain and the worst drop."""
    ok = [t for t in trials if t.get("error") is None]
    front = []
    for t in ok:
        if not any(
            u["gain"] >= t["gain"]
            and u["worst_drop"] <= t["worst_drop"]
            and (u["gain"] > t["gain"] or u["worst_drop"] < t["worst_drop"])
            for u in ok
        ):
            front.append(t["number"])
    return front


def pick(trials: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The rule of :data:`RULE`; ties go to the smaller drop, then the earlier trial."""
    ok = [t for t in trials if t.get("error") is None]
    if not ok:
        raise RetainError(
            "--strategy auto: every trial failed ("
            + "; ".join(f"trial {t['number']}: {t['error']}" for t in trials[:3])
            + "); lower train.lr or give --strategy"
        )
    within = [t for t in ok if t["feasible"]]
    if within:
        best = min(within, key=lambda t: (-t["gain"], t["worst_drop"], t["number"]))
        return best, "within max_drop and max_nfr, the best validation score on the new data"
    best = min(ok, key=lambda t: (t["worst_drop"], -t["gain"], t["number"]))
    return best, "no trial within max_drop and max_nfr: the smallest worst drop"


def search(
    old: Package,
    cfg: RunConfig,
    task: Task,
    max_drop: float,
    max_nfr: float,
    names: list[str] | None = None,
    budget: float | None = None,
    trials: int | None = None,
    progress: Any = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[RunConfig, dict[str, Any]]:
    """Search, choose, and return the chosen config with the search's record (trials, Pareto
    front, choice; docs/packages.md). Nothing is written; the test split is never read."""
    optuna = require_optuna()
    budget, n_trials = check_limits(budget, trials)
    start = clock()  # the budget counts the old model's scoring too
    stream, info = search_stream(old, task, cfg.seed)
    hib = old.meta["higher_is_better"]
    cands = candidates(cfg, stream.objective)
    before = _old_model(old, cfg, stream)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        sampler = optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=5)
        study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
        own = cands[0]
        study.enqueue_trial(
            {
                "strategy": own.label,
                "lr": cfg.train.lr,
                **{f"{own.label}.{i}.{f}": own.specs[i][f] for (i, f) in own.ranges},
            }
        )
        rows, stopped = [], "trials"
        for n in range(n_trials):
            spent = clock() - start
            if n and spent + spent / n > budget:
                stopped = "budget"
                break
            trial = study.ask()
            c, specs, lr = _suggest(trial, cands, cfg.train.lr)
            row = {
                "number": n,
                "strategy": c.label,
                "label": _describe(specs, c, lr),
                "strategies": specs,
                "lr": lr,
                "error": None,
            }
            t0 = clock()
            if progress is not None and hasattr(progress, "prefix"):
                progress.prefix = f"trial {n + 1}/{n_trials} · "
            try:
                tcfg = trial_config(cfg, specs, lr)
                check_packable(tcfg)
                saved, _ = starting_state(old, tcfg)
                r, model, history = session(stream, tcfg, saved, progress, None, "trial")
                model, _ = train_from(r, model, history)
                m = measure(before, r, model, history.rows[-1], history.suites[-1], hib, names)
            except RetainError as e:
                row["error"] = str(e)
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            else:
                row.update(m)
                row["feasible"] = m["worst_drop"] <= max_drop and (
                    m["nfr"] is None or m["nfr"] <= max_nfr
                )
                study.tell(trial, [m["gain"], m["worst_drop"]])
            row["seconds"] = clock() - t0
            rows.append(row)
    finally:
        optuna.logging.set_verbosity(verbosity)
        if progress is not None and hasattr(progress, "prefix"):
            progress.prefix = ""
    front = pareto(rows)
    for row in rows:
        row["pareto"] = row["number"] in front
    best, why = pick(rows)
    record = {
        **info,
        "seed": cfg.seed,
        "trials_requested": n_trials,
        "budget_seconds": budget,
        "stopped_by": stopped,
        "seconds": clock() - start,
        "thresholds": {"max_drop": max_drop, "max_nfr": max_nfr},
        "metric": old.meta["metric"],
        "higher_is_better": hib,
        "before": {"score": before["scores"][len(stream.tasks) - 1]},
        "candidates": [c.label for c in cands],
        "rule": RULE,
        "trials": rows,
        "pareto": front,
        "chosen": best["number"],
        "why": why,
        "config": {"strategies": best["strategies"], "train.lr": best["lr"]},
    }
    return trial_config(cfg, best["strategies"], best["lr"]), record


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.4f}"


def lines(record: dict[str, Any]) -> list[str]:
    """The search as a short table for the terminal."""
    out = [
        f"--strategy auto: {len(record['trials'])} trial(s) in {record['seconds']:.0f} s "
        f"(stopped by {record['stopped_by']}); validation on '{record['task']}' "
        f"({record['validation']['from']}), {record['metric']}:",
        f"  {'#':>3} {'score':>7} {'gain':>7} {'worst drop':>10} {'NFR':>6}  strategy",
    ]
    for t in record["trials"]:
        mark = "*" if t["number"] == record["chosen"] else ("p" if t.get("pareto") else " ")
        if t.get("error"):
            out.append(f"{mark} {t['number']:>3} failed: {t['error'][:70]}  {t['label']}")
            continue
        nfr = "-" if t["nfr"] is None else f"{t['nfr']:.3f}"
        out.append(
            f"{mark} {t['number']:>3} {_fmt(t['score']):>7} {_fmt(t['gain']):>7} "
            f"{_fmt(t['worst_drop']):>10} {nfr:>6}  {t['label']}"
        )
    out.append(f"  chosen: trial {record['chosen']} ({record['why']}); p: Pareto front")
    return out
