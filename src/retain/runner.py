"""Config-driven runs: what ``retain run``, ``retain compare`` and ``retain demo`` do.

``compare`` trains the same stream under each strategy (each from the same initial weights, in its
own sub-directory with its own checkpoints), then writes one ``result.json`` holding a
:class:`~retain.report.record.CompareRecord` (``runs: {label: run record}``), and adds
``gap_to_joint`` to every run's metrics when ``joint`` is among them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from retain.config import RunConfig
from retain.errors import ConfigError, RunDirError
from retain.labels import format_value, parse_label
from retain.labels import parse_labels as parse_labels  # `retain compare` reads it here
from retain.report.record import CompareRecord, RunRecord
from retain.report.result import versions
from retain.resume import BEFORE_TRAINING, adopt, check_resume, check_subs, finished, need_out
from retain.utils.checkpoint import RunDir, is_main_process


def default_out(cfg: RunConfig, kind: str = "") -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    name = cfg.name or "run"
    return Path("runs") / f"{name}{'-' + kind if kind else ''}-{stamp}"


def prepare_stream(
    cfg: RunConfig, warn: Callable[[str], None] | None = None
) -> tuple[Any, dict[str, Any]]:
    """The stream and the facts about its data; each data warning (``info["warnings"]``, also
    written into the run record) is shown with ``warn`` before anything trains."""
    stream, info = _prepare_stream(cfg)
    for w in info.get("warnings", []) if warn else []:
        warn(w)
    return stream, info


def _prepare_stream(cfg: RunConfig) -> tuple[Any, dict[str, Any]]:
    from retain.data.build import build_stream
    from retain.utils.seed import seed_everything

    seed = cfg.seeds[0] if cfg.seeds else cfg.seed
    seed_everything(seed)
    if cfg.stream.scenario != "text":
        return build_stream(cfg.stream, seed)
    from retain import vocab as extension
    from retain.utils.hf import load_tokenizer, model_limits

    context, vocab = model_limits(cfg.model)
    tokenizer = load_tokenizer(cfg.model)
    ext = extension.extend(cfg, tokenizer, seed)  # model.vocab: before anything is tokenised
    if ext is not None:
        tokenizer, vocab = ext.tokenizer, max(vocab or 0, len(ext.tokenizer))
    stream, info = build_stream(
        cfg.stream, seed, tokenizer=tokenizer, context=context, vocab_size=vocab
    )
    if ext is not None:
        stream = dataclasses.replace(stream, vocab=ext.added)
        info["vocab"] = extension.facts(cfg, ext)
    return stream, info


# While a comparison (or a run over seeds) is running: the last pretrained model it loaded, as a
# copy, with the random generators' states right after loading (see _model).
_LOADED: list[dict[str, tuple[Any, tuple[Any, Any, Any]]]] = []


@contextmanager
def _reusing_loaded_models() -> Iterator[None]:
    """Within the block, a pretrained model is loaded from disk once and copied for each run: a
    135M-parameter GGUF model takes a minute to load and de-quantise on a small CPU."""
    _LOADED.append(_LOADED[-1] if _LOADED else {})
    try:
        yield
    finally:
        _LOADED.pop()


def _model(cfg: RunConfig, stream: Any) -> Any:
    """The run's initial model. The same seed gives every strategy of a comparison the same
    initial weights; a reused pretrained model also leaves the random generators exactly as
    loading it would, so a run's result does not depend on whether its model was reused."""
    import random

    import numpy as np
    import torch

    from retain.models import build_model
    from retain.models.memory import check_fits
    from retain.utils.seed import seed_everything

    cache = _LOADED[-1] if _LOADED and cfg.model.name == "hf" and cfg.model.pretrained else None
    key = (
        json.dumps(
            [dataclasses.asdict(cfg.model), cfg.seed, stream.objective, stream.n_outputs],
            sort_keys=True,
            default=str,
        )
        if cache is not None
        else ""
    )
    if cache is not None and key in cache:
        model, (py, np_state, torch_state) = cache[key]
        random.setstate(py)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
        return copy.deepcopy(model)
    check_fits(cfg, stream)
    seed_everything(cfg.seed)
    model = build_model(cfg.model, stream)
    if stream.vocab:  # the stream was tokenised with an extended tokenizer (model.vocab)
        from retain.vocab import extend_model

        extend_model(model, cfg.model, stream.vocab)
    if cache is not None:
        cache.clear()  # one model at a time: they are large
        states = (random.getstate(), np.random.get_state(), torch.get_rng_state())
        cache[key] = (copy.deepcopy(model), states)
    return model


