"""Checks of the run flags that the libraries would otherwise reject with a traceback, or only mid-run.

:func:`check_run_args` runs first in every setup (training and evaluation), before the process group, the model,
the data or any output folder, so a bad value is one :class:`~engine.errors.ConfigError` line and writes nothing.
"""
from __future__ import annotations

import argparse
import os

import torch

from .atomic import folder_unwritable, nearest_existing
from .errors import ConfigError

__all__ = ["SCHEDULERS", "INTERPOLATIONS", "check_device", "check_run_args"]

SCHEDULERS = ("cosine", "tanh", "step", "multistep", "plateau", "poly", "constant", "wsd", "rsqrt")
INTERPOLATIONS = ("", "random", "nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")


def check_device(device: str) -> None:
    """Raises :class:`ConfigError` unless ``--device`` is empty (auto), or a device type this machine has."""
    if not device:
        return
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise ConfigError(f"--device {device!r} is not a device; use cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {device!r}: CUDA is not available on this machine; use --device cpu, or leave "
                          "--device empty to pick CUDA when there is one")


def _check_output(output: str) -> None:
    """--output and the folders above it that exist are folders (the missing ones are created), and the run can
    create its folder there (the default root is under the current folder)."""
    path = nearest_existing(output or os.curdir)
    if not os.path.isdir(path):
        where = "is a file" if path == os.path.abspath(output) else f"is inside {path!r}, which is a file"
        raise ConfigError(f"--output {output!r} {where}; give a folder (it is created if missing)")
    if folder_unwritable(path):
        named = f"--output {output!r}: " if output else "the default output root is under the current folder, but "
        raise ConfigError(f"{named}{path} is not writable (a read-only file system, or not yours); give another "
                          f"--output")


def _check_ranges(args: argparse.Namespace, ranges: dict) -> None:
    """``ranges``: dest -> (flag, whether a value is valid, what to say); the first invalid value set is an error."""
    for dest, (flag, valid, why) in ranges.items():
        value = getattr(args, dest, None)
        if value is not None and not valid(value):
            raise ConfigError(f"{flag} {value} {why}")


def _check_positive(args: argparse.Namespace, names: dict[str, str]) -> None:
    _check_ranges(args, {dest: (flag, lambda v: v >= 1, "must be at least 1") for dest, flag in names.items()})


def _check_pair(args: argparse.Namespace, attr: str, flag: str, low: float = 0.0) -> None:
    value = getattr(args, attr, None)
    if value is None:
        return
    if len(value) != 2 or not low < value[0] <= value[1]:
        raise ConfigError(f"{flag} {' '.join(map(str, value))}: expected two values MIN MAX with "
                          f"{low} < MIN <= MAX")


def _input_channels(args: argparse.Namespace) -> int | None:
    return args.input_size[0] if getattr(args, "input_size", None) else getattr(args, "in_channels", None)


def _check_dataset(args: argparse.Namespace) -> None:
    """--dataset names a dataset (checked before anything that depends on its kind, such as the input channels)."""
    dataset = getattr(args, "dataset", None)
    if not dataset:
        return
    from data import unknown_dataset_message

    unknown = unknown_dataset_message(dataset)
    if unknown:
        raise ConfigError(f"--dataset: {unknown}")


def _check_input_channels(args: argparse.Namespace) -> None:
    """The data's channels: 2 for event frames (OFF, ON), 3 for images (grey datasets are loaded as RGB)."""
    dataset, channels = getattr(args, "dataset", None), _input_channels(args)
    if not dataset or channels is None:
        return
    from data import is_neuromorphic

    expected = 2 if is_neuromorphic(dataset) else 3
    if channels != expected:
        what = "event frames with 2 channels (OFF, ON)" if expected == 2 else "images with 3 channels (RGB)"
        flag = "--input-size" if getattr(args, "input_size", None) else "--in-channels"
        raise ConfigError(f"{flag}: the model is built for {channels} input channels but --dataset {dataset} gives "
                          f"{what}; use --in-channels {expected} (in_channels: {expected})")


