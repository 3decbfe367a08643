"""User-facing errors.

Anything raised as a :class:`RetainError` is a problem with the user's input (config, data, run
directory). The command line prints it as one line and exits with code 2; no traceback unless
``--debug``. Bugs in retain itself stay ordinary exceptions so they are never hidden.
"""

from __future__ import annotations

import difflib


class RetainError(Exception):
    """A problem with the user's input: reported in one line, exit code 2."""


class ConfigError(RetainError):
    """The configuration is invalid (unknown key, wrong type, bad value)."""


class DataError(RetainError):
    """The data cannot be used (missing file, NaN, labels out of range, empty task...)."""


class Unsupported(ConfigError, ValueError):
    """The strategy cannot work with this model or data: a config error (one line, exit code 2)
    that is also a ``ValueError``, since it is raised in ``setup``, after config validation."""


class RunDirError(RetainError):
    """The run directory is in a state that would lose work (exists without --resume, ...)."""


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ``" (did you mean 'x'?)"`` for the closest choice, or ``""`` if none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


class RecordVersionError(RunDirError):
    """A result.json written by a newer retain, with a schema this version cannot read."""
