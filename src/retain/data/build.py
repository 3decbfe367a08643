"""Build the stream a config describes: load the source, cut it into tasks, scale it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from retain.config import StreamConfig
from retain.data import scenarios as S
from retain.data.stream import Stream
from retain.errors import ConfigError


def load_source(cfg: StreamConfig, dataset: str | None = None) -> Any:
    from retain.data.builtin import load_dataset

    return load_dataset(dataset or cfg.dataset, path=cfg.path, target=cfg.target,
                        features=cfg.features, objective=cfg.objective, input=cfg.input)


def build_stream(cfg: StreamConfig, seed: int = 0) -> tuple[Stream, dict[str, Any]]:
    """The stream ``cfg`` describes, and facts about how it was made (scaling statistics)."""
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
        sources = [load_source(cfg, f).limit(cfg.limit_train, cfg.limit_test, seed) for f in o.files or []]
        stream = S.from_sources(sources, names=[Path(f).stem for f in o.files or []],
                                test_fraction=cfg.test_fraction, name="files", **common)
        image = sources[0].is_image
    else:
        src = load_source(cfg).limit(cfg.limit_train, cfg.limit_test, seed)
        if cfg.scenario == "by_column" and o.column and cfg.features is None:
            src = src.drop_features([o.column])
        src = src.with_test_split(cfg.test_fraction, seed)
        image = src.is_image
        # Scenario ``name`` is built by ``scenarios.<name>(source, **options)``; an unset option
        # (None) leaves the builder's default.
        options = {k: v for k, v in dataclasses.asdict(o).items() if v is not None}
        if cfg.scenario == "split":
            options["setting"] = setting
        stream = getattr(S, cfg.scenario)(src, **options, **common)
    do_scale = cfg.standardize if cfg.standardize is not None else not image
    if do_scale:
        stream, stats = S.standardize(stream, target=stream.objective == "regression")
        info["standardized"] = {k: v for k, v in stats.items() if not k.startswith("x_")}
        info["standardized"]["inputs"] = True
    return stream, info
