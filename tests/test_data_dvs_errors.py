"""Bad dataset roots: one message naming what was expected where, and the folder is unchanged afterwards.
Also: no download without --download, stale build markers are cleared, a crash leaves no half-written folder."""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import data.dvs_build as dvs_build
from data.dvs_raw import DVSConfigError, DVSDataError
from data.neuromorphic import build_dvs_dataset
from test_data_dvs_formats import dvs_args, make_cifar10_dvs, make_gesture, make_ncaltech101, random_events, \
    write_atis, write_aedat2_dvs128, write_aedat31


def snapshot(root: Path, root_mtime: bool = True):
    """Every path under root with its size and mtime (None if root does not exist)."""
    if not root.exists():
        return None
    out = [(".", root.stat().st_mtime_ns if root_mtime else 0)]
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            out.append((str(path.relative_to(root)), st.st_size if path.is_file() else -1, st.st_mtime_ns))
    return sorted(out)


def expect_error(name, root, match, root_mtime=True, **kw):
    before = snapshot(root, root_mtime)
    with pytest.raises(DVSDataError, match=match) as info:
        build_dvs_dataset(name, root, "train", dvs_args(**kw))
    assert snapshot(root, root_mtime) == before, "the dataset folder changed"
    return str(info.value)


# --------------------------------------------------------------------------------------------- missing / empty
@pytest.mark.parametrize("name, expected", [
    ("cifar10-dvs", r"expected .*/extract/<class>/\*\.aedat for the 10 classes"),
    ("gesture", r"expected .*/extract/DvsGesture/trials_to_train\.txt"),
    ("ncaltech101", r"expected .*/extract/Caltech101/<class>/\*\.bin"),
    ("nmnist", r"expected .*/extract/Train/<digit>/\*\.bin"),
    ("cifar10-dvs-tet", r"expected .*/train/<i>\.pt"),
])
def test_missing_and_empty_roots(tmp_path, name, expected):
    missing = tmp_path / "nowhere"
    message = expect_error(name, missing, expected + ".*found nothing")
    assert "does not exist" in message and not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    message = expect_error(name, empty, expected + ".*found nothing")
    assert str(empty) in message
    assert ("--download" in message) == (name == "cifar10-dvs")


# --------------------------------------------------------------------------------------------- partial
def test_partially_extracted_roots(tmp_path):
    cifar = tmp_path / "cifar"
    make_cifar10_dvs(cifar, per_class=2)
    for c in ("cat", "dog"):
        shutil.rmtree(cifar / "extract" / c)
    expect_error("cifar10-dvs", cifar, r"partially extracted: no \.aedat files in .*/extract/cat, .*/extract/dog")

    gesture = tmp_path / "gesture"
    make_gesture(gesture)
    (gesture / "extract/DvsGesture/user02_led_labels.csv").unlink()
    expect_error("gesture", gesture, r"partially extracted: 1 listed files are missing .*user02_led_labels\.csv")
    (gesture / "extract/DvsGesture/trials_to_test.txt").unlink()
    expect_error("gesture", gesture, r"partially extracted: missing .*trials_to_test\.txt")

    caltech = tmp_path / "caltech"
    make_ncaltech101(caltech, per_class=2)
    for f in (caltech / "extract/Caltech101/accordion").iterdir():
        f.unlink()
    expect_error("ncaltech101", caltech, r"partially extracted: no \.bin files in .*/Caltech101/accordion")

    truncated = tmp_path / "truncated"
    make_ncaltech101(truncated, per_class=2)
    path = truncated / "extract/Caltech101/Faces_easy/image_0001.bin"
    path.write_bytes(path.read_bytes()[:-2])
    expect_error("ncaltech101", truncated, r"image_0001\.bin has \d+ bytes, not a multiple of 5")

    nmnist = tmp_path / "nmnist"
    raw = nmnist / "extract"
    raw.mkdir(parents=True)
    (raw / "train1K.txt").write_text("#sample #class\n1\t5\n2\t0\n")
    (raw / "test100.txt").write_text("#sample #class\n60001\t7\n")
    write_atis(raw / "1.bs2", random_events(np.random.default_rng(0), 10, 34, 34))
    expect_error("nmnist", nmnist, r"partially extracted: 2 listed samples have no \.bs2/\.bin file .*first: 2, 60001")


