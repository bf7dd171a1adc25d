"""One training epoch and one validation pass (the log lines follow the reference ``train.py``)."""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .distributed import evaluation_module, is_primary
from .model import unwrap, uses_channels_last
from .optim import Amp

__all__ = ["seed_epoch", "train_step", "train_one_epoch", "validate"]

_logger = logging.getLogger(__name__)

# Called with one validation batch's float output and its targets.
Observer = Callable[[torch.Tensor, torch.Tensor], None]


def seed_epoch(args: argparse.Namespace, epoch: int) -> None:
    """Seed Python, NumPy and torch from ``(seed, epoch, rank)`` (timm ``random_seed``); epoch -1 means setup.

    Seeding at the start of every epoch makes the epoch's shuffling and augmentation independent of what ran
    before, so a resumed run repeats an uninterrupted one.  NumPy's SeedSequence mixes the three, so no two
    (seed, epoch, rank) share a stream (a sum such as ``seed + 1000 * epoch + rank`` made --seed 1000 replay
    --seed 0 an epoch later, and rank 1 of --seed 0 replay rank 0 of --seed 1).
    """
    from timm.utils import random_seed

    mixed = np.random.SeedSequence([args.seed, epoch + 1, args.rank]).generate_state(1, np.uint32)[0]
    random_seed(int(mixed), 0)


def _progress(loader, args: argparse.Namespace, desc: str):
    disable = not (is_primary(args) and sys.stderr.isatty())
    return tqdm(loader, desc=desc, total=len(loader), disable=disable, leave=False, dynamic_ncols=True)


def _reduce(value: torch.Tensor, args: argparse.Namespace) -> torch.Tensor:
    if args.distributed:
        from timm.utils import reduce_tensor

        return reduce_tensor(value.detach(), args.world_size)
    return value.detach()


def _to_device(x: torch.Tensor, target: torch.Tensor, args: argparse.Namespace):
    x = x.to(args.device, non_blocking=True).float()
    if uses_channels_last(args) and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, target.to(args.device, non_blocking=True)


class _DeviceMean:
    """Batch-size weighted mean of scalar tensors, accumulated on their device (no host sync per update).

    The sum is kept in float64, so :attr:`avg` equals what timm's ``AverageMeter`` gives when it is updated with
    ``value.item()`` (a Python float is a float64).
    """

    def __init__(self) -> None:
        self.last: torch.Tensor | None = None
        self.sum: torch.Tensor | float = 0.0
        self.count = 0

    def update(self, value: torch.Tensor, n: int) -> None:
        self.last = value.detach()
        self.sum = self.sum + self.last.double() * n
        self.count += n

    @property
    def avg(self) -> float:
        """The mean so far, 0 before any update (synchronises with the device)."""
        return float(self.sum) / self.count if self.count else 0.0


def train_step(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor, optimizer: torch.optim.Optimizer,
               loss_fn: nn.Module, args: argparse.Namespace, amp: Amp) -> torch.Tensor:
    """One optimisation step: forward (the model resets its neurons first), loss, backward, clipping, update.

    Inputs must already be on the device (and mixed, with mixup).  Nothing here waits for the device: with a fused
    optimizer (``--opt-fused``, the default on CUDA) the float16 gradient scaler passes its inf check to the
    optimizer as a tensor; with another optimizer it reads it on the host to skip steps with non-finite gradients.

    Args:
        model: the (possibly DDP-wrapped) model, in training mode.
        inputs: the batch on ``args.device``.
        target: class indices or soft targets on ``args.device``.
        optimizer: the optimizer.
        loss_fn: training criterion.
        args: parsed arguments (``clip_grad``, ``clip_mode``).
        amp: autocast context and optional loss scaler.

    Returns:
        The loss of the batch, a 0-d tensor on the device (not detached).
    """
    from timm.models import model_parameters
    from timm.utils import dispatch_clip_grad

    with amp.autocast():
        loss = loss_fn(model(inputs), target)
    optimizer.zero_grad(set_to_none=True)
    clipped = model_parameters(model, exclude_head="agc" in args.clip_mode)  # AGC leaves the head alone, as timm's
    if amp.loss_scaler is not None:
        amp.loss_scaler(loss, optimizer, clip_grad=args.clip_grad, clip_mode=args.clip_mode, parameters=clipped)
    else:
        loss.backward()
        if args.clip_grad is not None:
            dispatch_clip_grad(clipped, args.clip_grad, mode=args.clip_mode)
        optimizer.step()
    return loss


