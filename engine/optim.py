"""Optimizer, learning-rate schedule and mixed precision, all from the libraries (timm, torch.amp)."""
from __future__ import annotations

import argparse
import contextlib
import inspect
import logging
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ConfigError

_logger = logging.getLogger(__name__)

__all__ = ["uses_fused_optimizer", "build_optimizer", "build_scheduler", "Amp", "compute_dtype", "build_amp"]


def uses_fused_optimizer(args: argparse.Namespace) -> bool:
    """``--opt-fused``, resolved: by default on for CUDA when the optimizer class takes ``fused`` (torch's Adam,
    AdamW, SGD); asking for it with an optimizer that has none is a :class:`ConfigError`."""
    from timm.optim import get_optimizer_class

    name = args.opt.lower().split("_")[-1]  # timm's parsing: "lookahead_adamw" -> "adamw"
    try:
        has_fused = "fused" in inspect.signature(get_optimizer_class(name, bind_defaults=False)).parameters
    except ValueError as err:
        raise ConfigError(f"--opt {args.opt!r}: {err}") from None
    if args.opt_fused is None:
        return has_fused and torch.device(args.device).type == "cuda"
    if args.opt_fused and not has_fused:
        raise ConfigError(f"--opt-fused: optimizer {args.opt!r} has no fused implementation; use adam, adamw, sgd "
                          "or momentum, or drop --opt-fused")
    return args.opt_fused


def build_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    """timm ``create_optimizer_v2`` from the ``--opt*``, ``--lr``, ``--momentum`` and ``--weight-decay`` flags.

    Weight decay skips biases and 1-d parameters (norms, PLIF ``w``), as in the reference.  Frozen parameters
    (``--linear-prob``) are left out.  With :func:`uses_fused_optimizer` the update is torch's fused kernel: the
    same maths as the multi-tensor (foreach) one, in one launch, and the float16 gradient scaler hands it the scale
    and the inf check as tensors instead of reading them on the host.

    Raises:
        ConfigError: a second-order optimizer (``adahessian``, also behind ``lookahead_``).  It differentiates the
            gradients again, and the backwards of the model's ``sdt::`` ops (LIF, BN + LIF, max-pool) are not
            differentiable where they run Triton kernels (CUDA): the second-order terms through them would be
            silently dropped.
    """
    from timm.optim import create_optimizer_v2, optimizer_kwargs

    fused = {"fused": True} if uses_fused_optimizer(args) else {}
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args), **fused)
    if getattr(optimizer, "is_second_order", False):
        raise ConfigError(f"--opt {args.opt}: second-order optimizers are not supported (they differentiate the "
                          "gradients again, which the CUDA kernels of the model's LIF and max-pool ops cannot: the "
                          "terms through them would be silently lost); choose a first-order optimizer such as "
                          "adamw, sgd or lamb")
    return optimizer


_PLATEAU_PROGRESS = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch")


def plateau_progress(scheduler, eval_metric: str) -> dict | None:
    """What a ``plateau`` schedule has learnt from the metric (its best value, patience and cooldown counters, for
    ``eval_metric``), which timm does not save; None for the other schedules."""
    from timm.scheduler import PlateauLRScheduler

    if not isinstance(scheduler, PlateauLRScheduler):
        return None
    return {"eval_metric": eval_metric, **{key: getattr(scheduler.lr_scheduler, key) for key in _PLATEAU_PROGRESS}}


def _restore_plateau_progress(scheduler, progress: Any, eval_metric: str) -> None:
    if not isinstance(progress, dict):
        return
    if progress.get("eval_metric") != eval_metric:
        _logger.warning("The plateau schedule's best value and patience were counted on --eval-metric %s, and this "
                        "run ranks by %s: they start afresh", progress.get("eval_metric"), eval_metric)
        return
    for key in _PLATEAU_PROGRESS:
        if key in progress:
            setattr(scheduler.lr_scheduler, key, progress[key])


