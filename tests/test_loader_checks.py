"""Data set-ups that used to go wrong silently or mid-run: a batch larger than the training set, an odd batch with
mixup, --mixup-off-epoch with long-lived workers, concurrent --download, a head larger than the labels, -j -1."""
import logging
import re
import threading
import time
from pathlib import Path

import pytest
import torch
from _engine_helpers import TINY_FLAGS, tiny_args

from engine.errors import ConfigError
from engine.loaders import build_loaders
from engine.loop import seed_epoch
from engine.model import resolve_model_args
from engine.run import cli_main, run_training
from train import make_parser

DIGITS_TRAIN = 1437  # 80% of scikit-learn's 1,797 digits


@pytest.mark.parametrize("flags, message", [
    (["-b", "2048"], rf"train split of digits has {DIGITS_TRAIN} samples, fewer than -b/--batch-size 2048 .*"
                     rf"give -b {DIGITS_TRAIN} or less"),
    (["-b", "127", "--mixup", "0.5"], r"-b/--batch-size 127 is odd, but mixup/CutMix .* give -b 128"),
    (["-b", "63", "--cutmix-minmax", "0.2", "0.8"], r"-b/--batch-size 63 is odd"),
])
def test_unusable_batch_size_is_one_line_before_anything_is_written(tmp_path, capfd, flags, message):
    argv = [*TINY_FLAGS, "--output", str(tmp_path / "out"), "--epochs", "1", "--cooldown-epochs", "0", *flags]
    status = cli_main(make_parser, run_training, argv)
    err = capfd.readouterr().err
    error_lines = [line for line in err.splitlines() if " ERROR: " in line]
    assert status == 2 and len(error_lines) == 1 and "Traceback" not in err, err
    assert re.search(message, error_lines[0]), error_lines[0]
    assert not (tmp_path / "out").exists()


def test_batch_larger_than_a_process_share_is_refused(tmp_path):
    """Under DDP each process gets ceil(N / world) samples; -b is per process."""
    args = tiny_args(tmp_path, "-b", "720")
    args.distributed, args.world_size, args.rank = True, 2, 0
    resolve_model_args(args)
    with pytest.raises(ConfigError, match=rf"{DIGITS_TRAIN} samples, 719 per process over 2 processes, fewer than "
                                          r"-b/--batch-size 720 \(the batch of each process\).*give -b 719 or less"):
        build_loaders(args)


def _epoch_targets(args, loaders, epoch: int) -> list[torch.Tensor]:
    seed_epoch(args, epoch)
    if epoch >= args.mixup_off_epoch:
        loaders.disable_mixup()
    return [target for _, target in loaders.train]


def test_mixup_off_epoch_reaches_the_workers_of_the_multi_epochs_loader(tmp_path):
    """The workers of timm's MultiEpochsDataLoader live across epochs with their own copy of the collate function;
    turning mixup off restarts them, from the epoch's seed, as a run resumed at that epoch starts them."""
    args = tiny_args(tmp_path, "-b", "256", "-j", "1", "--use-multi-epochs-loader", "--mixup", "1",
                     "--mixup-prob", "1", "--mixup-off-epoch", "1", "--smoothing", "0.1")
    args.distributed, args.rank = False, 0
    resolve_model_args(args)
    loaders = build_loaders(args)
    mixed = _epoch_targets(args, loaders, 0)
    assert min(float(t.max()) for t in torch.cat(mixed)) < 0.9  # mixed targets
    plain = _epoch_targets(args, loaders, 1)
    assert all(float(t.max()) == pytest.approx(0.91) for t in torch.cat(plain))  # smoothed one-hot only

    resumed = _epoch_targets(args, build_loaders(args), 1)
    assert all(torch.equal(a, b) for a, b in zip(plain, resumed, strict=True))


class _FakeDownload:
    """Stands for a torchvision dataset class: ``download=True`` fetches (slowly) unless the files are there."""

    downloads, busy, overlapped = 0, False, False

    def __init__(self, root, train, download):
        cls, root = type(self), Path(root)
        if download and not cls.done(root):
            cls.overlapped |= cls.busy
            cls.busy = True
            time.sleep(0.3)
            cls.write(root)
            cls.downloads, cls.busy = cls.downloads + 1, False
        self.targets = list(range(10))


