"""Errors a user can fix (bad config, missing data, wrong checkpoint).

Entry scripts catch :class:`SetupError` and report it as one line instead of a traceback; everything else is a
bug and keeps its traceback.
"""

import errno

__all__ = ["SetupError", "ConfigError", "DatasetError", "CheckpointError", "OutputError", "storage_failure",
           "one_line"]

_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


class SetupError(RuntimeError):
    """Base class of the user-facing setup errors."""


class ConfigError(SetupError):
    """A config file or command-line value is unknown, mistyped or inconsistent."""


class DatasetError(SetupError):
    """A dataset is unknown, or its files are not where they are expected."""


class CheckpointError(SetupError):
    """A checkpoint is missing, unreadable or belongs to another architecture."""


class OutputError(RuntimeError):
    """An output file could not be written during the run (a full disk, say); what was finished before is kept."""


def storage_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says an output could not be written: an :class:`OutputError`, or an ``OSError`` of a full
    disk, an exceeded quota or a read-only file system."""
    return isinstance(exc, OutputError) or (isinstance(exc, OSError) and exc.errno in _STORAGE_ERRNOS)


def one_line(exc: SetupError) -> str:
    """The message to show for ``exc``.

    A DataLoader worker's exception comes back re-raised with the worker's traceback inside its message ("Caught X in
    DataLoader worker process 0.\nOriginal Traceback ...\npackage.X: <message>"): for such an error, the original
    message and which worker raised it.
    """
    text = str(exc)
    head, found, traceback = text.partition("\nOriginal Traceback")
    marker = f"\n{type(exc).__module__}.{type(exc).__qualname__}: "
    if not found or marker not in traceback:
        return text
    where = head.removeprefix(f"Caught {type(exc).__name__} ").rstrip(".")
    return f"{traceback.rpartition(marker)[2].rstrip()} (raised {where})"
