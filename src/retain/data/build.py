"""Build the stream a config describes: load the source, cut it into tasks, scale it."""

from __future__ import annotations

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
    if cfg.scenario == "files":
        sources = [load_source(cfg, f).limit(cfg.limit_train, cfg.limit_test, seed) for f in cfg.files or []]
        stream = S.from_sources(sources, names=[Path(f).stem for f in cfg.files or []],
                                test_fraction=cfg.test_fraction, name="files", **common)
        image = sources[0].is_image
    else:
        src = load_source(cfg).limit(cfg.limit_train, cfg.limit_test, seed)
        if cfg.scenario == "by_column" and cfg.column and cfg.features is None:
            src = src.drop_features([cfg.column])
        src = src.with_test_split(cfg.test_fraction, seed)
        image = src.is_image
        sc = cfg.scenario
        if sc == "split":
            stream = S.split(src, cfg.n_tasks, cfg.classes_per_task, cfg.class_order, cfg.classes,
                             setting=setting, **common)
        elif sc == "permuted":
            stream = S.permuted(src, cfg.n_tasks or 10, **common)
        elif sc == "rotated":
            stream = S.rotated(src, cfg.n_tasks or (len(cfg.angles) if cfg.angles else 10),
                               cfg.angles, cfg.max_angle, **common)
        elif sc == "iid":
            stream = S.iid(src, cfg.n_tasks or 2, cfg.classes, **common)
        elif sc == "prior_shift":
            stream = S.prior_shift(src, cfg.proportions or [], cfg.classes, cfg.samples_per_task, **common)
        elif sc == "by_column":
            stream = S.by_column(src, cfg.column or "", cfg.groups, cfg.classes, **common)
        else:  # pragma: no cover - the config's Literal rejects anything else
            raise ConfigError(f"unknown scenario '{sc}'")
    do_scale = cfg.standardize if cfg.standardize is not None else not image
    if do_scale:
        stream, stats = S.standardize(stream, target=stream.objective == "regression")
        info["standardized"] = {k: v for k, v in stats.items() if not k.startswith("x_")}
        info["standardized"]["inputs"] = True
    return stream, info
