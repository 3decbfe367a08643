"""The architecture, as a test: which part of retain may import which.

Every import in src/retain is read with ``ast`` (function-level and ``TYPE_CHECKING`` imports
included: a lazy import is still a dependency). A unit is a subpackage (``retain.data``) or a
top-level module (``retain.config``); ``retain`` itself is the package's ``__init__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import retain

SRC = Path(retain.__file__).parent

# Lowest layer first. A unit may import only the units listed for it; the table must be acyclic.
ALLOWED: dict[str, set[str]] = {
    "errors": set(),
    "binding": {"errors"},  # dict -> dataclass, field checks
    "stream_config": {"errors", "binding"},  # StreamConfig and scenarios; no torch, like config
    # Imports no torch: `retain --help` stays fast.
    "config": {"errors", "binding", "stream_config"},
    "labels": {"errors"},  # compare's --strategies grammar, shown by --help
    "utils": {"errors", "config"},  # seeding, state files, checkpoints, HF helpers
    "objectives": {"errors"},  # what is trained and scored; score directions
    "data": {"errors", "config", "utils"},
    "models": {"errors", "config", "data", "utils"},
    "eval": {"errors", "data", "objectives", "utils"},
    # merge methods on state dicts; `retain merge` reads model folders through utils
    "merging": {"errors", "utils"},
    # eval: the merge strategy's weight sweep scores each merge as R does
    "strategies": {
        "errors",
        "binding",
        "config",
        "data",
        "eval",
        "merging",
        "models",
        "objectives",
        "utils",
    },
    "train": {"errors", "config", "data", "objectives", "strategies", "utils"},
    "report": {"errors", "config", "data", "eval", "objectives", "strategies", "utils"},
    # what --resume may continue: the folder's kind, its settings, its finished records
    "resume": {"errors", "config", "report", "utils"},
    # what every step of a run shares, and `start`, which makes it
    "run_state": {
        "errors",
        "config",
        "data",
        "objectives",
        "report",
        "resume",
        "strategies",
        "train",
        "utils",
    },
    "checkpointing": {"report", "run_state", "utils", "vocab"},  # restore, checkpoint, finish
    "midtask": {"errors", "run_state", "strategies", "train", "utils"},  # checkpoints inside a task
    # vocabulary extension: the tokenizer, the model's new rows and their learning rate
    "vocab": {"errors", "config", "data", "strategies", "utils"},
    "api": {
        "errors",
        "config",
        "data",
        "eval",
        "models",
        "objectives",
        "report",
        "strategies",
        "train",
        "utils",
        "run_state",
        "checkpointing",
        "midtask",
        "vocab",
    },
    "runner": {
        "errors",
        "labels",
        "config",
        "data",
        "eval",
        "models",
        "report",
        "strategies",
        "train",  # planned steps, for the ETA of a comparison
        "api",
        "run_state",  # the training plan of each label, for the ETA of a comparison
        "resume",
        "utils",
        "vocab",
    },
    # model packages (retain train/package/update/gate): a run's state plus held-out data
    "package": {"retain", "errors", "config", "data", "eval", "utils"},  # the format on disk
    "packaging": {  # train and package: the steps of a run, one task at a time
        "errors",
        "config",
        "data",
        "eval",
        "objectives",
        "report",
        "strategies",
        "utils",
        "api",
        "run_state",
        "checkpointing",
        "runner",
        "package",
    },
    "gate": {"errors", "data", "eval", "objectives", "package", "packaging"},
    # `retain update --strategy auto`: trials of an update, scored on validation data
    "autostrategy": {
        "errors",
        "config",
        "data",
        "eval",
        "strategies",
        "api",
        "package",
        "packaging",
        "gate",
        "utils",
    },
    "update": {
        "autostrategy",
        "errors",
        "config",
        "data",
        "eval",
        "report",
        "strategies",
        "api",
        "runner",
        "package",
        "packaging",
        "gate",
        "utils",
    },
    # `retain landscape`: loss surfaces on a plane through a run's models (snapshots, a joint run)
    "landscape": {
        "errors",
        "config",
        "data",
        "models",
        "objectives",
        "report",
        "runner",
        "packaging",
        "utils",
    },
    "init": {"errors", "data"},  # `retain init`: a config for the user's files
    "reference": {"binding", "config"},  # `retain config`: every config key, from the dataclasses
    # `retain study`: named experiments built on runs (api) and strategy labels (runner)
    "studies": {
        "errors",
        "binding",
        "config",
        "data",
        "models",
        "strategies",
        "utils",
        "api",
        "runner",
    },
    "cli": {
        "retain",
        "errors",
        "landscape",
        "merging",
        "config",
        "init",
        "reference",
        "labels",
        "report",
        "resume",  # --resume needs --out, checked before the default folder is named
        "runner",
        "strategies",
        "gate",
        "packaging",
        "update",
        "utils",
        "studies",
    },
    "__main__": {"cli"},
    "retain": {"strategies"},  # the lazy public API
}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "retain"


def module_name(path: Path) -> str:
    parts = ("retain", *path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> list[tuple[str, str, str]]:
    """``(importing module, imported module, imported name or "")`` for every retain import."""
    out = []
    for path in sorted(SRC.rglob("*.py")):
        mod = module_name(path)
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out += [(mod, a.name, "") for a in node.names if a.name.split(".")[0] == "retain"]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                if base.split(".")[0] != "retain":
                    continue
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    is_module = (SRC / Path(*sub.split(".")[1:])).is_dir() or (
                        SRC / Path(*sub.split(".")[1:])
                    ).with_suffix(".py").is_file()
                    out.append((mod, sub, "") if is_module else (mod, base, a.name))
    return out


def test_the_allowed_layers_form_no_cycle():
    done: set[str] = set()
    path: list[str] = []

    def visit(u: str) -> None:
        assert u not in path, f"cycle in ALLOWED: {' -> '.join([*path, u])}"
        if u in done:
            return
        path.append(u)
        for v in ALLOWED[u]:
            visit(v)
        path.pop()
        done.add(u)

    for u in ALLOWED:
        visit(u)


def test_every_import_follows_the_layers():
    units = {unit(module_name(p)) for p in SRC.rglob("*.py")}
    assert units <= set(ALLOWED), f"add {sorted(units - set(ALLOWED))} to ALLOWED"
    bad = []
    for mod, target, _ in imports():
        a, b = unit(mod), unit(target)
        if a == b:
            continue
        if b not in ALLOWED[a]:
            bad.append(f"{mod} imports {target} ({a} -> {b})")
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def package_of(module: str) -> str:
    """``retain.strategies`` for ``retain.strategies.ewc`` and for the package itself."""
    # A folder with an __init__.py: data/builtin/ is a folder of data files beside builtin.py.
    is_package = (SRC / Path(*module.split(".")[1:]) / "__init__.py").is_file()
    return module if is_package else module.rpartition(".")[0]


def is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_private_name_is_imported_across_packages():
    bad = []
    for mod, target, name in imports():
        private = any(is_private(p) for p in target.split(".")) or is_private(name)
        if private and package_of(target) != package_of(mod):
            bad.append(f"{mod}: from {target} import {name or '*'}")
    assert not bad, "private names imported across packages:\n" + "\n".join(bad)


def test_the_walk_sees_lazy_and_type_checking_imports():
    found = {(m, t) for m, t, _ in imports()}
    assert ("retain", "retain.strategies") in found  # inside get_strategy()
    assert ("retain.models", "retain.config") in found  # under TYPE_CHECKING
    assert (
        package_of("retain.strategies.ewc")
        == package_of("retain.strategies")
        == "retain.strategies"
    )
    assert package_of("retain.config") == "retain"
