"""YAML configs (``-c FILE``) on top of argparse, strict about keys and types.

Precedence is command line > YAML > argparse default, as in timm's ``train.py``: the YAML values become the
parser's defaults, then the command line is parsed.  Unlike the reference, a key is normalised once (``a-b`` means
``a_b``), an unknown key is an error that names the closest known keys, and each value is converted and checked
with the flag's own ``type`` and ``choices``.  A key may be any of the option's names (``dr`` for ``--decay-rate``).
A run's ``args.yaml`` (a file holding the recorded-only keys ``config``, ``rank``, ...) does not apply its
:data:`ONE_SHOT_KEYS`, which only meant the start of that run; a hand-written config sets them.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import sys
from collections.abc import Collection, Hashable, Sequence
from typing import Any

import yaml

from .args import INERT_FLAGS, STATIC_IMAGE_FLAGS, NoFlagAction, none_for_empty_lists
from .errors import ConfigError

__all__ = ["RECORDED_ONLY_KEYS", "ONE_SHOT_KEYS", "check_text_value", "command_line_dests", "config_keys",
           "parse_args", "load_config", "dump_args", "warn_inert_flags"]

_logger = logging.getLogger(__name__)

# Keys that ``args.yaml`` records but a config cannot set (so a run's args.yaml can be reused with ``-c``); a
# ``skipped_blocks`` list may stand for ``skip_blocks``, see :func:`_skip_blocks_from_record`.
RECORDED_ONLY_KEYS = ("config", "rank", "world_size", "distributed", "skipped_blocks")
# Keys that a run's args.yaml records but that only its own start meant (reusing the file with ``-c RUN/args.yaml
# --resume RUN/last.pth.tar`` must not restart at the recorded epoch, nor resume from the recorded checkpoint); the
# starting weights ``initial_checkpoint`` are part of the recipe and stay.
ONE_SHOT_KEYS = ("start_epoch", "resume")
# The recorded-only keys that mark a file as a run's args.yaml (dump_args writes them all; config always).
_RUN_RECORD_KEYS = ("config", "rank", "world_size", "distributed")
# An option of the evaluation scripts only: their args.yaml records in ``resume`` the checkpoint evaluated, which an
# evaluation script takes back from it.
_EVALUATION_KEY = "e_mac"
# The ASTER rules that choose skipped blocks from firing rates (main.py and finetune.py resolve them again).
_SKIP_RULE_DESTS = ("auto_skip", "skip_lowest")
# Store-true style actions take no value; their YAML value must be a boolean.
_FLAG_ACTIONS = (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction, NoFlagAction)
# Names of the model constructor's arguments and other common spellings -> the option that sets them.
_SYNONYMS = {"depths": "layer", "embed_dims": "dim", "T": "time_steps", "mlp_ratios": "mlp_ratio",
             "img_size_h": "img_size", "img_size_w": "img_size", "drop_rate": "drop", "drop_path_rate": "drop_path",
             "learning_rate": "lr"}
# What the reference's ``type=bool`` flags were given on the command line (``--TET False``).
_BOOLEAN_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0")


def _actions_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.dest: a for a in parser._actions if a.dest != argparse.SUPPRESS and a.dest not in ("help", "config")}


def _keys_by_name(actions: dict[str, argparse.Action]) -> dict[str, str]:
    """Every name of an option as a config key -> its dest: the dest and the option strings (``dr`` for
    ``--decay-rate``, ``-`` read as ``_``), except a flag's other spellings (``no_TET`` would mean the opposite)."""
    names = {}
    for dest, action in actions.items():
        if not isinstance(action, _FLAG_ACTIONS):
            names.update((option.lstrip("-").replace("-", "_"), dest) for option in action.option_strings)
    return {**names, **{dest: dest for dest in actions}}


def config_keys(parser: argparse.ArgumentParser) -> frozenset[str]:
    """Every key a config for ``parser`` may hold: each option's dest and its other names (``dr``, ``j``)."""
    return frozenset(_keys_by_name(_actions_by_dest(parser)))


def _closest(key: str, known: Sequence[str]) -> str:
    """Up to three known keys close to ``key``: its synonym (``depths``: ``layer``), then by spelling, ignoring
    case (``tet``: ``TET``)."""
    by_lower = {k.lower(): k for k in known}
    matches = [_SYNONYMS[key]] if _SYNONYMS.get(key) in known else []
    matches += [by_lower[k] for k in difflib.get_close_matches(key.lower(), list(by_lower), n=3, cutoff=0.6)]
    if not matches:
        matches = [k for k in known if key.lower() in k.lower() or k.lower() in key.lower()]
    matches = list(dict.fromkeys(matches))[:3]
    return ", ".join(matches) if matches else "none (see --help)"