def train_one_epoch(epoch: int, model: nn.Module, loader, optimizer: torch.optim.Optimizer, loss_fn: nn.Module,
                    args: argparse.Namespace, *, amp: Amp, lr_scheduler=None, model_ema=None, mixup_fn=None,
                    saver=None, start_batch: int = 0, start_loss: tuple[float, float] | None = None) -> OrderedDict:
    """Train ``model`` for one epoch with :func:`train_step`.

    The losses are summed on the device; the host reads them only on log lines and at the end of the epoch.  A
    Lookahead optimizer (``--opt lookahead_*``) ends the epoch on its slow weights (``sync_lookahead``, as timm's
    ``train.py``), so validation and checkpoints see them, not the fast weights.

    Args:
        epoch: 0-based epoch index.
        model: the (possibly DDP-wrapped) model; neurons reset themselves at every forward.
        loader: training batches ``(input, target)``.
        optimizer: the optimizer.
        loss_fn: training criterion (``TETLoss`` for per-step outputs).
        args: parsed arguments (``device``, ``clip_grad``, ``clip_mode``, ``log_interval``, ``recovery_interval``).
        amp: autocast context and optional loss scaler.
        lr_scheduler: timm scheduler; ``step_update`` is called after every optimizer step (without the running
            loss as metric, which would cost a host sync per step: no per-update timm schedule reads it).
        model_ema: timm ``ModelEmaV3`` to update after every step, with its constant decay from the first update
            (the reference's ``ModelEmaV2``; a step count would make the first two updates copy the model).
        mixup_fn: timm ``Mixup`` applied to each batch (None when mixup happens in the collate function).
        saver: timm ``CheckpointSaver`` for recovery checkpoints every ``--recovery-interval`` batches.
        start_batch: batches of this epoch trained before (resuming a recovery checkpoint): they are drawn from
            the loader (and mixed) but not trained on, so every later batch, and the random numbers, are those of
            an uninterrupted epoch.
        start_loss: ``(sum, count)`` of those batches' losses over all processes (a recovery checkpoint keeps it,
            :func:`engine.checkpoint.epoch_loss_so_far`), so that the epoch's mean loss is the whole epoch's; without
            it the mean is over the batches trained here.

    Returns:
        ``OrderedDict(loss=...)``: the mean training loss over all processes (weighted by batch size).
    """
    from timm.utils import AverageMeter

    model.train()
    losses_m, batch_time_m = _DeviceMean(), AverageMeter()
    num_batches = len(loader)
    num_updates = epoch * num_batches + start_batch
    if start_batch and lr_scheduler is not None:
        lr_scheduler.step_update(num_updates=num_updates)
    if start_batch and start_loss is not None:  # each process holds its share of the sums
        losses_m.sum, losses_m.count = start_loss[0] / args.world_size, start_loss[1] / args.world_size
    end = time.time()
    for batch_idx, (inputs, target) in enumerate(_progress(loader, args, f"train {epoch}")):
        inputs, target = _to_device(inputs, target, args)
        if mixup_fn is not None:
            inputs, target = mixup_fn(inputs, target)
        if batch_idx < start_batch:
            end = time.time()
            continue
        loss = train_step(model, inputs, target, optimizer, loss_fn, args, amp)
        if model_ema is not None:
            model_ema.update(model)
        num_updates += 1
        losses_m.update(loss, inputs.size(0))
        batch_time_m.update(time.time() - end)
        last = batch_idx == num_batches - 1
        if is_primary(args) and (last or batch_idx % args.log_interval == 0):
            lr = optimizer.param_groups[0]["lr"]
            rate = inputs.size(0) * args.world_size / max(batch_time_m.val, 1e-9)
            pct = 100.0 * batch_idx / max(num_batches - 1, 1)
            _logger.info(f"Train: {epoch} [{batch_idx:>4d}/{num_batches} ({pct:>3.0f}%)]  "
                         f"Loss: {losses_m.last.item():>9.6f} ({losses_m.avg:>6.4f})  "
                         f"Time: {batch_time_m.val:.3f}s, {rate:>7.2f}/s  LR: {lr:.3e}")
        if args.recovery_interval and (batch_idx + 1) % args.recovery_interval == 0 and not last:
            _save_recovery(saver, losses_m, epoch, batch_idx, args)
        if lr_scheduler is not None:
            lr_scheduler.step_update(num_updates=num_updates)
        end = time.time()
    if hasattr(optimizer, "sync_lookahead"):
        optimizer.sync_lookahead()
    unwrap(model).reset_neurons()
    loss_avg = _reduce(torch.tensor(losses_m.avg, dtype=torch.float64, device=args.device), args).item()
    return OrderedDict(loss=loss_avg)


