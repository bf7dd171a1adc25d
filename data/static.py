"""Static image datasets: CIFAR-10/100, ImageNet, scikit-learn digits, MNIST and Fashion-MNIST.

Every dataset yields ``(PIL RGB image, int label)`` and has a ``transform`` attribute that the loader sets.

* ``torch/cifar10``, ``torch/cifar100``: torchvision; downloaded only with ``--download``.
* ``imagenet``: timm ``ImageDataset`` over ``<root>/train`` and ``<root>/val`` class folders, labelled by
  ``train/``'s class folders (:class:`ClassFolderReader`).
* ``digits``: scikit-learn ``load_digits`` (1,797 real 8x8 handwritten digits shipped inside scikit-learn, values
  0..16), upsampled to 32x32 RGB; a fixed, stratified 80/20 split (seed :data:`DIGITS_SPLIT_SEED`).
* ``mnist``, ``fashion-mnist``: the IDX files, plain or ``.gz``, either directly in ``root`` (for example Debian's
  ``/usr/share/datasets/fashion-mnist``) or in torchvision's ``<root>/<MNIST|FashionMNIST>/raw``; 28x28 padded to
  32x32 RGB.  With ``--download`` torchvision fetches them into the latter.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import logging
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from timm.data import ImageDataset
from timm.data.readers.img_extensions import get_img_extensions
from timm.data.readers.reader import Reader
from timm.utils.misc import natural_key
from torch.utils.data import Dataset

from engine.errors import DatasetError

__all__ = ["STATIC_DATASETS", "DATASET_ALIASES", "ArrayImageDataset", "ClassFolderReader", "build_static_dataset",
           "canonical_static_name", "check_class_count", "read_idx", "DIGITS_SPLIT_SEED"]

_logger = logging.getLogger(__name__)

DIGITS_SPLIT_SEED = 0
DIGITS_VAL_FRACTION = 0.2
_IMAGE_SIZE = 32


class ArrayImageDataset(Dataset):
    """Grey-level images held in memory, served as ``_IMAGE_SIZE`` x ``_IMAGE_SIZE`` RGB PIL images.

    Args:
        images: ``uint8`` array ``[N, H, W]``.
        targets: int labels ``[N]``.
        resize: upsample to 32x32 (bicubic) if True, else pad symmetrically with zeros.
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, resize: bool):
        self.images = images
        self.targets = [int(t) for t in targets]
        self.resize = resize
        self.transform: Callable | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index])
        if self.resize:
            img = img.resize((_IMAGE_SIZE, _IMAGE_SIZE), Image.BICUBIC)
        else:
            pad_w, pad_h = _IMAGE_SIZE - img.width, _IMAGE_SIZE - img.height
            img = ImageOps.expand(img, (pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2))
        img = img.convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, self.targets[index]


def _build_digits(root: str, split: str, kind: str, args: argparse.Namespace) -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    train_idx, val_idx = train_test_split(np.arange(len(images)), test_size=DIGITS_VAL_FRACTION,
                                          stratify=digits.target, random_state=DIGITS_SPLIT_SEED)
    idx = train_idx if kind == "train" else val_idx
    return ArrayImageDataset(images[idx], digits.target[idx], resize=True)


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (``.gz`` or plain) of unsigned bytes, as used by MNIST and Fashion-MNIST."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise DatasetError(f"{path} is not a complete gzip file ({exc}): download it again, or gunzip it and drop "
                           f"the .gz") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DatasetError(f"{path} is not an IDX file of unsigned bytes")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DatasetError(f"{path} is truncated: its header (for {ndim} dimensions) is cut off after {len(data)} "
                           f"bytes")
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DatasetError(f"{path} is truncated: header says {shape}, found {array.size} bytes")
    return array.reshape(shape)


def _find_idx(folders: list[str], stem: str) -> str | None:
    for folder in folders:
        for name in (stem, stem + ".gz"):
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    return None


def _find_idx_pair(folders: list[str], prefix: str) -> tuple[str | None, str | None]:
    """The images and labels IDX files of split ``prefix`` (``train``, ``t10k``), None where missing."""
    return _find_idx(folders, f"{prefix}-images-idx3-ubyte"), _find_idx(folders, f"{prefix}-labels-idx1-ubyte")


@contextlib.contextmanager
def _download_lock(root: str, download: bool) -> Iterator[None]:
    """With ``--download``, hold the DVS builders' lock on ``root`` (created if missing): processes sharing a root
    (DDP ranks, or other jobs) take turns, so the first downloads and the others find the files and skip it."""
    if not download:
        yield
        return
    from .dvs_build import root_lock

    os.makedirs(root, exist_ok=True)
    with root_lock(Path(root)):
        yield