class _FakeCIFAR10(_FakeDownload):
    downloads, busy, overlapped = 0, False, False

    @staticmethod
    def done(root):
        return (root / "cifar-10-batches-py").is_dir()

    @staticmethod
    def write(root):
        (root / "cifar-10-batches-py").mkdir()


class _FakeMNIST(_FakeDownload):
    downloads, busy, overlapped = 0, False, False
    raw = ("MNIST", "raw")

    @classmethod
    def done(cls, root):
        return root.joinpath(*cls.raw, "train-labels-idx1-ubyte").is_file()

    @classmethod
    def write(cls, root):
        folder = root.joinpath(*cls.raw)
        folder.mkdir(parents=True)
        (folder / "train-images-idx3-ubyte").write_bytes(bytes([0, 0, 8, 3]) + b"".join(
            n.to_bytes(4, "big") for n in (10, 28, 28)) + bytes(10 * 28 * 28))
        labels = bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + bytes(range(10))
        (folder / "train-labels-idx1-ubyte").write_bytes(labels)


@pytest.mark.parametrize("dataset, fake", [("torch/cifar10", _FakeCIFAR10), ("mnist", _FakeMNIST)])
def test_processes_sharing_a_root_download_once(tmp_path, monkeypatch, dataset, fake):
    """DDP ranks build their datasets at the same time; with --download only one of them may fetch the archive."""
    import torchvision.datasets

    from data.static import build_static_dataset

    monkeypatch.setattr(torchvision.datasets, fake.__name__[len("_Fake"):], fake)
    args = tiny_args(tmp_path, "--download")
    errors = []

    def build():
        try:
            build_static_dataset(dataset, str(tmp_path), "train", "train", args)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and fake.downloads == 1 and not fake.overlapped


def test_head_larger_than_the_labels_is_a_warning(tmp_path, caplog):
    from data.static import build_static_dataset

    caplog.set_level(logging.WARNING, logger="data.static")
    build_static_dataset("digits", "", "val", "val", tiny_args(tmp_path, "--num-classes", "12"))
    assert re.search(r"--num-classes is 12 but digits has 10 classes .*set --num-classes 10", caplog.text)
    caplog.clear()
    build_static_dataset("digits", "", "val", "val", tiny_args(tmp_path, "--num-classes", "10"))
    assert not caplog.text


def test_distributed_training_order_follows_the_seed(tmp_path):
    """timm's create_loader builds its DistributedSampler with seed 0: every --seed shuffled alike on 2+ GPUs."""
    import torch.distributed as dist
    from _engine_helpers import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        orders = []
        for seed in ("1", "2"):
            args = tiny_args(tmp_path, "--seed", seed)
            args.distributed, args.world_size, args.rank = True, 1, 0
            resolve_model_args(args)
            sampler = build_loaders(args).train.sampler
            assert sampler.seed == int(seed)
            orders.append(list(sampler))
        assert orders[0] != orders[1]
    finally:
        dist.destroy_process_group()


def test_an_odd_batch_without_mixing_is_accepted(tmp_path):
    from engine.validate import check_run_args

    check_run_args(tiny_args(tmp_path, "-b", "63", "--mixup", "0", "--cutmix", "0"), True)


@pytest.mark.parametrize("train", [True, False])
def test_negative_workers_is_refused_before_the_loaders(tmp_path, train):
    """-j -1 reached the loaders: a misleading transform error (images) or DataLoader's ValueError (event frames)."""
    from engine.validate import check_run_args

    with pytest.raises(ConfigError, match=r"^-j/--workers -1 is negative; give 0 \(load in the main process\)"):
        check_run_args(tiny_args(tmp_path, "-j", "-1"), train)


@pytest.mark.parametrize("train", [True, False])
def test_a_negative_seed_is_refused_before_the_run(tmp_path, train):
    """--seed -1 was NumPy's 'Seed must be between 0 and 2**32 - 1' traceback during setup."""
    from engine.validate import check_run_args

    with pytest.raises(ConfigError, match=r"^--seed -1: a seed is a non-negative integer$"):
        check_run_args(tiny_args(tmp_path, "--seed", "-1"), train)


