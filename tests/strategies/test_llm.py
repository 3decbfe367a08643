"""Every strategy on a causal language model: it runs, or it refuses in one line before training."""

from __future__ import annotations

import math

import pytest
import torch

from retain import run
from retain.config import EvalConfig, RunConfig, TrainConfig
from retain.data.stream import Stream, Task, TensorData
from retain.errors import Unsupported

pytest.importorskip("transformers")


def _lm_task(name, lo, n=12, length=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(lo, lo + 32, (n, 1), generator=g)
    ids = lo + (start - lo + torch.arange(length)) % 32
    data = TensorData(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids.clone())
    return Task(name, data, data[torch.arange(4)])


@pytest.fixture
def lm_stream():
    return Stream(
        (_lm_task("a", 0), _lm_task("b", 32, seed=1)), objective="causal_lm", setting="domain_il"
    )


CFG = RunConfig(
    train=TrainConfig(steps=3, batch_size=4, optimizer="adamw", lr=3e-3),
    eval=EvalConfig(batch_size=8),
)
RUNS = [
    "finetune",
    "joint",
    "cumulative",
    "replay",
    {"name": "der", "size": 8},
    {"name": "der", "size": 8, "beta": 0.5},
    {"name": "ewc", "fisher_samples": 4},
    "si",
    {"name": "mas", "samples": 4},
    "lwf",
    "freeze",
]


@pytest.mark.parametrize("spec", RUNS, ids=lambda s: s if isinstance(s, str) else str(s))
def test_strategy_runs_on_a_causal_lm(tiny_causal_lm, lm_stream, spec):
    r = run(tiny_causal_lm, lm_stream, [spec], CFG)
    assert all(math.isfinite(v) for row in r.matrix for v in row)
    assert all(math.isfinite(v) for task in r.record.curves.loss for _, v in task)


@pytest.mark.parametrize("name", ["generative_replay", "progressive", "parallel"])
def test_strategy_refuses_a_causal_lm_before_training(tiny_causal_lm, lm_stream, name, tmp_path):
    with pytest.raises(Unsupported, match=f"'{name}'") as e:
        run(tiny_causal_lm, lm_stream, [name], CFG, out_dir=tmp_path / "run")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "run").exists()


def test_ewc_lean_penalty_trains_as_the_fused_one(tiny_llama_config, lm_stream, monkeypatch):
    import transformers

    from retain.strategies.penalty import QuadraticPenalty

    matrices = []
    for limit in (10**9, 0):
        monkeypatch.setattr(QuadraticPenalty, "LEAN_NUMEL", limit)
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(tiny_llama_config)
        spec = {"name": "ewc", "fisher_samples": 4, "lam": 100.0}
        matrices.append(run(model, lm_stream, [spec], CFG).matrix)
    for a, b in zip(*matrices):
        assert a == pytest.approx(b, rel=1e-3)  # summation order differs


def test_ewc_holds_one_fisher_and_one_anchor(tiny_llama_config, monkeypatch):
    """On a large model (here: the lean threshold lowered) EWC keeps one Fisher and one anchor of
    the trainable weights, and its penalty adds no copy of them."""
    import transformers

    from retain.strategies.ewc import EWC
    from retain.strategies.penalty import QuadraticPenalty

    monkeypatch.setattr(QuadraticPenalty, "LEAN_NUMEL", 0)
    three = Stream(
        tuple(_lm_task(n, lo, seed=i) for i, (n, lo) in enumerate([("a", 0), ("b", 32), ("c", 0)])),
        objective="causal_lm",
        setting="domain_il",
    )
    model = transformers.LlamaForCausalLM(tiny_llama_config)
    ewc = EWC(mode="online", fisher_samples=2)
    run(model, three, [ewc], CFG)
    weights = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    assert ewc.stats()["fisher_bytes"] == 2 * weights
    from conftest import task_ctx

    penalty = ewc.penalty(task_ctx(three, 2, model))
    assert penalty.lean
    assert all(w is f for w, f in zip(penalty.weights, ewc.fisher_[0].values()))
    assert all(c is a for c, a in zip(penalty.centers, ewc.anchor_[0].values()))


def test_ewc_source_anchors_the_pretrained_weights_during_the_first_task(tiny_llama_config):
    """With ``source``, F is estimated on a stream source before the first task and the initial
    weights are anchored: a strong penalty keeps them close where plain EWC (nothing to protect
    yet) moves them as finetune does."""
    import transformers

    pool = _lm_task("general", 0, n=16).train
    stream = Stream(
        (_lm_task("new", 32, seed=1),),
        objective="causal_lm",
        setting="domain_il",
        sources={"general": pool},
    )
    drift, stats = {}, {}
    for label, spec in {
        "plain": {"name": "ewc", "fisher_samples": 4},
        "source": {"name": "ewc", "fisher_samples": 4, "source": "general", "lam": 1e6},
    }.items():
        torch.manual_seed(0)
        model = transformers.LlamaForCausalLM(tiny_llama_config)
        start = {n: p.detach().clone() for n, p in model.named_parameters()}
        r = run(model, stream, [spec], CFG)
        drift[label] = sum(
            float((p.detach() - start[n]).pow(2).sum()) for n, p in model.named_parameters()
        )
        stats[label] = r.record.strategy_stats[0]["ewc"]
    assert drift["source"] < 0.5 * drift["plain"]
    assert stats["source"]["fisher_source"] == "general"
    assert "fisher_source" not in stats["plain"]


def test_ewc_source_must_be_a_stream_source(lm_stream, tiny_causal_lm, tmp_path):
    with pytest.raises(Unsupported, match="source 'nope' is not one of the stream's sources"):
        run(
            tiny_causal_lm,
            lm_stream,
            [{"name": "ewc", "source": "nope"}],
            CFG,
            out_dir=tmp_path / "r",
        )
    assert not (tmp_path / "r").exists()
