"""Deterministic, saved train/val splits for the neuromorphic datasets that have no official one.

CIFAR10-DVS and N-Caltech101 ship without a train/test split; the reference code made one per run (CIFAR10-DVS:
the first 90 % of each class in spikingjelly's order; N-Caltech101: the first 90 % of an unsorted ``os.listdir``,
so the split depended on the filesystem). Here a split is computed once from a **sorted** list of sample ids,
saved as JSON next to the data (``<root>/splits/``) and reused by every later run, on every machine.

Modes (``--dvs-split``):

* ``stratified`` (default): per class, samples are ordered by ``sha256("<seed>/<sample id>")`` and the first
  ``n_train`` go to train. The order depends only on the seed and the names, never on the listing order; a new
  seed gives a new split.
* ``first``: per class, the first ``n_train`` sample ids in sorted order (the reference's behaviour; for
  CIFAR10-DVS this is exactly spikingjelly's ``split_to_train_test_set(0.9, ...)`` order).
* ``published``: CIFAR10-DVS only, spikingjelly's ``CIFAR10DVSTEBNSplit``: samples 0..99 of each class are val
  (1,000), 100..999 train (9,000). Implemented by index, without its symlink folders.

``n_train`` per class is ``ceil(ratio * n)`` for CIFAR10-DVS (spikingjelly) and ``int(ratio * n)`` for
N-Caltech101 (STAtten's loader).

Split file schema (format 1)::

    {"format": 1, "dataset": "cifar10-dvs", "mode": "stratified", "ratio": 0.9, "seed": 42,
     "classes": ["airplane", ...], "num_train": 9000, "num_val": 1000,
     "train": ["airplane/cifar10_airplane_0", ...], "val": [...]}

Sample ids are paths relative to ``events_np`` without the extension; both lists are sorted.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from pathlib import Path

from engine.atomic import write_text_atomic

from .dvs_args import SPLIT_MODES
from .dvs_raw import DVSConfigError, DVSDataError

_logger = logging.getLogger(__name__)

__all__ = ["SPLIT_MODES", "SPLIT_FORMAT", "n_train", "compute_split", "default_split_path", "default_split_files",
           "load_or_create_split"]

SPLIT_FORMAT = 1
ROUNDING = {"cifar10-dvs": "ceil", "ncaltech101": "floor"}


def n_train(n: int, ratio: float, rounding: str) -> int:
    """Number of training samples of a class with ``n`` samples (``ceil`` or ``floor`` of ``ratio * n``)."""
    if not 0.0 < ratio <= 1.0:
        raise DVSConfigError(f"dvs_split_ratio={ratio} must be in (0, 1]")
    exact = ratio * n
    return min(n, math.ceil(exact - 1e-9) if rounding == "ceil" else int(exact + 1e-9))


def _stratified_key(seed: int, sample_id: str) -> str:
    return hashlib.sha256(f"{seed}/{sample_id}".encode()).hexdigest()


def _published_val(sample_id: str) -> bool:
    stem = sample_id.rsplit("/", 1)[-1]
    index = stem.rsplit("_", 1)[-1]
    if not stem.startswith("cifar10_") or not index.isdigit():
        raise DVSDataError(f"the published CIFAR10-DVS split needs files named cifar10_<class>_<i>, got {sample_id}")
    return int(index) < 100


def compute_split(name: str, by_class: dict[str, list[str]], mode: str, ratio: float, seed: int) -> dict:
    """The split record (see the module docstring) for ``by_class`` = {class: sample ids}."""
    if mode not in SPLIT_MODES:
        raise DVSConfigError(f"dvs_split={mode!r} is not supported; choose one of {SPLIT_MODES}")
    if mode == "published" and name != "cifar10-dvs":
        raise DVSConfigError(f"dvs_split='published' exists only for cifar10-dvs (spikingjelly's 9,000/1,000 "
                         f"split); {name} has none, use 'stratified' or 'first'")
    train, val = [], []
    for cls in sorted(by_class):
        ids = sorted(by_class[cls])
        if mode == "published":
            chosen = [sid for sid in ids if not _published_val(sid)]
        else:
            k = n_train(len(ids), ratio, ROUNDING.get(name, "ceil"))
            order = ids if mode == "first" else sorted(ids, key=lambda sid: _stratified_key(seed, sid))
            chosen = order[:k]
        chosen_set = set(chosen)
        train += chosen
        val += [sid for sid in ids if sid not in chosen_set]
    record = {
        "format": SPLIT_FORMAT, "dataset": name, "mode": mode,
        "ratio": None if mode == "published" else ratio, "seed": seed if mode == "stratified" else None,
        "classes": sorted(by_class), "num_train": len(train), "num_val": len(val),
        "train": sorted(train), "val": sorted(val),
    }
    return record


def default_split_path(root: Path, name: str, mode: str, ratio: float, seed: int) -> Path:
    """``<root>/splits/<name>_<mode>[_ratio<r>][_seed<s>].json``."""
    parts = [name, mode]
    if mode != "published":
        parts.append(f"ratio{ratio:g}")
    if mode == "stratified":
        parts.append(f"seed{seed}")
    return Path(root) / "splits" / ("_".join(parts) + ".json")


def default_split_files(root: Path, name: str) -> list[Path]:
    """The files in ``<root>/splits`` named as :func:`default_split_path` names the splits of ``name``."""
    pattern = re.compile(rf"{re.escape(name)}_(published|first_ratio[^_]+|stratified_ratio[^_]+_seed-?\d+)\.json")
    folder = Path(root) / "splits"
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if pattern.fullmatch(path.name) and path.is_file())


def _write_json(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(record, indent=1, sort_keys=True) + "\n")


def _check(record: dict, path: Path, name: str, available: set[str]) -> None:
    if record.get("format") != SPLIT_FORMAT or record.get("dataset") != name:
        raise DVSDataError(f"{path} is not a format-{SPLIT_FORMAT} split file for {name} (format "
                           f"{record.get('format')}, dataset {record.get('dataset')!r})")
    train, val = set(record["train"]), set(record["val"])
    if train & val:
        raise DVSDataError(f"{path} puts {len(train & val)} samples in both train and val "
                           f"(first: {sorted(train & val)[0]})")
    unknown = sorted((train | val) - available)
    if unknown:
        raise DVSDataError(f"{path} lists {len(unknown)} samples that are not in the dataset (first: {unknown[0]}); "
                           f"restore the data or delete the split file to compute a new split")
    extra = len(available - train - val)
    if extra:
        _logger.warning("%d samples of %s are in neither list of the saved split %s and are not used", extra, name,
                        path)


def load_or_create_split(root: Path, name: str, by_class: dict[str, list[str]], mode: str, ratio: float,
                         seed: int, path: str | os.PathLike | None = None) -> tuple[dict, Path]:
    """Reuse the saved split at ``path`` (default :func:`default_split_path`) or compute and save it.

    Returns ``(record, path)``. A saved file always wins over ``mode``/``ratio``/``seed`` (its own values are in
    the record); it is checked against the samples on disk.
    """
    path = Path(path) if path else default_split_path(root, name, mode, ratio, seed)
    available = {sid for ids in by_class.values() for sid in ids}
    if path.is_dir():
        raise DVSConfigError(f"the split file {path} is a folder; give --dvs-split-file the path of a JSON file "
                             f"(created if missing)")
    if path.is_file():
        try:
            record = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DVSDataError(f"cannot read the split file {path}: {err}; delete it to recompute") from None
        _check(record, path, name, available)
        _logger.info("Using the saved %s split %s (%d train / %d val)", record["mode"], path, record["num_train"],
                     record["num_val"])
        return record, path
    record = compute_split(name, by_class, mode, ratio, seed)
    _write_json(path, record)
    _logger.info("Saved the %s split of %s to %s (%d train / %d val)", mode, name, path, record["num_train"],
                 record["num_val"])
    return record, path
