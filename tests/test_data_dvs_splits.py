"""Saved splits: identical across runs and listing orders, seed-dependent, reused; reference modes; no label loads."""
from __future__ import annotations

import json
import os
import random
import shutil

import pytest

from data.dvs_raw import CIFAR10_DVS_CLASSES
from data.neuromorphic import DVSConfigError, DVSDataError, DVSFrameDataset, build_dvs_dataset
from data.splits import compute_split, default_split_path, n_train
from test_data_dvs_formats import dvs_args, make_cifar10_dvs, make_ncaltech101


class _ShuffledScandir:
    """os.scandir whose entries come in a random order (a filesystem with another listing order)."""

    real = os.scandir

    def __init__(self, path=".", seed=0):
        with self.real(path) as it:
            self.entries = list(it)
        random.Random(seed).shuffle(self.entries)

    def __iter__(self):
        return iter(self.entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass


def _split_bytes(root, name="cifar10-dvs", **kw):
    args = dvs_args(**kw)
    build_dvs_dataset(name, root, "train", args)
    return open(args.dvs_split_file, "rb").read(), args


def test_split_file_identical_across_runs_and_listing_orders_and_reused(tmp_path, monkeypatch):
    make_cifar10_dvs(tmp_path, per_class=10)
    first, args = _split_bytes(tmp_path)
    path = args.dvs_split_file
    assert path == str(default_split_path(tmp_path, "cifar10-dvs", "stratified", 0.9, 42))
    assert args.dvs_split == "stratified" and args.dvs_split_seed == 42 and args.dvs_split_ratio == 0.9
    os.remove(path)
    again, _ = _split_bytes(tmp_path)
    assert again == first  # a second run computes the same bytes
    os.remove(path)
    for seed in (1, 2):  # any listing order gives the same split
        monkeypatch.setattr(os, "scandir", lambda p=".", s=seed: _ShuffledScandir(p, s))
        monkeypatch.setattr(os, "listdir", lambda p=".", s=seed: [e.name for e in _ShuffledScandir(p, s)])
        shuffled, _ = _split_bytes(tmp_path)
        assert shuffled == first
        os.remove(path)
    monkeypatch.undo()
    other, other_args = _split_bytes(tmp_path, seed=7)  # a new seed: another file with another split
    assert other_args.dvs_split_file != path and json.loads(other)["val"] != json.loads(first)["val"]

    # a saved split is reused as is: edit it and the datasets follow the file
    record = json.loads(first)
    moved = record["val"].pop()
    record["train"].append(moved)
    record["train"].sort()
    record["num_train"], record["num_val"] = len(record["train"]), len(record["val"])
    with open(path, "w") as f:
        json.dump(record, f)
    args = dvs_args()
    train = build_dvs_dataset("cifar10-dvs", tmp_path, "train", args)
    val = build_dvs_dataset("cifar10-dvs", tmp_path, "val", args)
    assert len(train) == 91 and len(val) == 9 and moved in train.sample_ids
    assert sorted(train.sample_ids) == record["train"] and sorted(val.sample_ids) == record["val"]


def test_stratified_split_properties():
    by_class = {c: [f"{c}/s{i}" for i in range(20)] for c in "abc"}
    split = compute_split("cifar10-dvs", by_class, "stratified", 0.9, 3)
    assert split["num_train"] == 54 and split["num_val"] == 6
    assert sorted(split["train"] + split["val"]) == sorted(s for ids in by_class.values() for s in ids)
    for c in "abc":  # stratified: ratio per class
        assert sum(s.startswith(c) for s in split["val"]) == 2
    reversed_input = {c: list(reversed(ids)) for c, ids in reversed(list(by_class.items()))}
    assert compute_split("cifar10-dvs", reversed_input, "stratified", 0.9, 3) == split
    assert compute_split("cifar10-dvs", by_class, "stratified", 0.9, 4)["val"] != split["val"]


def test_reference_modes_first_and_published(tmp_path):
    by_class = {"a": [f"a/cifar10_a_{i}" for i in range(11)]}
    first = compute_split("cifar10-dvs", by_class, "first", 0.9, 0)
    assert first["val"] == ["a/cifar10_a_9"]  # ceil(9.9) = 10 first in sorted order (spikingjelly's order)
    assert compute_split("ncaltech101", by_class, "first", 0.9, 0)["num_train"] == 9  # int(9.9), STAtten
    assert n_train(10, 0.9, "ceil") == 9 and n_train(1000, 0.9, "ceil") == 900
    with pytest.raises(ValueError, match="only for cifar10-dvs"):
        compute_split("ncaltech101", by_class, "published", 0.9, 0)

    make_cifar10_dvs(tmp_path, indices=[0, 42, 99, 100, 500, 999])
    args = dvs_args(dvs_split="published")
    train = build_dvs_dataset("cifar10-dvs", tmp_path, "train", args)
    val = build_dvs_dataset("cifar10-dvs", tmp_path, "val", args)
    assert args.dvs_split == "published" and args.dvs_split_file.endswith("cifar10-dvs_published.json")
    assert len(train) == 30 and len(val) == 30
    assert all(int(s.rsplit("_", 1)[1]) < 100 for s in val.sample_ids)
    assert all(int(s.rsplit("_", 1)[1]) >= 100 for s in train.sample_ids)
    assert not (tmp_path / "events_np" / "train").exists()  # no TEBN symlink folders
    assert sorted({t for t in val.targets}) == list(range(10))
    with pytest.raises(DVSConfigError, match="cifar10-dvs has no official train/test split"):
        build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args(dvs_split="official"))


