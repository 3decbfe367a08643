"""The commands for a model in use: ``retain train`` and ``retain package`` write a model package,
``retain update`` trains it on new data, ``retain gate`` decides whether the update may ship, and
``retain merge`` merges fine-tuned models. See docs/packages.md and docs/merging.md."""

from __future__ import annotations

import argparse
from typing import Any

from retain.cli.common import _overrides, _progress, _warn


def cmd_merge(args: argparse.Namespace) -> int:
    from retain.errors import ConfigError
    from retain.merging import merge_folders

    weights = None
    if args.weights is not None:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise ConfigError(
                f"--weights must be numbers separated by commas, got '{args.weights}'"
            ) from None
    out = merge_folders(
        args.base, args.models, args.out, args.method, weights, args.density, args.seed
    )
    print(f"merged {len(args.models)} model(s) into {out}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from retain.config import load_config
    from retain.packaging import train_package

    cfg = load_config(args.config, args.overrides)
    progress = _progress(args)
    try:
        pkg = train_package(cfg, args.out, progress=progress, warn=_warn)
    finally:
        if progress is not None:
            progress.close()
    print(f"package: {pkg.path} (tasks {', '.join(pkg.task_names)})")
    return 0


def cmd_package(args: argparse.Namespace) -> int:
    from retain.packaging import package_run

    pkg = package_run(args.run_dir, args.out, warn=_warn)
    print(f"package: {pkg.path} (tasks {', '.join(pkg.task_names)})")
    return 0


def cmd_update(args: argparse.Namespace) -> int:
    from retain.update import summary, update

    progress = _progress(args)
    try:
        verdict, dest = update(
            args.package,
            args.data,
            args.out,
            strategy=args.strategy,
            overrides=args.overrides,
            max_drop=args.max_drop,
            max_nfr=args.max_nfr,
            names=args.suite,
            union=args.union,
            progress=progress,
            warn=_warn,
            budget=args.budget,
            trials=args.trials,
        )
    finally:
        if progress is not None:
            progress.close()
    for line in summary(verdict):
        print(line)
    if not verdict["gate"]["pass"]:
        print(
            f"the update failed the gate: '{args.package}' is unchanged; the candidate is in {dest}"
        )
        return 1
    print(f"package: {dest} (verdict: {dest / 'verdict.json'})")
    return 0


def cmd_gate(args: argparse.Namespace) -> int:
    import json

    from retain.gate import gate_packages

    out = gate_packages(args.old, args.new, args.max_drop, args.max_nfr, args.suite)
    print(json.dumps(out, indent=1))
    return 0 if out["pass"] else 1


def _merge_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    m = sub.add_parser(
        "merge",
        parents=[common],
        help="merge fine-tuned models or LoRA adapters into one model (TIES, DARE, ...)",
        description="Merge models fine-tuned from BASE: retain run directories, saved "
        "transformers models or PEFT LoRA adapters (merged as the task vector of their delta). "
        "The output holds model.safetensors, BASE's config and tokenizer files copied byte for "
        "byte, and merge.json. Methods and their definitions: docs/merging.md.",
    )
    m.add_argument("base", help="the model the others were fine-tuned from")
    m.add_argument("models", nargs="+", help="the models (or adapters) to merge")
    m.add_argument(
        "--method",
        default="ties",
        help="task_arithmetic, ties, dare_linear, dare_ties, slerp or average (default: ties)",
    )
    m.add_argument(
        "--weights", help="one weight per model, comma-separated (default: equal, summing to 1)"
    )
    m.add_argument(
        "--density",
        type=float,
        default=0.5,
        help="fraction of each task vector kept by ties and dare (default: 0.5)",
    )
    m.add_argument("--seed", type=int, default=0, help="seed of DARE's random drop (default: 0)")
    m.add_argument("--out", required=True, help="a new folder for the merged model")
    m.set_defaults(func=cmd_merge)


def _thresholds(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-drop",
        type=float,
        default=0.02,
        help="largest drop of an earlier task's or suite's score, in the metric's units "
        "(default 0.02)",
    )
    p.add_argument(
        "--max-nfr",
        type=float,
        default=0.05,
        help="largest negative flip rate on an earlier task's held-out data (default 0.05)",
    )
    p.add_argument(
        "--suite",
        nargs="+",
        metavar="NAME",
        help="check only these tasks and suites (default: every earlier task and suite)",
    )


def _train_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    t = sub.add_parser(
        "train",
        parents=[common],
        help="train the first model (D1) and write a model package",
        description="Train the config's stream and write a model package (docs/packages.md) "
        "that retain update can update with new data.",
    )
    t.add_argument("config", help="YAML config file (keys: docs/config.md)")
    _overrides(t)
    t.add_argument("--out", required=True, help="the package folder to write (must not exist)")
    t.set_defaults(func=cmd_train)


def _package_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "package",
        parents=[common],
        help="make a model package from a finished run",
    )
    p.add_argument("run_dir", help="a finished run directory (with checkpoints)")
    p.add_argument("--out", required=True, help="the package folder to write (must not exist)")
    p.set_defaults(func=cmd_package)


def _update_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    u = sub.add_parser(
        "update",
        parents=[common],
        help="update a model package with new data, then gate it",
        description="Train the package's model on new data (one more task), write the new "
        "package with verdict.json, and gate it against the old one: exit 0 when it passes; "
        "exit 1 when it fails (the candidate goes to NEW.rejected, the old package is kept); "
        "exit 2 on bad input.",
    )
    u.add_argument("package", help="the model package to update (never modified)")
    _overrides(u)
    u.usage = "retain update [options] PACKAGE --data FILE --out NEW [KEY=VALUE ...]"
    u.add_argument(
        "--data", required=True, help="the new data: a file or folder the run readers read"
    )
    u.add_argument(
        "--out", required=True, metavar="NEW", help="the new package folder (must not exist)"
    )
    u.add_argument(
        "--strategy",
        help="another strategy than the package's, e.g. replay or ewc:lam=100+replay; auto: "
        "search strategies and hyperparameters on a validation split of the new data "
        "(needs pip install 'retain[auto]')",
    )
    u.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="--strategy auto: time for the search (default 600)",
    )
    u.add_argument(
        "--trials", type=int, metavar="N", help="--strategy auto: most trials (default 20)"
    )
    u.add_argument(
        "--union",
        action="store_true",
        help="also train a model from scratch on all the data (the earlier tasks' files and "
        "--data) and report how far the update is from it",
    )
    _thresholds(u)
    u.set_defaults(func=cmd_update)


def _gate_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    g = sub.add_parser(
        "gate",
        parents=[common],
        help="check an updated package against the old one (exit 0 pass, 1 fail, 2 bad input)",
        description="Compare NEW with OLD on OLD's tasks and suites; print a JSON verdict "
        "naming each task or suite and threshold that failed. Exit 0: pass, 1: fail, 2: bad "
        "input.",
    )
    g.add_argument("old")
    g.add_argument("new")
    _thresholds(g)
    g.set_defaults(func=cmd_gate)
