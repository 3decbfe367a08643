"""A model too large for the machine is refused before any weight is allocated."""

from __future__ import annotations

import pytest
import torch
from refusal import BASE, put, refused

import retain.models.memory as memory
from retain.config import load_config
from retain.data.build import build_stream


@pytest.mark.parametrize(
    "model, knob",
    [
        ("{name: mlp, hidden: [2000, 2000]}", "model.hidden"),
        ("{name: cnn, channels: [512, 512]}", "model.channels"),
        (
            "{name: hf, hf_config: {model_type: llama, hidden_size: 256, intermediate_size: 512,"
            " num_hidden_layers: 2, num_attention_heads: 4, vocab_size: 1000}}",
            "model.hf_config",
        ),
    ],
)
def test_too_large_is_one_line(capsys, tmp_path, monkeypatch, model, knob):
    monkeypatch.setattr(memory, "available_memory", lambda: 10_000_000)  # 10 MB
    text = BASE.replace("model: {name: mlp, hidden: [16]}", f"model: {model}")
    cfg = put(tmp_path, "exp.yaml", text)
    out = tmp_path / "run"
    refused(
        capsys,
        ["run", str(cfg), "--out", str(out), "-q"],
        "parameters",
        "0.0 GB of memory available",
        knob,
    )
    assert not out.exists()


def _cfg(tmp_path, text):
    cfg = load_config(put(tmp_path, "exp.yaml", text))
    return cfg, build_stream(cfg.stream, cfg.seed)[0]


def test_the_count_is_exact_and_draws_no_random_numbers(tmp_path):
    cfg, stream = _cfg(tmp_path, BASE.replace("[16]", "[30, 20]"))
    state = torch.get_rng_state()
    params, size = memory.count_parameters(cfg, stream)
    assert torch.equal(state, torch.get_rng_state())
    assert (params, size) == ((64 * 30 + 30) + (30 * 20 + 20) + (20 * 4 + 4), 4)


def test_the_bound_follows_the_optimizer_and_frozen_bases(tmp_path):
    cfg, _ = _cfg(tmp_path, BASE)  # adam: weights, gradients, two moments
    assert memory.training_bytes(cfg, 1000, 4)[0] == 16_000
    cfg.train.optimizer, cfg.train.momentum = "sgd", 0.0
    assert memory.training_bytes(cfg, 1000, 4)[0] == 8_000
    cfg.strategies = [{"name": "lora"}]
    assert memory.training_bytes(cfg, 1000, 4)[0] == 4_000


def test_a_model_that_fits_is_not_refused(tmp_path, monkeypatch):
    cfg, stream = _cfg(tmp_path, BASE)
    memory.check_fits(cfg, stream, available=10**9)
    with pytest.raises(memory.ConfigError, match="parameters"):
        memory.check_fits(cfg, stream, available=100)


def test_pretrained_counts_from_safetensors_headers(tmp_path):
    transformers = pytest.importorskip("transformers")
    conf = transformers.LlamaConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        vocab_size=100,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(conf)
    model.save_pretrained(tmp_path / "lm")
    n = memory._safetensors_count(tmp_path / "lm")
    assert n == sum(p.numel() for p in model.parameters())


class OutOfMemoryError(RuntimeError):
    """Stands for torch.OutOfMemoryError (CUDA), which this CPU machine cannot raise."""


@pytest.mark.parametrize(
    "raised, needle",
    [
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate "
                "memory: you tried to allocate 40000000000 bytes. Error code 12"
            ),
            "out of CPU memory",
        ),
        (OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out of GPU memory"),
        (MemoryError(), "out of CPU memory"),
    ],
)
def test_running_out_of_memory_is_one_line(capsys, tmp_path, monkeypatch, raised, needle):
    import retain.models

    def build(*a, **k):
        raise raised

    monkeypatch.setattr(retain.models, "build_model", build)
    cfg = put(tmp_path, "exp.yaml", BASE)
    refused(capsys, ["run", str(cfg), "--out", str(tmp_path / "r"), "-q"], needle, "batch_size")


def test_other_runtime_errors_stay_tracebacks(tmp_path, monkeypatch):
    import retain.models
    from retain.cli import main

    def build(*a, **k):
        raise RuntimeError("a bug")

    monkeypatch.setattr(retain.models, "build_model", build)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["run", str(put(tmp_path, "exp.yaml", BASE)), "--out", str(tmp_path / "r"), "-q"])