def _base_type(action: argparse.Action) -> Any:
    """The type that parses the option's value (``int`` for ``--start-epoch``, which also reads ``''`` as None)."""
    return getattr(action.type, "base_type", action.type)


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
    is the octal 9, ``experiment: 2024-01-05`` and ``dvs_raw_dir: 2024-01-05`` dates).

    Raises:
        ConfigError: naming the key and the fix (quotes).
    """
    if _base_type(action) in (None, str) and value is not None and not isinstance(value, str):
        raise ConfigError(f"config key {key!r}: expected text, got the {type(value).__name__} {value!r}; put the "
                          f"value in quotes (YAML reads unquoted digits as a number, 0011 as the octal 9, and "
                          f"2024-01-05 as a date, yes as true)")


def _convert_scalar(key: str, action: argparse.Action, value: Any) -> Any:
    if _base_type(action) is int and isinstance(value, float) and not value.is_integer():
        raise ConfigError(f"config key {key!r}: expected an int, got {value!r}")
    if isinstance(value, list) and hasattr(action.type, "element_type"):
        return _convert_list_type(key, action, value)
    if _base_type(action) not in (None, str):
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
        value = value if action.type is None else action.type(value)
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
        path: YAML file of ``flag: value`` pairs (``flag`` any of the option's names, with ``-`` or ``_``).
        parser: the parser whose flags are the allowed keys.
        foreign_keys: keys of the project's other scripts (a ``main.py`` run's ``args.yaml`` given to ``test.py``):
            dropped, and left in ``parser.ignored_config_keys`` for :func:`warn_inert_flags` to list.

    Returns:
        ``{dest: converted value}``; the keys of :data:`RECORDED_ONLY_KEYS` (written into ``args.yaml``) are skipped,
        except that a recorded ``skipped_blocks`` gives ``skip_blocks`` to the evaluation scripts when the config
        sets none (see :func:`_skip_blocks_from_record`; left in ``parser.recorded_skip_blocks`` to be logged).
        A run's ``args.yaml`` (holding those keys) does not give its :data:`ONE_SHOT_KEYS` (except ``resume``, the
        checkpoint evaluated, from an evaluation's to an evaluation script); the values it recorded are left in
        ``parser.one_shot_config_keys`` to be logged.

    Raises:
        ConfigError: unreadable file, unknown key (naming the closest known ones), a key given twice (also as
            ``-`` and ``_`` spellings, or as two names of one option), or a value of the wrong type.
    """
    try:
        with open(path) as f:
            raw = yaml.load(f, Loader=_UniqueKeyLoader)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path!r} is not UTF-8 text (a checkpoint passed to -c instead of --resume?); "
                          f"give a YAML file") from None
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
    dest_of = _keys_by_name(actions)
    keys = {str(key).replace("-", "_") for key in raw}
    one_shot_keys = () if keys.isdisjoint(_RUN_RECORD_KEYS) else ONE_SHOT_KEYS
    if _EVALUATION_KEY in keys and _EVALUATION_KEY in actions:
        one_shot_keys = tuple(key for key in one_shot_keys if key != "resume")
    cfg: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    dropped, recorded, one_shot = [], {}, {}
    for key, value in raw.items():
        name = str(key).replace("-", "_")
        dest = dest_of.get(name, name)
        if dest in RECORDED_ONLY_KEYS:
            recorded[dest] = value
            continue
        if dest not in actions and dest in foreign_keys:
            dropped.append(str(key))
            continue
        if dest not in actions:
            raise ConfigError(f"unknown config key {key!r} in {path}; closest known keys: "
                              f"{_closest(dest, list(actions))}")
        if dest in given_as:
            raise ConfigError(f"config key {key!r} in {path} is given twice (also as {given_as[dest]!r}, a name of "
                              f"the same option); keep one")
        given_as[dest] = str(key)
        if dest in one_shot_keys:
            if value not in (None, actions[dest].default):
                one_shot[dest] = value
            continue
        cfg[dest] = _convert(str(key), actions[dest], value)
    recorded_skip = _skip_blocks_from_record(recorded.get("skipped_blocks"), actions, cfg)
    if recorded_skip:
        cfg["skip_blocks"] = recorded_skip
    parser.ignored_config_keys = (path, dropped)  # warned about by warn_inert_flags, once the run log records
    parser.recorded_skip_blocks = (path, recorded_skip)  # logged there too
    parser.one_shot_config_keys = (path, one_shot)  # and there
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
    _refuse_flag_values(parser, sys.argv[1:] if argv is None else argv)
    config_parser = argparse.ArgumentParser(add_help=False)
    config_parser.add_argument("-c", "--config", default="")
    known, _ = config_parser.parse_known_args(argv)
    config = load_config(known.config, parser, foreign_keys) if known.config else {}
    parser.set_defaults(**config)
    args = parser.parse_args(argv)
    none_for_empty_lists(parser, args)
    parser.command_line_dests = command_line_dests(parser, argv)
    parser.given_dests = parser.command_line_dests | frozenset(config)
    if hasattr(args, "model"):
        from .model import apply_variant_defaults, reconcile_input_size

        folded = reconcile_input_size(args, parser.command_line_dests, parser.given_dests)
        parser.given_dests |= frozenset(folded)
        parser.variant_defaults_taken = apply_variant_defaults(args, parser.given_dests, log=False)
    if args.native_amp and "amp" not in parser.command_line_dests:  # the reference's torch.amp switch; --apex-amp
        args.amp = True  # without apex left it in float32
    return args


