"""Data loaders: timm ``create_loader`` for static images, a plain ``DataLoader`` for event frames.

Static images go through timm's transforms (``RandomResizedCropAndInterpolation``, flips, RandAugment strings such
as ``rand-m9-n1-mstd0.4-inc1``, random erasing) and, unless ``--no-prefetcher``, its prefetcher, which normalises on
the device; mixup/CutMix is then done in the collate function (``FastCollateMixup``), otherwise by a ``Mixup``
returned to the training loop.  Event frames need no image transforms; their augmentation belongs to the dataset.

Workers are not persistent, so each epoch's augmentation depends only on the seed set at the start of that epoch
(see :func:`engine.loop.seed_epoch`) and a resumed run replays the same batches as an uninterrupted one.  The
exception is ``--use-multi-epochs-loader``: timm's ``MultiEpochsDataLoader`` keeps its workers for the whole run
(they are restarted only when mixup is turned off, see :meth:`Loaders.disable_mixup`).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from data import build_dataset, is_neuromorphic

from .errors import ConfigError

__all__ = ["Loaders", "allow_zero_bit_posterize", "build_loaders", "mixup_args", "set_loader_epoch"]

_logger = logging.getLogger(__name__)


@dataclass
class Loaders:
    """The loaders of one run.

    Attributes:
        train: training loader (None when built with ``train=False``).
        eval: validation loader.
        mixup_fn: timm ``Mixup`` to apply to each training batch in the loop, or None (no mixup, or mixup in the
            collate function).
        data_config: timm data config of the static images (input_size, mean, std, crop_pct, interpolation), or
            None for event frames.
        mixup_active: True if the training targets are soft (mixup/CutMix in the loop or in the collate function).
    """

    train: Any
    eval: Any
    mixup_fn: Any = None
    data_config: dict | None = None
    mixup_active: bool = False

    def disable_mixup(self) -> None:
        """Turn mixup/CutMix off (``--mixup-off-epoch``); targets stay soft, smoothed one-hot vectors.

        Call it at the start of an epoch, before the training loader is iterated: a ``MultiEpochsDataLoader``'s
        workers hold their own copies of the collate function, so they are restarted (from this epoch's seed).
        """
        if self.mixup_fn is not None:
            self.mixup_fn.mixup_enabled = False
        elif self.mixup_active and self.train.mixup_enabled:
            self.train.mixup_enabled = False
            _restart_workers(self.train)


def _restart_workers(loader: Any) -> None:
    """Make a (prefetched) timm ``MultiEpochsDataLoader`` start new workers at its next iteration."""
    from timm.data.loader import MultiEpochsDataLoader

    inner = getattr(loader, "loader", loader)  # PrefetchLoader wraps the DataLoader
    if isinstance(inner, MultiEpochsDataLoader):
        inner.iterator = None  # dropping the old iterator shuts its workers down


class EvalShard(Dataset):
    """This process's share of an evaluation set: samples ``rank, rank + world, ...``, without the padding that
    ``DistributedSampler`` (and timm's ``OrderedDistributedSampler``) adds to even the shares out, so that metrics
    summed over the processes count every sample exactly once.  ``transform`` is the wrapped dataset's."""

    def __init__(self, dataset: Dataset, rank: int, world_size: int):
        self.dataset, self.indices = dataset, range(rank, len(dataset), world_size)

    @property
    def transform(self):
        return self.dataset.transform

    @transform.setter
    def transform(self, value) -> None:
        self.dataset.transform = value

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.dataset[self.indices[index]]


def _eval_dataset(args: argparse.Namespace) -> Dataset:
    """The evaluation split, sharded over the processes when distributed (:class:`EvalShard`).

    Raises:
        ConfigError: an empty split, or fewer samples than processes (a process without samples would leave the
            others waiting).
    """
    dataset = build_dataset(args.dataset, args.data_dir, args.val_split, args)
    if len(dataset) == 0:
        raise ConfigError(f"the {args.val_split} split of {args.dataset} has no samples (a --dvs-split-ratio of 1, or "
                          f"close to it with few recordings per class, leaves none): give a lower ratio")
    if not args.distributed:
        return dataset
    if len(dataset) < args.world_size:
        raise ConfigError(f"the {args.val_split} split has {len(dataset)} samples for {args.world_size} processes: "
                          f"every process needs one; run with at most {len(dataset)} processes")
    return EvalShard(dataset, args.rank, args.world_size)


def _check_training_batches(args: argparse.Namespace, dataset: Dataset, drop_last: bool) -> None:
    """Refuse a training set whose epoch would have no batch: with ``drop_last`` (timm's training loader, or
    mixup on event frames) a process's share smaller than ``-b`` is dropped whole, and the run would train nothing.

    Raises:
        ConfigError: no batch per epoch; names the set's size, each process's share and ``-b``.
    """
    world = args.world_size if args.distributed else 1
    share = math.ceil(len(dataset) / world)  # DistributedSampler pads every share to this
    if share >= args.batch_size or (share > 0 and not drop_last):
        return
    where = f"the {args.train_split} split of {args.dataset}"
    if share == 0:
        raise ConfigError(f"{where} has no samples: check --data-dir and --train-split")
    count = f"{len(dataset)} samples" + (f", {share} per process over {world} processes" if world > 1 else "")
    raise ConfigError(f"{where} has {count}, fewer than -b/--batch-size {args.batch_size} (the batch of each "
                      f"process); the last short batch is dropped, so an epoch would train on nothing: give -b {share} "
                      f"or less")


def mixup_args(args: argparse.Namespace) -> dict | None:
    """Keyword arguments of timm ``Mixup`` / ``FastCollateMixup``, or None when mixup and CutMix are off."""
    if not (args.mixup > 0 or args.cutmix > 0 or args.cutmix_minmax is not None):
        return None
    return dict(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                label_smoothing=args.smoothing, num_classes=args.num_classes)


def pin_memory(args: argparse.Namespace) -> bool:
    """``--pin-mem``, or by default: pinned host memory when the batches go to a CUDA device."""
    return args.pin_mem if args.pin_mem is not None else torch.device(args.device).type == "cuda"


def _event_mixup(mix: dict):
    """timm's ``Mixup`` for event clips ``[B, T, C, H, W]``: timm cuts its CutMix box from axes 2 and 3 (here C
    and H, with the box drawn for H x W), so the clip is viewed as ``[B, T*C, H, W]``: the same H x W box at every
    step and polarity, and targets weighted by the box's true area.  (The reference cut the wrong axes.)"""
    from timm.data import Mixup

    class EventMixup(Mixup):
        def __call__(self, x, target):
            if x.dim() != 5:
                return super().__call__(x, target)
            b, t, c, h, w = x.shape
            mixed, target = super().__call__(x.reshape(b, t * c, h, w), target)
            return mixed.reshape(b, t, c, h, w), target

    return EventMixup(**mix)


def _dvs_loaders(args: argparse.Namespace, train: bool) -> Loaders:
    mix = mixup_args(args) if train else None

    def loader(dataset: Dataset, batch_size: int, is_training: bool) -> DataLoader:
        sampler = DistributedSampler(dataset, seed=args.seed) if args.distributed and is_training else None
        # The reference kept the last, short training batch; timm's Mixup needs an even one.
        return DataLoader(dataset, batch_size=batch_size, shuffle=is_training and sampler is None, sampler=sampler,
                          num_workers=args.workers, pin_memory=pin_memory(args),
                          drop_last=is_training and mix is not None)

    eval_loader = loader(_eval_dataset(args), args.val_batch_size, False)
    if not train:
        return Loaders(None, eval_loader)
    train_set = build_dataset(args.dataset, args.data_dir, args.train_split, args)
    _check_training_batches(args, train_set, drop_last=mix is not None)
    return Loaders(loader(train_set, args.batch_size, True), eval_loader, _event_mixup(mix) if mix else None,
                   mixup_active=mix is not None)


def _zero_bit_posterize(img, bits_to_keep, **kwargs):
    """Posterize that keeps 0 bits as older Pillow did (a black image); recent Pillow (13.0 here) raises instead."""
    from PIL import Image
    from timm.data.auto_augment import posterize

    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)
    return posterize(img, bits_to_keep, **kwargs)


def allow_zero_bit_posterize() -> None:
    """Make timm's RandAugment posterize ops accept 0 bits again.

    With ``inc1`` (e.g. the reference ``rand-m9-n1-mstd0.4-inc1``) magnitude 10 maps ``PosterizeIncreasing`` to 0 bits;
    timm passes that to Pillow, which now rejects it, so training crashed after a few hundred batches.
    Idempotent; affects only transforms built afterwards.
    """
    from timm.data import auto_augment

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        auto_augment.NAME_TO_OP[name] = _zero_bit_posterize


@contextlib.contextmanager
def _transform_flags() -> Iterator[None]:
    """Turn timm's asserts and lookups on transform settings (an unknown ``--aa`` policy, a data config that
    does not fit the input) into one :class:`ConfigError`."""
    try:
        yield
    except (AssertionError, KeyError, ValueError) as exc:
        raise ConfigError(f"the image transforms cannot be built from these flags (--aa, --input-size/--img-size, "
                          f"--in-channels, --mean/--std, --crop-pct, interpolation): {exc!r}") from None


def _static_loaders(args: argparse.Namespace, model: nn.Module | None, train: bool) -> Loaders:
    from timm.data import AugMixDataset, FastCollateMixup, Mixup, create_loader, resolve_data_config

    with _transform_flags():
        data_config = resolve_data_config(
            dict(img_size=args.img_size, input_size=args.input_size, in_chans=args.in_channels,
                 crop_pct=args.crop_pct, mean=args.mean, std=args.std, interpolation=args.interpolation), model=model)
    prefetch = not args.no_prefetcher
    common = dict(input_size=data_config["input_size"], mean=data_config["mean"], std=data_config["std"],
                  num_workers=args.workers, pin_memory=pin_memory(args), device=torch.device(args.device),
                  use_prefetcher=prefetch, persistent_workers=False)
    with _transform_flags():
        eval_loader = create_loader(_eval_dataset(args), batch_size=args.val_batch_size, is_training=False,
                                    interpolation=data_config["interpolation"], crop_pct=data_config["crop_pct"],
                                    distributed=False, **common)
    if not train:
        return Loaders(None, eval_loader, data_config=data_config)

    dataset_train = build_dataset(args.dataset, args.data_dir, args.train_split, args)
    _check_training_batches(args, dataset_train, drop_last=True)  # timm drops the last short training batch
    allow_zero_bit_posterize()
    if args.aug_splits > 1:
        dataset_train = AugMixDataset(dataset_train, num_splits=args.aug_splits)
    mix, collate_fn, mixup_fn = mixup_args(args), None, None
    if mix and prefetch and args.aug_splits == 0:
        collate_fn = FastCollateMixup(**mix)
    elif mix:
        mixup_fn = Mixup(**mix)
    train_interpolation = data_config["interpolation"] if args.no_aug or not args.train_interpolation \
        else args.train_interpolation
    with _transform_flags():
        train_loader = create_loader(
            dataset_train, batch_size=args.batch_size, is_training=True, no_aug=args.no_aug, re_prob=args.reprob,
            re_mode=args.remode, re_count=args.recount, re_split=args.resplit, scale=args.scale, ratio=args.ratio,
            hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter, auto_augment=args.aa,
            num_aug_splits=args.aug_splits, interpolation=train_interpolation, collate_fn=collate_fn,
            use_multi_epochs_loader=args.use_multi_epochs_loader, distributed=args.distributed, **common)
    if isinstance(train_loader.sampler, DistributedSampler):  # timm builds it with seed 0, whatever --seed is
        train_loader.sampler.seed = args.seed
    return Loaders(train_loader, eval_loader, mixup_fn, data_config, mixup_active=mix is not None)


def build_loaders(args: argparse.Namespace, model: nn.Module | None = None, train: bool = True) -> Loaders:
    """Build the validation loader and, with ``train``, the training loader and mixup.

    Args:
        args: parsed arguments (after :func:`engine.distributed.init_distributed` and
            :func:`engine.model.resolve_model_args`).
        model: the unwrapped model, whose timm ``pretrained_cfg`` fills data-config gaps (mean/std/crop) not given.
        train: also build the training loader.

    Raises:
        DatasetError: unknown dataset or missing files (before anything is written).
    """
    if is_neuromorphic(args.dataset):
        return _dvs_loaders(args, train)
    return _static_loaders(args, model, train)


def set_loader_epoch(loader: Any, epoch: int) -> None:
    """Tell a distributed sampler and an epoch-aware dataset which epoch it is.

    The sampler's shuffle depends on it; the event datasets seed their per-sample augmentation from
    (seed, epoch, index), so it does not depend on the number of workers.
    """
    for part in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)
