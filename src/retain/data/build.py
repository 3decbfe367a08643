"""Build the stream a config describes: load the source, cut it into tasks, scale it.

:func:`build_stream` also returns what a reader of the results needs to know about the data
(the run record's ``data``): the source files and their SHA-256, the target column and whether it
was guessed, the columns left out or encoded, each task's train/validation/test sizes, and the
standardisation and its statistics.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from retain.config import StreamConfig
from retain.data import scenarios as S
from retain.data.stream import Stream
from retain.errors import ConfigError


def load_source(cfg: StreamConfig, dataset: str | None = None) -> Any:
    from retain.data.builtin import load_dataset

    return load_dataset(
        dataset or cfg.dataset,
        path=cfg.path,
        target=cfg.target,
        features=cfg.features,
        objective=cfg.objective,
        input=cfg.input,
    )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _source_file(name: str, path: str | None = None) -> dict[str, Any]:
    """Where a dataset came from: a built-in name (and the ``path`` its files were looked for
    in), or a file with its size and checksum (a folder is named only: it can be large)."""
    from retain.data.builtin import BUILTIN, _key

    if _key(name) in BUILTIN and not Path(name).exists():
        out: dict[str, Any] = {"builtin": _key(name)}
        if path is not None:
            out["path"] = str(Path(path).expanduser().absolute())
        return out
    p = Path(name).expanduser().absolute()
    if p.is_file():
        return {"file": str(p), "bytes": p.stat().st_size, "sha256": _sha256(p)}
    return {"folder": str(p)}


def _round(v: float) -> float:
    return float(f"{v:.4g}")


def _source_facts(src: Any) -> dict[str, Any]:
    """A copy of what the reader decided (the dicts are filled in further here)."""
    facts = {k: dict(v) if isinstance(v, dict) else v for k, v in src.facts.items()}
    facts.setdefault("dropped", {})
    facts.setdefault("encoded", {})
    return facts


def build_stream(
    cfg: StreamConfig,
    seed: int = 0,
    tokenizer: Any = None,
    context: int | None = None,
    vocab_size: int | None = None,
) -> tuple[Stream, dict[str, Any]]:
    """The stream ``cfg`` describes, and facts about how it was made (see the module docstring).

    Scenario ``text`` needs the model's ``tokenizer``; ``context`` (its longest sequence) and
    ``vocab_size`` are checked against the block size and the tokens when given.
    """
    if cfg.scenario == "text":
        if tokenizer is None:
            raise ConfigError("stream.scenario text needs the model's tokenizer (model.tokenizer)")
        o = cfg.options
        stream, info = S.text_stream(
            o.sources or {},
            tokenizer,
            tasks=o.tasks,
            suites=cfg.suites,
            block_size=o.block_size,
            text_field=o.text_field,
            documents=o.documents,
            packing=o.packing,
            cache_dir=o.cache_dir,
            cache=o.cache,
            validation=cfg.validation,
            test_fraction=cfg.test_fraction,
            seed=seed,
            context=context,
            vocab_size=vocab_size,
            limit_train=cfg.limit_train,
            limit_test=cfg.limit_test,
        )
    else:
        stream, info = _build(cfg, seed)
    if cfg.mix:
        stream = dataclasses.replace(stream, mix=cfg.mix)
    info["tasks"] = [
        {
            "name": t.name,
            "train": len(t.train),
            "validation": len(t.val) if t.val is not None else 0,
            "test": len(t.test),
        }
        for t in stream.tasks
    ]
    return stream, info


def _build(cfg: StreamConfig, seed: int) -> tuple[Stream, dict[str, Any]]:
    info: dict[str, Any] = {}
    setting = cfg.setting
    if cfg.scenario != "split" and setting in ("class_il", "task_il"):
        raise ConfigError(
            f"stream.setting '{setting}' applies to scenario 'split' only; scenario "
            f"'{cfg.scenario}' keeps one label space across tasks (domain_il)"
        )
    common = {"validation": cfg.validation, "seed": seed}
    o = cfg.options  # the scenario's own fields (retain.config.SCENARIOS)
    if cfg.scenario == "files":
        files = o.files or []
        sources = [load_source(cfg, f).limit(cfg.limit_train, cfg.limit_test, seed) for f in files]
        info["sources"] = [_source_file(f) for f in files]
        facts = _source_facts(sources[0])
        for other in sources[1:]:
            for key in ("dropped", "encoded"):
                facts[key].update(_source_facts(other)[key])
        features = sources[0].feature_names
        stream = S.from_sources(
            sources,
            names=[Path(f).stem for f in files],
            test_fraction=cfg.test_fraction,
            name="files",
            **common,
        )
        image = sources[0].is_image
    else:
        src = load_source(cfg).limit(cfg.limit_train, cfg.limit_test, seed)
        info["sources"] = [_source_file(str(cfg.dataset), cfg.path)]
        facts = _source_facts(src)
        if cfg.scenario == "by_column" and o.column and cfg.features is None:
            if src.feature_names and o.column in src.feature_names:
                facts["dropped"][o.column] = "defines the tasks (scenario by_column)"
            src = src.drop_features([o.column])
        features = src.feature_names
        src = src.with_test_split(cfg.test_fraction, seed)
        image = src.is_image
        # Scenario ``name`` is built by ``scenarios.<name>(source, **options)``; an unset option
        # (None) leaves the builder's default.
        options = {k: v for k, v in dataclasses.asdict(o).items() if v is not None}
        if cfg.scenario == "split":
            options["setting"] = setting
        stream = getattr(S, cfg.scenario)(src, **options, **common)
    info["objective"] = stream.objective
    if "target" in facts:
        info["target"] = {"column": facts["target"], "chosen_automatically": facts["target_auto"]}
    info["features"] = features
    info["dropped"] = facts["dropped"]
    info["encoded"] = facts["encoded"]
    # Token ids (integer inputs) are indices into an embedding: never rescaled.
    tokens = not stream.tasks[0].train.x.is_floating_point()
    do_scale = not tokens and (cfg.standardize if cfg.standardize is not None else not image)
    if do_scale:
        stream, stats = S.standardize(stream, target=stream.objective == "regression")
        info["standardized"] = {
            "inputs": True,
            "statistics_from": f"{stream.tasks[0].name} training data",
            "mean": [_round(v) for v in np.ravel(stats["x_mean"])],
            "std": [_round(v) for v in np.ravel(stats["x_std"])],
        }
        if "y_mean" in stats:
            info["standardized"]["target"] = True
            info["standardized"].update(
                y_mean=_round(stats["y_mean"]), y_std=_round(stats["y_std"])
            )
    else:
        info["standardized"] = False
    return stream, info