def _nmnist_lists(raw: Path, train: str, test: str) -> None:
    """The slayerPytorch layout: train.txt / test.txt lists and a small .bs2 recording for every sample listed."""
    raw.mkdir(parents=True)
    (raw / "train.txt").write_text(train)
    (raw / "test.txt").write_text(test)
    rng = np.random.default_rng(0)
    for line in (train + test).splitlines():
        write_atis(raw / f"{line.split()[0]}.bs2", random_events(rng, 10, 34, 34))


def test_empty_recordings_are_truncated_files(tmp_path):
    """A 0-byte .bs2 passed the size check (0 % 5 == 0) and, like an AEDAT file with a header but no events,
    became an all-zero sample."""
    raw = tmp_path / "raw"
    _nmnist_lists(raw, "1 5\n2 0\n", "3 7\n")
    (raw / "2.bs2").write_bytes(b"")
    message = expect_error("nmnist", tmp_path / "nmnist", r"raw/2\.bs2 has 0 bytes, no events; the file is truncated",
                           dvs_raw_dir=str(raw))
    assert "does not exist" not in message  # the root is created after the scan: it is no cause here

    cifar = tmp_path / "cifar"
    make_cifar10_dvs(cifar, per_class=1)
    write_aedat2_dvs128(cifar / "extract/cat/cifar10_cat_0.aedat", random_events(np.random.default_rng(0), 0, 1, 1))
    expect_error("cifar10-dvs", cifar, r"extract/cat/cifar10_cat_0\.aedat \(aedat2\) holds no events; the file is "
                 r"truncated", root_mtime=False)
    gesture = tmp_path / "gesture"
    make_gesture(gesture)
    write_aedat31(gesture / "extract/DvsGesture/user02_led.aedat", random_events(np.random.default_rng(0), 0, 1, 1))
    expect_error("gesture", gesture, r"user02_led\.aedat \(aedat3\) holds no events; the file is truncated",
                 root_mtime=False)


def test_the_missing_root_is_named_only_where_it_matters(tmp_path):
    """With --dvs-raw-dir elsewhere the root is created after the scan: a bad raw file is not the root's fault."""
    raw = tmp_path / "raw"
    _nmnist_lists(raw, "1 5\n", "3 7\n")
    (raw / "3.bs2").write_bytes((raw / "3.bs2").read_bytes()[:-3])
    root = tmp_path / "nmnist"
    message = expect_error("nmnist", root, r"3\.bs2 has \d+ bytes, not a multiple of 5", dvs_raw_dir=str(raw))
    assert "does not exist" not in message
    empty = tmp_path / "empty"
    empty.mkdir()
    message = expect_error("nmnist", root, r"found nothing", dvs_raw_dir=str(empty))
    assert "does not exist" not in message
    expect_error("nmnist", root, rf"found nothing \(the folder {tmp_path / 'absent'} does not exist\)",
                 dvs_raw_dir=str(tmp_path / "absent"))
    expect_error("nmnist", root, rf"found nothing \(the dataset root {root} does not exist\)")


def test_nmnist_classes_outside_the_digits_are_refused(tmp_path):
    """1-based lists (class 10) made a folder 10 that was never indexed: its recordings silently vanished."""
    raw = tmp_path / "raw"
    _nmnist_lists(raw, "#sample #class\n1 10\n2 1\n", "3 0\n")
    root = tmp_path / "nmnist"
    expect_error("nmnist", root, r"raw/train\.txt, row 2 \('1 10'\): class 10 is not a digit 0\.\.9",
                 dvs_raw_dir=str(raw))
    (raw / "train.txt").write_text("1 1\n2 -1\n")
    expect_error("nmnist", root, r"raw/train\.txt, row 2 \('2 -1'\): class -1 is not a digit", dvs_raw_dir=str(raw))

    official = tmp_path / "official"
    for path in ("Train/10/a.bin", "Train/1/b.bin", "Test/0/c.bin"):
        write_atis(official / path, random_events(np.random.default_rng(0), 10, 34, 34))
    expect_error("nmnist", root, r"official/Train/10 is not a digit folder 0\.\.9", dvs_raw_dir=str(official))

    converted = tmp_path / "converted"  # an events_np converted before the check (or by another tool)
    for sid in ("train/10/a", "train/1/b", "test/0/c"):
        (converted / "events_np" / sid).parent.mkdir(parents=True, exist_ok=True)
        np.savez(converted / "events_np" / f"{sid}.npz", **random_events(np.random.default_rng(0), 10, 34, 34))
    expect_error("nmnist", converted, r"events_np/train/10 is not a digit folder 0\.\.9, its samples would be left "
                 r"out; delete .*events_np to rebuild it")


