"""GPU throughput: retain's loop against a bare PyTorch loop on the same GPU (samples/s).

Both loops train the same MLP (784-400-400-10, Adam lr 1e-3) on the same tensors: 5 tasks of
12,000 samples of MNIST's shape, 1 epoch per task, alternating in this process from the same
initial weights; a warm-up round is discarded. The bare loop is the fastest a user would write:
the data on the GPU once, a permutation per epoch indexed on the GPU, the loss never read back.
retain's time is its training time (``timing.per_task[].train_seconds``: evaluation excluded,
as it is from the bare loop). The inputs are random by default (``--data mnist`` reads the real
ones if installed): throughput does not depend on the values. Target: retain within 10 % of the
bare loop, for finetune and for the strategies given with ``--strategies``.

    python bench/gpu_vs_bare.py --repeats 3 --batch-size 128 --precision no bf16 \\
        --strategies finetune replay der ewc
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import torch
import torch.nn.functional as F

from retain.api import run
from retain.config import EvalConfig, RunConfig, TrainConfig
from retain.data.stream import Stream, Task, TensorData
from retain.models import MLP

SPECS = {
    "finetune": ["finetune"],
    "replay": [{"name": "replay", "size": 500}],
    "der": [{"name": "der", "size": 500, "alpha": 0.5, "beta": 0.5}],
    "ewc": [{"name": "ewc", "lam": 1.0}],
}


def make_stream(source: str, n_tasks: int = 5, per_task: int = 12_000) -> Stream:
    """``n_tasks`` tasks of two classes each, ``per_task`` training samples each."""
    if source == "mnist":
        from retain.data.builtin import load_builtin
        from retain.data.scenarios import split

        return split(load_builtin("mnist"), n_tasks=n_tasks)
    g = torch.Generator().manual_seed(0)
    tasks = []
    for i in range(n_tasks):
        y = torch.randint(2, (per_task,), generator=g) + 2 * i
        x = torch.rand(per_task, 784, generator=g)
        task = torch.full((per_task,), i, dtype=torch.long)
        test = TensorData(x=x[:1000], y=y[:1000], task=task[:1000])
        tasks.append(
            Task(f"task{i}", TensorData(x=x, y=y, task=task), test, classes=(2 * i, 2 * i + 1))
        )
    return Stream(tuple(tasks), setting="class_il", n_outputs=2 * n_tasks, name="synthetic")


def bare_loop(
    model: torch.nn.Module, stream: Stream, cfg: TrainConfig, device: torch.device
) -> tuple[int, float]:
    """One Adam per task; data on the device; no read-back until the task's end."""
    model.to(device)
    dtype = torch.bfloat16 if cfg.mixed_precision == "bf16" else None
    samples, seconds = 0, 0.0
    for task in stream.tasks:
        x, y = task.train.x.to(device), task.train.y.to(device)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        total = torch.zeros((), device=device)
        for _ in range(cfg.epochs):
            perm = torch.randperm(len(x), device=device)
            for s in range(0, len(x), cfg.batch_size):
                idx = perm[s : s + cfg.batch_size]
                with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                    loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach()
                samples += len(idx)
        float(total)  # the one read-back, as retain's log at the task's end
        seconds += time.perf_counter() - start
    return samples, seconds


def retain_loop(model: torch.nn.Module, stream: Stream, cfg: TrainConfig, strategy: str):
    r = run(model, stream, SPECS[strategy], RunConfig(train=cfg, eval=EvalConfig(batch_size=4096)))
    t = r.record.to_dict()["timing"]["per_task"]
    return sum(x["samples"] for x in t), sum(x["train_seconds"] for x in t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--precision", nargs="+", default=["no", "bf16"], choices=["no", "bf16"])
    ap.add_argument("--strategies", nargs="+", default=["finetune"], choices=list(SPECS))
    ap.add_argument("--data", default="synthetic", choices=["synthetic", "mnist"])
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_vs_bare.py measures a GPU; none is available here")
    device = torch.device("cuda")
    stream = make_stream(args.data)
    print(f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}, {args.data} data")
    print("| precision | strategy | bare samples/s | retain samples/s | retain / bare |")
    print("|---|---|---|---|---|")
    for precision in args.precision:
        cfg = TrainConfig(
            epochs=1,
            batch_size=args.batch_size,
            optimizer="adam",
            lr=1e-3,
            mixed_precision=precision,
        )
        bare: list[float] = []
        for rep in range(args.repeats + 1):
            torch.manual_seed(0)
            n, s = bare_loop(MLP(784, 10, [400, 400]), stream, cfg, device)
            if rep > 0:  # the first round warms up the allocator, cuBLAS and the kernels
                bare.append(n / s)
        b = statistics.median(bare)
        for strategy in args.strategies:
            ours: list[float] = []
            for rep in range(args.repeats + 1):
                torch.manual_seed(0)
                n, s = retain_loop(
                    MLP(784, 10, [400, 400]), stream, dataclasses.replace(cfg), strategy
                )
                if rep > 0:
                    ours.append(n / s)
            r = statistics.median(ours)
            print(f"| {precision} | {strategy} | {b:,.0f} | {r:,.0f} | {r / b:.3f} |")


if __name__ == "__main__":
    main()
