"""Optimizer, learning-rate schedule and mixed precision, all from the libraries (timm, torch.amp)."""
from __future__ import annotations

import argparse
import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = ["build_optimizer", "build_scheduler", "Amp", "build_amp"]


def build_optimizer(args: argparse.Namespace, model: nn.Module) -> torch.optim.Optimizer:
    """timm ``create_optimizer_v2`` from the ``--opt*``, ``--lr``, ``--momentum`` and ``--weight-decay`` flags.

    Weight decay skips biases and 1-d parameters (norms, PLIF ``w``), as in the reference.  Frozen parameters
    (``--linear-prob``) are left out.
    """
    from timm.optim import create_optimizer_v2, optimizer_kwargs

    return create_optimizer_v2(model, **optimizer_kwargs(cfg=args))


def build_scheduler(args: argparse.Namespace, optimizer: torch.optim.Optimizer, updates_per_epoch: int):
    """timm ``create_scheduler_v2`` from the ``--sched``, ``--epochs``, warmup and cooldown flags.

    Returns:
        ``(scheduler, num_epochs)``; ``num_epochs`` includes the cooldown epochs (``epochs + cooldown_epochs``).
    """
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs

    return create_scheduler_v2(optimizer, **scheduler_kwargs(args), updates_per_epoch=updates_per_epoch)


@dataclass
class Amp:
    """Mixed-precision state of a run.

    Attributes:
        autocast: zero-argument callable returning the forward-pass context manager.
        loss_scaler: timm ``NativeScaler`` (float16 only; its state is saved in checkpoints), else None.
    """

    autocast: Any
    loss_scaler: Any = None


def build_amp(args: argparse.Namespace) -> Amp:
    """``torch.autocast`` in ``--amp-dtype`` with ``--amp`` (plus a gradient scaler for float16), else fp32."""
    if not args.amp:
        return Amp(contextlib.nullcontext)
    from timm.utils import NativeScaler

    device_type = torch.device(args.device).type
    dtype = torch.bfloat16 if args.amp_dtype == "bfloat16" else torch.float16
    scaler = NativeScaler(device=device_type) if dtype == torch.float16 else None
    return Amp(lambda: torch.autocast(device_type=device_type, dtype=dtype), scaler)