# --------------------------------------------------------------------------------------------- wrong layout
def test_wrong_layouts_name_where_the_files_are(tmp_path):
    root = tmp_path / "cifar"
    make_cifar10_dvs(root, per_class=1)
    for c in os.listdir(root / "extract"):  # classes directly under the root instead of extract/
        shutil.move(str(root / "extract" / c), str(root / c))
    (root / "extract").rmdir()
    message = expect_error("cifar10-dvs", root, r"expected .*/extract/<class>/\*\.aedat .*found nothing")
    assert f"1 in {root}/airplane" in message

    caltech = tmp_path / "caltech"
    make_ncaltech101(caltech, per_class=1)
    shutil.move(str(caltech / "extract/Caltech101"), str(caltech / "Caltech101"))  # not under extract/
    message = expect_error("ncaltech101", caltech, r"found nothing \(found \.bin files elsewhere")
    assert f"{caltech}/Caltech101/BACKGROUND_Google" in message

    file_root = tmp_path / "a_file"
    file_root.write_text("not a folder")
    expect_error("gesture", file_root, "is a file, expected a directory")

    tet = tmp_path / "tet"
    (tet / "train").mkdir(parents=True)
    (tet / "train" / "3.pt").write_bytes(b"")
    expect_error("cifar10-dvs-tet", tet, r"not numbered 0\.\.0")


def test_incomplete_archives_and_no_download_without_flag(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr("torchvision.datasets.utils.download_url", lambda *a, **k: calls.append(a))
    root = tmp_path / "cifar"
    (root / "download").mkdir(parents=True)
    for c in ("airplane", "bird"):
        (root / "download" / f"{c}.zip").write_bytes(b"user archive, never deleted")
    expect_error("cifar10-dvs", root, r"expected the archives airplane\.zip, .* missing automobile\.zip, cat\.zip")
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error("cifar10-dvs", empty, "pass --download")
    gesture = tmp_path / "gesture"
    gesture.mkdir()
    expect_error("gesture", gesture, r"cannot be downloaded automatically.*DvsGesture\.tar\.gz", download=True)
    assert calls == []


def test_archives_in_download_are_extracted_without_checksums(tmp_path):
    src = tmp_path / "src"
    make_ncaltech101(src, per_class=2)
    root = tmp_path / "root"
    (root / "download").mkdir(parents=True)
    shutil.make_archive(str(root / "download" / "Caltech101"), "zip", src / "extract", "Caltech101")
    archive = (root / "download" / "Caltech101.zip").read_bytes()
    dataset = build_dvs_dataset("ncaltech101", root, "train", dvs_args())
    assert len(dataset) == 3 and (root / "extract/Caltech101/accordion/image_0001.bin").is_file()
    assert (root / "download" / "Caltech101.zip").read_bytes() == archive  # the user's archive is untouched

    bad = tmp_path / "bad"
    (bad / "download").mkdir(parents=True)
    shutil.make_archive(str(bad / "download" / "Caltech101"), "zip", src / "extract" / "Caltech101", "accordion")
    # a wrong archive is extracted to a temporary folder, checked and removed: the root's entries are unchanged
    message = expect_error("ncaltech101", bad, r"expected .*/extract/Caltech101/<class>/\*\.bin.*nothing was kept",
                           root_mtime=False)
    assert ".tmp" not in message


# --------------------------------------------------------------------------------------------- crash safety
def test_stale_markers_and_partial_dirs_are_cleared(tmp_path, caplog):
    make_cifar10_dvs(tmp_path, per_class=2)
    (tmp_path / "events_np.building").touch()  # what spikingjelly leaves after any failure
    (tmp_path / "events_np" / "airplane").mkdir(parents=True)
    (tmp_path / "events_np" / "airplane" / "junk.npz").write_bytes(b"partial")
    (tmp_path / ".frames_number_4_split_by_number.tmp-99999").mkdir()  # our own interrupted build
    (tmp_path / "frames_number_4_split_by_number.building").touch()
    with caplog.at_level(logging.WARNING, logger="data.dvs_build"):
        dataset = build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args(time_steps=4))
    assert len(dataset) == 20 and dataset[0][0].shape == (4, 2, 64, 64)
    assert "interrupted dataset build" in caplog.text and "events_np.building" in caplog.text
    assert not (tmp_path / "events_np.building").exists() and not (tmp_path / "events_np/airplane/junk.npz").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert not (tmp_path / "frames_number_4_split_by_number.building").exists()


