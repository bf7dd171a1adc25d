"""Synthetic raw files in each exact container decode back to the events written; frames equal a NumPy integration.

The writers here are also used by the other ``test_data_dvs_*`` files: AEDAT 2.0 with DVS128 addresses
(CIFAR10-DVS), AEDAT 3.1 packets plus a labels CSV (DVS128 Gesture) and 40-bit ATIS .bin (N-Caltech101, N-MNIST).
"""
from __future__ import annotations

import argparse
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from data.dvs_build import load_events
from data.dvs_raw import CIFAR10_DVS_CLASSES, GESTURE_CLASSES, GESTURE_FOLDERS, GESTURE_NAMES_BY_CSV
from data.neuromorphic import build_dvs_dataset

# --------------------------------------------------------------------------------------------- writers


def random_events(rng: np.random.Generator, n: int, H: int, W: int, t0: int = 0, t1: int = 1_000_000) -> dict:
    """n events with sorted timestamps in [t0, t1) on an H x W sensor (int64 arrays)."""
    return {"t": np.sort(rng.integers(t0, t1, n)).astype(np.int64), "x": rng.integers(0, W, n).astype(np.int64),
            "y": rng.integers(0, H, n).astype(np.int64), "p": rng.integers(0, 2, n).astype(np.int64)}


def write_aedat2_dvs128(path: Path, events: dict) -> None:
    """AEDAT 2.0 as in CIFAR10-DVS: '#' header lines, then big-endian (address, timestamp) uint32 pairs. The DVS128
    address has polarity in bit 0, x_raw in bits 1-7, y_raw in bits 8-14; spikingjelly outputs x = 127 - y_raw,
    y = 127 - x_raw, p = 1 - p_raw, so the writer stores the inverse of that."""
    x_raw = 127 - events["y"]
    y_raw = 127 - events["x"]
    p_raw = 1 - events["p"]
    addr = (y_raw << 8) | (x_raw << 1) | p_raw
    words = np.empty(2 * len(addr), dtype=">u4")
    words[0::2] = addr
    words[1::2] = events["t"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n# synthetic test file\r\n"
                     + words.tobytes())


def write_aedat31(path: Path, events: dict, packet_size: int = 37, overflow: int = 0) -> None:
    """AEDAT 3.1: header up to '#!END-HEADER\\r\\n', then packets of a 28-byte header (type, source, event size,
    ts offset, ts overflow, capacity, number, valid) and 8-byte polarity events (data word, int32 timestamp) with
    x in bits 17-31, y in bits 2-16, polarity in bit 1, valid in bit 0. A non-polarity packet (type 2) is mixed in
    and must be skipped."""
    blob = [b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"]
    special = struct.pack("<hhiiiiii", 2, 1, 8, 4, 0, 2, 2, 2) + struct.pack("<Ii", 0xDEAD, 5) * 2
    blob.append(special)
    n = len(events["t"])
    for start in range(0, n, packet_size):
        stop = min(n, start + packet_size)
        blob.append(struct.pack("<hhiiiiii", 1, 1, 8, 4, overflow, stop - start, stop - start, stop - start))
        for i in range(start, stop):
            data = (int(events["x"][i]) << 17) | (int(events["y"][i]) << 2) | (int(events["p"][i]) << 1) | 1
            blob.append(struct.pack("<Ii", data, int(events["t"][i])))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"".join(blob))


