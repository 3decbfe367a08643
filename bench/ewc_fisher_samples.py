"""oEWC on P-MNIST (mammoth's protocol, lambda chosen on validation = 7) with the Fisher estimated
on all of each task's 60,000 training samples (mammoth) or on a random subset: accuracy over
seeds, and training cost (loop + Fisher) relative to finetune, measured side by side.

    python bench/ewc_fisher_samples.py --seeds 0,1,2 --samples all,5000
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from mammoth import config_for  # noqa: E402


def main() -> None:
    from retain.config import RunConfig, from_dict
    from retain.runner import prepare_stream, run_config

    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--samples", default="all,5000")
    args = ap.parse_args()
    variants = [None if s == "all" else int(s) for s in args.samples.split(",")]
    shutil.rmtree("bench/out/fisher", ignore_errors=True)  # this script's own runs
    acc: dict[str, list[float]] = {}
    ratio: dict[str, list[float]] = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        base = from_dict(RunConfig, {**config_for("pmnist", "finetune"), "seed": seed})
        prepared = prepare_stream(base)
        ft = run_config(base, Path(f"bench/out/fisher/ft-s{seed}"), stream_info=prepared).to_dict()
        ft_cost = ft["timing"]["train_seconds"] + ft["timing"]["hook_seconds"]
        for n in variants:
            data = config_for("pmnist", "oewc-valsel")
            data["strategies"][0]["fisher_samples"] = n
            rec = run_config(
                from_dict(RunConfig, {**data, "seed": seed}),
                Path(f"bench/out/fisher/ewc{n or 'all'}-s{seed}"),
                stream_info=prepared,
            ).to_dict()
            key = "all" if n is None else str(n)
            acc.setdefault(key, []).append(100 * rec["metrics"]["avg_accuracy"])
            cost = rec["timing"]["train_seconds"] + rec["timing"]["hook_seconds"]
            ratio.setdefault(key, []).append(cost / ft_cost)
            print(
                f"seed {seed} fisher_samples={key}: {acc[key][-1]:.2f} %, "
                f"{ratio[key][-1]:.2f}x finetune",
                flush=True,
            )
    print("| fisher_samples | avg accuracy (mean ± std) | × finetune (median) |")
    print("|---|---|---|")
    for key in acc:
        sd = statistics.stdev(acc[key]) if len(acc[key]) > 1 else 0.0
        print(
            f"| {key} | {statistics.mean(acc[key]):.2f} ± {sd:.2f} | "
            f"{statistics.median(ratio[key]):.2f} |"
        )


if __name__ == "__main__":
    main()
