"""A few training steps lower the loss; a checkpoint round-trips; AMP steps run on the CPU."""
import contextlib

import pytest
import torch
from _engine_helpers import tiny_args

from engine.checkpoint import build_saver, load_initial_checkpoint, resume_checkpoint
from engine.distributed import init_distributed
from engine.loaders import build_loaders
from engine.loop import seed_epoch, train_one_epoch
from engine.losses import build_train_loss
from engine.model import build_model, prepare_model, resolve_model_args
from engine.optim import build_amp, build_optimizer


def _setup(args):
    init_distributed(args)
    resolve_model_args(args)
    seed_epoch(args, -1)
    model = prepare_model(args, build_model(args))
    return model, build_optimizer(args, model)


def test_steps_lower_loss_and_checkpoint_round_trips(tmp_path):
    args = tiny_args(tmp_path, "--smoothing", "0", "--lr", "1e-2")
    model, optimizer = _setup(args)
    loaders = build_loaders(args, model)
    loss_fn = build_train_loss(args, loaders.mixup_active)
    inputs, target = next(iter(loaders.train))
    model.train()
    losses = []
    for _ in range(10):
        loss = loss_fn(model(inputs), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses

    build_saver(args, model, optimizer, str(tmp_path)).save_checkpoint(epoch=4, metric=50.0)
    assert {p.name for p in tmp_path.iterdir()} >= {"last.pth.tar", "model_best.pth.tar", "checkpoint-4.pth.tar"}
    assert not (tmp_path / "tmp.pth.tar").exists()

    resumed_args = tiny_args(tmp_path, "--smoothing", "0", "--lr", "1e-2", "--resume", str(tmp_path / "last.pth.tar"))
    model2, optimizer2 = _setup(resumed_args)
    start_epoch, start_batch, checkpoint = resume_checkpoint(resumed_args, model2, optimizer2)
    assert start_epoch == 5 and start_batch == 0 and checkpoint["arch"] == "sdt" and checkpoint["args"].dim == 32
    for (name, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert optimizer2.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    model.eval(), model2.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), model2(inputs), rtol=0, atol=0)

    weights_args = tiny_args(tmp_path, "--initial-checkpoint", str(tmp_path / "model_best.pth.tar"))
    model3, _ = _setup(weights_args)
    load_initial_checkpoint(weights_args, model3)
    model3.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), model3(inputs), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_amp_epoch_on_cpu(tmp_path, dtype):
    args = tiny_args(tmp_path, "--amp", "--amp-dtype", dtype, "--clip-grad", "1.0")
    model, optimizer = _setup(args)
    amp = build_amp(args)
    assert (amp.loss_scaler is not None) == (dtype == "float16")
    batch = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    head_outputs = []
    model.head.register_forward_hook(lambda m, i, out: head_outputs.append(out.dtype))
    metrics = train_one_epoch(0, model, [batch, batch], optimizer, torch.nn.CrossEntropyLoss(), args, amp=amp)
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    assert head_outputs == [getattr(torch, dtype)] * 2  # the forward ran under autocast
    assert all(p.dtype == torch.float32 for p in model.parameters())  # fp32 master weights


