"""YAML configs for ``python -m profiler run -c FILE``: strict, typed, CLI > YAML > default.

Keys are the ``run`` options with dashes or underscores (``time-steps`` = ``time_steps``), so the model keys
of a training config (``dim``, ``layer``, ``num_heads``, ``mlp_ratio``, ``time_steps``, ``pooling_stat``, ...)
work as they are.  An unknown key is an error that names it and the closest known keys, unless
``--ignore-unknown-keys`` is given (for a full training config), when it is logged and dropped.
"""
from __future__ import annotations

import argparse
import difflib
import logging
from pathlib import Path

import yaml

from engine.config import check_text_value

__all__ = ["load_config"]

_logger = logging.getLogger(__name__)


def _convert(action: argparse.Action, key: str, value):
    if isinstance(action, argparse.BooleanOptionalAction):
        if not isinstance(value, bool):
            raise ValueError(f"config key {key!r}: expected true or false, got {value!r}")
        return value
    if action.nargs == "+" and value is not None:
        if not isinstance(value, list) or not value:
            raise ValueError(f"config key {key!r}: expected a list of values, got {value!r}")
        return [_convert_one(action, key, item) for item in value]
    return _convert_one(action, key, value)


def _convert_one(action: argparse.Action, key: str, value):
    if isinstance(value, (list, dict)):
        raise ValueError(f"config key {key!r}: expected a single value, got {value!r}")
    check_text_value(key, action, value)
    if action.type is not None and value is not None:
        try:
            value = action.type(value)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"config key {key!r}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config key {key!r}: {value!r} is not a valid {action.type.__name__}") from exc
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"config key {key!r}: {value!r} is not one of {list(action.choices)}")
    return value


def load_config(path: Path, parser: argparse.ArgumentParser, ignore_unknown: bool = False) -> dict:
    """Read ``path`` and return ``{dest: value}`` for ``parser.set_defaults``.

    Raises:
        ValueError: the file is not YAML or not a mapping, a key is unknown (unless ``ignore_unknown``) or a value is
            invalid.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as exc:  # the engine's message (engine.config.load_config)
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option names to values")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    out = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in actions:
            if ignore_unknown:
                _logger.info("%s: ignoring key %r", path, raw_key)
                continue
            close = difflib.get_close_matches(key, actions, n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ValueError(f"{path}: unknown config key {raw_key!r}{hint}")
        out[key] = _convert(actions[key], raw_key, value)
    return out
