"""Edge numbers of the engine: the strict early-exit threshold, the time-averaged TET logits of validation and of
test.py/firing_num.py, and the first epoch without mixup."""
import argparse
import contextlib
import math
import types

import pytest
import torch
from _engine_helpers import TINY_FLAGS, tiny_args

from engine.distributed import init_distributed
from engine.early_exit import exit_decisions, exit_scores


def test_confidence_equal_to_the_threshold_does_not_exit():
    """SEENN-I / ASTER exit at the first t whose score *exceeds* the threshold (reference: "metric > threshold").
    Step-0 logits [0, 0] give a softmax confidence of exactly 0.5: at threshold 0.5 the sample runs on to t = 2
    and predicts the argmax of the sum [0, 1], class 1; just below 0.5 it exits at t = 1 (the tie's argmax, 0)."""
    logits = torch.tensor([[[0.0, 0.0]], [[0.0, 1.0]]])  # [T=2, B=1, C=2]
    scores, cumulative = exit_scores(logits, "confidence")
    assert scores[0].item() == 0.5
    steps, predictions = exit_decisions(scores, cumulative, 0.5)
    assert (steps.tolist(), predictions.tolist()) == ([2], [1])
    steps, predictions = exit_decisions(scores, cumulative, 0.4999)
    assert (steps.tolist(), predictions.tolist()) == ([1], [0])


class _PerStepLogits(torch.nn.Module):
    """A TET "model" whose input [B, T, C] is its per-step logits: it returns them as [T, B, C]."""

    num_classes = 2

    def forward(self, x):
        return x.transpose(0, 1)

    def reset_neurons(self):
        pass


def test_validation_loss_of_a_tet_model_is_the_cross_entropy_of_the_time_mean(tmp_path):
    """Per-step logits [2, 0] then [0, 0] average to [1, 0]: the loss of target 0 is ln(1 + e^-1) = 0.3133, of
    target 1 ln(1 + e) = 1.3133, mean 0.8133 (the sum over steps, [2, 0], would give 1.1269); top-1 is 1 of 2."""
    from engine.loop import validate
    from engine.optim import Amp

    per_step = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # [T, C]
    inputs = per_step.expand(2, 2, 2).clone()  # [B, T, C]: both samples have the same logits
    targets = torch.tensor([0, 1])
    args = tiny_args(tmp_path)
    init_distributed(args)
    metrics = validate(_PerStepLogits(), [(inputs, targets)], torch.nn.CrossEntropyLoss(), args,
                       amp=Amp(contextlib.nullcontext))
    expected = (math.log1p(math.exp(-1)) + math.log1p(math.exp(1))) / 2
    assert metrics["loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["loss"] != pytest.approx((math.log1p(math.exp(-2)) + math.log1p(math.exp(2))) / 2, rel=1e-3)
    assert (metrics["top1"], metrics["top5"]) == (50.0, 100.0)


def test_evaluation_accuracy_of_a_tet_model_is_that_of_the_time_mean(tmp_path, monkeypatch):
    """test.py/firing_num.py with T = 3: the model's per-step logits are replaced by 2 * onehot(y) at steps 0 and 1,
    then c * onehot(y + 1) at step 2 with c = 3 for even positions of the batch, 5 for odd ones.  The time mean
    gives y 4/3 against 1 (right) or 5/3 (wrong): 180 of the 360 images right, top-1 50%; the last step alone is
    always wrong (0%).  The model itself still runs (firing rates, energy)."""
    import engine.evaluate
    import engine.loop
    from engine.args import get_args_parser
    from engine.config import parse_args
    from engine.evaluate import add_eval_arguments, run_evaluation

    T, batch_target = 3, {}

    def per_step_logits(target):
        y = torch.nn.functional.one_hot(target, 10).float()
        y_next = torch.nn.functional.one_hot((target + 1) % 10, 10).float()
        last = torch.where(torch.arange(target.numel())[:, None] % 2 == 0, 3.0, 5.0) * y_next
        return torch.stack([2 * y, 2 * y, last])

    real_to_device, real_configure = engine.loop._to_device, engine.evaluate._configure_model

    def to_device(inputs, target, args):
        inputs, target = real_to_device(inputs, target, args)
        batch_target["target"] = target
        return inputs, target

    def configure_model(args, model):
        real_configure(args, model)
        real_forward = model.forward

        def forward(inputs, hook=None):
            output, hook = real_forward(inputs, hook=hook)
            assert output.shape[0] == T  # per-step logits: --TET
            return per_step_logits(batch_target["target"]).to(output.dtype), hook

        model.forward = forward

    monkeypatch.setattr(engine.loop, "_to_device", to_device)
    monkeypatch.setattr(engine.evaluate, "_configure_model", configure_model)

    # the data: the time mean and the last step disagree, and so do their accuracies
    target = torch.arange(360) % 10
    logits = per_step_logits(target)
    assert (logits.mean(0).argmax(-1) != logits[-1].argmax(-1)).any()
    mean_top1 = 100 * (logits.mean(0).argmax(-1) == target).double().mean().item()
    assert (mean_top1, 100 * (logits[-1].argmax(-1) == target).double().mean().item()) == (50.0, 0.0)

    parser = add_eval_arguments(argparse.ArgumentParser(parents=[get_args_parser()]))
    args = parse_args(parser, [*TINY_FLAGS, "--time-steps", str(T), "--TET", "-vb", "360",
                               "--output", str(tmp_path / "valid")])
    result = run_evaluation(args, parser)
    assert result["samples"] == 360
    assert (result["top1"], result["top5"]) == (50.0, 100.0)


def test_mixup_is_off_from_the_mixup_off_epoch_itself(tmp_path, monkeypatch):
    """--mixup-off-epoch 1 (0-based epochs, as timm's train.py: ``if epoch >= mixup_off_epoch``): the training
    loop's epoch 0 mixes, epochs 1 and 2 do not."""
    from timm.data import Mixup

    import engine.run
    from engine.loaders import Loaders
    from engine.optim import build_amp

    enabled = []
    monkeypatch.setattr(engine.run, "train_one_epoch",
                        lambda epoch, *args, mixup_fn, **kwargs: enabled.append(mixup_fn.mixup_enabled) or {})
    monkeypatch.setattr(engine.run, "validate", lambda *args, **kwargs: {"top1": 1.0})
    args = tiny_args(tmp_path, "--epochs", "3", "--mixup", "1", "--mixup-off-epoch", "1")
    init_distributed(args)
    model = torch.nn.Linear(2, 2)
    loaders = Loaders(train=[], eval=[], mixup_fn=Mixup(mixup_alpha=1.0, num_classes=10), mixup_active=True)
    setup = engine.run.TrainingSetup(
        model=model, model_ema=None, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), amp=build_amp(args),
        loaders=loaders, train_loss_fn=None, eval_loss_fn=None,
        lr_scheduler=types.SimpleNamespace(step=lambda *args: None), num_epochs=3, start_epoch=0, checkpoint=None)
    engine.run._train_epochs(args, setup, None, None)
    assert enabled == [True, False, False]