def test_ncaltech_split_saved_and_targets_without_loading(tmp_path, monkeypatch):
    make_ncaltech101(tmp_path, per_class=10)
    loads = []
    monkeypatch.setattr(DVSFrameDataset, "load_frames", lambda self, i: loads.append(i))
    args = dvs_args(dvs_split="first")
    train = build_dvs_dataset("ncaltech101", tmp_path, "train", args)
    assert loads == [] and len(train.targets) == 27  # labels come from the folder names
    record = json.loads(open(args.dvs_split_file).read())
    assert record["mode"] == "first" and record["seed"] is None
    assert record["val"] == [f"{c}/image_0010" for c in ("BACKGROUND_Google", "Faces_easy", "accordion")]


def test_saved_split_that_names_missing_samples_is_an_error(tmp_path):
    make_cifar10_dvs(tmp_path, per_class=10)
    args = dvs_args()
    build_dvs_dataset("cifar10-dvs", tmp_path, "train", args)
    record = json.loads(open(args.dvs_split_file).read())
    record["val"].append("airplane/cifar10_airplane_77")
    with open(args.dvs_split_file, "w") as f:
        json.dump(record, f)
    with pytest.raises(DVSDataError, match="lists 1 samples that are not in the dataset"):
        build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args())


def test_explicit_split_file_is_used_and_recorded(tmp_path):
    make_cifar10_dvs(tmp_path, per_class=10)
    target = tmp_path / "mine.json"
    args = dvs_args(dvs_split_file=str(target), dvs_split="first")
    build_dvs_dataset("cifar10-dvs", tmp_path, "val", args)
    assert target.is_file() and args.dvs_split_file == str(target) and args.dvs_split == "first"
    shutil.copy(target, tmp_path / "copy.json")
    args = dvs_args(dvs_split_file=str(tmp_path / "copy.json"), dvs_split="stratified", seed=5)
    val = build_dvs_dataset("cifar10-dvs", tmp_path, "val", args)
    assert args.dvs_split == "first"  # the file wins and args.yaml says what was used
    assert sorted(val.sample_ids) == [f"{c}/cifar10_{c}_9" for c in CIFAR10_DVS_CLASSES]


def test_a_new_conversion_recomputes_the_default_split_and_keeps_a_users(tmp_path, caplog):
    """docs: deleting events_np is enough to start afresh; the old default-path split was kept and the added
    recordings were left out with a warning."""
    make_cifar10_dvs(tmp_path, per_class=10)
    args = dvs_args()
    build_dvs_dataset("cifar10-dvs", tmp_path, "train", args)
    mine = tmp_path / "splits" / "mine.json"
    build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args(dvs_split_file=str(mine)))
    default = json.loads(open(args.dvs_split_file).read())
    make_cifar10_dvs(tmp_path, indices=range(10, 12))  # recordings added ...
    shutil.rmtree(tmp_path / "events_np")  # ... and converted afresh
    caplog.clear()
    args = dvs_args()
    train = build_dvs_dataset("cifar10-dvs", tmp_path, "train", args)
    val = build_dvs_dataset("cifar10-dvs", tmp_path, "val", args)
    assert len(train) + len(val) == 120 and "not used" not in caplog.text
    assert json.loads(open(args.dvs_split_file).read())["num_train"] > default["num_train"]
    assert mine.is_file()  # a --dvs-split-file is the user's: kept (it then warns about the new samples)


def test_a_split_file_that_is_a_folder_is_one_error(tmp_path):
    make_cifar10_dvs(tmp_path, per_class=2)
    (tmp_path / "folder").mkdir()
    with pytest.raises(DVSConfigError, match=r"the split file .*/folder is a folder; give --dvs-split-file the path "
                                             r"of a JSON file"):
        build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args(dvs_split_file=str(tmp_path / "folder")))
