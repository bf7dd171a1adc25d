"""ASTER on SDT: attention skipping and early exit.  ``python main.py -c conf/<...>.yml [ASTER flags]``.

Trains like ``train.py`` (same engine) with the SDSA branch of the chosen blocks bypassed, then, with
``--early-exit`` / ``--exit-sweep``, evaluates the best checkpoint with per-sample early exit.  Modes:

* ``--auto-skip --log-file firing.json|sdt.log [--skip-threshold 0.001]``, ``--skip-lowest K --log-file ...`` or
  ``--skip-blocks 0,3``: which attention branches to bypass (``skip.json``);
* ``--early-exit [--exit-metric confidence|entropy] [--exit-threshold 0.9]`` and ``--exit-sweep 0.5,0.7,...``:
  accuracy vs average time steps, the fixed-t accuracies and SEENN's oracle AET (``exit_steps.json``, ...);
* ``--validate-only --initial-checkpoint CKPT``: evaluation only (output under ``output/aster`` by default), with
  ``--export-traces DIR`` also the spike traces of the skipping model for ``hw/``;
* ``--study --initial-checkpoint CKPT --log-file ...``: the paper's heat map, accuracy for 0..K skipped blocks x
  exit thresholds.

See ``docs/aster.md`` for the artefacts and their JSON schemas.
"""
import argparse
import logging
import os
import sys

from engine.args import get_args_parser
from engine.aster import EVALUATION_FILES, HEATMAP_THRESHOLDS, aster_eval_parser, aster_skip_parser, check_exit_args, \
    evaluate_aster, read_firing_rates, resolve_skip, run_study, skip_record, write_aster_outputs, write_study
from engine.checkpoint import load_checkpoint_file, load_model_weights
from engine.evaluate import check_export_traces, evaluation_output_root, export_model_traces
from engine.distributed import agreed_setup, broadcast_state, is_primary
from engine.errors import ConfigError
from engine.model import unwrap
from engine.outputs import RunOutputs, resolve_output_dir
from engine.run import RunHooks, cli_main, run_training, setup_evaluation

_logger = logging.getLogger("main")


def make_parser() -> argparse.ArgumentParser:
    """The training command line plus the ASTER skip and early-exit flags."""
    return argparse.ArgumentParser("ASTER: SDT with attention skipping and early exit",
                                   parents=[get_args_parser(), aster_skip_parser(), aster_eval_parser()])


def _exit_options(args: argparse.Namespace) -> dict:
    return dict(thresholds=args.exit_sweep or [], metric=args.exit_metric,
                exit_threshold=args.exit_threshold if args.early_exit else None)


def _evaluate_best(args: argparse.Namespace, setup, output_dir: str, skip: dict) -> None:
    """After training: skip.json, and with --early-exit/--exit-sweep the evaluation of ``model_best.pth.tar``
    (its EMA weights with --model-ema, which ranked the checkpoints), read by the primary process, which wrote it,
    and broadcast: the other nodes may not see the run folder."""
    result = None
    if args.early_exit or args.exit_sweep:
        best = os.path.join(output_dir, "model_best.pth.tar")
        with agreed_setup(args):  # a checkpoint rank 0 cannot load stops every process, not rank 0 alone
            if is_primary(args) and os.path.isfile(best):
                checkpoint = load_checkpoint_file(best)
                ema_ranked = args.model_ema and not args.model_ema_force_cpu  # a CPU EMA is not validated (reference)
                key = "state_dict_ema" if ema_ranked and "state_dict_ema" in checkpoint else "state_dict"
                load_model_weights(unwrap(setup.model), checkpoint, best, key=key)
                _logger.info("Early exit: evaluating %s (%s)", best, key)
        if args.distributed:
            broadcast_state(unwrap(setup.model))
        result = evaluate_aster(setup.model, setup.loaders.eval, setup.eval_loss_fn, args,
                                **_exit_options(args))
    if is_primary(args):
        write_aster_outputs(output_dir, result, skip)