def run_config(
    cfg: RunConfig,
    out: str | Path | None,
    resume: bool = False,
    progress: Any = None,
    warn: Callable[[str], None] | None = None,
    stream_info: tuple[Any, dict[str, Any]] | None = None,
    name: str | None = None,
) -> RunRecord:
    """Run ``cfg`` into ``out``; return the run record (also in ``out/result.json``).

    ``name`` names the run in its record (a comparison's variant, ``ewc (lam=100)``). With
    ``cfg.seeds``, see :func:`run_seeds`."""
    from retain import strategies as registry
    from retain.api import run
    from retain.run_state import check_settings

    strategies = registry.build_all(cfg.strategies)  # config errors before any data is loaded
    need_out(out, cfg, resume)
    out = _out_dir(cfg, out)
    if cfg.seeds:
        return run_seeds(cfg, out, resume, progress, warn, stream_info, name)
    check_resume(out, "run", resume, cfg, warn)
    # The data is read before the run directory is made: a missing or bad file leaves no folder.
    stream, info = stream_info or prepare_stream(cfg, warn)
    check_strategies(strategies, stream, lambda: _model(cfg, stream))
    check_settings(cfg, stream)
    check_out(out)
    with _removed_on_failure(out):
        RunDir(out).ensure_new_or_resumable(resume)
        model = _model(cfg, stream)
        result = run(
            model, stream, strategies, cfg, out_dir=out, resume=resume, progress=progress, warn=warn
        )
    record = result.record
    record.data = info
    record.warnings = list(dict.fromkeys([*info.get("warnings", []), *record.warnings]))
    if info.get("vocab"):
        from retain.vocab import bits_per_char

        bpc = bits_per_char(info, record)
        record.data = {**info, "vocab": {**info["vocab"], "bits_per_char": bpc}}
    if name:
        record.strategy = name
    record.out_dir = str(out)
    if is_main_process():
        from retain.report.render import write_reports
        from retain.utils.state import write_json

        write_json(out / "result.json", record.to_dict())
        write_reports(out, record, plots=cfg.output.plots)
    return record


def _out_dir(cfg: RunConfig, out: str | Path | None, kind: str = "") -> Path:
    if out is not None:
        return Path(out)
    return Path(cfg.output.dir) if cfg.output.dir else default_out(cfg, kind)


def run_seeds(
    cfg: RunConfig,
    out: Path,
    resume: bool = False,
    progress: Any = None,
    warn: Callable[[str], None] | None = None,
    stream_info: tuple[Any, dict[str, Any]] | None = None,
    name: str | None = None,
) -> RunRecord:
    """Run ``cfg`` once per seed of ``cfg.seeds`` into ``out/seed-<s>``; the record in ``out`` is
    the mean over the seeds with their spread (:func:`retain.report.seeds.seeds_record`).

    ``stream_info`` is the first seed's data, when the caller has read it already. Each seed's
    data is read before its run (the seed draws the split). With ``resume``, seeds that finished
    are read back and the others resumed or started.
    """
    from retain import strategies as registry
    from retain.report.seeds import seeds_record
    from retain.run_state import check_settings
    from retain.utils.files import write_atomic
    from retain.utils.state import write_json

    seeds = list(cfg.seeds or [cfg.seed])
    resuming = check_resume(out, "seeds", resume, cfg, warn)
    if resuming:
        check_subs(out, {f"seed-{s}": dataclasses.replace(cfg, seed=s, seeds=None) for s in seeds})
    first = stream_info or prepare_stream(cfg, warn)
    check_strategies(registry.build_all(cfg.strategies), first[0], lambda: _model(cfg, first[0]))
    check_settings(cfg, first[0])
    check_out(out)
    records, folders = [], []
    with _removed_on_failure(out), _reusing_loaded_models():
        RunDir(out).ensure_new_or_resumable(resume, "seeds")
        if is_main_process():
            if resuming:
                adopt(out, "seeds")
            write_atomic(out / "config.resolved.yaml", cfg.to_yaml())
        for i, seed in enumerate(seeds):
            folder = f"seed-{seed}"
            sub = out / folder
            folders.append(folder)
            sub_cfg = copy.deepcopy(cfg)
            sub_cfg.seed, sub_cfg.seeds = seed, None
            done = finished(sub, sub_cfg) if resume else None
            if done is not None:
                records.append(done)
                continue
            records.append(
                run_config(
                    sub_cfg,
                    sub,
                    resume=resume and sub.exists(),
                    progress=progress,
                    warn=warn,
                    stream_info=first if i == 0 else None,
                    name=name,
                )
            )
    record = seeds_record(records, seeds, folders)
    record.config = cfg.to_dict()
    record.out_dir = str(out)
    if is_main_process():
        from retain.report.render import write_reports

        write_json(out / "result.json", record.to_dict())
        write_reports(out, record, plots=cfg.output.plots)
    return record