def _flag_spellings(action: argparse.Action) -> tuple[list[str], list[str]]:
    """The option strings of a flag that set it true, and those that set it false."""
    if isinstance(action, argparse.BooleanOptionalAction):
        false = [option for option in action.option_strings if option.startswith("--no-")]
    elif isinstance(action, NoFlagAction):
        false = [option for option in action.option_strings if not option.startswith("--no-")]
    else:
        false = action.option_strings if isinstance(action, argparse._StoreFalseAction) else []
    return [option for option in action.option_strings if option not in false], false


def _refuse_flag_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> None:
    """Refuse a flag given a value (``--TET False``, ``--TET=True``: the reference's ``type=bool`` habit, which
    argparse reports after its usage text as an unrecognised ``False``).

    Raises:
        ConfigError: naming the flag's spellings for true and for false.
    """
    flags = {option: action for action in parser._actions if isinstance(action, _FLAG_ACTIONS)
             for option in action.option_strings}
    for i, token in enumerate(argv):
        option, equals, value = token.partition("=")
        if option not in flags:
            continue
        if not equals:
            value = argv[i + 1] if i + 1 < len(argv) else ""
            if value.lower() not in _BOOLEAN_WORDS:
                continue
        true, false = _flag_spellings(flags[option])
        spellings = " and ".join(f"{' / '.join(options)} for {meaning}" for options, meaning in
                                 ((true, "true"), (false, "false")) if options)
        habit = " (the reference's type=bool --TET read any text, even False, as true)" if flags[option].dest == "TET" \
            else ""
        raise ConfigError(f"{option} {value}: {option} is a flag and takes no value{habit}; write {spellings}")


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
    ``skipped_blocks`` unless ``--skip-blocks`` on the command line replaced them, and the one-shot keys of a run's
    ``args.yaml`` that were not applied (see :func:`load_config`)."""
    path, ignored = getattr(parser, "ignored_config_keys", ("", []))
    if ignored:
        _logger.warning("Config %s: %s belong to another script of the project, ignored here", path,
                        ", ".join(ignored))
    path, recorded_skip = getattr(parser, "recorded_skip_blocks", ("", []))
    command_line = getattr(parser, "command_line_dests", ())
    if recorded_skip and "skip_blocks" not in command_line:
        _logger.info("Config %s: skipping the attention of blocks %s, the skipped_blocks of the run that wrote it "
                     "(--skip-blocks L,L skips others, --skip-blocks '' none)", path, recorded_skip)
    path, one_shot = getattr(parser, "one_shot_config_keys", ("", {}))
    not_applied = {dest: value for dest, value in one_shot.items() if dest not in command_line}
    if not_applied:
        _logger.info("Config %s is a run's args.yaml: not applying %s (keys that only meant the start of that run; "
                     "give %s on the command line instead)", path,
                     ", ".join(f"{dest} {value!r}" for dest, value in not_applied.items()),
                     " / ".join("--" + dest.replace("_", "-") for dest in not_applied))
    actions = _actions_by_dest(parser)
    for dest, why in INERT_FLAGS.items():
        if dest in actions and getattr(args, dest, None) not in (None, actions[dest].default):
            _logger.warning("--%s has no effect: %s", dest.replace("_", "-"), why)
    _warn_static_image_flags(args, actions)


def _warn_static_image_flags(args: argparse.Namespace, actions: dict[str, argparse.Action]) -> None:
    """Warn about the static-image transform flags set away from their defaults for an event dataset."""
    from data import is_neuromorphic

    if not is_neuromorphic(getattr(args, "dataset", None) or ""):
        return
    given = [dest for dest in STATIC_IMAGE_FLAGS if dest in actions and getattr(args, dest) != actions[dest].default]
    if given:
        _logger.warning("%s ha%s no effect on the event frames of --dataset %s (static-image transforms); their "
                        "augmentation flags are --dvs-flip-roll, --dvs-aug and --dvs-trival-aug (mixup and CutMix "
                        "apply to them too)", ", ".join("--" + dest.replace("_", "-") for dest in given),
                        "s" if len(given) == 1 else "ve", args.dataset)


def dump_args(args: argparse.Namespace, path: str) -> None:
    """Write the resolved arguments as YAML (atomically); ``device`` as asked for (``--device``, often empty), not
    as resolved for this process, so the file runs on another machine or under another launcher."""
    from .atomic import atomic_open

    values = dict(vars(args))
    values["device"] = values.pop("requested_device", values.get("device"))
    with atomic_open(path) as f:
        yaml.safe_dump(dict(sorted(values.items())), f, default_flow_style=False, sort_keys=False)
