"""The ``retain`` command line: argument parsing only; the work is in :mod:`retain.runner`.

Exit codes: 0 ok, 2 bad input (one line on stderr, no traceback unless ``--debug``), 130 when
interrupted. Nothing heavy is imported before a subcommand runs, so ``retain --help`` is quick.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from retain import __version__
from retain.errors import RetainError

EPILOG = """examples:
  retain demo
  retain init d1.csv d2.csv --target y --out my_data.yaml
  retain run examples/split_mnist.yaml train.lr=0.01 --out runs/smnist
  retain run examples/split_mnist.yaml --out runs/smnist --resume
  retain compare examples/split_mnist.yaml --strategies finetune,joint,ewc+replay
  retain strategies
  retain report runs/smnist
"""


def _console(stderr: bool = False) -> Any:
    from rich.console import Console

    return Console(stderr=stderr)


def _progress(args: argparse.Namespace) -> Any:
    if getattr(args, "quiet", False):
        return None
    from retain.utils.progress import RichProgress

    return RichProgress()


def _warn(msg: str) -> None:
    _console(stderr=True).print(f"[yellow]warning:[/yellow] {msg}", highlight=False)


def cmd_run(args: argparse.Namespace) -> int:
    from retain.config import load_config
    from retain.runner import run_config

    cfg = load_config(args.config, args.overrides)
    progress = _progress(args)
    try:
        record = run_config(cfg, args.out, resume=args.resume, progress=progress, warn=_warn)
    finally:
        if progress is not None:
            progress.close()
    _finish(record, Path(record["out_dir"]), args)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from retain.config import load_config
    from retain.runner import parse_labels

    cfg = load_config(args.config, args.overrides)
    return _compare(cfg, parse_labels(args.strategies), args)


def _compare(cfg: Any, labels: list[str], args: argparse.Namespace) -> int:
    from retain.runner import compare_config, default_out

    progress = _progress(args)
    out = Path(args.out) if args.out else (Path(cfg.output.dir) if cfg.output.dir
                                           else default_out(cfg, "compare"))

    def announce(label: str) -> None:
        if progress is not None:
            progress.set_prefix(f"[{label}] ")

    try:
        record = compare_config(cfg, labels, out, resume=args.resume, progress=progress,
                                warn=_warn, announce=announce)
    finally:
        if progress is not None:
            progress.close()
    _finish(record, out, args)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from retain.config import load_config

    cfg = load_config(Path(__file__).parent / "configs" / "demo.yaml", args.overrides)
    args.resume = False
    return _compare(cfg, ["finetune", "joint"], args)


def _finish(record: dict[str, Any], out: Path, args: argparse.Namespace) -> None:
    from retain.report.console import print_summary
    from retain.utils.checkpoint import is_main_process

    if not is_main_process():
        return
    console = _console()
    print_summary(record, console)
    console.print(f"\nreport: {out / 'report.html'}  (and report.md, result.json)", highlight=False)


def cmd_init(args: argparse.Namespace) -> int:
    from retain.init import write_config

    path, command = write_config(args.files, target=args.target, by=args.by, out=args.out,
                                 force=args.force)
    print(f"wrote {path}; check the choices explained in its comments, then run:\n  {command}")
    return 0


def cmd_strategies(args: argparse.Namespace) -> int:
    from retain.strategies import describe_all

    print(describe_all(markdown=args.markdown))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from retain.errors import RunDirError
    from retain.report.render import write_reports

    run_dir = Path(args.run_dir)
    path = run_dir / "result.json"
    if not path.is_file():
        raise RunDirError(f"'{path}' not found; give a run directory written by retain run/compare")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise RunDirError(f"'{path}' is not valid JSON ({e.msg} at line {e.lineno})") from None
    written = write_reports(run_dir, record, plots=not args.no_plots)
    if not args.quiet:
        from retain.report.console import print_summary

        print_summary(record, _console())
    for p in written:
        print(p)
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    common.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    p = argparse.ArgumentParser(
        prog="retain", parents=[common], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train on new data without losing what the model knows, and measure what was lost.",
    )
    p.add_argument("--version", action="version", version=f"retain {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def overrides(sp: argparse.ArgumentParser) -> None:
        # Parsed by main() from the leftover arguments, so they may come before or after flags.
        sp.usage = f"retain {sp.prog.split()[-1]} [options] {'CONFIG ' if sp.prog.split()[-1] != 'demo' else ''}[KEY=VALUE ...]"
        sp.set_defaults(overrides=[])
        sp.epilog = "KEY=VALUE: config overrides, e.g. train.lr=0.01 strategies.0.lam=50"

    r = sub.add_parser("run", parents=[common], help="train one strategy on a stream")
    r.add_argument("config", help="YAML config file (see examples/)")
    overrides(r)
    r.add_argument("--out", help="run directory (default: runs/<name>-<time>)")
    r.add_argument("--resume", action="store_true", help="continue the run in --out from its last task")
    r.set_defaults(func=cmd_run)

    c = sub.add_parser("compare", parents=[common], help="run several strategies on the same stream")
    c.add_argument("config")
    overrides(c)
    c.add_argument("--strategies", required=True,
                   help="comma-separated labels; '+' composes, e.g. finetune,joint,ewc+replay")
    c.add_argument("--out")
    c.add_argument("--resume", action="store_true")
    c.set_defaults(func=cmd_compare)

    i = sub.add_parser("init", parents=[common], help="write a commented config for your CSV files",
                       description="Look at the tables' columns (types, distinct values, missing "
                       "values) and write a config that runs on them, each choice explained in a "
                       "comment. Two or more files: one task per file, in order. One file: one "
                       "task per value of --by, or two random halves.")
    i.add_argument("files", nargs="+", help="CSV or Parquet tables, one per task, in order")
    i.add_argument("--target", help="the column to predict (default: a column named label, y "
                   "or target, else the last column)")
    i.add_argument("--by", metavar="COLUMN", help="one file: one task per value of this column")
    i.add_argument("--out", default="config.yaml", help="where to write the config "
                   "(default: config.yaml); data paths in it are relative to its folder")
    i.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    i.set_defaults(func=cmd_init)

    s = sub.add_parser("strategies", parents=[common], help="list strategies and their hyperparameters")
    s.add_argument("--markdown", action="store_true", help="as a Markdown document")
    s.set_defaults(func=cmd_strategies)

    rep = sub.add_parser("report", parents=[common], help="(re)render the report of a run directory")
    rep.add_argument("run_dir")
    rep.add_argument("--no-plots", action="store_true")
    rep.set_defaults(func=cmd_report)

    d = sub.add_parser("demo", parents=[common],
                       help="the embedded digits data under finetune and joint (under a minute)")
    overrides(d)
    d.add_argument("--out")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    bad = [a for a in extra if a.startswith("-") or "=" not in a or not hasattr(args, "overrides")]
    if bad:
        parser.error(f"unrecognized arguments: {' '.join(bad)}")
    if hasattr(args, "overrides"):
        args.overrides = extra
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args))
    except RetainError as e:
        if args.debug:
            raise
        print(f"retain: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("retain: interrupted; the last finished task's checkpoint is kept: rerun with --resume",
              file=sys.stderr)
        return 130