def _validate_only(args: argparse.Namespace, parser: argparse.ArgumentParser, hooks: RunHooks, skip: dict) -> dict:
    if not args.initial_checkpoint:
        raise ConfigError(f"--{'study' if args.study else 'validate-only'} needs --initial-checkpoint CKPT")
    rates = None
    if args.study:
        if not args.log_file:
            raise ConfigError("--study needs --log-file (firing rates of the un-skipped model) to rank the blocks")
        if skip["rule"] != "none":
            raise ConfigError("--study chooses the skipped blocks itself; drop --auto-skip/--skip-lowest/--skip-blocks")
        if args.early_exit:
            raise ConfigError("--study sweeps the thresholds of --exit-sweep and writes no per-sample exits: drop "
                              "--early-exit (--no-early-exit where the -c config sets it) and put the --exit-threshold "
                              "into --exit-sweep")
        if args.study_max_skip is not None and not 0 <= args.study_max_skip <= args.layer:
            raise ConfigError(f"--study-max-skip {args.study_max_skip} must be between 0 and the number of blocks "
                              f"({args.layer})")
        rates = read_firing_rates(args.log_file, args.layer, args.time_steps, args.attention_mode)
    s = setup_evaluation(args, parser, hooks)
    args.output = evaluation_output_root(args, parser, os.path.join("output", "aster"))
    output_dir = resolve_output_dir(args, reuse_resume_dir=False)
    outputs = RunOutputs(args, output_dir, log_name="aster.log") if is_primary(args) else None
    try:
        if args.study:
            rows = run_study(s.model, s.loaders.eval, s.eval_loss_fn, args, rates=rates,
                             max_skip=args.layer if args.study_max_skip is None else args.study_max_skip,
                             thresholds=args.exit_sweep or list(HEATMAP_THRESHOLDS), metric=args.exit_metric)
            if outputs is not None:
                write_study(output_dir, rows, args.time_steps)
            return {"output_dir": output_dir, "study": rows}
        result = evaluate_aster(s.model, s.loaders.eval, s.eval_loss_fn, args, **_exit_options(args))
        if outputs is not None:
            write_aster_outputs(output_dir, result, skip)
            if args.export_traces:
                export_model_traces(s.model, s.loaders.eval, args, args.export_traces, args.trace_samples)
        return {"output_dir": output_dir, "result": result}
    finally:
        if outputs is not None:
            outputs.close()


def skip_hooks(args: argparse.Namespace) -> tuple[dict, RunHooks]:
    """``skip.json``'s content and the hooks that build the model with those attention branches bypassed.

    Raises:
        ConfigError: see :func:`engine.aster.resolve_skip` (runs before anything is built or written).
    """
    skip = skip_record(args, resolve_skip(args))

    def configure(a: argparse.Namespace, model) -> None:
        model.skip_blocks = a.skipped_blocks = skip["skipped_blocks"]

    return skip, RunHooks(configure_model=configure)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> dict:
    """Resolve the skip list, then train or evaluate.

    Returns:
        ``run_training``'s result, or ``{"output_dir", "result"}`` (``{"output_dir", "study"}`` for --study).
    """
    check_exit_args(args)
    skip, hooks = skip_hooks(args)
    if (args.validate_only or args.study) and args.resume and args.initial_checkpoint \
            and os.path.abspath(args.resume) != os.path.abspath(args.initial_checkpoint):
        _logger.warning("--%s evaluates --initial-checkpoint %s; --resume %s is not read",
                        "study" if args.study else "validate-only", args.initial_checkpoint, args.resume)
    if args.export_traces and (args.study or not args.validate_only):
        raise ConfigError("--export-traces works with --validate-only (and not with --study)")
    if args.use_ema and not (args.validate_only or args.study):
        raise ConfigError("--use-ema works with --validate-only/--study; a --model-ema training run evaluates its EMA "
                          "weights anyway (--no-use-ema where the -c config sets use_ema)")
    check_export_traces(args)
    if args.validate_only or args.study:
        return _validate_only(args, parser, hooks, skip)
    hooks.after_training = lambda a, setup, output_dir: _evaluate_best(a, setup, output_dir, skip)
    hooks.evaluations = EVALUATION_FILES
    return run_training(args, parser, hooks)


if __name__ == "__main__":
    sys.exit(cli_main(make_parser, run))