def _save_recovery(saver, losses: _DeviceMean, epoch: int, batch_idx: int, args: argparse.Namespace) -> None:
    """A recovery checkpoint (rank 0) holding the summed loss of the epoch so far (every process takes part)."""
    sums = torch.tensor([float(losses.sum), float(losses.count)], dtype=torch.float64, device=args.device)
    if args.distributed:
        torch.distributed.all_reduce(sums)
    if saver is not None:
        saver.epoch_loss = sums.tolist()
        saver.save_recovery(epoch, batch_idx=batch_idx)
        saver.epoch_loss = None


def _loss_top1_top5(sums: torch.Tensor) -> list[float]:
    """``[loss sum, top-1 hits, top-5 hits, samples]`` -> mean loss and the two accuracies in percent."""
    return (sums[:3] / sums[3] * torch.tensor([1.0, 100.0, 100.0], dtype=sums.dtype)).tolist()


@torch.no_grad()
def validate(model: nn.Module, loader, loss_fn: nn.Module, args: argparse.Namespace, *, amp: Amp,
             log_suffix: str = "", observers: Sequence[Observer] = ()) -> OrderedDict:
    """Evaluate ``model`` on ``loader``: cross-entropy and top-1/top-5 accuracy (per-step logits are averaged).

    ``observers`` are called with every batch's float output (per-step logits ``[T, B, K]`` when the model has
    ``TET`` set, else ``[B, K]``) and its targets, e.g. the early-exit meters of :mod:`engine.aster`.

    Distributed: each process evaluates its own share of the samples (:class:`engine.loaders.EvalShard`) with the
    bare module (:func:`evaluation_module`), and the sums are combined once at the end, so every sample counts once.

    Returns:
        ``OrderedDict(loss, top1, top5)``, the means over all samples of all processes; accuracies in percent.
    """
    from timm.utils import accuracy

    net = evaluation_module(model)
    net.eval()
    # loss sum, top-1 hits, top-5 hits, samples: this process's share (no per-batch collectives: the shares may
    # differ by a batch), summed over the processes at the end
    totals = torch.zeros(4, dtype=torch.float64)
    num_batches = len(loader)
    top_k = (1, min(5, net.num_classes))
    for batch_idx, (inputs, target) in enumerate(_progress(loader, args, "eval")):
        inputs, target = _to_device(inputs, target, args)
        with amp.autocast():
            output = net(inputs)
        output = output.float()
        for observe in observers:
            observe(output, target)
        if output.dim() == 3:
            output = output.mean(0)
        n = inputs.size(0)
        hits = torch.stack([*accuracy(output, target, topk=top_k)]).double() * n / 100  # timm: float32 percent
        # the batch's loss in float64: the sum over batches then does not depend on -vb (nor on the process count)
        batch = torch.cat([loss_fn(output.double(), target).reshape(1) * n, hits.round(), hits.new_tensor([n])])
        batch = batch.cpu()
        totals += batch
        if is_primary(args) and (batch_idx == num_batches - 1 or batch_idx % args.log_interval == 0):
            (loss, val1, val5), (avg_loss, avg1, avg5) = _loss_top1_top5(batch), _loss_top1_top5(totals)
            _logger.info(f"Test{log_suffix}: [{batch_idx:>4d}/{num_batches - 1}]  "
                         f"Loss: {loss:>7.4f} ({avg_loss:>6.4f})  "
                         f"Acc@1: {val1:>7.4f} ({avg1:>7.4f})  "
                         f"Acc@5: {val5:>7.4f} ({avg5:>7.4f})")
    net.reset_neurons()
    if args.distributed:
        totals = totals.to(args.device)
        torch.distributed.all_reduce(totals)
        totals = totals.cpu()
        if is_primary(args):  # the lines above cover this process's share
            loss, top1, top5 = _loss_top1_top5(totals)
            _logger.info(f"Test{log_suffix}: all {int(totals[3])} samples of {args.world_size} processes  "
                         f"Loss: {loss:>6.4f}  Acc@1: {top1:>7.4f}  Acc@5: {top5:>7.4f}")
    if not totals[3]:
        return OrderedDict(loss=0.0, top1=0.0, top5=0.0)
    loss, top1, top5 = _loss_top1_top5(totals)
    return OrderedDict(loss=loss, top1=top1, top5=top5)