def write_atis(path: Path, events: dict) -> None:
    """40-bit ATIS events: x (8 bits), y (8 bits), polarity (1 bit) and a 23-bit timestamp, big-endian fields."""
    t = events["t"].astype(np.int64)
    raw = np.stack([events["x"], events["y"], (events["p"] << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF],
                   axis=1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw.tobytes())


def make_cifar10_dvs(root: Path, per_class: int = 10, seed: int = 0, indices=None) -> dict:
    """<root>/extract/<class>/cifar10_<class>_<i>.aedat for the 10 classes; returns {sample id: events}."""
    rng = np.random.default_rng(seed)
    written = {}
    for c in CIFAR10_DVS_CLASSES:
        for i in (indices if indices is not None else range(per_class)):
            events = random_events(rng, int(rng.integers(40, 120)), 128, 128)
            write_aedat2_dvs128(root / "extract" / c / f"cifar10_{c}_{i}.aedat", events)
            written[f"{c}/cifar10_{c}_{i}"] = events
    return written


GESTURE_TRIALS = {"train": ["user01_fluorescent", "user02_led"], "test": ["user24_natural"]}


def make_gesture(root: Path, seed: int = 0) -> dict:
    """Two training trials and one test trial, each with all 11 classes (class 5 twice in user02_led), plus the
    trial lists. Returns {trial: (events, csv rows)}."""
    rng = np.random.default_rng(seed)
    base = root / "extract" / "DvsGesture"
    written = {}
    for split, trials in GESTURE_TRIALS.items():
        (base).mkdir(parents=True, exist_ok=True)
        (base / f"trials_to_{split}.txt").write_text("".join(f"{t}.aedat\n" for t in trials) + "\n")
        for trial in trials:
            classes = list(range(1, 12)) + ([5] if trial == "user02_led" else [])
            rows = [(c, 1000 + 10_000 * k, 1000 + 10_000 * k + 8_000) for k, c in enumerate(classes)]
            events = random_events(rng, 400, 128, 128, 0, 1000 + 10_000 * len(classes))
            write_aedat31(base / f"{trial}.aedat", events)
            (base / f"{trial}_labels.csv").write_text(
                "class,startTime_usec,endTime_usec\n" + "".join(f"{c},{s},{e}\n" for c, s, e in rows))
            written[trial] = (events, rows)
    return written


NCALTECH_CLASSES = ("BACKGROUND_Google", "Faces_easy", "accordion")


def make_ncaltech101(root: Path, per_class: int = 10, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    written = {}
    for c in NCALTECH_CLASSES:
        for i in range(1, per_class + 1):
            events = random_events(rng, int(rng.integers(40, 120)), 180, 240, 0, 300_000)
            write_atis(root / "extract" / "Caltech101" / c / f"image_{i:04d}.bin", events)
            written[f"{c}/image_{i:04d}"] = events
    return written


def numpy_frames(events: dict, T: int, H: int, W: int) -> np.ndarray:
    """split_by='number' integration written directly: slice j = events [j*(N//T), (j+1)*(N//T)), the last slice
    takes the rest; channel 1 counts p != 0."""
    n = len(events["t"])
    frames = np.zeros((T, 2, H, W), dtype=np.float64)
    step = n // T
    for j in range(T):
        lo, hi = j * step, (n if j == T - 1 else (j + 1) * step)
        np.add.at(frames[j], ((events["p"][lo:hi] != 0).astype(int), events["y"][lo:hi], events["x"][lo:hi]), 1)
    return frames


def dvs_args(**kw) -> argparse.Namespace:
    base = dict(time_steps=4, img_size=None, seed=42, dvs_split="stratified", dvs_split_ratio=0.9,
                dvs_split_seed=None, dvs_split_file=None, dvs_raw_dir=None, download=False, dvs_aug=False,
                dvs_trival_aug=False, dvs_flip_roll=False, dvs_ncaltech_aug=False)
    base.update(kw)
    return argparse.Namespace(**base)


def assert_events_equal(decoded: dict, written: dict) -> None:
    for key in ("t", "x", "y", "p"):
        assert decoded[key].dtype == np.int64 and decoded[key].dtype.isnative
        np.testing.assert_array_equal(decoded[key], written[key], err_msg=key)


# --------------------------------------------------------------------------------------------- tests


def test_cifar10_dvs_aedat2_round_trip_and_frames(tmp_path):
    written = make_cifar10_dvs(tmp_path, per_class=10)
    args = dvs_args(img_size=128, time_steps=5)
    train = build_dvs_dataset("cifar10-dvs", tmp_path, "train", args)
    val = build_dvs_dataset("cifar10-dvs", tmp_path, "val", args)
    assert len(train) == 90 and len(val) == 10  # ceil(0.9 * 10) per class
    with np.load(tmp_path / "events_np/airplane/cifar10_airplane_0.npz") as raw:
        assert raw["t"].dtype == np.dtype(">u4")  # spikingjelly's big-endian timestamps ...
    for sid, events in written.items():  # ... come back native int64 from load_events
        assert_events_equal(load_events(tmp_path / "events_np" / f"{sid}.npz"), events)
    for dataset in (train, val):
        for i in range(0, len(dataset), 7):
            frames, label = dataset[i]
            sid = dataset.sample_ids[i]
            assert frames.dtype == torch.float32 and frames.shape == (5, 2, 128, 128)
            assert label == CIFAR10_DVS_CLASSES.index(sid.split("/")[0]) == dataset.targets[i]
            np.testing.assert_array_equal(frames.numpy(), numpy_frames(written[sid], 5, 128, 128))


def test_cifar10_dvs_resize_is_reference_bilinear(tmp_path):
    written = make_cifar10_dvs(tmp_path, per_class=2)
    dataset = build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args(time_steps=3))  # default img_size 64
    frames, _ = dataset[0]
    assert frames.shape == (3, 2, 64, 64)
    full = torch.from_numpy(numpy_frames(written[dataset.sample_ids[0]], 3, 128, 128)).float()
    # without antialiasing a 2x bilinear downscale is the mean of each 2x2 block
    expected = full.reshape(3, 2, 64, 2, 64, 2).mean(dim=(3, 5))
    torch.testing.assert_close(frames, expected)


def test_gesture_aedat31_round_trip_windows_and_label_table(tmp_path):
    written = make_gesture(tmp_path)
    args = dvs_args(img_size=128, time_steps=4)
    train = build_dvs_dataset("gesture", tmp_path, "train", args)
    test = build_dvs_dataset("gesture", tmp_path, "val", args)
    assert args.dvs_split == "official" and args.dvs_split_file is None
    assert len(train) == 23 and len(test) == 11
    assert GESTURE_FOLDERS[:4] == ("0", "1", "10", "2") and GESTURE_CLASSES[2] == "other_gestures"
    assert GESTURE_CLASSES[0] == "hand_clapping" and GESTURE_CLASSES[3] == "left_hand_wave"
    assert train.classes == list(GESTURE_CLASSES)
    for split, dataset in (("train", train), ("test", test)):
        for trial in GESTURE_TRIALS[split]:
            events, rows = written[trial]
            seen = {}
            for c, start, end in rows:
                k = seen.get(c, 0)
                seen[c] = k + 1
                sid = f"{split}/{c - 1}/{trial}_{k}"
                mask = (events["t"] >= start) & (events["t"] < end)
                expected = {key: value[mask] for key, value in events.items()}
                assert_events_equal(load_events(tmp_path / "events_np" / f"{sid}.npz"), expected)
                i = dataset.sample_ids.index(sid)
                frames, label = dataset[i]
                # CSV class c -> folder c-1 -> spikingjelly's lexicographic index; the name table agrees
                assert label == GESTURE_FOLDERS.index(str(c - 1))
                assert dataset.classes[label] == GESTURE_NAMES_BY_CSV[c]
                np.testing.assert_array_equal(frames.numpy(), numpy_frames(expected, 4, 128, 128))
    # every class folder exists in both splits, as spikingjelly makes them
    assert sorted(p.name for p in (tmp_path / "events_np/test").iterdir()) == sorted(GESTURE_FOLDERS)


def test_ncaltech101_atis_round_trip_frames_and_nearest_resize(tmp_path):
    written = make_ncaltech101(tmp_path, per_class=10)
    args = dvs_args(img_size=[180, 240], time_steps=4)
    train = build_dvs_dataset("ncaltech101", tmp_path, "train", args)
    val = build_dvs_dataset("ncaltech101", tmp_path, "val", args)
    assert len(train) == 27 and len(val) == 3  # int(0.9 * 10) per class, as STAtten's loader
    assert train.classes == list(NCALTECH_CLASSES)  # sorted folder names, upper case first
    with np.load(tmp_path / "events_np/accordion/image_0001.npz") as raw:
        assert raw["t"].dtype == np.uint32
    for sid, events in written.items():
        assert_events_equal(load_events(tmp_path / "events_np" / f"{sid}.npz"), events)
    for i in range(len(val)):
        frames, label = val[i]
        assert frames.shape == (4, 2, 180, 240) and label == NCALTECH_CLASSES.index(val.sample_ids[i].split("/")[0])
        np.testing.assert_array_equal(frames.numpy(), numpy_frames(written[val.sample_ids[i]], 4, 180, 240))
    small = build_dvs_dataset("ncaltech101", tmp_path, "val", dvs_args(time_steps=4))  # 64x64, NEAREST
    full = torch.from_numpy(numpy_frames(written[small.sample_ids[0]], 4, 180, 240)).float()
    rows = (torch.arange(64) * 180 / 64).floor().long()
    cols = (torch.arange(64) * 240 / 64).floor().long()
    torch.testing.assert_close(small[0][0], full[:, :, rows][:, :, :, cols])


def test_atis_overflow_events_advance_time(tmp_path):
    from data.dvs_raw import read_atis

    events = {"t": np.array([10, 20, 5, 7]), "x": np.array([1, 2, 0, 3]), "y": np.array([4, 5, 240, 6]),
              "p": np.array([1, 0, 0, 1])}
    write_atis(tmp_path / "a.bin", events)
    decoded = read_atis(tmp_path / "a.bin")
    np.testing.assert_array_equal(decoded["t"], [10, 20, 7 + 2 ** 23])
    np.testing.assert_array_equal(decoded["y"], [4, 5, 6])


def test_loader_batches_are_b_t_2_h_w(tmp_path):
    make_cifar10_dvs(tmp_path, per_class=2)
    dataset = build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args(time_steps=4))
    frames, labels = next(iter(torch.utils.data.DataLoader(dataset, batch_size=6)))
    assert frames.shape == (6, 4, 2, 64, 64) and frames.dtype == torch.float32 and labels.dtype == torch.int64