def _mnist_like(torchvision_name: str) -> Callable:
    def build(root: str, split: str, kind: str, args: argparse.Namespace) -> Dataset:
        root = root or "."
        folders = [root, os.path.join(root, torchvision_name, "raw")]
        prefix = "train" if kind == "train" else "t10k"
        images_path, labels_path = _find_idx_pair(folders, prefix)
        if (images_path is None or labels_path is None) and args.download:
            import torchvision.datasets

            try:
                with _download_lock(root, True):  # torchvision skips files that are already there
                    getattr(torchvision.datasets, torchvision_name)(root, train=kind == "train", download=True)
            except (OSError, RuntimeError) as exc:
                raise DatasetError(f"{torchvision_name}: downloading to {os.path.abspath(root)} failed "
                                   f"({' '.join(str(exc).split())}); check the network, or put the IDX files "
                                   "there yourself") from None
            images_path, labels_path = _find_idx_pair(folders, prefix)
        if images_path is None or labels_path is None:
            raise DatasetError(f"{torchvision_name} not found: expected {prefix}-images-idx3-ubyte[.gz] and "
                               f"{prefix}-labels-idx1-ubyte[.gz] in {os.path.abspath(folders[0])} or "
                               f"{os.path.abspath(folders[1])} (set --data-dir, or pass --download)")
        images, labels = read_idx(images_path), read_idx(labels_path)
        if len(images) != len(labels):
            raise DatasetError(f"{torchvision_name}: {images_path} holds {len(images)} images but {labels_path} "
                               f"{len(labels)} labels: the two files come from different sets (download them again)")
        return ArrayImageDataset(images, labels, resize=False)

    return build


def _cifar(torchvision_name: str, folder: str) -> Callable:
    def build(root: str, split: str, kind: str, args: argparse.Namespace) -> Dataset:
        import torchvision.datasets

        root = root or "."
        if not args.download and not os.path.isdir(os.path.join(root, folder)):
            raise DatasetError(f"{torchvision_name} not found: expected the folder "
                               f"{os.path.abspath(os.path.join(root, folder))} (set --data-dir, or pass --download)")
        try:
            with _download_lock(root, args.download):  # torchvision skips an archive that is already extracted
                return getattr(torchvision.datasets, torchvision_name)(root, train=kind == "train",
                                                                       download=args.download)
        except (OSError, RuntimeError) as exc:
            action = "downloading to" if args.download else "reading"
            reason = " ".join(str(exc).split()).replace("You can use download=True to download it",
                                                        "Pass --download to fetch it again")
            raise DatasetError(f"{torchvision_name}: {action} {os.path.abspath(root)} failed: {reason}") from None

    return build


def _imagenet_split_folder(root: str, split: str, kind: str) -> str:
    """``root/train`` for training; for evaluation ``root/val`` (or ``validation``) for those names, else
    ``root/<split>`` (``--val-split test`` reads ``root/test``, never the whole root)."""
    names = ["train"] if kind == "train" else (["val", "validation"] if split.lower() in ("val", "validation")
                                               else [split])
    for name in names:
        if os.path.isdir(os.path.join(root, name)):
            return os.path.join(root, name)
    raise DatasetError(f"ImageNet {split} split not found: expected the class folders under "
                       f"{os.path.abspath(os.path.join(root, names[0]))} (set --data-dir to the folder holding "
                       f"train/ and val/)")


def _class_folders(folder: str) -> list[str]:
    """The class folders of an ImageFolder tree in timm's order (natural sort of the names)."""
    return sorted((d for d in os.listdir(folder) if not d.startswith(".") and os.path.isdir(os.path.join(folder, d))),
                  key=natural_key)


class ClassFolderReader(Reader):
    """A timm reader of the images under ``folder/<class>/**``, each labelled ``class_to_idx[<class>]``: its
    top-level class folder, at any depth.

    timm's ``ReaderImageFolder`` labels an image by the folder that directly holds it, so ``train/<wnid>/images/``
    (Tiny ImageNet) would be one class ``images``, and a stray image in ``train/`` a class ``''`` shifting every
    label after it.
    """

    def __init__(self, folder: str, class_to_idx: dict[str, int]):
        super().__init__()
        self.root, self.class_to_idx = folder, class_to_idx
        extensions = get_img_extensions(as_set=True)
        samples = []
        for name, index in class_to_idx.items():
            for path, _, files in os.walk(os.path.join(folder, name), followlinks=True):
                samples += [(os.path.join(path, f), index) for f in files
                            if os.path.splitext(f)[1].lower() in extensions]
        stray = [f for f in os.listdir(folder) if os.path.splitext(f)[1].lower() in extensions]
        if stray:
            _logger.warning("%s: %d images outside the class folders (e.g. %s) are not used", folder, len(stray),
                            stray[0])
        if not samples:
            raise DatasetError(f"no images ({', '.join(sorted(extensions))}) in the class folders of "
                               f"{os.path.abspath(folder)}")
        self.samples = sorted(samples, key=lambda sample: natural_key(sample[0]))

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        return open(path, "rb"), target

    def __len__(self) -> int:
        return len(self.samples)

    def _filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        filename = self.samples[index][0]
        if basename:
            return os.path.basename(filename)
        return filename if absolute else os.path.relpath(filename, self.root)


