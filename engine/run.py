"""The whole training run that ``train.py``, ``main.py`` and ``finetune.py`` call, and the CLI wrapper.

Order matters: everything that can fail on user input (config, model dimensions, dataset folders, checkpoint) runs
in :func:`setup_training`, before the output folder is touched, so a failed start overwrites nothing.

Scripts change a run through :class:`RunHooks` (configure the built model, load weights their own way, act on the
trained model) instead of copying the loop; :func:`setup_evaluation` is the evaluation-only counterpart.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .checkpoint import (build_saver, check_same_computation, epoch_loss_so_far, load_initial_checkpoint,
                         newest_recovery_files, plateau_progress_of, restore_model_ema, restores_optimizer,
                         resume_checkpoint)
from .config import parse_args, warn_inert_flags
from .distributed import (agreed_setup, broadcast_state, cleanup_distributed, init_distributed, is_primary,
                          lost_peer)
from .errors import ConfigError, SetupError, one_line, storage_failure
from .loaders import Loaders, build_loaders, set_loader_epoch
from .loop import seed_epoch, train_one_epoch, validate
from .losses import build_eval_loss, build_train_loss
from .model import (build_model, build_model_ema, compile_model, distribute_model, log_variant_defaults,
                    prepare_model, resolve_model_args)
from .optim import Amp, build_amp, build_optimizer, build_scheduler
from .outputs import RunOutputs, resolve_output_dir, setup_console_logging, start_run_log
from .validate import check_run_args

__all__ = ["RunHooks", "TrainingSetup", "EvalSetup", "setup_training", "setup_evaluation", "run_training",
           "cli_main"]

_logger = logging.getLogger(__name__)


ModelHook = Callable[[argparse.Namespace, nn.Module], None]


@dataclass
class RunHooks:
    """Optional callbacks of a run; the first two get the bare model (before ``prepare_model`` and DDP).

    Attributes:
        configure_model: called right after the model is built (e.g. ASTER's skipped blocks, frozen parameters),
            before the data, the weights and the optimizer; it may raise :class:`SetupError`.
        load_weights: replaces the strict ``--initial-checkpoint`` load (e.g. ``finetune.py``'s tolerant load).
        after_training: ``(args, setup, output_dir)``, called by every process after the last epoch, while the
            run's log file is still open (e.g. early-exit evaluation of the best checkpoint); only the primary
            process (:func:`~engine.distributed.is_primary`) should write files.
        resumable: whether the script continues a run with ``--resume``; False for one that ignores it
            (``finetune.py``), whose Ctrl-C message then advises starting it again.
        evaluations: names of the files ``after_training`` writes about the trained model; a run resumed into its
            folder moves those of the run before it aside (:func:`~engine.checkpoint.set_aside_later_checkpoints`).
    """

    configure_model: ModelHook | None = None
    load_weights: ModelHook | None = None
    after_training: Callable[[argparse.Namespace, TrainingSetup, str], None] | None = None
    resumable: bool = True
    evaluations: tuple[str, ...] = ()


@dataclass
class TrainingSetup:
    """Everything a training loop needs, built and restored by :func:`setup_training`."""

    model: nn.Module
    model_ema: Any
    optimizer: torch.optim.Optimizer
    amp: Amp
    loaders: Loaders
    train_loss_fn: nn.Module
    eval_loss_fn: nn.Module
    lr_scheduler: Any
    num_epochs: int
    start_epoch: int
    checkpoint: dict | None
    start_batch: int = 0


def _build_model_and_data(args: argparse.Namespace, parser: argparse.ArgumentParser | None, hooks: RunHooks,
                          train: bool) -> tuple[nn.Module, Loaders]:
    start_run_log()
    log_variant_defaults(args.model, getattr(parser, "variant_defaults_taken", ()))
    check_run_args(args, train)
    init_distributed(args)
    setup_console_logging(args.rank, args.local_rank)
    if parser is not None and is_primary(args):
        warn_inert_flags(args, parser)
    resolve_model_args(args)
    seed_epoch(args, -1)

    model = build_model(args)
    if hooks.configure_model is not None:
        hooks.configure_model(args, model)
    loaders = build_loaders(args, model, train=train)
    if hooks.load_weights is not None:
        hooks.load_weights(args, model)
    elif args.initial_checkpoint:
        load_initial_checkpoint(args, model)
    return prepare_model(args, model), loaders


def setup_training(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None,
                   hooks: RunHooks | None = None) -> TrainingSetup:
    """Join the process group, build model, data, optimizer, AMP, EMA, losses and schedule; resume if asked.

    Writes nothing.  ``parser`` (optional) is used to warn about flags without effect; ``hooks`` see
    :class:`RunHooks`.

    Raises:
        SetupError: a config, dataset or checkpoint problem, of any process (:func:`~engine.distributed.agreed_setup`).
    """
    with agreed_setup(args):  # a file missing on one node stops every process with one error line
        model, loaders = _build_model_and_data(args, parser, hooks or RunHooks(), train=True)
        optimizer = build_optimizer(args, model)
        amp = build_amp(args)
        start_epoch, start_batch, checkpoint = args.start_epoch or 0, 0, None
        if args.resume:
            start_epoch, start_batch, checkpoint = resume_checkpoint(args, model, optimizer, amp.loss_scaler)
        model_ema = build_model_ema(args, model)
        restore_model_ema(model_ema, checkpoint, args.resume)
        lr_from_checkpoint = restores_optimizer(args, checkpoint) and args.start_epoch is None
        lr_scheduler, num_epochs = build_scheduler(args, optimizer, len(loaders.train), start_epoch,
                                                   lr_from_checkpoint, plateau_progress_of(checkpoint))
        if start_epoch >= num_epochs:
            source = (f"the checkpoint {args.resume!r} holds epoch {start_epoch - 1}, so the run would go on at"
                      if args.resume else "--start-epoch is")
            raise ConfigError(f"nothing to train: {source} epoch {start_epoch}, and the run has {num_epochs} "
                              "epochs (--epochs, plus --cooldown-epochs for cosine, tanh, poly, wsd and rsqrt, and "
                              "the further cycles of --lr-cycle-limit); raise --epochs")
        model = compile_model(args, model)
    if args.distributed and model_ema is not None and not args.model_ema_force_cpu:
        broadcast_state(model_ema.module)  # each rank copied its own initial weights; DDP syncs only the model's
    model = distribute_model(args, model)
    return TrainingSetup(model=model, model_ema=model_ema, optimizer=optimizer, amp=amp, loaders=loaders,
                         train_loss_fn=build_train_loss(args, loaders.mixup_active), eval_loss_fn=build_eval_loss(),
                         lr_scheduler=lr_scheduler, num_epochs=num_epochs, start_epoch=start_epoch,
                         checkpoint=checkpoint, start_batch=start_batch)


@dataclass
class EvalSetup:
    """What an evaluation-only run needs, built by :func:`setup_evaluation`."""

    model: nn.Module
    loaders: Loaders
    amp: Amp
    eval_loss_fn: nn.Module


def setup_evaluation(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None,
                     hooks: RunHooks | None = None) -> EvalSetup:
    """Like :func:`setup_training` without training: model (weights from ``--initial-checkpoint`` or
    ``hooks.load_weights``), validation loader, AMP and the evaluation loss.  Writes nothing.  Every process gets
    rank 0's weights.

    Raises:
        SetupError: a config, dataset or checkpoint problem, of any process (:func:`~engine.distributed.agreed_setup`).
    """
    with agreed_setup(args):  # a checkpoint missing on one node stops every process with one error line
        model, loaders = _build_model_and_data(args, parser, hooks or RunHooks(), train=False)
    compile_flags = [flag for flag, value in (("--torchcompile", getattr(args, "torchcompile", None)),
                                              ("--torchcompile-mode", getattr(args, "torchcompile_mode", None)))
                     if value]
    if compile_flags and is_primary(args):
        _logger.warning("%s: no effect on evaluation, which runs the model without torch.compile (only training "
                        "compiles it)", " ".join(compile_flags))
    if args.distributed:
        broadcast_state(model)  # no DDP to do it: without a checkpoint each process built its own (seed + rank)
    return EvalSetup(model=model, loaders=loaders, amp=build_amp(args), eval_loss_fn=build_eval_loss())


def _distribute_batchnorm(args: argparse.Namespace, model: nn.Module, mode: str) -> None:
    """``reduce|broadcast``: average the BatchNorm statistics over the processes, or take rank 0's."""
    if args.distributed and mode in ("broadcast", "reduce"):
        from timm.utils import distribute_bn

        distribute_bn(model, args.world_size, mode == "reduce")


def _validate_epoch(args: argparse.Namespace, s: TrainingSetup) -> dict:
    """Validate the model, then the EMA (whose metrics are returned; the reference skips a CPU EMA), each after
    :func:`_distribute_batchnorm` with ``--dist-bn``, as in the reference.  Without ``--dist-bn`` the EMA gets rank
    0's statistics (the model gets them from ``evaluation_module``), so its metric is that of the EMA saved."""
    _distribute_batchnorm(args, s.model, args.dist_bn)
    eval_metrics = validate(s.model, s.loaders.eval, s.eval_loss_fn, args, amp=s.amp)
    if s.model_ema is not None and not args.model_ema_force_cpu:
        _distribute_batchnorm(args, s.model_ema.module, args.dist_bn or "broadcast")
        eval_metrics = validate(s.model_ema.module, s.loaders.eval, s.eval_loss_fn, args, amp=s.amp,
                                log_suffix=" (EMA)")
    return eval_metrics


def _train_epochs(args: argparse.Namespace, s: TrainingSetup, outputs: RunOutputs | None, saver) -> dict:
    best_metric = best_epoch = eval_metrics = None
    for epoch in range(s.start_epoch, s.num_epochs):
        seed_epoch(args, epoch)
        set_loader_epoch(s.loaders.train, epoch)
        if args.mixup_off_epoch and epoch >= args.mixup_off_epoch:
            s.loaders.disable_mixup()
        train_metrics = train_one_epoch(epoch, s.model, s.loaders.train, s.optimizer, s.train_loss_fn, args,
                                        amp=s.amp, lr_scheduler=s.lr_scheduler, model_ema=s.model_ema,
                                        mixup_fn=s.loaders.mixup_fn, saver=saver,
                                        start_batch=s.start_batch if epoch == s.start_epoch else 0,
                                        start_loss=epoch_loss_so_far(s.checkpoint) if epoch == s.start_epoch else None)
        eval_metrics = _validate_epoch(args, s)
        lr = s.optimizer.param_groups[0]["lr"]
        s.lr_scheduler.step(epoch + 1, eval_metrics[args.eval_metric])
        if outputs is not None:
            outputs.log_epoch(epoch, train_metrics, eval_metrics, lr)
            best_metric, best_epoch = saver.save_checkpoint(epoch, metric=eval_metrics[args.eval_metric])
    return {"best_metric": best_metric, "best_epoch": best_epoch, "eval_metrics": eval_metrics}


def run_training(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None,
                 hooks: RunHooks | None = None) -> dict:
    """Train and validate for ``args.epochs`` (+ cooldown) epochs; rank 0 writes the run folder.

    Args:
        args: parsed arguments (see :mod:`engine.args`).
        parser: the parser, used only to warn about flags without effect.
        hooks: optional callbacks (see :class:`RunHooks`).

    Returns:
        ``{"output_dir", "best_metric", "best_epoch", "eval_metrics"}`` (the last epoch's validation metrics).

    Raises:
        SetupError: a config, dataset or checkpoint problem, raised before anything is written.
    """
    hooks = hooks or RunHooks()
    s = setup_training(args, parser, hooks)
    # --start-epoch restarts the schedule from the loaded weights: a new run, in a folder of its own
    output_dir = resolve_output_dir(args, reuse_resume_dir=args.start_epoch is None,
                                    command_line_dests=getattr(parser, "command_line_dests", None))
    if args.resume and args.start_epoch is None and s.checkpoint is not None \
            and os.path.dirname(os.path.abspath(args.resume)) == output_dir:  # the same string on every process
        check_same_computation(s.model, s.checkpoint, args.resume, args)
    outputs = saver = None
    if is_primary(args):
        outputs = RunOutputs(args, output_dir, resume_epoch=s.start_epoch if args.resume else None)
        saver = build_saver(args, s.model, s.optimizer, output_dir, model_ema=s.model_ema,
                            loss_scaler=s.amp.loss_scaler, resume_checkpoint_dict=s.checkpoint,
                            lr_scheduler=s.lr_scheduler, evaluations=hooks.evaluations)
        _logger.info("Model %s: %.2fM parameters; %d processes on %s; output in %s.", args.model,
                     sum(p.numel() for p in s.model.parameters()) / 1e6, args.world_size, args.device, output_dir)
        _logger.info("Scheduled epochs: %d (from epoch %d).", s.num_epochs, s.start_epoch)
    try:
        result = _train_epochs(args, s, outputs, saver)
        if hooks.after_training is not None:
            hooks.after_training(args, s, output_dir)
    except (KeyboardInterrupt, RuntimeError, OSError) as exc:
        if is_primary(args) and (isinstance(exc, KeyboardInterrupt) or lost_peer(exc) or storage_failure(exc)):
            _log_interrupted(output_dir, hooks.resumable)
        raise
    finally:
        if outputs is not None:
            outputs.close()
    if result["best_metric"] is not None:
        _logger.info("*** Best metric: %s (epoch %s)", result["best_metric"], result["best_epoch"])
    return {"output_dir": output_dir, **result}


def _log_interrupted(output_dir: str, resumable: bool) -> None:
    """After Ctrl-C, SIGTERM (or a failed write): the furthest point saved, and how to go on."""
    if resumable:
        last = os.path.join(output_dir, "last.pth.tar")
        saved = [path for path in (last, newest_recovery_files(output_dir)[1]) if path and os.path.isfile(path)]
        if saved:
            _logger.warning("Interrupted. Resume with --resume %s (the furthest point saved)",
                            max(saved, key=os.path.getmtime))
        else:
            _logger.warning("Interrupted before the first checkpoint of %s: start the run again", output_dir)
    else:
        _logger.warning("Interrupted. %s holds the last finished epoch; this script does not resume (it ignores "
                        "--resume): run it again to start over", output_dir)


def project_option_dests() -> frozenset[str]:
    """Every config key of the five scripts (training, evaluation, ASTER skip/exit, fine-tuning: each option's dest
    and other names), so that one script can take another's ``args.yaml`` or config with ``-c`` (the other's own
    keys are dropped, see ``load_config``)."""
    from .args import get_args_parser
    from .aster import aster_eval_parser, aster_finetune_parser, aster_skip_parser
    from .config import config_keys
    from .evaluate import add_eval_arguments

    parsers = (add_eval_arguments(get_args_parser()), aster_skip_parser(), aster_eval_parser(), aster_finetune_parser())
    return frozenset().union(*(config_keys(parser) for parser in parsers))


class Terminated(KeyboardInterrupt):
    """SIGTERM (``kill``, a scheduler's time limit, torchrun stopping its workers), handled as Ctrl-C is."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def cli_main(make_parser: Callable[[], argparse.ArgumentParser], run: Callable,
             argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (with ``-c`` YAML) and call ``run(args, parser)``; report a :class:`SetupError` as one line.

    Returns:
        The process exit status: 0, 2 after a setup error, 130 after Ctrl-C (143 after SIGTERM), 1 when another
        process of the run stopped (its collective failed) or an output could not be written (a full disk); no
        traceback in these cases.
    """
    setup_console_logging(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)))
    parser = make_parser()
    finished = False
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        run(parse_args(parser, argv, foreign_keys=project_option_dests()), parser)
        finished = True
    except SetupError as exc:
        _logger.error("%s", one_line(exc))
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        _logger.error("Interrupted (%s).", "SIGTERM" if terminated else "Ctrl-C")
        return 143 if terminated else 130
    except (RuntimeError, OSError) as exc:
        if storage_failure(exc):
            reason = f"{exc.filename}: {exc.strerror}; free some space or choose another folder" \
                if isinstance(exc, OSError) else str(exc)
            _logger.error("Could not write an output: %s", reason)
            return 1
        if not lost_peer(exc):
            raise
        _logger.error("Another process of this run stopped (Ctrl-C or an error: see its output), so this one stops "
                      "too (%s)", str(exc).splitlines()[0])
        return 1
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        cleanup_distributed(wait_for_peers=finished)
    return 0
