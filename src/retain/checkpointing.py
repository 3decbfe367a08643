"""Saving a run as it goes and picking it up again.

``restore`` loads what a checkpoint saved (strategy state, then the ``setup`` hooks, then the
weights, the history and the random state); ``checkpoint`` saves them after each task, with
result.json so far; ``finish`` writes the complete record.
"""

from __future__ import annotations

import resource
from typing import Any

import torch
from torch import nn

from retain.report.history import History
from retain.report.record import RunRecord
from retain.report.result import RunResult, build_record
from retain.run_state import RunState
from retain.utils.adapters import save_library
from retain.utils.checkpoint import load_weights, optimizer_state
from retain.utils.state import rng_state, set_rng_state, write_json


def restore(r: RunState, model: nn.Module) -> tuple[nn.Module, History]:
    """Strategy state, ``setup`` hooks and weights; the history so far (empty for a fresh run).

    Resume contract: strategy state first, then setup (which may rebuild structure), then
    weights.
    """
    saved = r.saved
    if saved is not None:
        for s, st in zip(r.strategies, saved["strategies"]):
            s.load_state_dict(st)
    model = model.to(r.acc.device)
    ctx = r.context(0)
    for s in r.strategies:
        model = s.setup(model, ctx)
    if saved is not None:
        load_weights(model, saved["model_path"])
    history = History.from_checkpoint(saved) if saved is not None else History()
    if saved is not None and saved.get("rng"):
        set_rng_state(saved["rng"])
    return model, history


def checkpoint(r: RunState, model: nn.Module, optimizer: Any, history: History) -> None:
    """Weights, strategy state, optimizer (when kept), RNG and history; result.json so far."""
    if r.run_dir is None or not r.acc.is_main_process:
        return
    out = r.cfg.output
    save_library(r.acc.unwrap_model(model), r.run_dir.path / "adapters")
    if out.checkpoints:
        kept = optimizer_state(optimizer) if r.cfg.train.optimizer_state == "keep" else None
        r.run_dir.save_checkpoint(
            history.tasks_done,
            r.acc.unwrap_model(model),
            [s.state_dict() for s in r.strategies],
            history.to_checkpoint(),
            kept,
            rng_state(),
            out.keep_checkpoints,
        )
    write_json(r.run_dir.path / "result.json", record(r, history, "running"))


def finish(r: RunState, model: nn.Module, history: History) -> RunResult:
    """The complete record, also written to result.json, and the trained model."""
    result = record(r, history, "complete")
    if r.run_dir is not None and r.acc.is_main_process:
        if r.cfg.output.save_model:
            save_trained(r, r.acc.unwrap_model(model))
        write_json(r.run_dir.path / "result.json", result)
    return RunResult(result, r.acc.unwrap_model(model))


def save_trained(r: RunState, model: nn.Module) -> None:
    """A transformers model and its tokenizer in ``RUN/model`` (``save_pretrained``), loadable
    by plain transformers; other models are in the checkpoints.

    A model with PEFT adapters (the ``lora`` strategy) is not written again in full: its base is
    unchanged (``model.pretrained``, or ``RUN/adapters/base`` for a base trained from scratch),
    so ``RUN/adapters`` (the adapter library, rewritten after every task) gets the tokenizer and
    nothing goes to ``RUN/model``."""
    adapters = getattr(model, "peft_model", None) is not None
    if not adapters and not callable(getattr(model, "save_pretrained", None)):
        return
    from retain.utils.hf import load_tokenizer, save_model

    m = r.cfg.model
    has_tokenizer = m.tokenizer or m.pretrained or m.gguf_file
    tokenizer = load_tokenizer(m) if m.name == "hf" and has_tokenizer else None
    if tokenizer is not None and r.stream.vocab:  # the tokenizer the run's text was made with
        from retain.vocab import extend_tokenizer

        tokenizer = extend_tokenizer(tokenizer, list(r.stream.vocab))[0]
    if adapters:
        save_library(model, r.run_dir.path / "adapters")
        if tokenizer is not None:
            tokenizer.save_pretrained(r.run_dir.path / "adapters")
        return
    save_model(model, r.run_dir.path / "model", tokenizer)


def record(r: RunState, history: History, status: str) -> RunRecord:
    """The run record (what result.json holds) for the history so far."""
    return build_record(r.facts(), history, status, peak_memory_mb(r.acc.device))


def peak_memory_mb(device: torch.device) -> dict[str, float]:
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out
