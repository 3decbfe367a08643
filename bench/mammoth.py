"""Reproduce mammoth's MNIST protocols (Buzzega et al., NeurIPS 2020) with retain.

Three steps, each resumable:

    python bench/mammoth.py select                  # choose oEWC's lambda on a validation split
    python bench/mammoth.py configs                 # write bench/configs/<bench>_<method>.yaml
    python bench/mammoth.py run --seeds 0,1,2       # run them (skips finished runs)
    python bench/mammoth.py table                   # bench/results/mammoth.md

Every row is also one command: ``retain run bench/configs/pmnist_derpp500.yaml seed=1``.
``run`` builds each benchmark's stream once per seed and runs every method on it in this process
(the stream a config describes, identical to what ``retain run`` builds); the wall time of a row
is the run itself (training, strategy hooks, evaluation), the stream's preparation is reported
separately. Hyperparameters are mammoth's best_args (utils/best_args.py in
https://github.com/aimagelab/mammoth); no value here was tuned on a test set.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent
CONFIGS = HERE / "configs"
OUT = HERE / "out" / "mammoth"
RESULTS = HERE / "results"

BENCH = {
    "smnist": {
        "title": "Seq-MNIST (class-IL and task-IL)",
        "stream": {"dataset": "mnist", "scenario": "split", "setting": "class_il", "n_tasks": 5},
        "batch_size": 10,
    },
    "pmnist": {
        "title": "P-MNIST, 20 tasks (domain-IL)",
        "stream": {"dataset": "mnist", "scenario": "permuted", "n_tasks": 20},
        "batch_size": 128,
    },
    "rmnist": {
        "title": "R-MNIST, 20 tasks (domain-IL)",
        "stream": {"dataset": "mnist", "scenario": "rotated", "n_tasks": 20, "max_angle": 180.0},
        "batch_size": 128,
    },
}


def ewc(lam: float) -> dict[str, Any]:
    return {
        "name": "ewc",
        "mode": "online",
        "lam": lam,
        "gamma": 1.0,
        "fisher": "empirical_weighted",
        "fisher_samples": None,
    }  # mammoth: every training sample


def er(size: int, mb: int) -> dict[str, Any]:
    return {"name": "replay", "size": size, "batch_size": mb}


def der(size: int, mb: int, alpha: float, beta: float = 0.0) -> dict[str, Any]:
    return {"name": "der", "size": size, "batch_size": mb, "alpha": alpha, "beta": beta}


def agem(size: int, mb: int) -> dict[str, Any]:
    return {"name": "agem", "size": size, "batch_size": mb}


# (benchmark, method) -> (lr, strategies, extra train settings, published {column: number})
# Published numbers: final average accuracy (%), from mammoth's README and the DER paper
# (Buzzega et al. 2020).
METHODS: dict[
    tuple[str, str], tuple[float, list[dict[str, Any]], dict[str, Any], dict[str, float]]
] = {
    ("smnist", "finetune"): (
        0.03,
        [{"name": "finetune"}],
        {},
        {"class_il": 19.60, "task_il": 94.94},
    ),
    ("smnist", "oewc"): (0.03, [ewc(90.0)], {}, {"class_il": 20.46, "task_il": 98.39}),
    ("smnist", "si"): (
        0.1,
        [{"name": "si", "c": 1.0, "xi": 0.9, "clip_value": 1.0}],
        {},
        {"class_il": 19.27, "task_il": 96.00},
    ),
    # mammoth's LwF adds wd_reg * sum(theta^2) to the loss: SGD weight decay 2 * wd_reg; its
    # distillation is a cross-entropy without retain's T^2 factor (T = 2): alpha 1 there is 0.25 here.
    ("smnist", "lwf"): (
        0.03,
        [{"name": "lwf", "alpha": 0.25, "temperature": 2.0}],
        {"weight_decay": 0.001},
        {"class_il": 19.62, "task_il": 94.11},
    ),
    ("smnist", "er200"): (0.01, [er(200, 10)], {}, {"class_il": 80.43, "task_il": 97.86}),
    ("smnist", "er500"): (0.1, [er(500, 10)], {}, {"class_il": 86.12, "task_il": 99.04}),
    ("smnist", "agem200"): (0.1, [agem(200, 128)], {}, {"class_il": 45.72, "task_il": 98.61}),
    ("smnist", "agem500"): (0.1, [agem(500, 128)], {}, {"class_il": 46.66, "task_il": 98.93}),
    ("smnist", "der200"): (0.03, [der(200, 10, 0.2)], {}, {"class_il": 84.55, "task_il": 98.80}),
    ("smnist", "der500"): (0.03, [der(500, 128, 1.0)], {}, {"class_il": 90.54, "task_il": 98.84}),
    ("smnist", "derpp200"): (
        0.03,
        [der(200, 128, 0.2, 1.0)],
        {},
        {"class_il": 85.61, "task_il": 98.76},
    ),
    ("smnist", "derpp500"): (
        0.03,
        [der(500, 10, 1.0, 0.5)],
        {},
        {"class_il": 91.00, "task_il": 98.94},
    ),
    ("smnist", "joint"): (0.03, [{"name": "joint"}], {}, {"class_il": 95.57, "task_il": 99.51}),
    ("pmnist", "finetune"): (0.2, [{"name": "finetune"}], {}, {"domain_il": 40.70}),
    ("pmnist", "oewc"): (0.1, [ewc(0.7)], {}, {"domain_il": 75.79}),
    ("pmnist", "si"): (
        0.1,
        [{"name": "si", "c": 0.5, "xi": 1.0, "clip_value": 1.0}],
        {},
        {"domain_il": 65.86},
    ),
    ("pmnist", "er200"): (0.2, [er(200, 128)], {}, {"domain_il": 72.37}),
    ("pmnist", "er500"): (0.2, [er(500, 128)], {}, {"domain_il": 80.60}),
    ("pmnist", "agem200"): (0.1, [agem(200, 128)], {}, {"domain_il": 66.42}),
    ("pmnist", "agem500"): (0.1, [agem(500, 128)], {}, {"domain_il": 67.56}),
    ("pmnist", "der200"): (0.2, [der(200, 128, 1.0)], {}, {"domain_il": 81.74}),
    ("pmnist", "der500"): (0.2, [der(500, 128, 1.0)], {}, {"domain_il": 87.29}),
    ("pmnist", "derpp200"): (0.1, [der(200, 128, 1.0, 1.0)], {}, {"domain_il": 83.58}),
    ("pmnist", "derpp500"): (0.2, [der(500, 128, 1.0, 0.5)], {}, {"domain_il": 88.21}),
    ("pmnist", "joint"): (0.2, [{"name": "joint"}], {}, {"domain_il": 94.33}),
    ("rmnist", "finetune"): (0.2, [{"name": "finetune"}], {}, {"domain_il": 67.66}),
    ("rmnist", "oewc"): (0.1, [ewc(0.7)], {}, {"domain_il": 77.35}),
    ("rmnist", "er500"): (0.2, [er(500, 128)], {}, {"domain_il": 88.91}),
    ("rmnist", "derpp500"): (0.2, [der(500, 128, 0.5, 1.0)], {}, {"domain_il": 92.77}),
    ("rmnist", "joint"): (0.2, [{"name": "joint"}], {}, {"domain_il": 95.76}),
}
# Hyperparameters chosen on a validation split (10% of each task's training data, seed 0, scored
# with eval.split=val): never on the test sets. The winner becomes the row "<method>-valsel".
SELECT = {("pmnist", "oewc"): ("lam", [0.7, 2.0, 4.0, 7.0, 10.0, 20.0])}
SELECTION = RESULTS / "selection.json"


def _selected() -> dict[str, Any]:
    return json.loads(SELECTION.read_text()) if SELECTION.is_file() else {}


for (_b, _m), (_param, _grid) in SELECT.items():
    _best = _selected().get(f"{_b}_{_m}", {}).get("best")
    if _best is not None:
        _lr, _strats, _extra, _pub = METHODS[(_b, _m)]
        _strats = [dict(s) for s in _strats]
        _strats[0][_param] = _best
        METHODS[(_b, f"{_m}-valsel")] = (_lr, _strats, _extra, _pub)

# Rows retain is held to: within 2 points of the published number, or above it.
REQUIRED = {
    ("smnist", "derpp500"),
    ("pmnist", "derpp500"),
    ("rmnist", "derpp500"),
    ("smnist", "er500"),
    ("pmnist", "er500"),
    ("pmnist", "oewc"),
    ("smnist", "joint"),
    ("pmnist", "joint"),
    ("rmnist", "joint"),
}


def config_for(bench: str, method: str) -> dict[str, Any]:
    lr, strategies, extra, _ = METHODS[(bench, method)]
    b = BENCH[bench]
    return {
        "name": f"{bench}_{method}",
        "seed": 0,
        "stream": dict(b["stream"]),
        "model": {"name": "mlp", "hidden": [100, 100], "init": "xavier"},
        "train": {
            "epochs": 1,
            "batch_size": b["batch_size"],
            "optimizer": "sgd",
            "lr": lr,
            **extra,
        },
        "eval": {"batch_size": 4096},
        "output": {"checkpoints": False, "plots": False},
        "strategies": strategies,
    }


def write_configs() -> None:
    CONFIGS.mkdir(parents=True, exist_ok=True)
    for bench, method in METHODS:
        cfg = config_for(bench, method)
        published = METHODS[(bench, method)][3]
        head = (
            f"# {BENCH[bench]['title']}: {method}. mammoth protocol (Buzzega et al. 2020):\n"
            f"# MLP 784-100-100-10 (xavier init), plain SGD, 1 epoch per task.\n"
            f"# Published final average accuracy: "
            + ", ".join(f"{k} {v:.2f}" for k, v in published.items())
            + f"\n# Reproduce: retain run bench/configs/{bench}_{method}.yaml seed=1\n"
            f"# Generated by bench/mammoth.py configs; edit the table there, not this file.\n"
        )
        (CONFIGS / f"{bench}_{method}.yaml").write_text(head + yaml.safe_dump(cfg, sort_keys=False))
    print(f"wrote {len(METHODS)} configs to {CONFIGS}")


def run_all(benches: list[str], methods: list[str] | None, seeds: list[int]) -> None:
    from retain.config import RunConfig, from_dict
    from retain.runner import prepare_stream, run_config

    for bench in benches:
        names = [m for (b, m) in METHODS if b == bench and (not methods or m in methods)]
        for seed in seeds:
            todo = [
                m
                for m in names
                if not (OUT / f"{bench}_{m}" / f"s{seed}" / "result.json").is_file()
            ]
            if not todo:
                continue
            base = from_dict(RunConfig, {**config_for(bench, todo[0]), "seed": seed})
            t0 = time.perf_counter()
            prepared = prepare_stream(base)
            prep = time.perf_counter() - t0
            print(f"[{bench} seed {seed}] stream ready in {prep:.1f} s", flush=True)
            for m in todo:
                cfg = from_dict(RunConfig, {**config_for(bench, m), "seed": seed})
                out = OUT / f"{bench}_{m}" / f"s{seed}"
                if out.exists():
                    import shutil

                    shutil.rmtree(out)
                t0 = time.perf_counter()
                rec = run_config(cfg, out, progress=None, stream_info=prepared).to_dict()
                wall = time.perf_counter() - t0
                rec["bench"] = {"wall_seconds": wall, "stream_seconds": prep}
                (out / "bench.json").write_text(json.dumps(rec["bench"]))
                print(
                    f"  {m:10s} seed {seed}: {100 * rec['metrics']['avg_accuracy']:.2f} "
                    f"({wall:.1f} s)",
                    flush=True,
                )
            del prepared


def select() -> None:
    """Grid-search each SELECT entry on a validation split and record the best value."""
    from retain.config import RunConfig, from_dict
    from retain.errors import RetainError
    from retain.runner import prepare_stream, run_config

    found = _selected()
    for (bench, method), (param, grid) in SELECT.items():
        scores = {}
        base = config_for(bench, method)
        base["stream"]["validation"] = 0.1
        base["eval"]["split"] = "val"
        prepared = prepare_stream(from_dict(RunConfig, base))
        for value in grid:
            data = json.loads(json.dumps(base))
            data["strategies"][0][param] = value
            out = OUT / "select" / f"{bench}_{method}_{param}{value}"
            if out.exists():
                import shutil

                shutil.rmtree(out)
            try:
                rec = run_config(from_dict(RunConfig, data), out, stream_info=prepared).to_dict()
                scores[str(value)] = 100 * rec["metrics"]["avg_accuracy"]
            except RetainError as e:  # e.g. the loss diverged: this value loses
                scores[str(value)] = None
                print(f"  {bench} {method} {param}={value}: failed ({e})", flush=True)
                continue
            print(
                f"  {bench} {method} {param}={value}: validation {scores[str(value)]:.2f}",
                flush=True,
            )
        best = max((v for v in grid if scores[str(v)] is not None), key=lambda v: scores[str(v)])
        found[f"{bench}_{method}"] = {
            "param": param,
            "grid": scores,
            "best": best,
            "protocol": "stream.validation=0.1, eval.split=val, seed 0",
        }
        print(f"{bench} {method}: best {param} = {best}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    SELECTION.write_text(json.dumps(found, indent=1))


def _mean_std(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def table() -> str:
    lines = ["<!-- generated by: python bench/mammoth.py table -->"]
    for bench, b in BENCH.items():
        cols = ["class_il", "task_il"] if bench == "smnist" else ["domain_il"]
        lines += ["", f"### {b['title']}", ""]
        head = "| method | " + " | ".join(
            f"{c.replace('_', '-')} retain | {c.replace('_', '-')} published | Δ" for c in cols
        )
        lines.append(head + " | seeds | wall s / run (median) | command |")
        lines.append("|---" * (1 + 3 * len(cols) + 3) + "|")
        for (bb, m), (_, _, _, published) in METHODS.items():
            if bb != bench:
                continue
            recs, walls = [], []
            for d in sorted((OUT / f"{bench}_{m}").glob("s*")):
                if (d / "result.json").is_file() and (d / "bench.json").is_file():
                    recs.append(json.loads((d / "result.json").read_text()))
                    walls.append(json.loads((d / "bench.json").read_text())["wall_seconds"])
            cells = []
            for c in cols:
                if c == "task_il":
                    vals = [
                        100 * r["metrics_by_score"]["task_il_accuracy"]["avg_accuracy"]
                        for r in recs
                    ]
                else:
                    vals = [100 * r["metrics"]["avg_accuracy"] for r in recs]
                pub = published.get(c)
                delta = f"{statistics.mean(vals) - pub:+.2f}" if vals and pub is not None else "–"
                mark = " ✱" if (bench, m) in REQUIRED and c in ("class_il", "domain_il") else ""
                cells.append(
                    f"{_mean_std(vals)}{mark} | {pub:.2f} | {delta}"
                    if pub is not None
                    else f"{_mean_std(vals)} | – | –"
                )
            wall = f"{statistics.median(walls):.1f}" if walls else "–"
            cmd = f"`retain run bench/configs/{bench}_{m}.yaml seed=1`"
            lines.append(f"| {m} | " + " | ".join(cells) + f" | {len(recs)} | {wall} | {cmd} |")
    lines += [
        "",
        "✱: rows retain is held to: within 2 points of the published number, or above it.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("command", choices=["select", "configs", "run", "table"])
    ap.add_argument("--bench", default="smnist,pmnist,rmnist")
    ap.add_argument("--only", default="", help="comma-separated methods (default: all)")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args(argv)
    if args.command == "select":
        select()
    elif args.command == "configs":
        write_configs()
    elif args.command == "run":
        run_all(
            args.bench.split(","),
            [m for m in args.only.split(",") if m] or None,
            [int(s) for s in args.seeds.split(",")],
        )
    else:
        RESULTS.mkdir(parents=True, exist_ok=True)
        text = table()
        (RESULTS / "mammoth.md").write_text(text)
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