def test_a_crash_during_the_build_leaves_no_half_written_folder(tmp_path, monkeypatch):
    make_cifar10_dvs(tmp_path, per_class=2)
    before = snapshot(tmp_path, root_mtime=False)
    calls = []
    real = dvs_build.run_job

    def flaky(job, out):
        calls.append(job)
        if len(calls) == 5:
            raise KeyboardInterrupt  # a killed job
        return real(job, out)

    monkeypatch.setattr(dvs_build, "run_job", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args())
    assert snapshot(tmp_path, root_mtime=False) == before  # no events_np, no temporary folder
    monkeypatch.undo()

    real_integrate = dvs_build.integrate_frames
    monkeypatch.setattr(dvs_build, "integrate_frames", lambda *a: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError, match="disk full"):
        build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args())
    assert (tmp_path / "events_np").is_dir() and not list(tmp_path.glob("*frames*"))
    monkeypatch.setattr(dvs_build, "integrate_frames", real_integrate)
    assert len(build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args())) == 20


def test_incomplete_frame_cache_and_empty_events_np_are_reported(tmp_path):
    make_cifar10_dvs(tmp_path, per_class=2)
    build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args())
    (tmp_path / "frames_number_4_split_by_number/cat/cifar10_cat_1.npz").unlink()
    expect_error("cifar10-dvs", tmp_path, r"frame cache .*lacks 1 of 20 samples .*cifar10_cat_1\.npz\); delete")
    shutil.rmtree(tmp_path / "events_np")
    (tmp_path / "events_np").mkdir()
    expect_error("cifar10-dvs", tmp_path, "exists but is empty")


def test_tet_labels_beyond_num_classes_are_refused(tmp_path, caplog):
    """TET's files skipped the class-count check: labels up to 9 with num_classes=5 crashed in the loss.  The head
    is checked against CIFAR10-DVS's 10 classes at once, each file's label as it is read (a file holds a whole
    sample: reading every label up front would read the whole dataset at every start)."""
    from engine.errors import DatasetError

    for part in ("train", "test"):
        (tmp_path / part).mkdir()
        for i, label in enumerate((0, 1, 2, 12)):
            torch.save((torch.rand(2, 8, 8, 4), torch.tensor([label])), tmp_path / part / f"{i}.pt")
    with pytest.raises(DatasetError, match=r"cifar10-dvs-tet train split has labels 0\.\.9 but --num-classes is 5"):
        build_dvs_dataset("cifar10-dvs-tet", tmp_path, "train", dvs_args(num_classes=5))
    dataset = build_dvs_dataset("cifar10-dvs-tet", tmp_path, "train", dvs_args(num_classes=10))
    assert dataset[2][1] == 2
    with pytest.raises(DVSConfigError, match=r"cifar10-dvs-tet: .*/train/3\.pt holds label 12 but num_classes=10"):
        dataset[3]
    assert build_dvs_dataset("cifar10-dvs-tet", tmp_path, "train", dvs_args(num_classes=13))[3][1] == 12
    with caplog.at_level(logging.WARNING):
        build_dvs_dataset("cifar10-dvs-tet", tmp_path, "val", dvs_args(num_classes=12))
    assert "--num-classes is 12 but cifar10-dvs-tet has 10 classes" in caplog.text


