"""Atomic file writes: write a temporary file next to the target, then move it into place with ``os.replace``.

Readers never see half a file, and a crash or a kill leaves the previous version in place.  Used for every
artefact the project writes (configs, tables, JSON, plots, traces, split files).
"""
from __future__ import annotations

import fcntl
import itertools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["atomic_open", "write_text_atomic", "numbered_paths", "unwritable_reason", "nearest_existing",
           "folder_unwritable", "lock_exclusive"]


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success it replaces ``path``, on error it is removed.

    Text mode uses UTF-8 and ``newline=""`` (what ``csv`` wants).  The temporary name carries the process id, so
    several processes may write the same target.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path) as f:
        f.write(text)


def numbered_paths(base: str | Path) -> Iterator[Path]:
    """``base``, then ``<base>-1``, ``<base>-2``, ...: the names a new output folder tries in turn, so that it never
    takes the place of an earlier run's."""
    yield Path(base)
    for suffix in itertools.count(1):
        yield Path(f"{base}-{suffix}")


def unwritable_reason(path: str | Path) -> str | None:
    """Why a new file cannot be written at ``path`` (a folder or an earlier file is there, or its folder is missing),
    to check before the work that produces it; None when it can."""
    path = Path(path)
    if path.is_dir():
        return "is a folder; give a file name"
    if path.exists():
        return "exists (an earlier run's results?), and this run would replace it; give a new file name or move it"
    if not path.parent.is_dir():
        return f"folder {path.parent} does not exist; create it first"
    return None


def nearest_existing(path: str | Path) -> str:
    """``path`` made absolute, or the nearest folder above it that exists (where a new output folder is created)."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing) and os.path.dirname(existing) != existing:
        existing = os.path.dirname(existing)
    return existing


def folder_unwritable(folder: str | Path) -> bool:
    """Whether nothing can be created in the existing ``folder`` (a read-only file system, or not the user's)."""
    return not os.access(folder, os.W_OK | os.X_OK)


def lock_exclusive(path: str | Path) -> int | None:
    """Lock ``path`` (a folder, or a file, created if missing) exclusively without waiting: the open descriptor,
    whose closing releases the lock (as the end of the process does), or None when another process holds it.

    Raises:
        OSError: the file system has no locks (or ``path`` cannot be opened).
    """
    fd = os.open(path, os.O_RDONLY if os.path.isdir(path) else os.O_CREAT | os.O_WRONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError:
        os.close(fd)
        raise
    return fd
