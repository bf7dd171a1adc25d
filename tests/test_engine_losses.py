"""Loss selection and the TET loss formula."""
import argparse

import pytest
import torch
import torch.nn.functional as F
from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

from engine.args import get_args_parser
from engine.config import parse_args
from engine.errors import ConfigError
from engine.losses import TETLoss, build_train_loss


def _args(*argv: str) -> argparse.Namespace:
    return parse_args(argparse.ArgumentParser(parents=[get_args_parser()]), list(argv))


def test_tet_loss_matches_reference_formula():
    torch.manual_seed(0)
    out, target, lamb, means = torch.randn(4, 8, 10), torch.randint(0, 10, (8,)), 0.001, 1.0
    expected = (1 - lamb) * sum(F.cross_entropy(out[t], target) for t in range(4)) / 4 \
        + lamb * ((out - means) ** 2).mean()
    got = TETLoss(torch.nn.CrossEntropyLoss(), means=means, lamb=lamb)(out, target)
    torch.testing.assert_close(got, expected)


def test_tet_loss_without_regulariser_is_mean_step_loss():
    out, target = torch.randn(3, 5, 4), torch.randint(0, 4, (5,))
    expected = torch.stack([F.cross_entropy(o, target) for o in out]).mean()
    torch.testing.assert_close(TETLoss(torch.nn.CrossEntropyLoss(), lamb=0.0)(out, target), expected)


def test_tet_loss_rejects_time_averaged_logits():
    with pytest.raises(ValueError, match=r"\[T, B, K\]"):
        TETLoss(torch.nn.CrossEntropyLoss())(torch.randn(5, 4), torch.zeros(5, dtype=torch.long))


def test_loss_selection():
    assert isinstance(build_train_loss(_args(), mixup_active=True), SoftTargetCrossEntropy)
    assert isinstance(build_train_loss(_args("--smoothing", "0.1"), mixup_active=False), LabelSmoothingCrossEntropy)
    assert isinstance(build_train_loss(_args("--smoothing", "0"), mixup_active=False), torch.nn.CrossEntropyLoss)
    tet = build_train_loss(_args("--TET", "--TET-lamb", "0.001"), mixup_active=True)
    assert isinstance(tet, TETLoss) and isinstance(tet.criterion, SoftTargetCrossEntropy) and tet.lamb == 0.001
    with pytest.raises(ConfigError, match="aug-splits"):
        build_train_loss(_args("--jsd"), mixup_active=False)


def test_bce_loss_applies_with_mixup_or_smoothing_as_in_the_reference(caplog):
    assert isinstance(build_train_loss(_args("--bce-loss"), mixup_active=True), BinaryCrossEntropy)
    smoothed = build_train_loss(_args("--bce-loss", "--smoothing", "0.2"), mixup_active=False)
    assert isinstance(smoothed, BinaryCrossEntropy) and smoothed.smoothing == 0.2
    plain = build_train_loss(_args("--bce-loss", "--smoothing", "0"), mixup_active=False)
    assert type(plain) is torch.nn.CrossEntropyLoss and "--bce-loss applies with mixup" in caplog.text


@pytest.mark.parametrize("criterion", [
    torch.nn.CrossEntropyLoss(),
    torch.nn.CrossEntropyLoss(weight=torch.arange(1.0, 6.0, dtype=torch.float64), label_smoothing=0.2,
                              ignore_index=3),
    LabelSmoothingCrossEntropy(smoothing=0.1),
    SoftTargetCrossEntropy(),
    BinaryCrossEntropy(smoothing=0.1),
], ids=["ce", "ce-weighted-ignore", "label-smoothing", "soft-target", "bce"])
@pytest.mark.parametrize("lamb", [0.0, 0.001])
def test_batched_tet_loss_is_the_mean_of_the_per_step_losses(criterion, lamb):
    """One call on the T * B rows gives the per-step loop's loss and gradient: every step has the same targets,
    so the same denominator (weighted, and with ignored samples, too)."""
    torch.manual_seed(0)
    out = torch.randn(6, 7, 5, dtype=torch.float64, requires_grad=True)
    soft = isinstance(criterion, SoftTargetCrossEntropy)
    target = torch.softmax(torch.randn(7, 5, dtype=torch.float64), -1) if soft else torch.tensor([0, 3, 1, 3, 4, 2, 1])
    losses, grads = [], []
    for batched in (False, True):
        loss = TETLoss(criterion, lamb=lamb, batched=batched)(out, target)
        losses.append(loss)
        grads.append(torch.autograd.grad(loss, out)[0])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-14, atol=0)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-16)


def test_training_tet_loss_is_batched_except_with_jsd():
    assert build_train_loss(_args("--TET"), mixup_active=False).batched
    assert build_train_loss(_args("--TET", "--smoothing", "0.1"), mixup_active=True).batched
    jsd = build_train_loss(_args("--TET", "--jsd", "--aug-splits", "2"), mixup_active=False)
    assert not jsd.batched and TETLoss(torch.nn.CrossEntropyLoss()).batched is False