def test_num_classes_and_split_arguments_are_checked(tmp_path):
    from engine.errors import ConfigError, DatasetError

    assert issubclass(DVSDataError, DatasetError) and issubclass(DVSDataError, FileNotFoundError)
    make_ncaltech101(tmp_path, per_class=2)
    with pytest.raises(ConfigError, match="3 classes .* num_classes=2"):
        build_dvs_dataset("ncaltech101", tmp_path, "train", dvs_args(num_classes=2))
    with pytest.raises(ValueError, match="dvs_split_ratio=0.0"):
        build_dvs_dataset("ncaltech101", tmp_path, "train", dvs_args(dvs_split_ratio=0.0))
    with pytest.raises(ValueError, match="unknown DVS dataset"):
        build_dvs_dataset("dvs-imagenet", tmp_path, "train", dvs_args())


# --------------------------------------------------------------------------------------------- downloads
def _class_zips(tmp_path: Path) -> dict[str, bytes]:
    """{<class>.zip: bytes} of a one-recording-per-class CIFAR10-DVS, laid out as the figshare archives."""
    src = tmp_path / "src"
    make_cifar10_dvs(src, per_class=1)
    for c in os.listdir(src / "extract"):
        shutil.make_archive(str(src / c), "zip", src / "extract", c)
    return {f"{c}.zip": (src / f"{c}.zip").read_bytes() for c in os.listdir(src / "extract")}


