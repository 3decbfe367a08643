"""Atomic file writes: a reader, or a run resumed after a crash, sees the old file or the new one,
never half of one.

Standard library only (no torch), so report rendering can use it without importing torch.
"""

from __future__ import annotations

import os
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
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
