"""Experience replay: it reduces forgetting, marks what it replays and never stores it again,
reports its memory, and a run resumed with a non-empty memory ends exactly like an uninterrupted
one (for every rehearsal strategy of this family)."""

from __future__ import annotations

import pytest
import torch
from conftest import CONVERGED, finetune_baseline, task_ctx

from retain.api import run
from retain.config import RunConfig, TrainConfig
from retain.errors import ConfigError, DataError
from retain.models import MLP
from retain.strategies import build
from retain.strategies.agem import AGEM
from retain.strategies.der import DER
from retain.strategies.replay import Replay

TRAIN = TrainConfig(batch_size=8)  # for hooks called by hand


# Trained to convergence on each task (finetune then forgets all but the last: forgetting ~1.0).
# The fixture's default (lr 0.05, 5 epochs) leaves each task half-learned and every method weak.


def _batch(ids, replayed=None):
    ids = torch.as_tensor(ids)
    b = {
        "x": ids.float()[:, None].repeat(1, 64),
        "y": ids % 10,
        "task": torch.zeros(len(ids), dtype=torch.long),
    }
    if replayed is not None:
        b["replayed"] = torch.as_tensor(replayed)
    return b


def _held(buf):
    return set(buf.data["x"][: len(buf), 0].long().tolist())


@pytest.mark.slow
def test_replay_reduces_forgetting(digits_class_il, run_strategies):
    # Measured (seed 0): finetune avg 0.193, forgetting 0.995; replay 0.883, 0.100.
    # (Fixture defaults: finetune 0.182 / 0.884, replay 0.386 / 0.575.)
    base = finetune_baseline(digits_class_il, CONVERGED).metrics
    rep = run_strategies(digits_class_il, [Replay()], train=CONVERGED).metrics
    assert rep.avg_accuracy >= base.avg_accuracy + 0.45
    assert rep.forgetting <= base.forgetting - 0.6


def test_replayed_samples_are_marked_appended_and_not_stored_again(tiny_stream):
    ctx, r = task_ctx(tiny_stream, train=TRAIN), Replay(size=100)
    first = _batch(range(8))
    assert r.batch(first, ctx) is first  # empty memory: the batch passes through
    out = r.batch(_batch(range(100, 108)), ctx)
    assert out["replayed"].tolist() == [False] * 8 + [True] * 8  # ratio 0.5: as many again
    assert out["x"][:8, 0].tolist() == list(range(100, 108))
    assert set(out["x"][8:, 0].long().tolist()) <= set(range(8))
    assert r.buffer_.seen == 16 and _held(r.buffer_) == set(range(8)) | set(range(100, 108))
    # Samples an earlier strategy replayed keep their mark and are not offered to the memory.
    out = r.batch(_batch(range(200, 208), replayed=[False] * 4 + [True] * 4), ctx)
    assert out["replayed"].tolist() == [False] * 4 + [True] * 12
    assert r.buffer_.seen == 20 and not _held(r.buffer_) & set(range(204, 208))


def test_ratio_and_batch_size_set_the_memory_share(tiny_stream):
    ctx = task_ctx(tiny_stream, train=TRAIN)
    cases = [(Replay(ratio=0.3), 14), (Replay(batch_size=5), 5), (Replay(ratio=0.0), 0)]
    for strategy, extra in cases:
        strategy.batch(_batch(range(40)), ctx)
        assert len(strategy.batch(_batch(range(32)), ctx)["x"]) == 32 + extra
    with pytest.raises(ConfigError, match="ratio must be in"):
        build({"name": "replay", "ratio": 1.0})
    with pytest.raises(ConfigError, match="policy must be one of"):
        build({"name": "replay", "policy": "ring"})


def test_composed_replays_each_store_only_incoming_samples(tiny_stream):
    a, b = Replay(size=50), Replay(size=40, ratio=0.3, policy="class_balanced")
    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", lr=0.05)
    result = run(MLP(64, 6, [32]), tiny_stream, [a, b], RunConfig(train=cfg, seed=0))
    offered = sum(len(t.train) for t in tiny_stream.tasks)
    assert a.buffer_.seen == b.buffer_.seen == offered
    stats = result.record.strategy_stats[-1]["replay"]  # the later one of the two names
    assert stats == {"buffer_samples": 40, "buffer_bytes": 40 * (64 * 4 + 8 + 8)}


