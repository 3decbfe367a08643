"""Two CPU processes through ``accelerate launch`` (gloo): the multi-process path, for real.

Every rank trains on its share of each task, evaluation is sharded and all-reduced (so the
untrained model's scores equal a single process's exactly), only rank 0 writes the run
directory, and strategy state that must agree across ranks (buffers, Fisher) does. Each strategy
here also trains to the weights one process reaches on the same global batch (twice the
per-process batch): the loader's strided shards, the buffers' interleaved gathers and the shared
generator make the two runs see the same samples in the same order, so only float summation
order differs (see ``ATOL``). One launch runs every case (each launch costs two processes
importing torch).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from retain.strategies.base import Strategy

# Two fresh Python processes that each import torch: with the long checks, which CI runs.
pytestmark = pytest.mark.slow

EPOCHS, BATCH = 2, 16  # per process; one process is given 2 * BATCH
# Not exact: DDP averages the two ranks' 16-sample mean gradients where one process takes one
# 32-sample mean, the same numbers summed in another order (float32 rounding, ~1e-8 per step),
# compounded over a case's 36 SGD steps. Measured: at most 5.2e-8 on any weight (torch 2.13,
# CPU); 1e-6 leaves a margin of 20. Scores (accuracy on about 90 test samples per task) could
# differ only where a sample's two top logits are that close: 0.02 allows one such sample.
ATOL = 1e-6

CASES: dict[str, dict] = {
    "finetune": {"strategies": ["finetune"]},
    # Empirical Fisher: no sampled labels, so the importance is a pure all-reduced sum.
    "ewc": {"strategies": [{"name": "ewc", "lam": 5.0, "fisher": "empirical"}]},
    "replay": {"strategies": [{"name": "replay", "size": 40}]},
    "derpp": {"strategies": [{"name": "der", "size": 40, "alpha": 0.5, "beta": 0.5}]},
    "lora": {"strategies": [{"name": "lora", "rank": 4}]},
    "accum": {"strategies": ["finetune"], "grad_accum": 2, "probe": True},
    "ewc_replay": {
        "strategies": [{"name": "ewc", "lam": 5.0}, {"name": "replay", "size": 40}],
        "out": True,
    },
    "generative": {
        "strategies": [{"name": "generative_replay", "vae_epochs": 2, "hidden": 32}],
        "probe": True,
    },
}
SAME_AS_ONE = ["finetune", "ewc", "replay", "derpp", "lora", "accum"]


def make_stream():
    """Split digits, each task's training set cut to an even length: the two processes' shards
    then hold every sample one process trains on (an odd last sample would be dropped)."""
    from retain.data.builtin import load_builtin
    from retain.data.scenarios import split

    stream = split(load_builtin("digits").with_test_split(0.25, 0), n_tasks=2, classes=[0, 1, 2, 3])
    tasks = tuple(
        dataclasses.replace(t, train=t.train[torch.arange(len(t.train) // 2 * 2)])
        for t in stream.tasks
    )
    return dataclasses.replace(stream, tasks=tasks)


def train_config(case: dict, processes: int):
    from retain.config import RunConfig, TrainConfig

    train = TrainConfig(
        epochs=EPOCHS,
        batch_size=BATCH * (2 // processes),
        optimizer="sgd",
        lr=0.05,
        grad_accum=case.get("grad_accum", 1),
    )
    return RunConfig(train=train, seed=0)


@dataclasses.dataclass(repr=False)
class Probe(Strategy):
    """A strategy that counts micro-batches and DDP's gradient all-reduces (through a comm hook)
    and keeps the rows another strategy generated in the first batch of the second task."""

    def __post_init__(self) -> None:
        self.micro_ = 0
        self.allreduces_ = 0
        self.generated_: torch.Tensor | None = None

    def batch(self, batch, ctx):
        self.micro_ += 1
        model = ctx.model
        if hasattr(model, "register_comm_hook") and not getattr(model, "_probed", False):
            model._probed = True  # one hook per DDP wrapper (one per task)
            model.register_comm_hook(None, self._all_reduce)
        if ctx.task_index == 1 and self.generated_ is None and "replayed" in batch:
            self.generated_ = batch["x"][batch["replayed"]].clone()
        return batch

    def _all_reduce(self, state, bucket):
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        self.allreduces_ += 1
        return allreduce_hook(None, bucket)


WORKER = """
import dataclasses, hashlib, json, os, sys, time
t_start = time.perf_counter()
import torch
from safetensors.torch import save_file
from retain.api import run
from retain.models import MLP
from retain.strategies import build_all
from retain.strategies.base import Strategy
from retain.utils.state import flatten

EPOCHS, BATCH = {EPOCHS}, {BATCH}
{make_stream}
{train_config}
{probe}