def _imagenet_classes(root: str, folder: str, kind: str, args: argparse.Namespace) -> list[str]:
    """The class names, in label order: ``train/``'s class folders (also for evaluation, so that a validation
    split without some classes keeps the training labels), or the evaluation folder's own when there is no
    ``train/`` and it has every class."""
    classes = _class_folders(folder)
    if not classes:
        raise DatasetError(f"ImageNet {folder} holds no class folders (ILSVRC's validation images come in one flat "
                           f"folder: sort them into one folder per class, e.g. with the widely used valprep.sh)")
    if kind == "train":
        return classes
    train_dir = os.path.join(root, "train")
    if not os.path.isdir(train_dir):
        num_classes = getattr(args, "num_classes", None)
        if num_classes is not None and len(classes) < num_classes:
            raise DatasetError(f"ImageNet {folder} has {len(classes)} class folders for --num-classes {num_classes} "
                               f"and there is no {train_dir} to number them by, so the labels would shift: put "
                               f"train/ next to it (its class folders suffice, empty ones do)")
        return classes
    train_classes = _class_folders(train_dir)
    unknown = sorted(set(classes) - set(train_classes))
    if unknown:
        raise DatasetError(f"ImageNet {folder} has class folders that {train_dir} lacks: "
                           f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
    return train_classes


def _build_imagenet(root: str, split: str, kind: str, args: argparse.Namespace) -> Dataset:
    """timm's ImageDataset over class folders, labelled by the top-level folder's index among ``train/``'s class
    folders (for the evaluation split too: its folders listed on their own would shift every label after a
    missing class)."""
    folder = _imagenet_split_folder(root, split, kind)
    classes = _imagenet_classes(root, folder, kind, args)
    return ImageDataset(folder, reader=ClassFolderReader(folder, {name: i for i, name in enumerate(classes)}))


STATIC_DATASETS: dict[str, Callable] = {
    "digits": _build_digits,
    "mnist": _mnist_like("MNIST"),
    "fashion-mnist": _mnist_like("FashionMNIST"),
    "torch/cifar10": _cifar("CIFAR10", "cifar-10-batches-py"),
    "torch/cifar100": _cifar("CIFAR100", "cifar-100-python"),
    "imagenet": _build_imagenet,
}
DATASET_ALIASES = {"cifar10": "torch/cifar10", "cifar100": "torch/cifar100", "torch/mnist": "mnist",
            "fashion_mnist": "fashion-mnist", "torch/fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "imagenet1k": "imagenet"}


def canonical_static_name(name: str) -> str:
    """The :data:`STATIC_DATASETS` key that ``name`` or one of its aliases (``imagenet1k``, ``cifar10``, ...) means."""
    return DATASET_ALIASES.get(name.lower(), name.lower())


def build_static_dataset(name: str, root: str, split: str, kind: str, args: argparse.Namespace) -> Dataset:
    """Build the static dataset ``name`` (see the module docstring); ``kind`` is ``"train"`` or ``"val"``."""
    key = canonical_static_name(name)
    if key not in STATIC_DATASETS:
        from . import unknown_dataset_message

        raise DatasetError(unknown_dataset_message(name) or f"{name!r} is an event dataset, not a static one")
    dataset = STATIC_DATASETS[key](root, split, kind, args)
    check_class_count(name, split, kind, _class_count(dataset), getattr(args, "num_classes", None))
    return dataset


def check_class_count(name: str, split: str, kind: str, classes: int | None,
                      num_classes: int | None) -> None:
    """Refuse a head smaller than the labels; warn about a larger one (legal, but usually the wrong config), once a
    run: only for the evaluation split, which training and evaluation both build."""
    if classes is None or num_classes is None:
        return
    if classes > num_classes:
        raise DatasetError(f"{name} {kind} split has labels 0..{classes - 1} but --num-classes is {num_classes}; "
                           f"set --num-classes {classes} (or more)")
    if kind == "val" and classes < num_classes:
        _logger.warning("--num-classes is %d but %s has %d classes (labels 0..%d in its %s split): %d outputs of the "
                        "head are never a target; set --num-classes %d unless that is intended", num_classes, name,
                        classes, classes - 1, split, num_classes - classes, classes)


def _class_count(dataset: Dataset) -> int | None:
    """The number of classes a static dataset's labels need (largest label + 1), or None if it does not say."""
    reader = getattr(dataset, "reader", None)
    if getattr(reader, "class_to_idx", None):
        return max(reader.class_to_idx.values()) + 1
    targets = getattr(dataset, "targets", None)
    return max(targets) + 1 if targets is not None and len(targets) else None
