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
import torch

from retain.config import StreamConfig
from retain.data import scenarios as S
from retain.data.stream import Stream, TensorData
from retain.errors import ConfigError, DataError


def load_source(cfg: StreamConfig, dataset: str | None = None) -> Any:
    from retain.data.builtin import load_dataset

    return load_dataset(
        dataset or cfg.dataset,
        path=cfg.path,
        target=cfg.target,
        features=cfg.features,
        objective=cfg.objective,
        input=cfg.input,
        mapped={"auto": None, "ram": False, "mapped": True}[cfg.memory],
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
            objective=cfg.text_objective(),
            setting=cfg.setting,
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
    warnings: list[str] = []
    setting = cfg.setting
    if cfg.scenario not in ("split", "files") and setting in ("class_il", "task_il"):
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
        info["labels"] = o.labels
        facts = _source_facts(sources[0])
        for other in sources[1:]:
            for key in ("dropped", "encoded"):
                facts[key].update(_source_facts(other)[key])
        features = sources[0].feature_names
        main = _described(sources[0])
        # Each file was just read: its test rows are split off in place (no second copy).
        sources = [
            s.with_test_split(cfg.test_fraction, seed + t, in_place=True)
            for t, s in enumerate(sources)
        ]
        stream = S.from_sources(
            sources,
            names=[Path(f).stem for f in files],
            test_fraction=cfg.test_fraction,
            name="files",
            setting=setting,
            labels=o.labels,
            warnings=warnings,
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
        main = _described(src)
        src = src.with_test_split(cfg.test_fraction, seed, in_place=True)
        image = src.is_image
        # Scenario ``name`` is built by ``scenarios.<name>(source, **options)``; an unset option
        # (None) leaves the builder's default.
        options = {k: v for k, v in dataclasses.asdict(o).items() if v is not None}
        if cfg.scenario == "split":
            options["setting"] = setting
        if cfg.scenario == "iid":  # the source was read here: its rows are regrouped in place
            options["in_place"] = True
        stream = getattr(S, cfg.scenario)(src, **options, **common)
    # Tables and images (inputs ``x``); text streams fill their suites when they are built.
    if cfg.suites and "x" in stream.tasks[0].train:
        suites, info["suites"] = table_suites(cfg, stream, main, seed)
        stream = dataclasses.replace(stream, suites={**stream.suites, **suites})
    info["objective"] = stream.objective
    if warnings:
        info["warnings"] = warnings
    if "target" in facts:
        info["target"] = {"column": facts["target"], "chosen_automatically": facts["target_auto"]}
    info["features"] = features
    info["dropped"] = facts["dropped"]
    info["encoded"] = facts["encoded"]
    # Token ids (integer inputs) are indices into an embedding: never rescaled.
    tokens = not stream.tasks[0].train.x.is_floating_point()
    do_scale = not tokens and (cfg.standardize if cfg.standardize is not None else not image)
    if do_scale:
        # The tensors were made here from files read here: they are scaled in place.
        stream, stats = S.standardize(
            stream, target=stream.objective == "regression", in_place=True
        )
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


def _described(src: Any) -> Any:
    """What :func:`table_suites` needs of the stream's source (names, facts), without its rows:
    the rows are split in place and must not be held twice."""
    empty = src.x_train[:0].clone()
    return dataclasses.replace(
        src,
        x_train=empty,
        y_train=src.y_train[:0].clone(),
        x_test=None,
        y_test=None,
        columns_train={},
        columns_test={},
    )


def table_suites(
    cfg: StreamConfig, stream: Stream, main: Any, seed: int
) -> tuple[dict[str, TensorData], dict[str, Any]]:
    """``stream.suites`` of a table or image stream: each file read with the stream's reader and
    options (its target column, features and objective; the ``by_column`` column left out), all
    its rows (at most ``limit_test``), labels in the stream's label space. Standardisation, done
    after this, scales them with the stream's statistics.

    Returns the suites and, for the run record, where each came from and its size.
    """
    if cfg.scenario == "split" and stream.setting == "domain_il":
        raise ConfigError(
            "stream.suites cannot be used with scenario split in the domain_il setting: its "
            "labels are positions within each task, which a suite's samples do not have; use "
            "setting class_il or task_il"
        )
    o = cfg.options
    target = cfg.target or main.facts.get("target")
    suites, info = {}, {}
    for name, path in (cfg.suites or {}).items():
        src = load_source(dataclasses.replace(cfg, target=target), path)
        where = f"suite '{name}' ({path})"
        if cfg.scenario == "by_column" and o.column and cfg.features is None:
            src = src.drop_features([o.column])
        if src.objective != stream.objective:
            raise DataError(
                f"{where} has {src.objective} targets but the stream has {stream.objective}"
            )
        if main.feature_names and src.feature_names and src.feature_names != main.feature_names:
            raise DataError(
                f"{where} has columns {src.feature_names} but the stream's data has "
                f"{main.feature_names}; give a file with the same columns"
            )
        xs = [src.x_train] + ([src.x_test] if src.x_test is not None else [])
        ys = [src.y_train] + ([src.y_test] if src.y_test is not None else [])
        x, y = torch.cat(xs), torch.cat(ys)
        if tuple(x.shape[1:]) != stream.input_shape:
            raise DataError(
                f"{where} has inputs of shape {tuple(x.shape[1:])} but the stream's are "
                f"{stream.input_shape}"
            )
        if stream.objective == "classification":
            x, y = _suite_labels(where, src, x, y, stream, getattr(o, "classes", None))
        if cfg.limit_test is not None and cfg.limit_test < len(x):
            g = torch.Generator().manual_seed(seed)
            idx = torch.randperm(len(x), generator=g)[: cfg.limit_test].sort().values
            x, y = x[idx], y[idx]
        if len(x) == 0:
            raise DataError(f"{where} has no rows of the stream's classes")
        suites[name] = TensorData(x=x, y=y)
        info[name] = {**_source_file(path), "rows": len(x)}
    return suites, info


def _suite_labels(
    where: str,
    src: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    stream: Stream,
    classes: list[int] | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A suite's class ids in the stream's label space, matched by class name when the stream
    names its outputs (text labels, selected classes); rows of classes the stream left out
    (``stream.classes``) are dropped, as they are from its tasks."""
    names = stream.class_names
    if names is None:
        n = stream.n_outputs or 0
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= n):
            raise DataError(
                f"{where}: labels range over [{int(y.min())}, {int(y.max())}] but the stream has "
                f"{n} classes"
            )
        return x, y
    own = src.class_names or [str(c) for c in range(int(y.max()) + 1 if len(y) else 0)]
    index = {str(c): i for i, c in enumerate(names)}
    present = {own[int(c)] for c in torch.unique(y)} if len(y) else set()
    unknown = sorted(str(c) for c in present if str(c) not in index)
    if unknown and classes is None:
        raise DataError(
            f"{where} has classes the stream's data does not have: {', '.join(unknown[:5])}"
        )
    lut = torch.tensor([index.get(str(c), -1) for c in own], dtype=torch.long)
    mapped = lut[y]
    keep = mapped >= 0
    return x[keep], mapped[keep]