def test_frame_cache_is_per_time_steps(tmp_path):
    make_ncaltech101(tmp_path, per_class=2)
    for T in (4, 6):  # STAtten read the 16-frame folder whatever T was
        dataset = build_dvs_dataset("ncaltech101", tmp_path, "train", dvs_args(time_steps=T))
        assert dataset[0][0].shape[0] == T and (tmp_path / f"frames_number_{T}_split_by_number").is_dir()


def test_tet_cifar10_dvs_pt_files(tmp_path):
    for part, n in (("train", 3), ("test", 2)):
        (tmp_path / part).mkdir()
        for i in range(n):
            torch.save((torch.rand(2, 128, 128, 4), torch.tensor([i + 1])), tmp_path / part / f"{i}.pt")
    args = dvs_args(time_steps=4)
    train = build_dvs_dataset("cifar10-dvs-tet", tmp_path, "train", args)
    frames, label = train[1]
    assert len(train) == 3 and frames.shape == (4, 2, 64, 64) and label == 2
    assert train.load_targets() == [1, 2, 3] and args.dvs_split == "official"
    with pytest.raises(ValueError, match="time_steps=5"):
        build_dvs_dataset("cifar10-dvs-tet", tmp_path, "val", dvs_args(time_steps=5))


def test_reconverted_events_rebuild_their_frame_caches(tmp_path):
    """events_np deleted and converted from other raw files: the frames cached from the old events were used on."""
    import shutil

    from test_evaluate import _synthetic_nmnist

    raw_a, raw_b = _synthetic_nmnist(tmp_path / "a"), _synthetic_nmnist(tmp_path / "b", seed=1)
    root = tmp_path / "nmnist"
    args = dvs_args(time_steps=2, dvs_raw_dir=str(raw_a))
    old = build_dvs_dataset("nmnist", root, "val", args)[0][0]
    shutil.rmtree(root / "events_np")
    fresh = build_dvs_dataset("nmnist", tmp_path / "fresh", "val", dvs_args(time_steps=2, dvs_raw_dir=str(raw_b)))
    new = build_dvs_dataset("nmnist", root, "val", dvs_args(time_steps=2, dvs_raw_dir=str(raw_b)))
    assert not torch.equal(old, fresh[0][0]) and torch.equal(new[0][0], fresh[0][0])