def _check_normalisation(args: argparse.Namespace) -> None:
    channels = _input_channels(args)
    for flag, value in (("--mean", getattr(args, "mean", None)), ("--std", getattr(args, "std", None))):
        if value is None:
            continue
        if channels is not None and len(value) not in (1, channels):
            raise ConfigError(f"{flag} has {len(value)} values but the input has {channels} channels; give one "
                              "value per channel (or one for all)")
        if flag == "--std" and min(value) <= 0:
            raise ConfigError(f"--std {' '.join(map(str, value))}: every value must be positive")


def _check_training(args: argparse.Namespace) -> None:
    if getattr(args, "epochs", 1) < 1:  # timm's schedules assert on it
        raise ConfigError(f"--epochs {args.epochs}: training needs at least 1 epoch (to evaluate a checkpoint "
                          f"without training, use test.py or main.py --validate-only)")
    _check_positive(args, {"batch_size": "-b/--batch-size", "log_interval": "--log-interval",
                           "checkpoint_hist": "--checkpoint-hist"})
    _check_even_batch_for_mixup(args)
    if getattr(args, "sched", None) is not None and args.sched not in SCHEDULERS:
        raise ConfigError(f"--sched {args.sched!r} is not a scheduler; choose one of {SCHEDULERS}")
    if getattr(args, "sched", None) == "step" and getattr(args, "decay_epochs", 1) <= 0:
        raise ConfigError(f"--decay-epochs {args.decay_epochs} must be positive with --sched step (the LR decays "
                          "every --decay-epochs epochs)")
    _check_ranges(args, _TRAINING_RANGES)
    betas = getattr(args, "opt_betas", None)
    if betas is not None and (len(betas) != 2 or not all(0 <= b < 1 for b in betas)):
        raise ConfigError(f"--opt-betas {' '.join(map(str, betas))}: expected two values in [0, 1), e.g. 0.9 0.999")
    _check_pair(args, "scale", "--scale")
    _check_pair(args, "ratio", "--ratio")
    _check_schedule(args)
    _check_aug_splits(args)
    if getattr(args, "train_interpolation", "") not in INTERPOLATIONS:
        raise ConfigError(f"--train-interpolation {args.train_interpolation!r}: choose one of {INTERPOLATIONS[1:]}")


