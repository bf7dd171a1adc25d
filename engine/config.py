"""YAML configs (``-c FILE``) on top of argparse, strict about keys and types.

Precedence is command line > YAML > argparse default, as in timm's ``train.py``: the YAML values become the
parser's defaults, then the command line is parsed.  Unlike the reference, a key is normalised once (``a-b`` means
``a_b``), an unknown key is an error that names the closest known keys, and each value is converted and checked
with the flag's own ``type`` and ``choices``.
"""
from __future__ import annotations

import argparse
import difflib
import logging
from collections.abc import Collection, Hashable, Sequence
from typing import Any

import yaml

from .args import INERT_FLAGS
from .errors import ConfigError

__all__ = ["RECORDED_ONLY_KEYS", "check_text_value", "command_line_dests", "parse_args", "load_config", "dump_args",
           "warn_inert_flags"]

_logger = logging.getLogger(__name__)

# Keys that ``args.yaml`` records but a config cannot set (so a run's args.yaml can be reused with ``-c``); a
# ``skipped_blocks`` list may stand for ``skip_blocks``, see :func:`_skip_blocks_from_record`.
RECORDED_ONLY_KEYS = ("config", "rank", "world_size", "distributed", "skipped_blocks")
# The ASTER rules that choose skipped blocks from firing rates (main.py and finetune.py resolve them again).
_SKIP_RULE_DESTS = ("auto_skip", "skip_lowest")
# Store-true style actions take no value; their YAML value must be a boolean.
_FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)


def _actions_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest != argparse.SUPPRESS and a.dest not in ("help", "config")}


def _closest(key: str, known: Sequence[str]) -> str:
    matches = difflib.get_close_matches(key, known, n=3, cutoff=0.6)
    if not matches:
        matches = [k for k in known if key.lower() in k.lower() or k.lower() in key.lower()][:3]
    return ", ".join(matches) if matches else "none (see --help)"


def _convert_list_type(key: str, action: argparse.Action, value: list) -> list:
    """A YAML list for a flag whose type parses a comma-separated list (``type.element_type`` names its elements)."""
    element = action.type.element_type
    allowed = (int, float) if element is float else (int,)
    if not all(isinstance(v, allowed) and not isinstance(v, bool) for v in value):
        raise ConfigError(f"config key {key!r}: expected a {action.type.__name__} or a list of {element.__name__}s, "
                          f"got {value!r}")
    return [element(v) for v in value]


def check_text_value(key: str, action: argparse.Action, value: Any) -> None:
    """Refuse a value that YAML read as something else for an option whose value is text (``pooling_stat: 0011``
    is the octal 9, ``experiment: 2024-01-05`` a date).

    Raises:
        ConfigError: naming the key and the fix (quotes).
    """
    if action.type is None and isinstance(action.default, str) and value is not None and not isinstance(value, str):
        raise ConfigError(f"config key {key!r}: expected text, got the {type(value).__name__} {value!r}; put the "
                          f"value in quotes (YAML reads unquoted digits as a number, 0011 as the octal 9, and "
                          f"2024-01-05 as a date, yes as true)")


def _convert_scalar(key: str, action: argparse.Action, value: Any) -> Any:
    if action.type is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"config key {key!r}: expected an int, got {value!r}")
    if isinstance(value, list) and hasattr(action.type, "element_type"):
        return _convert_list_type(key, action, value)
    if action.type is not None:
        if isinstance(value, (list, dict, bool)):
            raise ConfigError(f"config key {key!r}: expected a {action.type.__name__}, got {value!r}")
        try:
            value = action.type(value)
        except (TypeError, ValueError):
            raise ConfigError(f"config key {key!r}: expected a {action.type.__name__}, got {value!r}") from None
    elif isinstance(value, (list, dict)):
        raise ConfigError(f"config key {key!r}: expected a single value, got {value!r}")
    else:
        check_text_value(key, action, value)
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"config key {key!r}: {value!r} is not one of {list(action.choices)}")
    return value