def test_fused_optimizer_is_the_default_on_cuda_only_and_changes_no_number(tmp_path):
    """``--opt-fused`` resolves to on for CUDA with torch's Adam/AdamW/SGD; the fused AdamW update (run on the
    CPU here) gives the foreach update's parameters within rounding, on the same gradients."""
    from engine.errors import ConfigError
    from engine.optim import uses_fused_optimizer

    assert not uses_fused_optimizer(tiny_args(tmp_path, "--opt", "adamw"))  # CPU
    assert uses_fused_optimizer(tiny_args(tmp_path, "--opt", "adamw", "--device", "cpu", "--opt-fused"))
    cuda = tiny_args(tmp_path, "--opt", "adamw")
    for opt, expected in (("adamw", True), ("sgd", True), ("lookahead_adam", True), ("lamb", False)):
        cuda.opt, cuda.device = opt, "cuda"
        assert uses_fused_optimizer(cuda) is expected, opt
    with pytest.raises(ConfigError, match="--opt-fused: optimizer 'lamb' has no fused implementation"):
        uses_fused_optimizer(tiny_args(tmp_path, "--opt", "lamb", "--opt-fused"))

    runs = []
    for fused in ("--no-opt-fused", "--opt-fused"):
        args = tiny_args(tmp_path, "--opt", "adamw", "--lr", "1e-2", "--weight-decay", "0.05", fused)
        model, optimizer = _setup(args)
        assert bool(optimizer.defaults["fused"]) is (fused == "--opt-fused")
        generator = torch.Generator().manual_seed(0)
        for _ in range(3):  # the same gradients for both, so that only the update differs
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=generator)
            optimizer.step()
        runs.append(model.state_dict())
    for name, value in runs[0].items():
        torch.testing.assert_close(runs[1][name], value, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("force_cpu", [False, True])
def test_ema_on_the_cpu_is_not_validated_as_in_the_reference(tmp_path, force_cpu):
    """``--model-ema-force-cpu`` keeps the EMA on the CPU, and the reference then skipped its validation (on a GPU
    the CPU weights would meet CUDA inputs); the EMA weights are still saved."""
    from engine.run import run_training

    args = tiny_args(tmp_path, "--epochs", "1", "--cooldown-epochs", "0", "--model-ema", "--experiment", "ema",
                     *(["--model-ema-force-cpu"] if force_cpu else []))
    run_training(args)
    log = (tmp_path / "ema" / "train.log").read_text()
    assert ("(EMA)" in log) is not force_cpu
    assert "state_dict_ema" in torch.load(tmp_path / "ema" / "last.pth.tar", weights_only=False)


def test_agc_clipping_leaves_the_head_alone_as_timm_does(tmp_path):
    """``--clip-mode agc`` clips every parameter's gradient but the classifier head's (timm's train.py)."""
    from engine.loop import train_step
    from engine.optim import Amp

    grads = {}
    for mode in ("none", "agc"):
        flags = ["--clip-grad", "1e-4", "--clip-mode", "agc"] if mode == "agc" else []
        args = tiny_args(tmp_path, "--opt", "sgd", "--lr", "1e-9", "--weight-decay", "0", *flags)
        model, optimizer = _setup(args)
        torch.manual_seed(0)
        batch = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
        train_step(model, *batch, optimizer, torch.nn.CrossEntropyLoss(), args, Amp(contextlib.nullcontext))
        grads[mode] = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    for name in ("head.weight", "head.bias"):
        torch.testing.assert_close(grads["agc"][name], grads["none"][name], rtol=0, atol=0)
    clipped = [n for n in grads["none"] if not n.startswith("head.")
               and not torch.equal(grads["agc"][n], grads["none"][n])]
    assert clipped  # the other gradients were clipped


def test_validation_accuracy_is_an_exact_fraction(tmp_path):
    """342 of 360 right is 95.0 exactly (timm's per-batch float32 percentages gave 94.99999966)."""
    from engine.loop import validate
    from engine.optim import Amp

    class Fixed(torch.nn.Module):
        num_classes = 10

        def forward(self, x):
            return torch.nn.functional.one_hot(x[:, 0, 0, 0].long(), 10).float()

        def reset_neurons(self):
            pass

    labels = torch.arange(360) % 10
    predicted = labels.clone()
    predicted[-18:] = (predicted[-18:] + 1) % 10  # 18 wrong, in the short last batch: 86/104 is inexact in fp32
    images = predicted.float().view(-1, 1, 1, 1).expand(-1, 3, 4, 4)
    loader = [(images[i:i + 128], labels[i:i + 128]) for i in range(0, 360, 128)]  # 128, 128, 104
    args = tiny_args(tmp_path)
    init_distributed(args)
    metrics = validate(Fixed(), loader, torch.nn.CrossEntropyLoss(), args, amp=Amp(contextlib.nullcontext))
    assert metrics["top1"] == 95.0


def test_validation_loss_does_not_depend_on_the_batch_size(tmp_path):
    """Each batch's float32 mean loss, times its size, made eval_loss vary with -vb in the 8th digit (2.305144347 at
    -vb 256, 2.305144511 at -vb 64); the batch losses are now float64, so the mean is the float64 one to 1e-15."""
    from engine.loop import validate
    from engine.optim import Amp

    class Fixed(torch.nn.Module):
        num_classes = 10

        def forward(self, x):
            return x[:, 0, 0, :10] * 3

        def reset_neurons(self):
            pass

    images = torch.randn(360, 3, 1, 10, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(360) % 10
    expected = torch.nn.functional.cross_entropy((images[:, 0, 0] * 3).double(), labels).item()
    args = tiny_args(tmp_path)
    init_distributed(args)
    for size in (7, 128, 360):
        loader = [(images[i:i + size], labels[i:i + size]) for i in range(0, 360, size)]
        loss = validate(Fixed(), loader, torch.nn.CrossEntropyLoss(), args, amp=Amp(contextlib.nullcontext))["loss"]
        assert loss == pytest.approx(expected, rel=1e-14, abs=0), size


def test_the_epoch_s_training_loss_is_its_float64_mean(tmp_path):
    """train_loss was the float64 mean cut to float32 on its way out (a tensor of the default dtype)."""
    args = tiny_args(tmp_path)
    model, optimizer = _setup(args)
    batch = (torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,)))
    values = iter([0.1, 0.2])

    def loss_fn(output, target):
        return output.sum() * 0 + next(values)

    metrics = train_one_epoch(0, model, [batch, batch], optimizer, loss_fn, args, amp=build_amp(args))
    expected = (float(torch.tensor(0.1)) + float(torch.tensor(0.2))) / 2  # the float32 losses, averaged in float64
    assert metrics["loss"] == expected and metrics["loss"] != float(torch.tensor(expected))


