"""Atomic file writes: a reader, or a run resumed after a crash, sees the old file or the new one,
never half of one.

Standard library only (no torch), so report rendering can use it without importing torch.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: str | Path, data: str | bytes | Callable[[Path], object]) -> Path:
    """Write ``data`` to ``path`` atomically and return ``path``.

    ``data`` is the content (text is written as UTF-8), or a function that writes the file at the
    path it is given (a library's save function, e.g. ``lambda p: save_file(tensors, str(p))``).
    The content goes to a temporary file in the same folder, is flushed to the disk (fsync), and
    is then renamed over ``path``. The rename is atomic within a file system; the fsync before it
    makes sure that after a power loss the new name does not point at blocks never written.

    Examples:
        >>> import tempfile
        >>> p = write_atomic(Path(tempfile.mkdtemp()) / "a.txt", "hello")
        >>> p.read_text()
        'hello'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if callable(data):
            data(tmp)
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        else:
            with open(tmp, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        named = _os_error(e, path)
        if named is not None:
            raise named from e
        raise
    return path


def _os_error(e: BaseException, path: Path) -> OSError | None:
    """The operating system's error behind a failed write, naming ``path``: a ``write()`` that
    fails on a full disk raises an OSError without a file name, and a library's writer (e.g.
    safetensors') raises its own type with the OS error number in the text. None when ``e`` is
    something else (or already names its file)."""
    if isinstance(e, OSError):
        named = e.errno is not None and e.filename is None
        return OSError(e.errno, e.strerror, str(path)) if named else None
    found = re.search(r"\(os error (\d+)\)", str(e))
    if found is None:
        return None
    number = int(found.group(1))
    return OSError(number, os.strerror(number), str(path))