def test_an_interrupted_reconversion_never_leaves_old_frames_next_to_new_events(tmp_path, monkeypatch):
    """The new events_np was renamed into place before the old frame caches were deleted: Ctrl-C in between left
    frames of the old recordings that the next run used with the new events."""
    import shutil

    import data.dvs_build as dvs_build

    make_cifar10_dvs(tmp_path / "a", per_class=1, seed=0)
    make_cifar10_dvs(tmp_path / "b", per_class=1, seed=1)
    root = tmp_path / "root"
    old = build_dvs_dataset("cifar10-dvs", root, "train", dvs_args(dvs_raw_dir=str(tmp_path / "a" / "extract")))[0][0]
    shutil.rmtree(root / "events_np")
    real_rmtree = shutil.rmtree

    def interrupted(path, *args, **kwargs):
        if "frames_number_" in str(path):
            raise KeyboardInterrupt  # Ctrl-C while the old frame caches are deleted
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(dvs_build.shutil, "rmtree", interrupted)
    args = dvs_args(dvs_raw_dir=str(tmp_path / "b" / "extract"))
    with pytest.raises(KeyboardInterrupt):
        build_dvs_dataset("cifar10-dvs", root, "train", args)
    monkeypatch.undo()
    new = build_dvs_dataset("cifar10-dvs", root, "train", args)
    fresh = build_dvs_dataset("cifar10-dvs", tmp_path / "fresh", "train", args)
    assert not torch.equal(old, fresh[0][0]) and torch.equal(new[0][0], fresh[0][0])


def test_event_files_are_read_one_thread_at_a_time(tmp_path, monkeypatch):
    """np.load parses array headers with ast.literal_eval, which CPython 3.11 does not make thread-safe (gh-106905):
    the frame builder's threads failed now and then with "SystemError: AST constructor recursion depth mismatch"
    (seen in CI). Every read holds the module's lock while numpy parses."""
    from data import dvs_build

    np.savez(tmp_path / "e.npz", t=np.arange(3), x=np.zeros(3))
    held, load = [], np.load

    def spy(*args, **kwargs):
        held.append(dvs_build._NPZ_READ_LOCK.locked())
        return load(*args, **kwargs)

    monkeypatch.setattr(dvs_build.np, "load", spy)
    arrays = dvs_build.read_npz(tmp_path / "e.npz", ("t", "x"))
    assert held == [True] and arrays["t"].tolist() == [0, 1, 2] and not dvs_build._NPZ_READ_LOCK.locked()