# dest -> (flag, the values it takes, what to say); among them the schedule values timm takes without a word and
# then trains on a negative LR or cuts the run short.
_TRAINING_RANGES = {
    "lr": ("--lr", lambda v: v > 0, "must be positive"),
    "start_epoch": ("--start-epoch", lambda v: v >= 0, "must be 0 or more"),
    "recovery_interval": ("--recovery-interval", lambda v: v >= 0, "must be 0 (off) or positive"),
    "smoothing": ("--smoothing", lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "warmup_lr": ("--warmup-lr", lambda v: v >= 0, "must be 0 or more"),
    "min_lr": ("--min-lr", lambda v: v >= 0, "must be 0 or more"),
    "warmup_epochs": ("--warmup-epochs", lambda v: v >= 0, "must be 0 or more"),
    "cooldown_epochs": ("--cooldown-epochs", lambda v: v >= 0, "must be 0 or more"),
    "decay_rate": ("--decay-rate", lambda v: v > 0, "must be positive (the factor the LR is multiplied by)"),
    "lr_cycle_mul": ("--lr-cycle-mul", lambda v: v > 0, "must be positive (each cycle's length over the last)"),
    "lr_cycle_limit": ("--lr-cycle-limit", lambda v: v >= 1, "must be at least 1 (the number of cycles)"),
    "patience_epochs": ("--patience-epochs", lambda v: v >= 0, "must be 0 or more"),
}
# with --lr-noise (timm draws the noise again until it falls within --lr-noise-pct: forever at 0)
_NOISE_RANGES = {
    "lr_noise_pct": ("--lr-noise-pct", lambda v: v > 0, "must be positive with --lr-noise (the noise is drawn again "
                                                        "until it is within this fraction)"),
    "lr_noise_std": ("--lr-noise-std", lambda v: v > 0, "must be positive with --lr-noise"),
}


def _check_schedule(args: argparse.Namespace) -> None:
    """The LR noise's and the EMA's values in range, the multistep milestones in order, rsqrt with a warmup."""
    if getattr(args, "lr_noise", None):
        _check_ranges(args, _NOISE_RANGES)
    decay = getattr(args, "model_ema_decay", None)
    if getattr(args, "model_ema", False) and decay is not None and not 0 <= decay <= 1:
        raise ConfigError(f"--model-ema-decay {decay} must be in [0, 1] (the weight the EMA keeps per step, e.g. "
                          f"0.9998)")
    sched = getattr(args, "sched", None)
    milestones = getattr(args, "decay_milestones", None) or []
    if sched == "multistep" and (min(milestones, default=1) < 1 or milestones != sorted(set(milestones))):
        raise ConfigError(f"--decay-milestones {' '.join(map(str, milestones))}: give distinct epochs from 1 on, in "
                          f"increasing order (each decays the LR once)")
    if sched == "rsqrt" and getattr(args, "warmup_epochs", 1) == 0:
        raise ConfigError("--sched rsqrt scales the LR by the warmup's length (timm's stable timescale): give "
                          "--warmup-epochs 1 or more")


def _mixes(args: argparse.Namespace) -> bool:
    from .loaders import mixup_args

    return mixup_args(args) is not None


def _check_even_batch_for_mixup(args: argparse.Namespace) -> None:
    """timm's mixup/CutMix pair each sample with the batch's mirror one and assert an even batch, mid-run."""
    batch_size = getattr(args, "batch_size", None)
    if batch_size is None or batch_size % 2 == 0 or not hasattr(args, "mixup") or not _mixes(args):
        return
    raise ConfigError(f"-b/--batch-size {batch_size} is odd, but mixup/CutMix (--mixup, --cutmix, --cutmix-minmax) "
                      f"pair the samples of a batch and need an even one: give -b {batch_size + 1}, or turn them off "
                      f"with --mixup 0 --cutmix 0 (and no --cutmix-minmax)")


def _check_aug_splits(args: argparse.Namespace) -> None:
    splits = getattr(args, "aug_splits", 0)
    if splits or getattr(args, "jsd", False):
        from data import is_neuromorphic

        if is_neuromorphic(getattr(args, "dataset", None) or ""):
            raise ConfigError(f"--aug-splits / --jsd need the augmented copies of each image that the static-image "
                              f"loader makes; the event frames of --dataset {args.dataset} have none (the JSD loss "
                              f"would compare different samples): drop --aug-splits and --jsd")
    if splits == 1 or splits < 0:
        raise ConfigError(f"--aug-splits {splits}: give 0 (off) or at least 2 (the clean batch plus augmented ones)")
    if splits >= 2 and getattr(args, "no_prefetcher", False):
        raise ConfigError("--aug-splits needs the prefetcher (it collates the splits); drop --no-prefetcher")
    if getattr(args, "jsd", False) and _mixes(args):
        raise ConfigError("--jsd needs hard labels, which mixup/CutMix replace with soft ones; add --mixup 0 "
                          "--cutmix 0 (the CIFAR configs set mixup: 0.5)")


def check_run_args(args: argparse.Namespace, train: bool) -> None:
    """Reject flag values that cannot make a run, each with one message naming the flag.

    Args:
        args: parsed arguments (training or evaluation parser; flags a parser lacks are not checked).
        train: also check the training-only flags (batch size, schedule, optimizer, augmentation).

    Raises:
        ConfigError: the first bad value.
    """
    check_device(getattr(args, "device", ""))
    _check_output(getattr(args, "output", ""))
    _check_positive(args, {"val_batch_size": "-vb/--val-batch-size"})
    if getattr(args, "seed", 0) < 0:
        raise ConfigError(f"--seed {args.seed}: a seed is a non-negative integer")
    if (getattr(args, "workers", None) or 0) < 0:
        raise ConfigError(f"-j/--workers {args.workers} is negative; give 0 (load in the main process) or the number "
                          "of data loading processes")
    if getattr(args, "interpolation", "") not in INTERPOLATIONS:
        raise ConfigError(f"--interpolation {args.interpolation!r}: choose one of {INTERPOLATIONS}")
    crop_pct = getattr(args, "crop_pct", None)
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise ConfigError(f"--crop-pct {crop_pct}: the evaluation's centre crop is a fraction of the resized image, "
                          f"in (0, 1] (e.g. 0.875; a percentage such as 95 is 0.95)")
    _check_dataset(args)
    _check_input_channels(args)
    _check_normalisation(args)
    if train:
        _check_training(args)