def specs_for(label: str, cfg: RunConfig) -> list[dict[str, Any]]:
    """Strategy specs for ``"ewc:lam=100+replay"``: the inline hyperparameters over the config's
    entry for each strategy (or its defaults)."""
    from retain import strategies as registry

    by_name = {s.get("name"): s for s in cfg.strategies if isinstance(s, dict)}
    specs = []
    for name, params in parse_label(label):
        registry.get(name)  # unknown names fail here, with a suggestion
        specs.append({**copy.deepcopy(by_name.get(name, {"name": name})), **params})
    return specs


@dataclass
class Plan:
    """One label of a comparison: its specs, and the name its run has in records and reports."""

    label: str  # as written on the command line
    name: str  # "ewc (lam=100)+replay": the inline hyperparameters that change something
    folder: str  # the sub-run directory's name (filesystem-safe)
    specs: list[dict[str, Any]]


def plan_labels(labels: list[str], cfg: RunConfig) -> list[Plan]:
    """Bind every label's hyperparameters (unknown keys fail with a suggestion) and name its run.

    A variant is named by the inline hyperparameters that differ from what the plain label would
    use (``ewc (lam=100)``); two labels that bind to the same strategies are refused.
    """
    from retain import strategies as registry

    plans: list[Plan] = []
    seen: dict[str, str] = {}
    for label in labels:
        specs = specs_for(label, cfg)
        built = registry.build_all(specs)
        plain = registry.build_all(specs_for("+".join(n for n, _ in parse_label(label)), cfg))
        names, folders = [], []
        for (name, params), s, base in zip(parse_label(label), built, plain):
            new, old = s.hparams(), base.hparams()
            diff = [f"{k}={format_value(new[k])}" for k in params if new[k] != old[k]]
            names.append(f"{name} ({', '.join(diff)})" if diff else name)
            folders.append("_".join([name, *diff]))
        key = json.dumps([s.spec() for s in built], sort_keys=True, default=str)
        if key in seen:
            raise ConfigError(
                f"--strategies: '{label}' and '{seen[key]}' are the same strategy with the same "
                "hyperparameters; list it once"
            )
        seen[key] = label
        folder = re.sub(r"[^\w.=+-]", "_", "+".join(folders))
        plans.append(Plan(label, "+".join(names), folder, specs))
    folders = [p.folder for p in plans]
    if len(set(folders)) != len(folders):
        raise ConfigError(f"--strategies: two labels share the folder name in {folders}")
    return plans


def check_strategies(
    strategies: list[Any], stream: Any, model: Callable[[], Any] | None = None
) -> None:
    """Refuse, before anything trains, a strategy that cannot serve this stream (one line), or
    this model: ``model()`` builds it, once, when some strategy checks models."""
    from retain.strategies.base import Strategy

    for s in strategies:
        s.check(stream)
    checkers = [s for s in strategies if type(s).check_model is not Strategy.check_model]
    if checkers and model is not None:
        built = model()
        for s in checkers:
            s.check_model(built)


def check_out(out: Path) -> None:
    """Refuse an output folder that cannot be made or written, before anything trains."""
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise RunDirError(f"cannot make the run directory '{out}': '{parent}' is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot write the run directory '{out}': '{parent}' is not writable")


@contextmanager
def _removed_on_failure(out: Path) -> Iterator[None]:
    """Remove ``out`` when the block fails, if the block made it and it holds only its config.

    A run that failed before saving anything (a model or strategy error, a crash in the first
    task) would otherwise leave a folder that makes the same command answer "already exists; pass
    --resume". A folder that existed before, or that holds a result or a checkpoint, is kept.
    """
    existed = out.exists()
    try:
        yield
    except Exception:
        only_config = out.is_dir() and {p.name for p in out.iterdir()} <= BEFORE_TRAINING
        if not existed and is_main_process() and only_config:
            shutil.rmtree(out)
        raise


def compare_config(
    cfg: RunConfig,
    labels: list[str],
    out: str | Path | None,
    resume: bool = False,
    progress: Any = None,
    warn: Callable[[str], None] | None = None,
    announce: Callable[[str, int, int, int], None] | None = None,
) -> CompareRecord:
    """Run every strategy label on the same stream; return the comparison record.

    ``announce(label, index, count, steps_left)`` is called before each strategy trains: its
    position (1-based) among ``count``, and the optimizer steps planned for it and the ones after
    it (for an ETA over the whole comparison)."""
    out = _out_dir(cfg, out, "compare")
    with _removed_on_failure(out), _reusing_loaded_models():
        return _compare_config(cfg, labels, out, resume, progress, warn, announce)