def build_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, updates_per_epoch: int,
                    start_epoch: int = 0, lr_from_checkpoint: bool = False, plateau: dict | None = None):
    """timm ``create_scheduler_v2`` from the ``--sched``, ``--epochs``, warmup and cooldown flags, stepped to
    ``start_epoch`` (a resumed run).

    timm schedules are functions of the epoch, except ``plateau``: it sets the warmup LR when built and, after the
    warmup, only lowers the LR the optimizer holds.  Resumed past its warmup, it goes on from the LR the optimizer
    held before it was built: the checkpoint's, reductions included (the base LR with ``--no-resume-opt``).
    ``lr_from_checkpoint``: that LR was saved after the scheduler stepped to ``start_epoch``, with that epoch's
    ``--lr-noise`` (seeded, the same again), which is taken off before stepping adds it.  ``plateau``: the
    checkpoint's :func:`plateau_progress`, restored with that LR, so the best value and the patience go on too.

    Raises:
        ConfigError: timm rejects the flags (e.g. ``--sched wsd`` with ``--decay-epochs`` beyond ``--epochs``).

    Returns:
        ``(scheduler, num_epochs)``; ``num_epochs`` is, as in timm, ``epochs`` (times the cycles of
        ``--lr-cycle-limit`` and ``--lr-cycle-mul``) ``+ cooldown_epochs`` for the cyclic schedules (cosine, tanh,
        poly), ``epochs + cooldown_epochs`` for wsd and rsqrt, and ``epochs`` for the others (step, multistep,
        plateau).
    """
    from timm.scheduler import PlateauLRScheduler, create_scheduler_v2, scheduler_kwargs

    held_lrs = [group["lr"] for group in optimizer.param_groups]
    try:
        with warnings.catch_warnings():  # timm: "its state ... is not saved in checkpoints"; ours saves it
            warnings.filterwarnings("ignore", "PlateauLRScheduler is deprecated", FutureWarning)
            scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args),
                                                        updates_per_epoch=updates_per_epoch)
    except (ValueError, AssertionError) as err:
        raise ConfigError(f"--sched {args.sched}: the schedule flags do not fit ({err}); check --decay-epochs "
                          f"{args.decay_epochs:g} (epochs, or a fraction of the run below 1), --epochs {args.epochs} "
                          f"and --warmup-epochs {args.warmup_epochs}") from None
    if start_epoch > 0:
        if isinstance(scheduler, PlateauLRScheduler):  # during the warmup, step() sets the warmup LR again
            noisy = lr_from_checkpoint and start_epoch > scheduler.warmup_t and scheduler._is_apply_noise(start_epoch)
            noise = scheduler._calculate_noise(start_epoch) if noisy else 0.0
            for group, lr in zip(optimizer.param_groups, held_lrs):
                group["lr"] = lr / (1 + noise)
            if lr_from_checkpoint:
                _restore_plateau_progress(scheduler, plateau, args.eval_metric)
        scheduler.step(start_epoch)
    return scheduler, num_epochs


@dataclass
class Amp:
    """Mixed-precision state of a run.

    Attributes:
        autocast: zero-argument callable returning the forward-pass context manager.
        loss_scaler: timm ``NativeScaler`` (float16 only; its state is saved in checkpoints), else None.
    """

    autocast: Any
    loss_scaler: Any = None


def compute_dtype(args: argparse.Namespace) -> torch.dtype:
    """The dtype the forward computes in: ``--amp-dtype`` with ``--amp``, else float32."""
    if not args.amp:
        return torch.float32
    return torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16


def build_amp(args: argparse.Namespace) -> Amp:
    """``torch.autocast`` in ``--amp-dtype`` with ``--amp`` (plus a gradient scaler for float16), else fp32."""
    if not args.amp:
        return Amp(contextlib.nullcontext)
    from timm.utils import NativeScaler

    device_type = torch.device(args.device).type
    dtype = compute_dtype(args)
    scaler = NativeScaler(device=device_type) if dtype == torch.float16 else None
    return Amp(lambda: torch.autocast(device_type=device_type, dtype=dtype), scaler)