def test_epoch_seeds_are_distinct_streams_for_any_seed(tmp_path):
    """The epoch seed was seed + 1000 * (epoch + 1) + rank: --seed 1000 replayed --seed 0 an epoch later, rank 1 of
    --seed 0 was rank 0 of --seed 1, and --seed 4294000000 crashed NumPy at epoch 966.  Each (seed, epoch, rank)
    now draws its own stream, and the same triple the same one."""
    import numpy as np

    args = tiny_args(tmp_path)

    def draws(seed, epoch, rank):
        args.seed, args.rank = seed, rank
        seed_epoch(args, epoch)
        return torch.rand(3).tolist(), np.random.rand(3).tolist()

    assert draws(1000, 0, 0) != draws(0, 1, 0) and draws(0, 0, 1) != draws(1, 0, 0)
    assert draws(0, 0, 0) != draws(0, 1, 0) != draws(0, 0, 1)
    assert draws(4294000000, 966, 0) == draws(4294000000, 966, 0)
    assert draws(2**40, 0, 0) != draws(0, 0, 0)


@pytest.mark.parametrize("crop_pct", ["-0.5", "0", "3", "95", "nan"])
def test_a_crop_fraction_outside_zero_to_one_is_refused(tmp_path, crop_pct):
    """--crop-pct -0.5 crashed at the first validation (a PIL traceback after an epoch of training); 3 or 95 (a
    percentage) evaluated a small image padded with zeros, and 0 became timm's 0.875, all without a word."""
    from engine.validate import check_run_args

    for train in (True, False):
        with pytest.raises(ConfigError, match=rf"^--crop-pct {crop_pct}\.?0?: the evaluation's centre crop is a "
                                              r"fraction of the resized image, in \(0, 1\]"):
            check_run_args(tiny_args(tmp_path, "--crop-pct", crop_pct), train)
    check_run_args(tiny_args(tmp_path, "--crop-pct", "0.875"), True)


@pytest.mark.parametrize("flags", [["--aug-splits", "2"], ["--jsd"], ["--aug-splits", "3", "--jsd"]])
def test_augmentation_splits_and_jsd_are_refused_on_event_data(tmp_path, flags):
    """The event loader makes no augmented copies: with --jsd the JSD loss split an ordinary batch in half, so the
    cross-entropy saw half the labels and the divergence pulled different samples together."""
    from engine.validate import check_run_args

    args = tiny_args(tmp_path, "--dataset", "nmnist", "--in-channels", "2", "--mean", "0.3", "--std", "0.3",
                      "--mixup", "0", "--cutmix", "0", *flags)
    with pytest.raises(ConfigError, match=r"^--aug-splits / --jsd need the augmented copies .* --dataset nmnist"):
        check_run_args(args, True)


def test_static_image_flags_on_event_data_are_warned_about(caplog):
    """--reprob, --aa, --mean/--std, ... never reach the event frames: one warning names those set."""
    from engine.args import get_args_parser
    from engine.config import parse_args, warn_inert_flags

    parser = get_args_parser()
    args = parse_args(parser, ["--dataset", "nmnist", "--reprob", "0.5", "--mean", "0.5", "--std", "0.2",
                               "--hflip", "0.5"])
    with caplog.at_level(logging.WARNING, logger="engine.config"):
        warn_inert_flags(args, parser)
        parse_args(parser, ["--dataset", "nmnist", "--aa", "rand-m9-n1"])
        warn_inert_flags(parser.parse_args(["--dataset", "nmnist", "--aa", "rand-m9-n1"]), parser)
        warn_inert_flags(parser.parse_args(["--dataset", "digits", "--reprob", "0.5"]), parser)
    assert [r.getMessage() for r in caplog.records] == [
        "--reprob, --mean, --std have no effect on the event frames of --dataset nmnist (static-image transforms); "
        "their augmentation flags are --dvs-flip-roll, --dvs-aug and --dvs-trival-aug (mixup and CutMix apply to "
        "them too)",
        "--aa has no effect on the event frames of --dataset nmnist (static-image transforms); their augmentation "
        "flags are --dvs-flip-roll, --dvs-aug and --dvs-trival-aug (mixup and CutMix apply to them too)"]