def _compare_config(
    cfg: RunConfig,
    labels: list[str],
    out: Path,
    resume: bool,
    progress: Any,
    warn: Callable[[str], None] | None,
    announce: Callable[[str, int, int, int], None] | None,
) -> CompareRecord:
    from retain import strategies as registry
    from retain.run_state import check_settings
    from retain.utils.files import write_atomic
    from retain.utils.state import write_json

    # Everything that can fail before training fails here, before the first step of the first
    # run: every label's hyperparameters, the folder (what it is, its settings, its sub-runs), the
    # data, every strategy against the stream.
    plans = plan_labels(labels, cfg)
    resuming = check_resume(out, "compare", resume, cfg, warn)
    if resuming:
        check_subs(out, {p.folder: dataclasses.replace(cfg, strategies=p.specs) for p in plans})
    prepared = prepare_stream(cfg, warn)  # before the run directory is made (see run_config)
    built: list[Any] = []  # the model, built once for every strategy that checks it

    def model() -> Any:
        if not built:
            built.append(_model(cfg, prepared[0]))
        return built[0]

    for plan in plans:
        check_strategies(registry.build_all(plan.specs), prepared[0], model)
    check_settings(cfg, prepared[0])
    check_out(out)
    root = RunDir(out)
    root.ensure_new_or_resumable(resume, "compare")
    if is_main_process():
        if resuming:
            adopt(out, "compare")
        write_atomic(out / "config.resolved.yaml", cfg.to_yaml())
    runs: dict[str, RunRecord] = {}
    for plan in plans:
        sub = out / plan.folder
        sub_cfg = copy.deepcopy(cfg)
        sub_cfg.strategies = plan.specs
        sub_cfg.name = cfg.name
        done = finished(sub, sub_cfg) if resume else None
        if done is not None:
            runs[plan.name] = done
            continue
        if announce:
            announce(
                plan.name, *_position(cfg, prepared[0], {p.name: p.specs for p in plans}, plan.name)
            )
        runs[plan.name] = run_config(
            sub_cfg,
            sub,
            resume=resume and sub.exists(),
            progress=progress,
            warn=warn,
            stream_info=prepared,
            name=plan.name,
        )
    record = compare_record(cfg, runs)
    if is_main_process():
        from retain.report.render import write_reports

        write_json(out / "result.json", record.to_dict())
        write_reports(out, record, plots=cfg.output.plots)
    return record


def compare_record(cfg: RunConfig, runs: dict[str, RunRecord]) -> CompareRecord:
    """The comparison of finished runs; with a joint run, each run's ``gap_to_joint``."""
    from retain.eval.metrics import gap_to_joint

    joint_run = next((r for r in runs.values() if r.joint and r.metrics), None)
    if joint_run is not None and joint_run.metrics is not None:
        joint = joint_run.metrics
        for rec in runs.values():
            if rec.metrics is not None:
                rec.metrics.gap_to_joint = gap_to_joint(
                    joint.avg_accuracy, rec.metrics.avg_accuracy, rec.higher_is_better
                )
                _paired_gap_std(joint_run, rec)
    first = next(iter(runs.values()))
    return CompareRecord(
        name=cfg.name,
        tasks=first.tasks,
        score=first.score,
        split=first.split,
        higher_is_better=first.higher_is_better,
        stream=first.stream,
        runs=runs,
        seed=None if cfg.seeds else cfg.seed,
        versions=versions(),
        config=cfg.to_dict(),
    )


def _paired_gap_std(joint: RunRecord, rec: RunRecord) -> None:
    """Over several seeds, the std of the gap to joint training seed by seed (each seed's run
    against joint training with the same seed: the same data split and initial weights)."""
    import statistics

    from retain.eval.metrics import gap_to_joint

    a, b = joint.spread, rec.spread
    if a is None or b is None or a.seeds != b.seeds or len(a.seeds) < 2:
        return
    pairs = list(zip(a.avg_per_seed, b.avg_per_seed))
    if any(j is None or r is None for j, r in pairs):
        return
    gaps = [gap_to_joint(j, r, rec.higher_is_better) for j, r in pairs]
    b.metrics_std["gap_to_joint"] = statistics.stdev(gaps)


def _position(
    cfg: RunConfig, stream: Any, plans: dict[str, list[dict[str, Any]]], label: str
) -> tuple[int, int, int]:
    """``(index, count, steps_left)`` of ``label`` in a comparison; see :func:`compare_config`.

    The steps are planned from the data sizes and ``cfg.train`` (one union task for ``joint``);
    strategies that change a task's data (``cumulative``) or stop early make it an estimate.
    """
    from retain import strategies as registry
    from retain.run_state import Plan as TaskPlan
    from retain.train.optim import steps_for

    labels = list(plans)
    index = labels.index(label)
    steps = 0
    for later in labels[index:]:
        plan = TaskPlan.for_strategies(stream, registry.build_all(plans[later]))
        steps += sum(steps_for(len(t.train), cfg.train) for t in plan.tasks)
    return index + 1, len(labels), steps * len(cfg.seeds or [cfg.seed])