def digest(tensors):
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode()); h.update(tensors[name].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


out, cases = sys.argv[1], json.loads(sys.argv[2])
rank = int(os.environ["RANK"])
report = {{"import_seconds": time.perf_counter() - t_start}}
for name, case in cases.items():
    specs = build_all(case["strategies"])
    probe = Probe() if case.get("probe") else None
    torch.manual_seed(0)
    t0 = time.perf_counter()
    result = run(MLP(64, 4, [32]), make_stream(), specs + ([probe] if probe else []),
                 train_config(case, 2), out_dir=out + "/run" if case.get("out") else None)
    weights = {{k: v.detach().contiguous().clone() for k, v in result.model.state_dict().items()}}
    states = {{}}
    for i, s in enumerate(specs):
        tensors = {{}}
        plain = flatten(s.state_dict(), tensors)
        states[f"{{i}}.{{type(s).__name__}}"] = {{"tensors": digest(tensors), "plain": repr(plain),
                                                "n_tensors": len(tensors)}}
    entry = {{"weights": digest(weights), "record": result.record.matrix,
             "processes": result.record.num_processes, "states": states,
             "seconds": time.perf_counter() - t0}}
    if probe is not None:
        entry.update(micro=probe.micro_, allreduces=probe.allreduces_)
        if probe.generated_ is not None:
            save_file({{"x": probe.generated_}}, f"{{out}}/{{name}}.generated{{rank}}.safetensors")
    if rank == 0:
        save_file(weights, f"{{out}}/{{name}}.safetensors")
    report[name] = entry
with open(f"{{out}}/rank{{rank}}.json", "w") as f:
    json.dump(report, f)
"""


def _source(fn) -> str:
    return inspect.getsource(fn)


def _launch(tmp_path: Path, cases: dict) -> dict[str, list[dict]]:
    pytest.importorskip("accelerate")
    script = tmp_path / "worker.py"
    script.write_text(
        WORKER.format(
            EPOCHS=EPOCHS,
            BATCH=BATCH,
            make_stream=_source(make_stream),
            train_config=_source(train_config),
            probe=_source(Probe),
        )
    )
    # `--multi_gpu` is Accelerate's launcher for several local processes (torchrun's); without
    # a GPU retain's Accelerator joins them in a CPU (gloo) process group.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(29600 + hash(str(tmp_path)) % 300),
            str(script),
            str(tmp_path),
            json.dumps(cases),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    return {name: [ranks[0][name], ranks[1][name]] for name in cases}


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    cases = dict(CASES)
    try:
        import peft  # noqa: F401
    except ImportError:
        cases.pop("lora")
    tmp_path = tmp_path_factory.mktemp("ddp")
    return tmp_path, _launch(tmp_path, cases)


def _single(name: str):
    """The case on one process with the global batch."""
    from retain.api import run
    from retain.models import MLP
    from retain.strategies import build_all

    case = CASES[name]
    probe = Probe() if case.get("probe") else None
    torch.manual_seed(0)
    specs = build_all(case["strategies"]) + ([probe] if probe else [])
    result = run(MLP(64, 4, [32]), make_stream(), specs, train_config(case, 1))
    return result, probe


def test_two_processes_train_one_model(launched):
    tmp_path, cases = launched
    ranks = cases["ewc_replay"]
    assert ranks[0]["processes"] == 2
    # DDP keeps the replicas identical, and both ranks computed the same all-reduced scores.
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["record"] == ranks[1]["record"]
    rec = json.loads((tmp_path / "run" / "result.json").read_text())
    assert rec["num_processes"] == 2 and rec["status"] == "complete"
    # The untrained model's row is exact under sharded evaluation: same as one process.
    assert rec["matrix"][0] == _single("finetune")[0].matrix[0]


@pytest.mark.parametrize("name", list(CASES))
def test_strategy_state_agrees_across_ranks(launched, name):
    # Each rank trains on its own shard, yet EWC's Fisher (all-reduced sums over both shards),
    # the buffers (filled from the gathered batch) and the generator must be the same on both
    # ranks: otherwise the replicas' penalties and rehearsal would differ and DDP would average
    # unlike gradients.
    _, cases = launched
    if name not in cases:
        pytest.skip("peft not installed")
    ranks = cases[name]
    assert ranks[0]["states"] == ranks[1]["states"]
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert ranks[0]["record"] == ranks[1]["record"]
    if name in ("ewc_replay", "replay", "derpp"):
        assert all(s["n_tensors"] > 0 for s in ranks[0]["states"].values())


@pytest.mark.parametrize("name", SAME_AS_ONE)
def test_same_result_as_one_process_on_the_global_batch(launched, name):
    from safetensors.torch import load_file

    tmp_path, cases = launched
    if name not in cases:
        pytest.skip("peft not installed")
    single, _ = _single(name)
    got = load_file(str(tmp_path / f"{name}.safetensors"))
    want = single.model.state_dict()
    assert got.keys() == want.keys()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, atol=ATOL, rtol=0, msg=k)
    # Scores: the same, but for a test sample whose two top logits lie within rounding.
    two = cases[name][0]["record"]
    for row_two, row_one in zip(two, single.matrix):
        for a, b in zip(row_two, row_one):
            assert a == pytest.approx(b, abs=0.02)


def test_accumulated_micro_batches_skip_the_all_reduce(launched):
    # With grad_accum=2 only the step's last backward all-reduces; the others run under no_sync.
    _, cases = launched
    stream = make_stream()
    micro = steps = 0
    for task in stream.tasks:
        batches = -(-(len(task.train) // 2) // BATCH)  # per process and epoch
        micro += EPOCHS * batches
        steps += EPOCHS * -(-batches // 2)
    for rank in cases["accum"]:
        assert rank["micro"] == micro
        assert rank["allreduces"] == steps  # one bucket per step (a tiny MLP)
        assert steps < micro


def test_generative_replay_draws_different_samples_per_rank(launched):
    # Every rank decodes its own share of the global batch's codes: the ranks rehearse distinct
    # samples, together the ones a single process given the global batch would.
    from safetensors.torch import load_file

    tmp_path, _ = launched
    x = [load_file(str(tmp_path / f"generative.generated{r}.safetensors"))["x"] for r in (0, 1)]
    assert len(x[0]) == len(x[1]) == BATCH
    assert not torch.allclose(x[0], x[1])
    _, probe = _single("generative")
    both = torch.stack(x, 1).flatten(0, 1)  # interleaved: rank 0's first, rank 1's first, ...
    torch.testing.assert_close(both, probe.generated_, atol=ATOL, rtol=0)