@pytest.mark.parametrize("flags, message", [
    (["--lr-noise", "0.5", "--lr-noise-pct", "0"], "--lr-noise-pct 0.0 must be positive with --lr-noise"),
    (["--lr-noise", "0.5", "--lr-noise-std", "-1"], "--lr-noise-std -1.0 must be positive with --lr-noise"),
    (["--model-ema", "--model-ema-decay", "1.5"], r"--model-ema-decay 1.5 must be in \[0, 1\]"),
    (["--warmup-lr", "-1", "--warmup-epochs", "1"], "--warmup-lr -1.0 must be 0 or more"),
    (["--min-lr", "-1"], "--min-lr -1.0 must be 0 or more"),
    (["--warmup-epochs", "-2"], "--warmup-epochs -2 must be 0 or more"),
    (["--cooldown-epochs", "-1"], "--cooldown-epochs -1 must be 0 or more"),
    (["--decay-rate", "0"], "--decay-rate 0.0 must be positive"),
    (["--lr-cycle-mul", "0"], "--lr-cycle-mul 0.0 must be positive"),
    (["--lr-cycle-limit", "0"], "--lr-cycle-limit 0 must be at least 1"),
    (["--sched", "multistep", "--decay-milestones", "3", "1"], "--decay-milestones 3 1: give distinct epochs"),
    (["--sched", "multistep", "--decay-milestones", "2", "2"], "--decay-milestones 2 2: give distinct epochs"),
    (["--sched", "rsqrt", "--warmup-epochs", "0"], "--sched rsqrt scales the LR by the warmup's length"),
])
def test_schedule_and_ema_values_timm_takes_silently_are_refused(tmp_path, flags, message):
    """timm took these and then looped forever (noise within 0 %), trained on a negative LR, let the EMA diverge
    (eval loss 739 after one epoch at decay 1.5), decayed twice at unsorted milestones, cut the run short (negative
    cooldown) or failed after the first epoch (cycle multiplier 0: math domain error)."""
    from engine.validate import check_run_args

    with pytest.raises(ConfigError, match="^" + message):
        check_run_args(tiny_args(tmp_path, *flags), True)
    check_run_args(tiny_args(tmp_path, "--lr-noise-pct", "0", "--model-ema-decay", "1.5", "--sched", "cosine",
                             "--decay-milestones", "3", "1"), True)  # inert without --lr-noise, --model-ema, multistep


def test_a_timm_assertion_on_the_schedule_is_a_config_error(tmp_path):
    """timm asserts on some schedule values (a negative --min-lr in its cosine schedule): a bare AssertionError
    traceback; any assertion of the scheduler's constructor is one error naming --sched."""
    from engine.optim import build_scheduler

    args = tiny_args(tmp_path)
    args.min_lr = -1.0  # past the command-line check, as a caller building its own arguments could
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match=r"^--sched cosine: the schedule flags do not fit"):
        build_scheduler(args, optimizer, updates_per_epoch=1)


@pytest.mark.parametrize("flags", [["--torchcompile"], ["--torchcompile-mode", "reduce-overhead"]])
def test_compile_flags_in_an_evaluation_are_warned_about(tmp_path, caplog, flags):
    """test.py, firing_num.py and main.py --validate-only took --torchcompile (recorded in args.yaml) and evaluated
    eagerly without a word; a mode without --torchcompile, an error in train.py, passed silently too."""
    from engine.run import setup_evaluation

    with caplog.at_level(logging.WARNING, logger="engine.run"):
        setup_evaluation(tiny_args(tmp_path, *flags))
    assert [r.getMessage() for r in caplog.records if r.name == "engine.run"] == [
        f"{flags[0]}: no effect on evaluation, which runs the model without torch.compile (only training compiles it)"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engine.run"):
        setup_evaluation(tiny_args(tmp_path))
    assert not [r for r in caplog.records if r.name == "engine.run"]
