"""Two CPU processes through torchrun (gloo): the multi-process path is exercised for real.

Every rank trains on its share of each task, evaluation is sharded and all-reduced (so the
untrained model's scores equal a single process's exactly), only rank 0 writes the run
directory, and strategy state that must agree across ranks (buffers, Fisher) does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

# Two fresh Python processes that each import torch: with the long checks, which CI runs.
pytestmark = pytest.mark.slow

WORKER = """
import hashlib, json, os, sys
import torch
from retain.api import run
from retain.config import RunConfig, TrainConfig
from retain.data.builtin import load_builtin
from retain.data.scenarios import split
from retain.models import MLP
from retain.utils.state import flatten

out = sys.argv[1]
from retain.strategies import build_all

specs = build_all(json.loads(sys.argv[2]))
stream = split(load_builtin("digits").with_test_split(0.25, 0), n_tasks=2, classes=[0, 1, 2, 3])
torch.manual_seed(0)
config = RunConfig(train=TrainConfig(epochs=2, batch_size=16, optimizer="sgd", lr=0.05), seed=0)
result = run(MLP(64, 4, [32]), stream, specs, config, out_dir=out + "/run")
rank = int(os.environ["RANK"])


def digest(tensors):
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode()); h.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


states = {}
for i, s in enumerate(specs):
    tensors = {}
    plain = flatten(s.state_dict(), tensors)
    states[f"{i}.{type(s).__name__}"] = {"tensors": digest(tensors), "plain": repr(plain),
                                        "n_tensors": len(tensors)}
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"weights": digest(result.model.state_dict()), "record": result.record.matrix,
               "processes": result.record.num_processes, "states": states}, f)
"""


def _launch(tmp_path: Path, specs: list) -> list[dict]:
    if shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists():
        pytest.skip("torchrun not installed")
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    proc = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--master_port",
            str(29600 + hash(str(tmp_path)) % 300),
            str(script),
            str(tmp_path),
            json.dumps(specs),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[Path, list[dict]]:
    """One torchrun launch serves every test here (each costs two processes importing torch):
    strategies whose state must agree across ranks, which also train one DDP model."""
    tmp_path = tmp_path_factory.mktemp("ddp")
    return tmp_path, _launch(
        tmp_path, [{"name": "ewc", "lam": 5.0}, {"name": "replay", "size": 40}]
    )


def test_two_processes_train_one_model(launched):
    tmp_path, ranks = launched
    assert ranks[0]["processes"] == 2
    # DDP keeps the replicas identical, and both ranks computed the same all-reduced scores.
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["record"] == ranks[1]["record"]
    rec = json.loads((tmp_path / "run" / "result.json").read_text())
    assert rec["num_processes"] == 2 and rec["status"] == "complete"
    # The untrained model's row is exact under sharded evaluation: same as one process.
    import torch

    from retain.api import run
    from retain.config import RunConfig, TrainConfig
    from retain.data.builtin import load_builtin
    from retain.data.scenarios import split
    from retain.models import MLP

    stream = split(load_builtin("digits").with_test_split(0.25, 0), n_tasks=2, classes=[0, 1, 2, 3])
    torch.manual_seed(0)
    single = run(
        MLP(64, 4, [32]),
        stream,
        ["finetune"],
        RunConfig(train=TrainConfig(epochs=1, optimizer="sgd")),
    )
    assert rec["matrix"][0] == single.matrix[0]


def test_strategy_state_agrees_across_ranks(launched):
    # Each rank trains on its own shard, yet EWC's Fisher (all-reduced sums over both shards) and
    # replay's buffer (filled from the gathered batch) must be the same on both ranks: otherwise
    # the replicas' penalties and rehearsal would differ and DDP would average unlike gradients.
    _, ranks = launched
    states = [r["states"] for r in ranks]
    assert set(states[0]) == {"0.EWC", "1.Replay"}
    assert states[0]["0.EWC"]["n_tensors"] > 0 and states[0]["1.Replay"]["n_tensors"] > 0
    assert states[0] == states[1]
    assert ranks[0]["weights"] == ranks[1]["weights"]