def test_an_interrupted_download_is_never_taken_for_an_archive(tmp_path, monkeypatch):
    """A dropped connection left a partial <class>.zip that every later run trusted and died on (BadZipFile); two
    ranks on one root extracted each other's half-written zips."""
    import fcntl
    import hashlib

    zips = _class_zips(tmp_path)
    md5 = {name: hashlib.md5(data).hexdigest() for name, data in zips.items()}
    monkeypatch.setattr(dvs_build, "_resources", lambda name: ([(f, f"https://x/{f}", md5[f]) for f in sorted(zips)],
                                                                True))
    root = tmp_path / "root"
    fetched, drop, corrupt = [], {"cat.zip"}, {"dog.zip"}

    def download_url(url, root, filename, md5=None):  # torchvision streams straight into root/filename
        name = url.rsplit("/", 1)[1]
        fd = os.open(Path(root).parent, os.O_RDONLY)  # the root's lock is held by the downloader
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.close(fd)
        fetched.append(name)
        with open(os.path.join(root, filename), "wb") as f:
            if name in drop:
                f.write(zips[name][:len(zips[name]) // 2])
                raise OSError("Connection reset by peer")
            f.write(zips[name][:-10] if name in corrupt else zips[name])

    monkeypatch.setattr("torchvision.datasets.utils.download_url", download_url)
    with pytest.raises(DVSDataError, match=r"downloading cat\.zip from https://x/cat\.zip failed"):
        build_dvs_dataset("cifar10-dvs", root, "train", dvs_args(download=True))
    assert sorted(os.listdir(root / "download")) == ["airplane.zip", "automobile.zip", "bird.zip"]
    drop.clear()
    (root / "download" / ".cat.zip.part-99999").write_bytes(b"left by a killed process")
    with pytest.raises(DVSDataError, match=r"download of dog\.zip .* does not match its MD5"):
        build_dvs_dataset("cifar10-dvs", root, "train", dvs_args(download=True))
    assert sorted(os.listdir(root / "download")) == ["airplane.zip", "automobile.zip", "bird.zip", "cat.zip",
                                                     "deer.zip"]
    corrupt.clear()
    fetched.clear()
    assert len(build_dvs_dataset("cifar10-dvs", root, "train", dvs_args(download=True))) == 10
    assert fetched == ["dog.zip", "frog.zip", "horse.zip", "ship.zip", "truck.zip"]
    assert sorted(os.listdir(root / "download")) == sorted(zips)


def test_a_damaged_archive_is_one_error_naming_it(tmp_path):
    zips = _class_zips(tmp_path)
    root = tmp_path / "root"
    (root / "download").mkdir(parents=True)
    for name, data in zips.items():
        (root / "download" / name).write_bytes(data[:len(data) // 2] if name == "cat.zip" else data)
    expect_error("cifar10-dvs", root, r"cannot extract .*/download/cat\.zip \(BadZipFile: .*\): the archive is "
                 r"damaged or incomplete .*; delete it and rerun with --download", root_mtime=False)


# --------------------------------------------------------------------------------------------- damaged caches
def test_damaged_cache_files_are_one_error_naming_the_folder_to_delete(tmp_path):
    make_cifar10_dvs(tmp_path, per_class=2)
    dataset = build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args())
    frames = Path(dataset.files[3])
    frames.write_bytes(frames.read_bytes()[:50])
    with pytest.raises(DVSDataError, match=rf"cannot read the cached file {frames} \(BadZipFile: .*\); .*delete "
                                           rf"{tmp_path / 'frames_number_4_split_by_number'} to rebuild it"):
        dataset[3]
    shutil.rmtree(tmp_path / "frames_number_4_split_by_number")
    events = tmp_path / "events_np" / "cat" / "cifar10_cat_1.npz"
    events.write_bytes(b"")
    expect_error("cifar10-dvs", tmp_path, rf"cannot read the cached file {events} \(EOFError: .*delete "
                                          rf"{tmp_path / 'events_np'} to rebuild it", root_mtime=False)


def test_a_larger_num_classes_is_warned_about(tmp_path, caplog):
    make_ncaltech101(tmp_path, per_class=2)
    with caplog.at_level(logging.WARNING):
        build_dvs_dataset("ncaltech101", tmp_path, "val", dvs_args(num_classes=5))
    assert "--num-classes is 5 but ncaltech101 has 3 classes" in caplog.text


def test_a_failed_or_interrupted_conversion_stops_the_queued_jobs(monkeypatch):
    monkeypatch.setattr(dvs_build, "_workers", lambda: 2)
    calls = []

    def job(item):
        calls.append(item)
        if item == 3:
            raise KeyboardInterrupt
        time.sleep(0.01)

    with pytest.raises(KeyboardInterrupt):
        dvs_build._run_parallel(job, range(100))
    assert len(calls) < 10


def test_tet_labels_are_checked_at_both_ends_of_the_class_range(tmp_path):
    """With num_classes=10 the labels are 0..9: 10 (one past the head) and -1 are refused, 9 is read."""
    (tmp_path / "train").mkdir()
    for i, label in enumerate((9, 10, -1)):
        torch.save((torch.rand(2, 8, 8, 4), torch.tensor([label])), tmp_path / "train" / f"{i}.pt")
    dataset = build_dvs_dataset("cifar10-dvs-tet", tmp_path, "train", dvs_args(num_classes=10))
    assert dataset[0][1] == 9
    for index, label in ((1, 10), (2, -1)):
        with pytest.raises(DVSConfigError, match=rf"/train/{index}\.pt holds label {label} but num_classes=10"):
            dataset[index]


def test_nmnist_events_np_ignores_hidden_folders_and_stray_files(tmp_path):
    """Only a visible folder outside 0..9 would hold samples left out: ``.ipynb_checkpoints`` or a ``notes``
    file next to the digit folders is no reason to refuse the converted events."""
    for sid in ("train/1/b", "test/0/c"):
        (tmp_path / "events_np" / sid).parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp_path / "events_np" / f"{sid}.npz", **random_events(np.random.default_rng(0), 10, 34, 34))
    (tmp_path / "events_np" / "train" / ".ipynb_checkpoints").mkdir()
    (tmp_path / "events_np" / "train" / "notes").write_text("x")
    dataset = build_dvs_dataset("nmnist", tmp_path, "train", dvs_args())
    assert len(dataset) >= 1
