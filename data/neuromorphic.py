"""Neuromorphic datasets (CIFAR10-DVS, DVS128 Gesture, N-Caltech101, N-MNIST, TET's CIFAR10-DVS) for the engine.

The engine calls :func:`build_dvs_dataset` for ``args.dataset in DVS_DATASETS``; items are
``(float32 frames [T, 2, H, W], int label)`` so the model receives ``[B, T, 2, H, W]``. A thin layer over
spikingjelly 2.0's readers (imported lazily, only here and only when a dataset must be built): raw files are
converted into spikingjelly's ``events_np`` layout and integrated into ``frames_number_<T>_split_by_number``
(``split_by='number'``, as the reference), offline and crash-safe (``data.dvs_build``); splits are saved and reused
(``data.splits``); the reference's augmentations run per sample (``data.dvs_augment``). See docs/datasets.md.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .dvs_args import DVS_ARG_DEFAULTS, SPLIT_MODES, add_dvs_arguments
from .dvs_augment import DVSTrainTransform, sample_generator
from .dvs_build import read_npz
from .dvs_raw import CIFAR10_DVS_CLASSES, GESTURE_CLASSES, GESTURE_FOLDERS, NMNIST_DIGITS, DVSConfigError, \
    DVSDataError, listdir_sorted
from .splits import load_or_create_split
from .static import check_class_count

_logger = logging.getLogger(__name__)

__all__ = ["DVS_DATASETS", "DVSInfo", "DVS_INFO", "NUM_CLASSES", "DEFAULT_IMG_SIZE", "DVSDataError", "DVSConfigError",
           "DVSFrameDataset", "TETCifar10DVS", "build_dvs_dataset", "add_dvs_arguments", "dataset_info",
           "DVS_ARG_DEFAULTS", "SPLIT_MODES"]

DVS_DATASETS = ("cifar10-dvs", "cifar10-dvs-tet", "gesture", "ncaltech101", "nmnist")


@dataclass(frozen=True)
class DVSInfo:
    """Static facts about one dataset.

    Attributes:
        num_classes: classes the model must output.
        sensor_size: (H, W) of the integrated frames before resizing.
        img_size: the configs' default model input size (frames are resized to it as the reference does).
        interpolation: resize mode ("bilinear": torchvision ``Resize`` on tensors without antialiasing, as in the
            torchvision releases the reference ran on; "nearest": STAtten's N-Caltech101 loader).
        split: "ratio" (no official split; ``--dvs-split`` applies) or "official" (fixed train/test).
    """
    num_classes: int
    sensor_size: tuple[int, int]
    img_size: int
    interpolation: str
    split: str


DVS_INFO = {
    "cifar10-dvs": DVSInfo(10, (128, 128), 64, "bilinear", "ratio"),
    "cifar10-dvs-tet": DVSInfo(10, (128, 128), 64, "bilinear", "official"),
    "gesture": DVSInfo(11, (128, 128), 128, "bilinear", "official"),
    "ncaltech101": DVSInfo(101, (180, 240), 64, "nearest", "ratio"),
    "nmnist": DVSInfo(10, (34, 34), 34, "bilinear", "official"),
}
NUM_CLASSES = {name: info.num_classes for name, info in DVS_INFO.items()}
DEFAULT_IMG_SIZE = {name: info.img_size for name, info in DVS_INFO.items()}


def dataset_info(name: str) -> DVSInfo:
    if name not in DVS_INFO:
        raise DVSConfigError(f"unknown DVS dataset {name!r}; choose one of {DVS_DATASETS}")
    return DVS_INFO[name]


# --------------------------------------------------------------------------------------------- datasets
def _resize(frames: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(frames.shape[-2:]) == size:
        return frames
    if mode == "nearest":
        return torch.nn.functional.interpolate(frames, size=size, mode="nearest")
    return torch.nn.functional.interpolate(frames, size=size, mode="bilinear", align_corners=False, antialias=False)


class DVSFrameDataset(Dataset):
    """Integrated event frames from ``.npz`` files (key ``frames``), resized and optionally augmented.

    Args:
        files: frame file per sample.
        targets: label per sample (from the folder names, no sample is loaded to get it).
        classes: class names, ``classes[label]``.
        img_size: output (H, W).
        interpolation: "bilinear" or "nearest".
        transform: training augmentation (``DVSTrainTransform``) or None.
        seed: with :meth:`set_epoch`, sample ``i`` of epoch ``e`` is augmented from ``(seed, e, i)`` only.
        sample_ids: names of the samples (for logs and the split file).
    """

    def __init__(self, files: list[str], targets: list[int], classes: list[str], img_size: tuple[int, int],
                 interpolation: str = "bilinear", transform: DVSTrainTransform | None = None, seed: int = 0,
                 sample_ids: list[str] | None = None):
        self.files = [str(f) for f in files]
        self.targets = [int(t) for t in targets]
        self.classes = list(classes)
        self.img_size = tuple(img_size)
        self.interpolation = interpolation
        self.transform = transform or None
        self.seed = seed
        self.epoch: int | None = None
        self.sample_ids = list(sample_ids) if sample_ids is not None else None

    def __len__(self) -> int:
        return len(self.files)

    def set_epoch(self, epoch: int) -> None:
        """Make the augmentation of every sample a function of ``(seed, epoch, index)``. Without it, augmentation
        draws from torch's global generator (which DataLoader seeds per worker)."""
        self.epoch = int(epoch)

    def load_frames(self, index: int) -> torch.Tensor:
        frames = read_npz(self.files[index], ("frames",))["frames"]
        return torch.from_numpy(np.asarray(frames, dtype=np.float32))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        frames = _resize(self.load_frames(index), self.img_size, self.interpolation)
        if self.transform is not None:
            generator = None if self.epoch is None else sample_generator(self.seed, self.epoch, index)
            frames = self.transform(frames, generator)
        return frames.contiguous(), self.targets[index]

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({len(self)} samples, {len(self.classes)} classes, img_size={self.img_size}, "
                f"interpolation={self.interpolation}, transform={self.transform})")


class TETCifar10DVS(DVSFrameDataset):
    """SDT's ``cifar10-dvs-tet``: ``<root>/{train,test}/<i>.pt`` files holding ``(data [C, H, W, T], target)``.

    Frames are resized per step to ``img_size`` bilinearly on tensors (the reference went through an 8-bit PIL
    image). Labels are read lazily from the files (``targets`` is None until :meth:`load_targets`: each file holds
    a whole sample), and each is checked against ``num_classes`` as it is read.
    """

    def __init__(self, files: list[str], img_size: tuple[int, int], transform=None, seed: int = 0,
                 num_classes: int | None = None):
        super().__init__(files, [], [str(c) for c in CIFAR10_DVS_CLASSES], img_size, "bilinear", transform, seed)
        self.targets = None
        self.num_classes = num_classes

    def _load(self, index: int):
        data, target = torch.load(self.files[index], weights_only=True)
        target = int(torch.as_tensor(target).long().reshape(-1)[0])
        if self.num_classes is not None and not 0 <= target < self.num_classes:
            raise DVSConfigError(f"cifar10-dvs-tet: {self.files[index]} holds label {target} but num_classes="
                                 f"{self.num_classes}; the CIFAR10-DVS labels are 0..9: replace the file, or set "
                                 f"--num-classes {target + 1} (or more) if the labels are meant")
        return data, target

    def load_targets(self) -> list[int]:
        self.targets = [self._load(i)[1] for i in range(len(self))]
        return self.targets

    def load_frames(self, index: int) -> torch.Tensor:
        return self._load(index)[0].float().permute(3, 0, 1, 2)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        data, target = self._load(index)
        frames = _resize(data.float().permute(3, 0, 1, 2).contiguous(), self.img_size, "bilinear")
        if self.transform is not None:
            generator = None if self.epoch is None else sample_generator(self.seed, self.epoch, index)
            frames = self.transform(frames, generator)
        return frames.contiguous(), target


# --------------------------------------------------------------------------------------------- indexing
def _npz_ids(folder: Path, prefix: str) -> list[str]:
    if not folder.is_dir():
        return []
    return [f"{prefix}/{name[:-4]}" for name in listdir_sorted(folder) if name.endswith(".npz")]


def _index_events(name: str, events: Path) -> tuple[list[str], dict[str, dict[str, list[str]]]]:
    """(classes, {part: {class: sample ids}}) where part is "all" (ratio datasets) or "train"/"test"."""
    if name == "cifar10-dvs":
        classes = list(CIFAR10_DVS_CLASSES)  # only these folders: spikingjelly's TEBN train/test dirs are ignored
        parts = {"all": {c: _npz_ids(events / c, c) for c in classes}}
    elif name == "ncaltech101":
        classes = [c for c in listdir_sorted(events) if (events / c).is_dir() and not c.startswith(".")]
        parts = {"all": {c: _npz_ids(events / c, c) for c in classes}}
    elif name == "gesture":
        classes = list(GESTURE_CLASSES)
        parts = {s: {GESTURE_CLASSES[i]: _npz_ids(events / s / f, f"{s}/{f}") for i, f in enumerate(GESTURE_FOLDERS)}
                 for s in ("train", "test")}
    else:  # nmnist: folder = digit
        classes = list(NMNIST_DIGITS)
        for s in ("train", "test"):
            others = [f for f in (listdir_sorted(events / s) if (events / s).is_dir() else [])
                      if f not in classes and not f.startswith(".") and (events / s / f).is_dir()]
            if others:
                raise DVSDataError(f"nmnist: {events / s / others[0]} is not a digit folder 0..9, its samples would be "
                                   f"left out; delete {events} to rebuild it from raw files labelled 0..9")
        parts = {s: {c: _npz_ids(events / s / c, f"{s}/{c}") for c in classes} for s in ("train", "test")}
    for part, by_class in parts.items():
        if not any(by_class.values()):
            raise DVSDataError(f"{name}: {events} holds no samples for {part!r}; delete {events} to rebuild it from "
                               f"the raw files")
    return classes, parts


def _tet_files(root: Path, part: str) -> list[str]:
    folder = root / part
    expected = f"{root}/train/<i>.pt and {root}/test/<i>.pt, i = 0..n-1 (TET's preprocessed CIFAR10-DVS)"
    names = [n for n in listdir_sorted(folder) if n.endswith(".pt")] if folder.is_dir() else []
    if not names:
        missing = "" if root.is_dir() else f" (the dataset root {root} does not exist)"
        raise DVSDataError(f"cifar10-dvs-tet: expected {expected}, found nothing in {folder}{missing}")
    stems = sorted(int(n[:-3]) for n in names if n[:-3].isdigit())
    if stems != list(range(len(names))):
        raise DVSDataError(f"cifar10-dvs-tet: expected {expected}; {folder} holds {len(names)} .pt files that are "
                           f"not numbered 0..{len(names) - 1}")
    return [str(folder / f"{i}.pt") for i in range(len(names))]


# --------------------------------------------------------------------------------------------- builder
def _img_size(args, info: DVSInfo) -> tuple[int, int]:
    size = getattr(args, "img_size", None) or info.img_size
    if isinstance(size, (list, tuple)):
        size = tuple(int(s) for s in size)[-2:]
        return (size[0], size[0]) if len(size) == 1 else size
    return int(size), int(size)


def _transform(name: str, args, train: bool) -> DVSTrainTransform | None:
    if not train:
        return None
    ncaltech = getattr(args, "dvs_ncaltech_aug", None)
    transform = DVSTrainTransform(
        ncaltech=(name == "ncaltech101") if ncaltech is None else bool(ncaltech),
        flip_roll=bool(getattr(args, "dvs_flip_roll", False)),
        cutout=bool(getattr(args, "dvs_aug", False)),
        trivial=bool(getattr(args, "dvs_trival_aug", False)))
    return transform or None


def _record(args, **values) -> None:
    if args is None:
        return
    for key, value in values.items():
        try:
            setattr(args, key, value)
        except AttributeError:  # pragma: no cover - a read-only args object
            pass


def build_dvs_dataset(name: str, root: str | os.PathLike, split: str, args=None) -> Dataset:
    """Build one split of a neuromorphic dataset, preparing the root on first use.

    Args:
        name: one of :data:`DVS_DATASETS`.
        root: the dataset root (``args.data_dir``).
        split: "train" or "val" ("validation"/"test" mean "val").
        args: namespace read with ``getattr`` and defaults: ``time_steps`` (T, default 10), ``img_size``
            (default per dataset), ``seed`` (42), ``dvs_split`` ("stratified"), ``dvs_split_ratio`` (0.9),
            ``dvs_split_seed`` (``seed``), ``dvs_split_file``, ``dvs_raw_dir``, ``download`` (False),
            ``dvs_aug``, ``dvs_trival_aug``, ``dvs_flip_roll``, ``dvs_ncaltech_aug``, ``num_classes`` (checked).
            On return ``args.dvs_split`` holds the split used ("official" for Gesture, N-MNIST and TET's
            CIFAR10-DVS), ``args.dvs_split_file`` the split JSON (or None) and ``args.dvs_split_seed`` /
            ``args.dvs_split_ratio`` the values in it (the ratio as given for ``published``, which has none), for
            the run's args.yaml.

    Returns:
        A Dataset of ``(float32 [T, 2, H, W], int)``; its ``targets`` and ``classes`` come from the folder names.

    Raises:
        DVSDataError: the root is missing, empty, partially extracted or laid out differently (nothing is
            changed on disk), or the saved caches/split disagree with the data.
    """
    info = dataset_info(name)
    if split not in ("train", "val", "validation", "test"):
        raise DVSConfigError(f"split={split!r}: expected 'train' or 'val'")
    train = split == "train"
    root = Path(root).expanduser()
    seed = int(getattr(args, "seed", 42) or 0)
    img_size = _img_size(args, info)
    transform = _transform(name, args, train)

    if name == "cifar10-dvs-tet":
        num_classes = getattr(args, "num_classes", None)
        check_class_count(name, split, "train" if train else "val", len(CIFAR10_DVS_CLASSES), num_classes)
        dataset = TETCifar10DVS(_tet_files(root, "train" if train else "test"), img_size, transform, seed,
                                num_classes)
        frames_number = getattr(args, "time_steps", None)
        stored = dataset.load_frames(0).shape[0]
        if frames_number and stored != int(frames_number):
            raise DVSConfigError(f"cifar10-dvs-tet: {dataset.files[0]} has {stored} frames but "
                                 f"time_steps={frames_number}")
        _record(args, dvs_split="official", dvs_split_file=None)
        return dataset

    from .dvs_build import build_frames, prepare_events  # spikingjelly is imported inside, when needed

    frames_number = int(getattr(args, "time_steps", None) or 10)
    raw_dir = getattr(args, "dvs_raw_dir", None)
    events = prepare_events(name, root, raw_dir, download=bool(getattr(args, "download", False)))
    classes, parts = _index_events(name, events)
    label_of = {c: i for i, c in enumerate(classes)}

    if info.split == "official":
        by_class = parts["train" if train else "test"]
        ids = [sid for c in classes for sid in by_class[c]]
        labels = [label_of[c] for c in classes for _ in by_class[c]]
        _record(args, dvs_split="official", dvs_split_file=None)
    else:
        by_class = {c: ids for c, ids in parts["all"].items() if ids}
        empty = sorted(set(parts["all"]) - set(by_class))
        if empty:
            raise DVSDataError(f"{name}: {events} has no samples for the classes {', '.join(empty)}; delete {events} "
                               f"to rebuild it from the raw files")
        mode = getattr(args, "dvs_split", None) or "stratified"
        if mode == "official":
            raise DVSConfigError(f"dvs_split='official': {name} has no official train/test split; choose one of "
                                 f"{', '.join(SPLIT_MODES)} (--dvs-split)")
        ratio = getattr(args, "dvs_split_ratio", None)
        ratio = 0.9 if ratio is None else float(ratio)
        split_seed = getattr(args, "dvs_split_seed", None)
        split_seed = seed if split_seed is None else int(split_seed)
        record, path = load_or_create_split(root, name, by_class, mode, ratio, split_seed,
                                            getattr(args, "dvs_split_file", None))
        chosen = set(record["train" if train else "val"])
        ids = [sid for c in classes for sid in by_class.get(c, []) if sid in chosen]
        labels = [label_of[sid.split("/", 1)[0]] for sid in ids]
        _record(args, dvs_split=record["mode"], dvs_split_file=str(path),
                dvs_split_ratio=ratio if record["ratio"] is None else record["ratio"], dvs_split_seed=record["seed"])

    num_classes = getattr(args, "num_classes", None)
    if num_classes and len(classes) > int(num_classes):
        raise DVSConfigError(f"{name}: the data has {len(classes)} classes ({events}) but num_classes={num_classes}")
    check_class_count(name, split, "train" if train else "val", len(classes),
                       int(num_classes) if num_classes else None)
    if len(classes) != info.num_classes:
        _logger.warning("%s: found %d classes, the full dataset has %d", name, len(classes), info.num_classes)

    all_ids = [sid for part in parts.values() for ids_ in part.values() for sid in ids_]
    H, W = info.sensor_size
    frames_dir = build_frames(root, all_ids, frames_number, H, W)
    dataset = DVSFrameDataset([frames_dir / f"{sid}.npz" for sid in ids], labels, classes, img_size,
                              info.interpolation, transform, seed, ids)
    _logger.info("%s %s: %r", name, "train" if train else "val", dataset)
    return dataset
