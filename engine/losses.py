"""Training and validation losses (timm losses, plus the TET loss of the reference ``criterion.py``)."""
from __future__ import annotations

import argparse
import logging

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError

_logger = logging.getLogger(__name__)

__all__ = ["TETLoss", "build_train_loss", "build_eval_loss"]


class TETLoss(nn.Module):
    """Temporal efficient training loss on per-step logits ``[T, B, K]``.

    ``(1 - lamb) * mean_t criterion(out[t], target) + lamb * MSE(out, means)``, where the MSE compares every logit of
    every step with the constant ``means`` and is skipped when ``lamb`` is 0 (reference ``TET_loss``).

    With ``batched`` the criterion runs once on all ``T * B`` rows (the target repeated for every step) instead of
    once per step: for a criterion that is a mean over samples, or samples x classes, weighted by the target alone
    (cross-entropy with or without label smoothing, soft-target cross-entropy, BCE), every step has the same
    denominator, so the mean over all rows is the mean of the per-step means, up to rounding. It saves ``T - 1``
    criterion calls per step and their backward (T=16 with label smoothing: 41 operator calls for the loss's
    forward and backward instead of 465, each a kernel launch on the GPU).

    Args:
        criterion: per-step loss ``criterion(logits [B, K], target)``.
        means: target value of the MSE regulariser.
        lamb: weight of the MSE regulariser.
        batched: run ``criterion`` once on the flattened steps (only for criteria as above; not JSD, whose
            augmentation splits run along the batch).
    """

    def __init__(self, criterion: nn.Module, means: float = 1.0, lamb: float = 0.0, batched: bool = False):
        super().__init__()
        self.criterion = criterion
        self.means = means
        self.lamb = lamb
        self.batched = batched

    def forward(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if outputs.dim() != 3:
            raise ValueError(f"TETLoss expects per-step logits [T, B, K], got shape {tuple(outputs.shape)}")
        if self.batched:
            steps = outputs.shape[0]
            per_step = self.criterion(outputs.flatten(0, 1), target.repeat(steps, *[1] * (target.dim() - 1)))
        else:
            per_step = torch.stack([self.criterion(out_t, target) for out_t in outputs]).mean()
        if self.lamb == 0:
            return per_step
        regulariser = F.mse_loss(outputs, torch.full_like(outputs, self.means))
        return (1 - self.lamb) * per_step + self.lamb * regulariser


def build_train_loss(args: argparse.Namespace, mixup_active: bool) -> nn.Module:
    """The training criterion, chosen as in the reference.

    JSD (``--jsd``) > BCE (``--bce-loss``, with mixup/CutMix or ``--smoothing``) > soft-target CE (mixup/CutMix) >
    label smoothing (``--smoothing``) > CE; wrapped in :class:`TETLoss` with ``--TET``.
    """
    from timm.loss import BinaryCrossEntropy, JsdCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if args.jsd:
        if args.aug_splits < 2:
            raise ConfigError("--jsd needs --aug-splits of 2 or more")
        criterion = JsdCrossEntropy(num_splits=args.aug_splits, smoothing=args.smoothing)
    elif args.bce_loss and (mixup_active or args.smoothing):  # as in the reference: else plain CE below
        criterion = BinaryCrossEntropy(smoothing=0.0 if mixup_active else args.smoothing,
                                       target_threshold=args.bce_target_thresh)
    elif mixup_active:
        criterion = SoftTargetCrossEntropy()
    elif args.smoothing:
        criterion = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        if args.bce_loss:
            _logger.warning("--bce-loss applies with mixup/CutMix or --smoothing, as in the reference; without "
                            "them the loss is cross-entropy")
        criterion = nn.CrossEntropyLoss()
    if args.TET:
        return TETLoss(criterion, means=args.TET_means, lamb=args.TET_lamb, batched=not args.jsd)
    return criterion


def build_eval_loss() -> nn.Module:
    """Validation loss: plain cross-entropy on the (time-averaged) logits."""
    return nn.CrossEntropyLoss()
