"""YAML configs for ``python -m profiler run -c FILE``: the engine's reader (``engine.config.load_config``), strict,
typed, CLI > YAML > default.

Keys are the ``run`` options with dashes or underscores (``time-steps`` = ``time_steps``), so the model keys of a
training config or of a training run's ``args.yaml`` (``dim``, ``layer``, ``num_heads``, ``reference``, ...) work as
they are.  The keys of the project's other scripts (training-only options such as ``TET`` or ``lr``) and those that
``args.yaml`` only records are dropped; a recorded ``skipped_blocks`` gives ``skip_blocks``.  Any other key is an
error that names it and the closest known keys, unless ``--ignore-unknown-keys`` is given, when it is dropped too.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from engine.config import load_config as load_engine_config

__all__ = ["load_config"]

_logger = logging.getLogger(__name__)


class _EveryKey:
    """``foreign_keys`` that hold every key: ``--ignore-unknown-keys`` drops whatever is not a run option."""

    def __contains__(self, key) -> bool:
        return True


def load_config(path: Path, parser: argparse.ArgumentParser, ignore_unknown: bool = False) -> dict:
    """Read ``path`` and return ``{dest: value}`` for ``parser.set_defaults``; the dropped keys of the project's
    other scripts and the recorded skipped blocks are left on ``parser`` for ``engine.config.warn_inert_flags`` to
    log, the keys of no script (``ignore_unknown``) are logged here.

    Raises:
        ConfigError: the file is not YAML or not a mapping, a key is unknown (unless ``ignore_unknown``) or given
            twice, or a value is invalid.
    """
    from engine.run import project_option_dests

    foreign = project_option_dests()
    config = load_engine_config(str(path), parser, _EveryKey() if ignore_unknown else foreign)
    _, dropped = parser.ignored_config_keys
    unknown = [key for key in dropped if key.replace("-", "_") not in foreign]
    if unknown:
        _logger.info("Config %s: %s, no option of any script of the project, ignored (--ignore-unknown-keys)", path,
                     ", ".join(unknown))
        parser.ignored_config_keys = (str(path), [key for key in dropped if key not in unknown])
    return config
