"""``retain study NAME``: the claims people make about forgetting, as experiments anyone can rerun
on their own model and data.

Each study is one file here and registers itself (:data:`STUDIES`). A study takes a base config
(the user's, or its own default on real data), varies only what it studies, trains over the
given seeds, and writes a run directory holding:

- ``study.json``: the study, its parameters, the seeds, every number measured, the finding;
- ``<name>.png`` (and sometimes more figures);
- ``config.resolved.yaml``: the base config;
- ``study.md``: the finding, the figure and the command, for reading.

The finding is one sentence computed from the numbers; over several seeds it gives mean ± std
and says when a difference is within noise (the rule: :mod:`retain.studies.common`).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from pathlib import Path
from typing import Any

from retain.config import RunConfig
from retain.errors import ConfigError, RunDirError
from retain.studies import iid, lr_steps, mixing, prior_shift, similarity, union_gap, width
from retain.studies.common import STUDIES, Study, get_study, params_from

__all__ = ["STUDIES", "Study", "default_config", "describe", "run_study"]

_MODULES = (iid, prior_shift, similarity, lr_steps, width, mixing, union_gap)  # registration


def default_config(name: str) -> RunConfig:
    """The study's own base config: real data (MNIST) sized to run in minutes on 2 cores."""
    from retain.binding import from_dict

    return from_dict(RunConfig, dict(get_study(name).default))


def describe() -> str:
    """Each study: its name and what it measures, then its parameters with their defaults."""
    lines = []
    for name, study in STUDIES.items():
        lines.append(f"{name}: {study.summary}")
        for f in dataclasses.fields(study.params):
            default = f.default_factory() if callable(f.default_factory) else f.default
            lines.append(f"    {f.name}={json.dumps(default)}  {f.metadata.get('help', '')}")
    return "\n".join(lines) + "\n"


def run_study(
    name: str,
    cfg: RunConfig | None = None,
    seeds: list[int] | None = None,
    out: str | Path | None = None,
    params: dict[str, Any] | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Run study ``name`` on ``cfg`` (default: the study's own) over ``seeds`` (default 0, 1, 2);
    write the run directory ``out`` (when given) and return what ``study.json`` holds.

    Examples:
        >>> from retain.studies import STUDIES
        >>> sorted(STUDIES)[:3]
        ['iid', 'lr-steps', 'mixing']
    """
    study = get_study(name)
    p = params_from(study.params, params or {}, name)
    base = cfg if cfg is not None else default_config(name)
    seeds = list(seeds) if seeds else [0, 1, 2]
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ConfigError(f"--seeds must be distinct numbers >= 0, got {seeds}")
    study.check(base, p)  # before any training: what this config cannot vary
    folder = Path(out) if out is not None else None
    if folder is not None:
        _check_out(folder)
    t0 = time.perf_counter()
    numbers = study.run(base, p, seeds)
    finding = study.finding(numbers)
    result = {
        "kind": "study",
        "study": name,
        "claim": study.claim,
        "finding": finding,
        "params": dataclasses.asdict(p),
        "seeds": seeds,
        "numbers": numbers,
        "noise_rule": "a difference of means is within noise when it is less than twice the "
        "pooled sample std of the seeds (one seed: not measured)",
        "seconds": round(time.perf_counter() - t0, 1),
        "command": command,
    }
    if folder is not None:
        _write(folder, study, base, result)
    return result


def _check_out(folder: Path) -> None:
    from retain.runner import check_out

    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise RunDirError(f"'{folder}' already exists and is not empty; give a new --out folder")
    check_out(folder)


def _write(folder: Path, study: Study, cfg: RunConfig, result: dict[str, Any]) -> None:
    from retain.utils.files import write_atomic
    from retain.utils.state import write_json

    folder.mkdir(parents=True, exist_ok=True)
    figures = [Path(f).name for f in study.plot(result["numbers"], folder)]
    result["figures"] = figures
    write_json(folder / "study.json", result)
    write_atomic(folder / "config.resolved.yaml", cfg.to_yaml())
    lines = [
        f"# Study: {study.name}",
        "",
        f"Claim tested: {study.claim}",
        "",
        f"**Finding:** {result['finding']}",
        "",
        *[f"![{study.name}]({f})" for f in figures],
        "",
        f"Seeds: {', '.join(map(str, result['seeds']))}; parameters: "
        f"`{json.dumps(result['params'])}`; {result['seconds']} s.",
    ]
    if result.get("command"):
        lines += ["", f"Command: `{result['command']}`"]
    write_atomic(folder / "study.md", "\n".join(lines) + "\n")


def command_line(argv: list[str]) -> str:
    """The command as a shell would take it back (for study.json and study.md)."""
    return "retain " + " ".join(shlex.quote(a) for a in argv)


def from_command(
    name: str,
    config: str | None,
    seeds: str,
    out: str | None,
    overrides: list[str],
    argv: list[str],
) -> tuple[dict[str, Any], Path]:
    """``retain study NAME ...``: ``KEY=VALUE`` pairs without a dot are the study's parameters,
    dotted ones override the config; returns the result and the run directory."""
    from datetime import datetime

    from retain.config import load_config, parse_override

    get_study(name)  # an unknown name fails first, listing the studies
    params: dict[str, Any] = {}
    dotted = []
    for text in overrides:
        keys, value = parse_override(text)
        if len(keys) == 1:
            params[keys[0]] = value
        else:
            dotted.append(text)
    if config is not None:
        cfg = load_config(config, dotted)
    else:
        from retain.binding import from_dict
        from retain.config import apply_overrides

        cfg = from_dict(RunConfig, apply_overrides(dict(get_study(name).default), dotted))
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds must be numbers separated by commas, got '{seeds}'") from None
    if not seed_list:
        raise ConfigError("--seeds is empty: give at least one, e.g. --seeds 0")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = Path(out) if out else Path("runs") / f"study-{name}-{stamp}"
    result = run_study(name, cfg, seed_list, folder, params, command_line(argv))
    return result, folder