def test_stats_report_the_memory_in_bytes(tiny_stream):
    cfg = TrainConfig(epochs=1, batch_size=32, optimizer="sgd", lr=0.05)
    result = run(MLP(64, 6, [32]), tiny_stream, [Replay(size=100)], RunConfig(train=cfg, seed=0))
    per_task = [s["replay"] for s in result.record.strategy_stats]
    assert [s["buffer_samples"] for s in per_task] == [100, 100, 100]
    assert all(s["buffer_bytes"] == 100 * (64 * 4 + 8 + 8) for s in per_task)  # x f32, y, task


@pytest.mark.parametrize(
    "make",
    [
        lambda: Replay(size=60),
        lambda: DER(size=60, beta=0.5),
        lambda: AGEM(size=60, batch_size=32),
    ],
    ids=["replay", "der", "agem"],
)
def test_resume_with_a_non_empty_memory_gives_the_same_result(
    make, tiny_stream, tmp_path, crash_and_resume
):
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer="sgd", lr=0.05)

    def mlp():
        torch.manual_seed(0)
        return MLP(64, 6, [32])

    r = crash_and_resume(tiny_stream, lambda: [make()], cfg, tmp_path / "run", mlp)
    assert r.resumed.matrix == r.full.matrix
    a, b = r.full_strategies[0].buffer_, r.strategies[0].buffer_
    assert a.seen == b.seen and all(torch.equal(a.data[k], b.data[k]) for k in a.data)


# ---------------------------------------------------------------- language models, fixed sources


def _blocks(lo, n, length=12, seed=0):
    """Token blocks of a learnable 'language' on tokens [lo, lo + 16)."""
    from retain.data.sources import lm_data

    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, 16, (n,), generator=g).tolist()
    return lm_data([[lo + (s + i) % 16 for i in range(length)] for s in starts], length)


def _lm_stream(**kw):
    from retain.data.stream import Stream, Task

    tasks = tuple(
        Task(name, _blocks(lo, 16, seed=i), _blocks(lo, 4, seed=10 + i))
        for i, (name, lo) in enumerate([("es", 16), ("fr", 32)])
    )
    return Stream(tasks, objective="causal_lm", setting="domain_il", **kw)


LM_TRAIN = TrainConfig(steps=4, batch_size=4, optimizer="adamw", lr=3e-3)


def test_replay_on_token_blocks(tiny_causal_lm):
    r = Replay(size=10, ratio=0.3)
    result = run(tiny_causal_lm, _lm_stream(), [r], RunConfig(train=LM_TRAIN))
    assert all(v == v for task in result.record.curves.loss for _, v in task)
    assert r.buffer_.data["input_ids"].shape == (10, 12) and r.buffer_.seen == 32
    held = r.buffer_.data["input_ids"][:, 0]
    assert ((held >= 16) & (held < 32)).any() and (held >= 32).any()  # both tasks' blocks


def test_a_fixed_replay_source_is_never_displaced(tiny_causal_lm):
    english = _blocks(0, 20, seed=5)
    r = Replay(size=8, ratio=0.5, source="english")
    seen = []

    class Spy(Replay):  # records the replayed rows of every batch
        def batch(self, batch, ctx):
            out = r.batch(batch, ctx)
            seen.append(out["input_ids"][out["replayed"]] if "replayed" in out else None)
            return out

    stream = _lm_stream(sources={"english": english})
    run(tiny_causal_lm, stream, [Spy()], RunConfig(train=LM_TRAIN))
    held = r.buffer_.data["input_ids"][: len(r.buffer_)]
    assert len(held) == 8 and r.buffer_.seen == 8  # filled once, offered nothing after
    rows = {tuple(x) for x in english.get("input_ids").tolist()}
    assert {tuple(x) for x in held.tolist()} <= rows  # only English, none of es or fr
    assert all(s is not None and len(s) == 4 for s in seen)  # half of every batch
    assert all({tuple(x) for x in s.tolist()} <= rows for s in seen)
    assert r.stats()["buffer_samples"] == 8


def test_an_unknown_or_unfit_replay_source_is_one_line():
    stream = _lm_stream(sources={"english": _blocks(0, 4, length=8)})
    with pytest.raises(ConfigError, match=r"source 'general' is not one of .* \(english\)"):
        Replay(source="general").check(stream)
    with pytest.raises(DataError, match="source 'english': 'input_ids' is \\(8,\\)"):
        Replay(source="english").check(stream)
