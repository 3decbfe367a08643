"""Peak memory and time to read a large table, and a short run on it.

Writes a table of ROWS rows x 50 float features + an integer label (10 classes) under a folder
(not in the repository: it is hundreds of MB), then, in a fresh process per measurement, reads it
the way ``retain run`` does (``build_stream``: read, split off the test set, standardise) and
reports the load time and the peak resident memory above what the process held before reading
(``resource.getrusage``; the imports of torch and retain are the baseline), as a multiple of the
float32 features. ``--train`` also trains a tiny MLP for a few steps on every task.

Usage:
    python bench/bench_tables.py --rows 1000000 --format csv --dir /tmp/retain-bench
    python bench/bench_tables.py --rows 5000000 --format parquet --dir /tmp/retain-bench --train
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

FEATURES = 50


def write_table(path: Path, rows: int, fmt: str, chunk: int = 250_000) -> None:
    """Float features (4 decimals) and a label that depends on the first two, in chunks."""
    rng = np.random.default_rng(0)
    names = [f"f{i}" for i in range(FEATURES)] + ["label"]
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        writer = None
        for start in range(0, rows, chunk):
            x = rng.normal(size=(min(chunk, rows - start), FEATURES)).astype(np.float32)
            y = (np.digitize(x[:, 0] + x[:, 1], np.linspace(-2, 2, 9))).astype(np.int64)
            table = pa.table([*x.T, y], names=names)
            writer = writer or pq.ParquetWriter(path, table.schema)
            writer.write_table(table)
        writer.close()
        return
    with open(path, "w") as f:
        f.write(",".join(names) + "\n")
        for start in range(0, rows, chunk):
            x = rng.normal(size=(min(chunk, rows - start), FEATURES))
            y = np.digitize(x[:, 0] + x[:, 1], np.linspace(-2, 2, 9))
            np.savetxt(f, np.column_stack([x, y]), fmt=["%.4f"] * FEATURES + ["%d"], delimiter=",")


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def measure(path: Path, train: bool, memory: str, steps_per_task: int = 200) -> dict:
    """In this process: read ``path`` as ``retain run`` does; peak memory and time."""
    import pyarrow.compute
    import pyarrow.csv
    import pyarrow.parquet
    import torch

    # Libraries' own memory is the baseline, not the data's: pyarrow loads pandas on first use.
    pyarrow.array([0.0]).to_numpy()

    from retain.config import RunConfig, from_dict
    from retain.data.build import build_stream

    cfg = from_dict(
        RunConfig,
        {
            "stream": {
                "scenario": "iid",
                "dataset": str(path),
                "n_tasks": 2,
                "memory": memory,
            },
            "model": {"name": "mlp", "hidden": [32]},
            "train": {"epochs": 1, "batch_size": 256},
            "output": {"plots": False},
        },
        "bench",
    )
    base = rss()
    t0 = time.perf_counter()
    stream, info = build_stream(cfg.stream, 0)
    load = time.perf_counter() - t0
    peak_load = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    data = sum(len(t.train) + len(t.test) for t in stream.tasks) * FEATURES * 4
    out = {
        "rows": data // (FEATURES * 4),
        "float32_MB": round(data / 2**20),
        "load_s": round(load, 1),
        "peak_above_baseline_MB": round((peak_load - base) / 2**20),
        "peak_ratio": round((peak_load - base) / data, 2),
        "baseline_MB": round(base / 2**20),
        "memory": memory,
        # Resident memory not backed by a file: what a mapped table does not count against RAM.
        "anon_after_load_MB": round(_status("RssAnon") / 2**20),
    }
    if train:
        from retain.data.loader import TensorLoader

        model = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, 32), torch.nn.ReLU(), torch.nn.Linear(32, stream.n_outputs)
        )
        opt = torch.optim.Adam(model.parameters(), 1e-3)
        t0, steps = time.perf_counter(), 0
        for task in stream.tasks:
            loader = TensorLoader(
                task.train, 256, shuffle=True, generator=torch.Generator().manual_seed(0)
            )
            for i, b in enumerate(loader):
                loss = torch.nn.functional.cross_entropy(model(b["x"]), b["y"])
                opt.zero_grad()
                loss.backward()
                opt.step()
                steps += 1
                if i + 1 == steps_per_task:
                    break
        out["train_steps"] = steps
        out["train_s"] = round(time.perf_counter() - t0, 1)
        out["final_loss"] = round(float(loss), 3)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out["peak_with_training_MB"] = round((peak - base) / 2**20)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--format", choices=["csv", "parquet"], default="csv")
    p.add_argument("--dir", default="/tmp/retain-bench")
    p.add_argument("--train", action="store_true")
    p.add_argument("--memory", choices=["auto", "ram", "mapped"], default="auto")
    p.add_argument("--steps", type=int, default=200, help="training steps per task")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # the child process: a file to read
    a = p.parse_args()
    if a.measure:
        print(json.dumps(measure(Path(a.measure), a.train, a.memory, a.steps)))
        return
    folder = Path(a.dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"table-{a.rows}.{a.format}"
    if not path.exists():
        t0 = time.perf_counter()
        write_table(path, a.rows, a.format)
        print(
            f"wrote {path} ({path.stat().st_size / 2**20:.0f} MB) in "
            f"{time.perf_counter() - t0:.0f} s",
            file=sys.stderr,
        )
    cmd = [sys.executable, __file__, "--measure", str(path), "--memory", a.memory]
    cmd += ["--steps", str(a.steps)]
    cmd += ["--train"] if a.train else []
    result = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    result["file_MB"] = round(path.stat().st_size / 2**20)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