def test_linear_prob_trains_everything_but_the_stem(tmp_path):
    """--linear-prob freezes the patch-embedding stem (parameters and optimizer), the rest trains."""
    args = tiny_args(tmp_path, "--linear-prob", "--lr", "1e-2")
    model, optimizer = _setup(args)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    batch = (torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    train_one_epoch(0, model, [batch, batch], optimizer, torch.nn.CrossEntropyLoss(), args, amp=build_amp(args))
    changed = {k for k, v in model.state_dict().items() if k in before and not torch.equal(v, before[k])}
    stem = {k for k in before if k.startswith("patch_embed.")}
    assert stem and not changed & stem and changed >= {"head.weight", "head.bias"}
    assert changed - stem - {"head.weight", "head.bias"}  # the blocks train too


@pytest.mark.parametrize("given, device, expected", [(None, "cuda", True), (None, "cuda:1", True), (None, "cpu", False),
                                                     (False, "cuda", False), (True, "cpu", True)])
def test_channels_last_is_on_by_default_only_on_cuda(given, device, expected):
    import argparse

    from engine.model import uses_channels_last

    assert uses_channels_last(argparse.Namespace(channels_last=given, device=device)) is expected


def test_resuming_with_another_worker_count_warns_on_static_images(tmp_path, caplog):
    """Static-image augmentation is drawn per data-loading worker: a run resumed with another -j is augmented
    otherwise than the uninterrupted one (train_loss 2.2808 at -j 0 against 2.3111 at -j 2), without a word."""
    import logging

    args = tiny_args(tmp_path, "-j", "2")
    model, optimizer = _setup(args)
    build_saver(args, model, optimizer, str(tmp_path)).save_checkpoint(epoch=0, metric=50.0)
    last = str(tmp_path / "last.pth.tar")
    for extra, warned in ((["-j", "2"], False), (["-j", "0"], True), (["-j", "0", "--dataset", "nmnist"], False)):
        resumed = tiny_args(tmp_path, *extra, "--resume", last)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
            resume_checkpoint(resumed, model, optimizer)
        assert (f"{last!r} was trained with -j 2, this run loads with -j 0: each data-loading worker draws the "
                f"augmentation of its batches" in caplog.text) is warned, caplog.text
