"""Datasets by name: static images here (:mod:`data.static`), event frames in ``data.neuromorphic``.

``build_dataset(name, root, split, args)`` returns a map-style dataset:

* static sets yield ``(PIL image, int)``; the loader sets their ``transform`` attribute (timm ``create_loader``);
* neuromorphic sets yield ``(float32 frames [T, 2, H, W], int)``; they come from
  ``data.neuromorphic.build_dvs_dataset(name, root, split, args)``, which is imported only when such a set is asked for.
"""
from __future__ import annotations

import argparse
import difflib

from engine.errors import DatasetError

from .static import DATASET_ALIASES, STATIC_DATASETS, build_static_dataset, canonical_static_name

__all__ = ["NEUROMORPHIC_DATASETS", "STATIC_DATASETS", "build_dataset", "canonical_static_name", "is_neuromorphic",
           "split_kind", "unknown_dataset_message"]

NEUROMORPHIC_DATASETS = ("cifar10-dvs", "cifar10-dvs-tet", "gesture", "ncaltech101", "nmnist")

_TRAIN_SPLITS = ("train", "training")
_EVAL_SPLITS = ("val", "validation", "test", "eval")


def is_neuromorphic(name: str) -> bool:
    """True for the event-camera datasets (input ``[B, T, 2, H, W]``, no image transforms)."""
    return name.lower() in NEUROMORPHIC_DATASETS


def unknown_dataset_message(name: str) -> str | None:
    """None if ``name`` is a dataset (static, an alias of one, or event data, in any case), else a message that
    suggests the closest names and lists both kinds."""
    if is_neuromorphic(name) or canonical_static_name(name) in STATIC_DATASETS:
        return None
    known = sorted(STATIC_DATASETS) + sorted(DATASET_ALIASES) + list(NEUROMORPHIC_DATASETS)
    close = difflib.get_close_matches(name.lower(), known, n=3, cutoff=0.6)
    suggestion = f"did you mean {' or '.join(close)}? " if close else ""
    return (f"unknown dataset {name!r}; {suggestion}static datasets: {', '.join(sorted(STATIC_DATASETS))} (aliases "
            f"{', '.join(sorted(DATASET_ALIASES))}); event datasets: {', '.join(NEUROMORPHIC_DATASETS)}")


def split_kind(split: str) -> str:
    """Map a split name (``train``, ``validation``, ``val``, ``test``, ...) to ``"train"`` or ``"val"``."""
    if split.lower() in _TRAIN_SPLITS:
        return "train"
    if split.lower() in _EVAL_SPLITS:
        return "val"
    raise DatasetError(f"unknown split {split!r}; use one of {_TRAIN_SPLITS + _EVAL_SPLITS}")


def build_dataset(name: str, root: str, split: str, args: argparse.Namespace):
    """Build dataset ``name`` for ``split`` from ``root``.

    Args:
        name: a key of :data:`STATIC_DATASETS` or one of :data:`NEUROMORPHIC_DATASETS`.
        root: dataset folder (``--data-dir``).
        split: split name; see :func:`split_kind`.
        args: the parsed arguments (``download``, ``time_steps``, augmentation flags, ...).

    Raises:
        DatasetError: unknown name or missing files.
    """
    unknown = unknown_dataset_message(name)
    if unknown:
        raise DatasetError(unknown)
    kind = split_kind(split)
    if is_neuromorphic(name):
        from data.neuromorphic import build_dvs_dataset
        return build_dvs_dataset(name.lower(), root, kind, args)
    return build_static_dataset(name, root, split, kind, args)
