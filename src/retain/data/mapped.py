"""Row-major float32 matrices in memory, or memory-mapped from a temporary file.

A table larger than memory is read into a file-backed tensor (``torch.from_file``, shared): the
loader's ``index_select`` pages in the rows of each batch, and the kernel evicts pages that were
not used lately, so a run trains on data larger than RAM. The file is unlinked as soon as it is
mapped, so it disappears when the process ends, however it ends. It lives under
``$RETAIN_CACHE/mapped`` (else ``~/.cache/retain/mapped``), on disk rather than in ``/tmp``,
which is memory on many systems.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from retain.errors import DataError

# Tables whose float32 features take more than this share of the available memory are mapped.
MAPPED_SHARE = 0.5


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``), else ``None``."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def mapped_dir() -> Path:
    root = os.environ.get("RETAIN_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "retain"
    return base / "mapped"


def should_map(nbytes: int, mapped: bool | None) -> bool:
    if mapped is not None:
        return mapped
    avail = available_memory()
    return avail is not None and nbytes > MAPPED_SHARE * avail


def empty_rows(rows: int, cols: int, mapped: bool | None = None) -> torch.Tensor:
    """An uninitialised float32 ``[rows, cols]`` tensor, memory-mapped when ``mapped`` (``None``:
    when it would take more than half the available memory)."""
    if not should_map(rows * cols * 4, mapped):
        return torch.empty(rows, cols, dtype=torch.float32)
    folder = mapped_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix="table-", suffix=".f32", dir=folder)
        os.ftruncate(fd, max(1, rows * cols * 4))
        os.close(fd)
        t = torch.from_file(name, shared=True, size=rows * cols, dtype=torch.float32)
        os.unlink(name)
    except OSError as e:
        raise DataError(
            f"cannot make a memory-mapped file of {rows * cols * 4 / 2**30:.1f} GiB in {folder} "
            f"({e}); set RETAIN_CACHE to a folder with room"
        ) from None
    return t.view(rows, cols)


def is_mapped(t: torch.Tensor) -> bool:
    """Whether ``t``'s storage is a memory-mapped file (see :func:`empty_rows`)."""
    try:
        return bool(t.untyped_storage().filename)
    except (AttributeError, RuntimeError):
        return False


def empty_like_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    """An uninitialised tensor of ``rows`` rows shaped like ``t``'s, mapped when ``t`` is."""
    if t.dim() == 2 and t.dtype == torch.float32 and is_mapped(t):
        return empty_rows(rows, t.shape[1], True)
    return torch.empty((rows, *t.shape[1:]), dtype=t.dtype)


def take_rows(t: torch.Tensor, idx: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """``t[idx]`` in chunks, into a tensor mapped when ``t`` is (no full-size temporary)."""
    out = empty_like_rows(t, len(idx))
    for s in range(0, len(idx), chunk):
        out[s : s + chunk] = t.index_select(0, idx[s : s + chunk])
    return out


def compact_rows(t: torch.Tensor, keep: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """The rows ``keep`` (sorted ascending) moved to the front of ``t`` in place; returns the view
    of the first ``len(keep)`` rows. Safe in place because ``keep[i] >= i``: a chunk never
    overwrites a row that a later chunk reads."""
    if not t.is_contiguous():
        raise ValueError("compact_rows needs a contiguous tensor")
    for s in range(0, len(keep), chunk):
        part = keep[s : s + chunk]
        t[s : s + len(part)] = t.index_select(0, part)
    return t[: len(keep)]


def group_rows(t: torch.Tensor, groups: list[torch.Tensor]) -> list[torch.Tensor]:
    """The rows of each group (sorted index sets that partition ``t``'s rows) made contiguous
    in ``t``'s own storage, group after group; returns one view per group. The first group is
    compacted in place; only the others pass through a temporary copy."""
    if not t.is_contiguous():
        return [take_rows(t, g) for g in groups]
    rest = torch.cat(groups[1:]) if len(groups) > 1 else groups[0][:0]
    tail = take_rows(t, rest)
    compact_rows(t, groups[0])
    n0 = len(groups[0])
    for s in range(0, len(rest), 65536):
        t[n0 + s : n0 + s + 65536] = tail[s : s + 65536]
    del tail
    out, start = [], 0
    for g in groups:
        out.append(t[start : start + len(g)])
        start += len(g)
    return out
