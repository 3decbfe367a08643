"""Shared fixtures: tiny real streams (the embedded digits), tiny models, a tiny causal LM."""

from __future__ import annotations

import pytest
import torch

from retain.config import TrainConfig
from retain.data.builtin import load_builtin
from retain.data.scenarios import split
from retain.models import MLP


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """One intra-op thread for the whole run: the tests' models are tiny, so a second thread
    only adds synchronisation, and on a shared CPU two threads spin against other processes
    (they made the suite's runs take three times the CPU time and tests up to 5x slower)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def task_ctx(stream, i=0, model=None, *, n=None, train=None, seed=0):
    """A ``TaskContext`` for calling a strategy's hooks by hand: task ``i`` of ``stream`` (only
    its first ``n`` training samples when given), on the CPU, with the stream's class mask."""
    import dataclasses

    from retain.config import TrainConfig
    from retain.objectives import make_objective
    from retain.train.runtime import make_accelerator, task_context

    train = train or TrainConfig()
    task = stream.tasks[i]
    if n is not None:
        task = dataclasses.replace(task, train=task.train[torch.arange(n)])
    ctx = task_context(
        make_accelerator(dataclasses.replace(train, cpu=True)),
        train,
        stream,
        task,
        i,
        make_objective(stream.objective, stream.n_outputs),
        seed,
        torch.Generator().manual_seed(seed),
        stream.class_mask(),
    )
    return dataclasses.replace(ctx, model=model)


@pytest.fixture(scope="session")
def digits():
    return load_builtin("digits").with_test_split(0.25, 0)


@pytest.fixture(scope="session")
def tiny_stream(digits):
    """3 class-incremental tasks of 2 digit classes each (~290 training images per task)."""
    return split(digits, n_tasks=3, classes=[0, 1, 2, 3, 4, 5])


@pytest.fixture(scope="session")
def tiny_llama_config():
    transformers = pytest.importorskip("transformers")
    return transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
        max_position_embeddings=64,
    )


@pytest.fixture
def tiny_causal_lm(tiny_llama_config):
    import transformers

    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(tiny_llama_config)


# ---------------------------------------------------------------- effect tests
# Small real streams on which finetune provably forgets; each effect test shows a strategy
# reduces that forgetting by a clear margin with a fixed seed.


@pytest.fixture(scope="session")
def digits_class_il(digits):
    """Split digits, 5 tasks x 2 classes, class-incremental (finetune keeps ~0.17 of 1.0)."""
    return split(digits, n_tasks=5)


@pytest.fixture(scope="session")
def digits_task_il(digits):
    """Split digits, 5 tasks x 2 classes, task-incremental (other tasks' logits masked)."""
    return split(digits, n_tasks=5, setting="task_il")


@pytest.fixture(scope="session")
def digits_permuted(digits):
    """Permuted digits, 5 tasks, domain-incremental."""
    from retain.data.scenarios import permuted

    return permuted(digits, n_tasks=5)


def _run_strategies(stream, strategies, train=None, seed=0, hidden=(100, 100)):
    """Train a fresh MLP (same init for every call with the same seed) and return the result.

    Defaults: SGD lr 0.05, batch 32, 5 epochs per task. On digits_class_il finetune ends near
    0.18 average accuracy (forgetting ~0.88); on digits_permuted near 0.52 (forgetting ~0.36).
    """
    from retain.api import run
    from retain.config import RunConfig, TrainConfig

    torch.manual_seed(seed)
    model = MLP(64, stream.n_outputs, list(hidden))
    train = train or TrainConfig(epochs=5, batch_size=32, optimizer="sgd", lr=0.05)
    return run(model, stream, strategies, RunConfig(train=train, seed=seed))


@pytest.fixture
def run_strategies():
    """``run_strategies(stream, [strategies], train=None, seed=0)`` -> RunResult."""
    return _run_strategies


#: Trained to convergence (the rehearsal effect tests: stored logits and labels are then sure).
CONVERGED = TrainConfig(epochs=10, batch_size=32, optimizer="sgd", lr=0.1)
_FINETUNE: dict[tuple[int, str], tuple] = {}


def finetune_baseline(stream, train=None):
    """finetune's result on a session-scoped ``stream`` with ``_run_strategies``' defaults (or
    ``train``), computed once per session: the baseline every effect test compares with."""
    key = (id(stream), repr(train))
    if key not in _FINETUNE:  # the stream is kept with it, so its id is never reused
        _FINETUNE[key] = (stream, _run_strategies(stream, ["finetune"], train))
    return _FINETUNE[key][1]


@pytest.fixture
def finetune_permuted(digits_permuted):
    """finetune on permuted digits, fixture defaults (avg 0.522, forgetting 0.360 on seed 0)."""
    return finetune_baseline(digits_permuted)


# ---------------------------------------------------------------- resume
from dataclasses import dataclass, field  # noqa: E402

from retain.strategies.base import Strategy  # noqa: E402


@dataclass
class CrashBefore(Strategy):
    """Raises before training task ``at`` while armed: a crash in the middle of a run."""

    at: int = 2
    armed: bool = field(default=False, repr=False)

    def before_task(self, model, ctx):
        if self.armed and ctx.task_index == self.at:
            raise KeyboardInterrupt("simulated crash")
        return model


def _crash_and_resume(stream, make, train, out_dir, model, seed=1, at=2):
    """Run the strategies ``make()`` uninterrupted; run them again into ``out_dir`` crashing
    before task ``at``; resume that run. Returns a namespace with ``full`` and ``resumed`` (the
    results) and ``full_strategies`` and ``strategies`` (the two runs' strategy objects), so a
    test can compare results and the restored state."""
    from types import SimpleNamespace

    from retain.api import run
    from retain.config import RunConfig

    whole = make()
    full = run(model(), stream, [*whole, CrashBefore(at=at)], RunConfig(train=train, seed=seed))
    with pytest.raises(KeyboardInterrupt):
        run(
            model(),
            stream,
            [*make(), CrashBefore(at=at, armed=True)],
            RunConfig(train=train, seed=seed),
            out_dir=out_dir,
        )
    used = make()
    resumed = run(
        model(),
        stream,
        [*used, CrashBefore(at=at)],
        RunConfig(train=train, seed=seed),
        out_dir=out_dir,
        resume=True,
    )
    return SimpleNamespace(full=full, resumed=resumed, full_strategies=whole, strategies=used)


@pytest.fixture
def crash_and_resume():
    """``crash_and_resume(stream, make_strategies, train, out_dir, make_model)``."""
    return _crash_and_resume
