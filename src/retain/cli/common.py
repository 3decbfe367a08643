"""What every subcommand of the command line shares: the console, the progress display, warnings,
config overrides given as KEY=VALUE, and SIGTERM handled like Ctrl-C."""

from __future__ import annotations

import argparse
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


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


def _overrides(sp: argparse.ArgumentParser) -> None:
    # Parsed by main() from the leftover arguments, so they may come before or after flags.
    sp.usage = f"retain {sp.prog.split()[-1]} [options] {'CONFIG ' if sp.prog.split()[-1] != 'demo' else ''}[KEY=VALUE ...]"
    sp.set_defaults(overrides=[])
    sp.epilog = "KEY=VALUE: config overrides, e.g. train.lr=0.01 strategies.0.lam=50"


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit, ``docker stop``), raised where Python is
    when it arrives, so it unwinds like Ctrl-C: checkpoint and result writes are atomic (written
    aside, then renamed), so what is on disk stays whole."""


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals to the caller
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
