"""Command line: ``python -m profiler {run,parse,plot}`` (docs/profiler.md)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

from engine.config import command_line_dests, warn_inert_flags
from engine.errors import SetupError
from engine.model import apply_variant_defaults

from .capture import load_capture
from .config import load_config
from .plots import plot_tables
from .run import add_run_arguments, build_model, int_at_least, make_inputs, output_folder, run_profile
from .tables import write_tables

__all__ = ["build_parser", "main"]

_logger = logging.getLogger(__name__)


def build_parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The top-level parser and its ``run`` sub-parser (which ``-c`` configs fill)."""
    parser = argparse.ArgumentParser(prog="python -m profiler", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="time and probe a model run by run; write capture.txt, records.jsonl",
                              description="Time and probe a model run by run (the fork's notebook driver).")
    run.add_argument("-c", "--config", type=Path, help="YAML file of run options (CLI > YAML > defaults)")
    run.add_argument("--ignore-unknown-keys", action="store_true",
                     help="drop config keys that are not run options (the keys of the project's other scripts, "
                          "such as a training run's args.yaml, are dropped without it)")
    add_run_arguments(run)

    parse = commands.add_parser("parse", help="captures (fork text or records.jsonl) -> CSV tables",
                                description="Parse captures into CSV tables (profiler.tables).")
    parse.add_argument("captures", nargs="+", type=Path, help="capture files: the fork's text, or *.jsonl")
    parse.add_argument("--out", type=Path, required=True, help="folder for the CSV tables")
    parse.add_argument("--layers", type=int_at_least(1), help="encoder blocks per run (default: inferred, else 8)")

    plot = commands.add_parser("plot", help="CSV tables -> the six PNG figures",
                               description="Draw the six figures from the tables of 'parse'.")
    plot.add_argument("tables", type=Path, help="folder written by 'parse'")
    plot.add_argument("--out", type=Path, required=True, help="folder for the PNG files")
    plot.add_argument("--source", help="only this capture (a 'source' value of the tables)")
    return parser, run


def _device(name: str) -> torch.device:
    """``--device NAME``; empty (train.py's "pick automatically", as in its args.yaml) is CUDA if available."""
    if not name:
        name = "cuda" if torch.cuda.is_available() else "cpu"
        _logger.info("--device '' (automatic): %s", name)
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"--device {name!r}: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name!r}: CUDA is not available here")
    return device


def _command_line_dests(run_parser: argparse.ArgumentParser, argv: list[str] | None) -> frozenset[str]:
    """The ``run`` options set on the command line (after the word ``run``)."""
    argv = sys.argv[1:] if argv is None else argv
    return command_line_dests(run_parser, argv[argv.index("run") + 1:])


def _log_batch_size(args: argparse.Namespace, command_line: frozenset[str], config: dict) -> None:
    """Say how many images each run takes and where that number came from (a training config's batch_size is
    used as it is, see docs/profiler.md)."""
    if "batch_size" in command_line:
        origin = "from -b/--batch-size"
    elif "batch_size" in config:
        origin = f"from 'batch_size' in {args.config} (give -b to change it; the fork used 1)"
    else:
        origin = "the default (the fork's)"
    _logger.info("batch size %d, %s", args.batch_size, origin)


def _run(parser: argparse.ArgumentParser, run_parser: argparse.ArgumentParser, argv: list[str] | None,
         args: argparse.Namespace) -> int:
    config = {}
    try:
        if args.config is not None:
            config = load_config(args.config, run_parser, args.ignore_unknown_keys)
            run_parser.set_defaults(**config)
            args = parser.parse_args(argv)
        if args.out is None:
            raise ValueError("--out DIR is required (or 'out' in the config)")
        if not (args.timers or args.sparsity):
            raise ValueError("--no-timers with --no-sparsity records nothing: keep the timers or the probes")
        args.out = output_folder(args.out)
        device = _device(args.device)
        args.device = str(device)
        command_line = _command_line_dests(run_parser, argv)
        run_parser.command_line_dests = command_line  # read by warn_inert_flags
        warn_inert_flags(args, run_parser)  # the config keys dropped, the skipped blocks it recorded
        _log_batch_size(args, command_line, config)
        apply_variant_defaults(args, command_line | frozenset(config))
        net = build_model(args)
        inputs = make_inputs(args, device, net)
    except (OSError, ValueError, SetupError) as exc:
        _fail(run_parser, exc)
    run_profile(args, net, inputs)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser, run_parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.command == "run":
        return _run(parser, run_parser, argv, args)
    try:
        if args.command == "parse":
            _parse(args)
        else:
            plot_tables(args.tables, args.out, args.source)
    except (OSError, ValueError) as exc:
        _fail(parser, exc)
    return 0


def _fail(parser: argparse.ArgumentParser, exc: Exception) -> None:
    """Exit with status 2 and one line naming the problem (argparse's format, without its usage block, which says
    nothing about a bad file or value)."""
    parser.exit(2, f"{parser.prog}: error: {exc}\n")


def _source_names(paths: list[Path]) -> list[str]:
    """Each capture's name in the tables: the shortest end of its path that no other capture's path ends with.

    Raises:
        ValueError: a file is given twice (its rows would be counted twice).
    """
    seen: dict[Path, Path] = {}
    for path in paths:
        first = seen.setdefault(path.resolve(), path)
        if first is not path:
            raise ValueError(f"{path} is the same file as {first}: give each capture once")
    parts = [Path(os.path.abspath(path)).parts for path in paths]
    names = []
    for i, own in enumerate(parts):
        others = parts[:i] + parts[i + 1:]
        k = next(k for k in range(1, len(own) + 1) if all(other[-k:] != own[-k:] for other in others))
        names.append(Path(*own[-k:]).as_posix())
    return names


def _parse(args: argparse.Namespace) -> None:
    captures = []
    for path, source in zip(args.captures, _source_names(args.captures)):
        capture = load_capture(path, args.layers, source)
        capture.log_summary()
        captures.append(capture)
    write_tables(captures, args.out)


if __name__ == "__main__":
    sys.exit(main())
