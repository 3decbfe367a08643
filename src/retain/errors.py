"""User-facing errors.

Anything raised as a :class:`RetainError` is a problem with the user's input (config, data, run
directory). The command line prints it as one line and exits with code 2; no traceback unless
``--debug``. Bugs in retain itself stay ordinary exceptions so they are never hidden.
"""

from __future__ import annotations

import difflib
import errno


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


# Errors of the folder written to, not of retain: the user fixes them by freeing space or by
# choosing another folder.
_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than the file system allows",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}


def write_error_line(e: OSError) -> str | None:
    """One line for an OSError that the user fixes (disk full, read-only, no permission), or
    None for any other OSError (which stays a traceback: a bug or a crash to report)."""
    what = _WRITE_ERRORS.get(e.errno) if isinstance(e.errno, int) else None
    if what is None:
        return None
    where = f" writing '{e.filename}'" if e.filename else ""
    fix = (
        "free some space or give --out a folder on another disk"
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
        else "give --out a folder you can write to"
    )
    return (
        f"{what}{where}; {fix}. Files already written are whole (each write is atomic), and "
        "--resume continues from the last checkpoint"
    )


def memory_error_line(e: BaseException) -> str | None:
    """One line for running out of memory (the CPU allocator's RuntimeError, CUDA's
    ``OutOfMemoryError``, Python's ``MemoryError``), or None for any other error."""
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    gpu = type(e).__name__ == "OutOfMemoryError"
    if not (gpu or isinstance(e, MemoryError) or "can't allocate memory" in text):
        return None
    where = "GPU" if gpu else "CPU"
    return (
        f"out of {where} memory ({text[:160] or type(e).__name__}); lower train.batch_size, "
        "make the model smaller, or set train.gradient_checkpointing for a language model"
    )
