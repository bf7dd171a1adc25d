"""Errors a user can fix (bad config, missing data, wrong checkpoint).

Entry scripts catch :class:`SetupError` and report it as one line instead of a traceback; everything else is a
bug and keeps its traceback.
"""

__all__ = ["SetupError", "ConfigError", "DatasetError", "CheckpointError"]


class SetupError(RuntimeError):
    """Base class of the user-facing setup errors."""


class ConfigError(SetupError):
    """A config file or command-line value is unknown, mistyped or inconsistent."""


class DatasetError(SetupError):
    """A dataset is unknown, or its files are not where they are expected."""


class CheckpointError(SetupError):
    """A checkpoint is missing, unreadable or belongs to another architecture."""