def _convert(key: str, action: argparse.Action, value: Any) -> Any:
    if isinstance(action, _FLAG_ACTIONS):
        if not isinstance(value, bool) and not (value is None and action.default is None):
            raise ConfigError(f"config key {key!r}: expected true or false, got {value!r}")
        return value
    if value is None:
        if action.default is not None:
            raise ConfigError(f"config key {key!r}: null is not a value here; give a value (default "
                              f"{action.default!r}) or leave the key out")
        return None
    if action.nargs in ("+", "*") or isinstance(action.nargs, int):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected a list, got {value!r}")
        if isinstance(action.nargs, int) and len(value) != action.nargs:
            raise ConfigError(f"config key {key!r}: expected {action.nargs} values, got {len(value)}")
        return [_convert_scalar(key, action, v) for v in value]
    return _convert_scalar(key, action, value)


def _skip_blocks_from_record(recorded: Any, actions: dict[str, argparse.Action], cfg: dict[str, Any]) -> list[int]:
    """The config's ``skipped_blocks`` value ``recorded`` (the blocks its run skipped) as ``skip_blocks``, for a
    script whose only skip option is ``--skip-blocks`` (``test.py``, ``firing_num.py``: they drop a finetune run's
    ``--auto-skip`` or ``--skip-lowest``, which ``main.py`` and ``finetune.py`` resolve again), when the config sets
    no ``skip_blocks``.  ``[]`` otherwise."""
    if "skip_blocks" not in actions or cfg.get("skip_blocks") is not None \
            or any(dest in actions for dest in _SKIP_RULE_DESTS):
        return []
    return _convert("skipped_blocks", actions["skip_blocks"], recorded) or []


