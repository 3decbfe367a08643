"""Each strategy's training cost relative to finetune, measured side by side on one stream.

The stream is built once; every strategy trains on it in this process, the strategies
interleaved within each repeat (so drifts in machine load hit all of them alike). The cost of a
run is its training loop plus its strategies' between-task work (``train_seconds +
hook_seconds``: EWC's Fisher pass, A-GEM's buffer fill, the generator's training); evaluation is
reported beside it. Ratios are medians over repeats of (strategy time / finetune time in the same
repeat).

    python bench/strategy_speed.py --bench pmnist --repeats 3
    python bench/strategy_speed.py --bench smnist --repeats 3 --methods all
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from mammoth import BENCH, METHODS, config_for  # noqa: E402

# Strategies outside mammoth's tables, at their defaults (same lr as finetune on the benchmark).
EXTRA = {
    "ewc": [{"name": "ewc"}],  # retain's defaults: separate penalties, sampled Fisher on 5,000
    "mas": [{"name": "mas", "lam": 0.05}],  # 0.1 is past SGD's stable limit at P-MNIST's lr 0.2
    "lwf": [{"name": "lwf"}],
    "generative_replay": [{"name": "generative_replay"}],
    "progressive": [{"name": "progressive"}],
    "freeze": [{"name": "freeze"}],
    "parallel": [{"name": "parallel"}],
    "ewc+replay": [{"name": "ewc"}, {"name": "replay"}],
}
# A benchmark's table row with changed hyperparameters: its protocol and learning rate otherwise.
VARIANTS = {"oewc-fisher5000": ("oewc", {"fisher_samples": 5000})}


def main(argv: list[str] | None = None) -> None:
    import torch

    from retain.config import RunConfig, from_dict
    from retain.runner import prepare_stream, run_config

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--bench", default="pmnist", choices=sorted(BENCH))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--methods",
        default="mammoth",
        help="'mammoth' (the benchmark's table), 'all' (plus the others), or a list",
    )
    ap.add_argument("--out", default="bench/out/speed")
    args = ap.parse_args(argv)

    table = [m for (b, m) in METHODS if b == args.bench and m != "joint"]
    if args.methods == "all":
        methods = table + [m for m in [*VARIANTS, *EXTRA] if m not in table]
    elif args.methods == "mammoth":
        methods = table
    else:
        methods = args.methods.split(",")
    finetune_lr = config_for(args.bench, "finetune")["train"]["lr"]

    def cfg_for(method: str, seed: int) -> RunConfig:
        if (args.bench, method) in METHODS:
            data = config_for(args.bench, method)
        elif method in VARIANTS:
            data = config_for(args.bench, VARIANTS[method][0])
            data["strategies"][0].update(VARIANTS[method][1])
            data["name"] = f"{args.bench}_{method}"
        else:
            data = config_for(args.bench, "finetune")
            data["strategies"], data["train"]["lr"] = EXTRA[method], finetune_lr
            data["name"] = f"{args.bench}_{method}"
        return from_dict(RunConfig, {**data, "seed": seed})

    t0 = time.perf_counter()
    prepared = prepare_stream(cfg_for("finetune", 0))
    prep = time.perf_counter() - t0
    cost: dict[str, list[float]] = {m: [] for m in methods}
    evals: dict[str, list[float]] = {m: [] for m in methods}
    ratio: dict[str, list[float]] = {m: [] for m in methods}
    out = Path(args.out)
    for rep in range(args.repeats):
        order = methods if rep % 2 == 0 else list(reversed(methods))
        for m in order:
            d = out / f"{args.bench}_{m}_r{rep}"
            if d.exists():
                import shutil

                shutil.rmtree(d)
            rec = run_config(cfg_for(m, 0), d, stream_info=prepared).to_dict()
            t = rec["timing"]
            cost[m].append(t["train_seconds"] + t["hook_seconds"])
            evals[m].append(t["eval_seconds"])
            print(
                f"  rep {rep} {m:18s} {cost[m][-1]:7.2f} s (eval {evals[m][-1]:.1f} s)", flush=True
            )
        for m in methods:
            ratio[m].append(cost[m][-1] / cost["finetune"][-1])
    print(
        f"\nmachine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch "
        f"{torch.__version__}; stream {args.bench} prepared in {prep:.1f} s; {args.repeats} repeats"
    )
    print(
        "| strategy | train + hooks s (median) | × finetune (median of per-repeat ratios) | eval s |"
    )
    print("|---|---|---|---|")
    for m in methods:
        print(
            f"| {m} | {statistics.median(cost[m]):.1f} | {statistics.median(ratio[m]):.2f} | "
            f"{statistics.median(evals[m]):.1f} |"
        )


if __name__ == "__main__":
    main()
