"""Training throughput: retain's loop against a plain PyTorch loop on the same tensors.

Split MNIST (5 tasks x 2 classes), MLP 784-400-400-10, Adam lr 1e-3, batch 128, 1 epoch per task:
the protocol of examples/split_mnist.yaml. Both loops run in this process, alternating, on the
same stream and the same initial weights; each repeat times the whole 5-task sequence of training
steps (evaluation excluded from both). Reports the median samples/s of each and their ratio.

    python bench/bench_throughput.py --repeats 5
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from retain.api import run
from retain.config import EvalConfig, RunConfig, TrainConfig
from retain.data.builtin import load_builtin
from retain.data.scenarios import split
from retain.models import MLP


def plain_loop(model, stream, cfg: TrainConfig, seed: int) -> tuple[int, float]:
    """What a user would write by hand: one Adam per task, shuffled index batches."""
    samples, seconds = 0, 0.0
    for i, task in enumerate(stream.tasks):
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        x, y = task.train.x, task.train.y
        g = torch.Generator().manual_seed(seed + i)
        start = time.perf_counter()
        for _ in range(cfg.epochs):
            perm = torch.randperm(len(x), generator=g)
            for s in range(0, len(x), cfg.batch_size):
                idx = perm[s : s + cfg.batch_size]
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                samples += len(idx)
        seconds += time.perf_counter() - start
    return samples, seconds


def retain_loop(model, stream, cfg: TrainConfig, seed: int) -> tuple[int, float]:
    r = run(
        model,
        stream,
        ["finetune"],
        RunConfig(train=cfg, eval=EvalConfig(batch_size=4096), seed=seed),
    )
    t = r.record.to_dict()["timing"]["per_task"]
    return sum(x["samples"] for x in t), sum(x["train_seconds"] for x in t)


def help_seconds(repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "retain", "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    stream = split(load_builtin("mnist"), n_tasks=5)
    cfg = TrainConfig(epochs=1, batch_size=128, optimizer="adam", lr=1e-3)
    plain, ours = [], []
    for rep in range(args.repeats + 1):
        for fn, sink in ((plain_loop, plain), (retain_loop, ours)):
            torch.manual_seed(0)
            model = MLP(784, 10, [400, 400])
            n, s = fn(model, stream, cfg, rep)
            if rep > 0:  # the first round warms up allocators and caches
                sink.append(n / s)
    p, r = statistics.median(plain), statistics.median(ours)
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"plain PyTorch loop: median {p:,.0f} samples/s over {len(plain)} repeats "
        f"(min {min(plain):,.0f}, max {max(plain):,.0f})"
    )
    print(
        f"retain loop:        median {r:,.0f} samples/s over {len(ours)} repeats "
        f"(min {min(ours):,.0f}, max {max(ours):,.0f})"
    )
    print(f"ratio retain/plain: {r / p:.3f}")
    print(f"`retain --help`:    median {help_seconds(5):.3f} s over 5 runs")


if __name__ == "__main__":
    main()
