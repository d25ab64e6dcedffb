"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half.

Every file fedspeech writes that another process may read while it is being written (manifests,
partitions, history, plots, checkpoints) goes through here: write to a temporary file in the same
folder, flush it to disk, then rename it over the target. The rename is atomic on POSIX file
systems; the fsync before it makes the new content durable, so a crash right after the rename
cannot leave an empty file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

#: Permissions of written files: shared data, readable by the group and others.
FILE_MODE = 0o644


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (its directory entry is data too)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: Path, mode: int = FILE_MODE) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` atomically.

    For writers that want a file name rather than a handle (pandas, matplotlib, safetensors).
    The temporary file keeps `path`'s suffix, so writers that pick a format by suffix work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)      # mkstemp creates 0600
        os.replace(tmp, path)
        fsync_dir(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Write `data` to `path` atomically and durably."""
    with atomic_path(path, mode) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str, mode: int = FILE_MODE) -> None:
    """Write `text` (UTF-8) to `path` atomically and durably."""
    atomic_write_bytes(path, text.encode("utf-8"), mode)


def atomic_write_with(path: Path, write: Callable[[Path], None], mode: int = FILE_MODE) -> None:
    """Call `write(tmp_path)` and move the result over `path` atomically."""
    with atomic_path(path, mode) as tmp:
        write(tmp)
