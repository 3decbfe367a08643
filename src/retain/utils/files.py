"""Atomic file writes: a reader, or a run resumed after a crash, sees the old file or the new one,
never half of one; and the clean-up of what a killed write leaves behind.

Standard library only (no torch), so report rendering can use it without importing torch.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

# What a write in progress is called: ``.NAME.tmp-PID`` (the new file or folder, renamed over
# NAME when complete) or ``.NAME.old-PID`` (the folder it replaces, removed after the rename).
_TEMP = re.compile(r"^\.(.+)\.(?:tmp|old)-(\d+)$")


def temp_path(path: Path, kind: str = "tmp") -> Path:
    """The name ``path`` is written under before it is renamed (see :func:`remove_stale_temps`)."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (a rename into it) to the disk. Where folders cannot be opened
    (Windows), the rename is as durable as the file system makes it."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not sync folders; the file itself was synced
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_folder(final: Path) -> Iterator[Path]:
    """A temporary folder beside ``final`` for the block to write into (a checkpoint's files).

    When the block ends, the folder is renamed over ``final``; an existing ``final`` is set
    aside first and removed after, so a kill in between keeps one of them. When the block fails
    (a full disk, an interrupt), the temporary folder is removed and nothing half-written stays.
    """
    tmp = temp_path(final)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        old = temp_path(final, "old")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_dir(final.parent)


def write_atomic(path: str | Path, data: str | bytes | Callable[[Path], object]) -> Path:
    """Write ``data`` to ``path`` atomically and return ``path``.

    ``data`` is the content (text is written as UTF-8), or a function that writes the file at the
    path it is given (a library's save function, e.g. ``lambda p: save_file(tensors, str(p))``).
    The content goes to a temporary file in the same folder, is flushed to the disk (fsync), and
    is then renamed over ``path``, and the folder is flushed too. The rename is atomic within a
    file system; the fsync before it makes sure that after a power loss the new name does not
    point at blocks never written, the one after it that the new name itself is on the disk.

    Examples:
        >>> import tempfile
        >>> p = write_atomic(Path(tempfile.mkdtemp()) / "a.txt", "hello")
        >>> p.read_text()
        'hello'
    """
    path = Path(path)
    tmp = temp_path(path)
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
    fsync_dir(path.parent)
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


def _alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows, kill(pid, 0) would send Ctrl-C
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):  # another user's live process, or no way to tell
        return True
    return True


def remove_stale_temps(root: str | Path, of: str | None = None) -> list[Path]:
    """Remove, under ``root``, the temporary files and folders of writes whose process is gone
    (killed mid-write); return what was removed. A live process's are left alone: a process id
    reused since only means a leftover survives until a later start. With ``of``, only the
    temporary names of ``root/of``, and nothing deeper (``root`` is then the user's folder)."""
    removed = []
    for folder, dirs, files in os.walk(root):
        for name in [*files, *dirs]:
            m = _TEMP.match(name)
            if m is None or (of is not None and m.group(1) != of) or _alive(int(m.group(2))):
                continue
            p = Path(folder) / name
            if name in dirs:
                shutil.rmtree(p, ignore_errors=True)
                dirs.remove(name)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
        if of is not None:
            break
    return removed