class _DuplicateKey(yaml.YAMLError):
    """A mapping key given twice, with the (1-based) lines of both."""

    def __init__(self, key: Any, lines: tuple[int, int]):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.lines = key, lines


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``, except that a key given twice in a mapping is an error (PyYAML keeps the last value)."""

    def construct_mapping(self, node, deep=False):
        first_line: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *defaults``: its keys may be overridden
                continue
            key, line = self.construct_object(key_node, deep=deep), key_node.start_mark.line + 1
            if not isinstance(key, Hashable):
                continue  # SafeLoader rejects it
            if key in first_line:
                raise _DuplicateKey(key, (first_line[key], line))
            first_line[key] = line
        return super().construct_mapping(node, deep)


def load_config(path: str, parser: argparse.ArgumentParser, foreign_keys: Collection[str] = ()) -> dict[str, Any]:
    """Read a YAML config and return parser defaults keyed by ``dest``.

    Args:
        path: YAML file of ``flag: value`` pairs (``flag`` with ``-`` or ``_``).
        parser: the parser whose flags are the allowed keys.
        foreign_keys: keys of the project's other scripts (a ``main.py`` run's ``args.yaml`` given to ``test.py``):
            dropped, and left in ``parser.ignored_config_keys`` for :func:`warn_inert_flags` to list.

    Returns:
        ``{dest: converted value}``; the keys of :data:`RECORDED_ONLY_KEYS` (written into ``args.yaml``) are skipped,
        except that a recorded ``skipped_blocks`` gives ``skip_blocks`` to the evaluation scripts when the config
        sets none (see :func:`_skip_blocks_from_record`; left in ``parser.recorded_skip_blocks`` to be logged).

    Raises:
        ConfigError: unreadable file, unknown key (naming the closest known ones), a key given twice (also as
            ``-`` and ``_`` spellings), or a value of the wrong type.
    """
    try:
        with open(path) as f:
            raw = yaml.load(f, Loader=_UniqueKeyLoader)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror}") from None
    except _DuplicateKey as exc:
        raise ConfigError(f"config key {exc.key!r} in {path} is given twice (lines {exc.lines[0]} and "
                          f"{exc.lines[1]}); keep one") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path!r} is not valid YAML: {' '.join(str(exc).split())}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping of flag: value, not {type(raw).__name__}")
    actions = _actions_by_dest(parser)
    cfg: dict[str, Any] = {}
    dropped, recorded = [], {}
    for key, value in raw.items():
        dest = str(key).replace("-", "_")
        if dest in RECORDED_ONLY_KEYS:
            recorded[dest] = value
            continue
        if dest not in actions and dest in foreign_keys:
            dropped.append(str(key))
            continue
        if dest not in actions:
            raise ConfigError(f"unknown config key {key!r} in {path}; closest known keys: "
                              f"{_closest(dest, list(actions))}")
        if dest in cfg:
            raise ConfigError(f"config key {key!r} in {path} is given twice (as '-' and '_' spellings)")
        cfg[dest] = _convert(str(key), actions[dest], value)
    recorded_skip = _skip_blocks_from_record(recorded.get("skipped_blocks"), actions, cfg)
    if recorded_skip:
        cfg["skip_blocks"] = recorded_skip
    parser.ignored_config_keys = (path, dropped)  # warned about by warn_inert_flags, once the run log records
    parser.recorded_skip_blocks = (path, recorded_skip)  # logged there too
    return cfg


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None,
               foreign_keys: Collection[str] = ()) -> argparse.Namespace:
    """Parse ``argv`` with the YAML of ``-c`` (if given) as defaults; CLI > YAML > the named variant's sizes
    (``--model sdt_8_512``: :func:`engine.model.apply_variant_defaults`, before any check of the sizes) > default.
    ``foreign_keys``: see :func:`load_config`.

    The options given on the command line are left in ``parser.command_line_dests``, those given on the command
    line or in the config in ``parser.given_dests``, and the sizes taken from the variant in
    ``parser.variant_defaults_taken`` (logged once the run's log records, by the engine).

    Raises:
        ConfigError: see :func:`load_config`.
    """
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("-c", "--config", default="")
    known, _ = config_parser.parse_known_args(argv)
    config = load_config(known.config, parser, foreign_keys) if known.config else {}
    parser.set_defaults(**config)
    args = parser.parse_args(argv)
    parser.command_line_dests = command_line_dests(parser, argv)
    parser.given_dests = parser.command_line_dests | frozenset(config)
    if hasattr(args, "model"):
        from .model import apply_variant_defaults

        parser.variant_defaults_taken = apply_variant_defaults(args, parser.given_dests, log=False)
    if args.native_amp:  # the reference's torch.amp switch; --apex-amp without apex left it in float32
        args.amp = True
    return args


def command_line_dests(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> frozenset[str]:
    """The options given on the command line (not taken from ``-c`` or the defaults): argparse leaves an attribute
    that is already in the namespace alone unless the command line sets it."""
    unset = object()
    namespace = argparse.Namespace(**{dest: unset for dest in _actions_by_dest(parser)})
    parser.parse_known_args(argv, namespace=namespace)
    return frozenset(dest for dest, value in vars(namespace).items() if value is not unset)


def warn_inert_flags(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """Log a warning for every flag in :data:`~engine.args.INERT_FLAGS` set away from its default, and for the
    config keys of another script that the config held; log the skipped blocks taken from the config's
    ``skipped_blocks`` unless ``--skip-blocks`` on the command line replaced them (see :func:`load_config`)."""
    path, ignored = getattr(parser, "ignored_config_keys", ("", []))
    if ignored:
        _logger.warning("Config %s: %s belong to another script of the project, ignored here", path,
                        ", ".join(ignored))
    path, recorded_skip = getattr(parser, "recorded_skip_blocks", ("", []))
    if recorded_skip and "skip_blocks" not in getattr(parser, "command_line_dests", ()):
        _logger.info("Config %s: skipping the attention of blocks %s, the skipped_blocks of the run that wrote it "
                     "(--skip-blocks L,L skips others, --skip-blocks '' none)", path, recorded_skip)
    actions = _actions_by_dest(parser)
    for dest, why in INERT_FLAGS.items():
        if dest in actions and getattr(args, dest, None) not in (None, actions[dest].default):
            _logger.warning("--%s has no effect: %s", dest.replace("_", "-"), why)


def dump_args(args: argparse.Namespace, path: str) -> None:
    """Write the resolved arguments as YAML (atomically); ``device`` as asked for (``--device``, often empty), not
    as resolved for this process, so the file runs on another machine or under another launcher."""
    from .atomic import atomic_open

    values = dict(vars(args))
    values["device"] = values.pop("requested_device", values.get("device"))
    with atomic_open(path) as f:
        yaml.safe_dump(dict(sorted(values.items())), f, default_flow_style=False, sort_keys=False)
