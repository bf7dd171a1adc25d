"""Data mutation round 3: numbers, orders and messages of data/ that no earlier test pinned down.

Each test names the line it guards: split records and split-file names (``data.splits``), event-to-frame
integration and the frame cache (``data.dvs_build``), raw-layout checks (``data.dvs_raw``), the dataset builder
(``data.neuromorphic``), the DVS augmentations checked by hand on single points (``data.dvs_augment``) and the
static image sets (``data.static``). Inputs are tiny synthetic files; nothing here reads ../shared.
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil

import numpy as np
import pytest
import torch

from data.dvs_augment import Cutout, DVSTrainTransform, FlipRoll, NCaltechAugment, SNNAugmentWide
from data.dvs_build import integrate_frames
from data.dvs_raw import DVSDataError, misplaced_hint, read_atis
from data.neuromorphic import build_dvs_dataset
from data.splits import compute_split, default_split_files, default_split_path, load_or_create_split
from engine.errors import DatasetError
from test_data_dvs_formats import dvs_args, make_cifar10_dvs, make_gesture, make_ncaltech101, random_events, \
    write_atis


# --------------------------------------------------------------------------------------------- data.splits
def test_the_published_split_refuses_files_not_named_cifar10_class_index():
    """The published split tells val from train by the index in cifar10_<class>_<i>: a file named otherwise, or
    with a non-numeric index, is one DVSDataError naming it (not a silent guess or a bare int() ValueError)."""
    for sid in ("airplane/other_5", "airplane/cifar10_airplane_x"):
        with pytest.raises(DVSDataError, match=f"needs files named cifar10_<class>_<i>, got {sid}"):
            compute_split("cifar10-dvs", {"airplane": ["airplane/cifar10_airplane_0", sid]}, "published", 0.9, 1)


def test_the_published_record_has_no_ratio_and_no_seed():
    """Schema: 'published' uses neither a ratio nor a seed, so the record stores None for both (a later run with
    another --dvs-split-ratio must not look like a different split) and its file name has neither."""
    ids = {"cat": [f"cat/cifar10_cat_{i}" for i in (0, 99, 100, 101)]}
    record = compute_split("cifar10-dvs", ids, "published", 0.7, 5)
    assert (record["ratio"], record["seed"]) == (None, None)
    assert (record["num_train"], record["num_val"]) == (2, 2) and record["val"] == ids["cat"][:2]
    assert default_split_path("r", "cifar10-dvs", "published", 0.7, 5).name == "cifar10-dvs_published.json"


def test_both_lists_of_a_stratified_record_are_sorted():
    """Module docstring: 'both lists are sorted'. The stratified order (by sha256) is not the sorted order, so the
    record must sort what it picked; the picks per class are still ceil(0.6 * 10) = 6."""
    ids = {c: [f"{c}/s{i:02d}" for i in range(10)] for c in ("a", "b")}
    record = compute_split("cifar10-dvs", ids, "stratified", 0.6, 3)
    assert record["train"] == sorted(record["train"]) and record["val"] == sorted(record["val"])
    assert record["train"] != ids["a"][:6] + ids["b"][:6]  # not simply the first ones: the hash order was used
    assert sum(sid.startswith("a/") for sid in record["train"]) == 6 and record["num_train"] == 12


def test_the_same_ratio_written_as_int_or_float_names_one_split_file():
    """The ratio is written with ':g': 1 and 1.0 are one split, so they must name one file (else a run reads an
    int from YAML and computes a second copy next to the first)."""
    as_int = default_split_path("r", "cifar10-dvs", "first", 1, 0)
    assert as_int == default_split_path("r", "cifar10-dvs", "first", 1.0, 0)
    assert as_int.name == "cifar10-dvs_first_ratio1.json"


def test_default_split_files_lists_negative_seeds_and_no_look_alikes(tmp_path):
    """Every name default_split_path makes (a negative seed too) is listed, so a new conversion deletes it; a
    user's backup that merely starts like one ('....json.bak') and another dataset's split are not."""
    ours = [default_split_path(tmp_path, "cifar10-dvs", *spec) for spec in
            (("published", 0.9, 0), ("first", 0.85, 0), ("stratified", 0.9, -3), ("stratified", 0.9, 42))]
    others = [tmp_path / "splits" / name for name in ("cifar10-dvs_published.json.bak", "ncaltech101_first_ratio0.9"
                                                      ".json", "cifar10-dvs_stratified_ratio0.9_seed42.json~")]
    (tmp_path / "splits").mkdir()
    for path in ours + others:
        path.write_text("{}")
    assert default_split_files(tmp_path, "cifar10-dvs") == sorted(ours)


def _saved(tmp_path, record: dict):
    path = tmp_path / "split.json"
    path.write_text(json.dumps(record))
    return path


def test_a_split_file_of_another_dataset_or_with_shared_samples_is_refused(tmp_path):
    """A saved split is checked before use: one written for another dataset, and one that puts a sample in both
    lists (it would be trained on and validated on), are DVSDataErrors saying which."""
    by_class = {"a": ["a/1", "a/2", "a/3"]}
    record = compute_split("ncaltech101", by_class, "first", 0.5, 0)
    path = _saved(tmp_path, record)
    with pytest.raises(DVSDataError, match=r"is not a format-1 split file for cifar10-dvs \(format 1, dataset "
                                           r"'ncaltech101'\)"):
        load_or_create_split(tmp_path, "cifar10-dvs", by_class, "first", 0.5, 0, path)
    record["val"].append(record["train"][0])  # int(0.5 * 3) = 1 train sample: a/1
    with pytest.raises(DVSDataError, match=r"puts 1 samples in both train and val \(first: a/1\)"):
        load_or_create_split(tmp_path, "ncaltech101", by_class, "first", 0.5, 0, _saved(tmp_path, record))


# --------------------------------------------------------------------------------------------- data.dvs_build
def test_events_at_x_equal_w_or_y_equal_h_are_dropped_not_moved(caplog):
    """On a 2 x 4 sensor x runs 0..3 and y 0..1. spikingjelly's flat index y * W + x would count x = 4 at pixel
    (1, 0) and fail on y = 2; both are dropped with one warning, and the two events inside stay where they are."""
    events = {"t": np.arange(4), "x": np.array([0, 3, 4, 0]), "y": np.array([0, 1, 0, 2]), "p": np.array([0, 1, 1, 0])}
    with caplog.at_level(logging.WARNING, logger="data.dvs_build"):
        frames = integrate_frames(events, 1, 2, 4)
    expected = np.zeros((1, 2, 2, 4), dtype=np.float32)
    expected[0, 0, 0, 0] = expected[0, 1, 1, 3] = 1
    np.testing.assert_array_equal(frames, expected)
    assert "Dropping 2 of 4 events outside the 2x4 sensor" in caplog.text


def test_integrated_frames_and_their_cache_files_are_float32(tmp_path):
    """integrate_frames returns float32 (spikingjelly gives float64), so the cached frames are float32 on disk."""
    events = {"t": np.arange(3), "x": np.array([0, 1, 1]), "y": np.array([0, 0, 1]), "p": np.array([1, 0, 1])}
    assert integrate_frames(events, 2, 2, 2).dtype == np.float32
    make_cifar10_dvs(tmp_path, per_class=1)
    build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args(time_steps=2, dvs_split_ratio=1.0))
    with np.load(tmp_path / "frames_number_2_split_by_number/cat/cifar10_cat_0.npz") as cached:
        assert cached["frames"].dtype == np.float32 and cached["frames"].shape == (2, 2, 128, 128)


def test_download_with_every_archive_present_extracts_them_without_fetching(tmp_path):
    """--download only fetches missing archives: N-Caltech101 (never downloadable) with its archive already in
    download/ is extracted and used, not refused as 'cannot be downloaded automatically'."""
    src = tmp_path / "src"
    make_ncaltech101(src, per_class=2)
    root = tmp_path / "root"
    (root / "download").mkdir(parents=True)
    shutil.make_archive(str(root / "download" / "Caltech101"), "zip", src / "extract", "Caltech101")
    dataset = build_dvs_dataset("ncaltech101", root, "train", dvs_args(download=True))
    assert len(dataset) == 3  # int(0.9 * 2) = 1 per class, 3 classes


def test_no_other_source_warning_when_the_raw_folder_is_absent(tmp_path, caplog):
    """events_np converted from --dvs-raw-dir A is reused by a run without the flag (root/extract absent): there
    are no other raw files to ignore, so nothing is said; a run naming another existing folder is warned about."""
    make_cifar10_dvs(tmp_path / "a", per_class=1)
    root = tmp_path / "root"
    args = dict(time_steps=2, dvs_split_ratio=1.0)
    build_dvs_dataset("cifar10-dvs", root, "train", dvs_args(dvs_raw_dir=str(tmp_path / "a" / "extract"), **args))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="data.dvs_build"):
        build_dvs_dataset("cifar10-dvs", root, "train", dvs_args(**args))
        assert "was converted from" not in caplog.text
        build_dvs_dataset("cifar10-dvs", root, "train", dvs_args(dvs_raw_dir=str(tmp_path), **args))
        assert f"was converted from {(tmp_path / 'a' / 'extract').resolve()}, not from {tmp_path}" in caplog.text


def test_no_download_hint_when_the_raw_folder_exists(tmp_path):
    """--download is tried only when <root>/extract is missing, so an existing but empty extract/ gets no
    'pass --download' hint (it would do nothing); without extract/ the hint is given."""
    (tmp_path / "extract").mkdir()
    with pytest.raises(DVSDataError, match="found nothing") as info:
        build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args())
    assert "--download" not in str(info.value)
    (tmp_path / "extract").rmdir()
    with pytest.raises(DVSDataError, match="pass --download to fetch it from figshare"):
        build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args())


def test_a_frame_cache_next_to_its_build_marker_is_rebuilt(tmp_path):
    """spikingjelly leaves '<frames dir>.building' after a failed build: the folder is then partial even if every
    file is there (one here holds zeros), so it is deleted and rebuilt, and the marker goes."""
    make_cifar10_dvs(tmp_path, per_class=1)
    args = dict(time_steps=2, dvs_split_ratio=1.0)
    good = build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args(**args))[0][0]
    frames_dir = tmp_path / "frames_number_2_split_by_number"
    np.savez(frames_dir / "airplane" / "cifar10_airplane_0.npz", frames=np.zeros((2, 2, 128, 128), np.float32))
    (tmp_path / "frames_number_2_split_by_number.building").touch()
    again = build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args(**args))
    assert again.sample_ids[0] == "airplane/cifar10_airplane_0" and good.sum() > 0
    assert torch.equal(again[0][0], good) and not (tmp_path / "frames_number_2_split_by_number.building").exists()


# --------------------------------------------------------------------------------------------- data.dvs_raw
def _gesture_error(tmp_path, csv_text: str | None = None, delete: tuple[str, ...] = ()) -> str:
    make_gesture(tmp_path)
    base = tmp_path / "extract" / "DvsGesture"
    if csv_text is not None:
        (base / "user02_led_labels.csv").write_text(csv_text)
    for name in delete:
        (base / name).unlink()
    with pytest.raises(DVSDataError) as info:
        build_dvs_dataset("gesture", tmp_path, "train", dvs_args())
    return str(info.value)


def test_gesture_labels_outside_1_to_11_or_not_3_columns_are_refused(tmp_path):
    """CSV classes are 1..11 (stored in folder class - 1): class 0 would make folder '-1'; a 4th column means the
    file is not the labels CSV. Both are one error naming the file."""
    header = "class,startTime_usec,endTime_usec\n"
    message = _gesture_error(tmp_path / "a", header + "1,0,10\n0,10,20\n")
    assert "user02_led_labels.csv: class 0 is outside 1..11" in message
    message = _gesture_error(tmp_path / "b", header + "1,0,10,7\n")
    assert "user02_led_labels.csv: expected 3 columns (class,startTime_usec,endTime_usec), got 4" in message


def test_five_missing_gesture_files_show_four_and_one_more(tmp_path):
    """The message lists at most 4 missing files and counts the rest: 5 missing show 4 'and 1 more'."""
    message = _gesture_error(tmp_path, delete=("user01_fluorescent.aedat", "user01_fluorescent_labels.csv",
                                               "user02_led.aedat", "user02_led_labels.csv", "user24_natural.aedat"))
    assert ("5 listed files are missing from " in message and message.endswith(
        "user01_fluorescent.aedat, user01_fluorescent_labels.csv, user02_led.aedat, user02_led_labels.csv and 1 more"))


def _nmnist_raw(raw, lists: dict[str, str]) -> None:
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, text in lists.items():
        (raw / name).write_text(text)
        for line in text.splitlines():
            write_atis(raw / f"{line.split()[0]}.bs2", random_events(rng, 10, 34, 34))


def test_nmnist_lists_need_one_per_split_and_numeric_classes(tmp_path):
    """Two train*.txt lists are ambiguous (one error, not an unpacking ValueError), and a class that is not a
    number is one error quoting the row."""
    raw = tmp_path / "raw"
    _nmnist_raw(raw, {"train.txt": "1 1\n", "train2.txt": "2 2\n", "test.txt": "3 3\n"})
    with pytest.raises(DVSDataError, match=rf"need exactly one train\*\.txt list in {raw}, found 3 lists"):
        build_dvs_dataset("nmnist", tmp_path / "root", "train", dvs_args(dvs_raw_dir=str(raw)))
    (raw / "train2.txt").unlink()
    (raw / "train.txt").write_text("1 one\n")
    with pytest.raises(DVSDataError, match=r"train\.txt: expected '<sample> <class>' rows, got '1 one'"):
        build_dvs_dataset("nmnist", tmp_path / "root", "train", dvs_args(dvs_raw_dir=str(raw)))


def test_misplaced_hint_names_three_folders_and_counts_the_rest(tmp_path):
    """Four folders holding .bin files: the hint names the first three (sorted) and says '1 more folders'."""
    for folder in "abcd":
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.bin").write_bytes(b"")
    hint = misplaced_hint(tmp_path, (".bin",))
    assert f"1 in {tmp_path}/a, 1 in {tmp_path}/b, 1 in {tmp_path}/c and 1 more folders;" in hint


def test_six_empty_ncaltech_classes_show_five_and_an_ellipsis(tmp_path):
    """The partial-extraction error names at most 5 empty class folders and ends with ' ...' when there are more."""
    make_ncaltech101(tmp_path, per_class=1)
    for i in range(6):
        (tmp_path / "extract" / "Caltech101" / f"empty{i}").mkdir()
    with pytest.raises(DVSDataError, match=r"no \.bin files in .*/empty0, .*/empty4 \.\.\.$"):
        build_dvs_dataset("ncaltech101", tmp_path, "train", dvs_args())


def test_hidden_raw_folders_are_not_classes_or_digits(tmp_path):
    """Hidden folders (a file manager's or a sync tool's) are skipped: an empty one among the N-Caltech101 classes
    is no 'partially extracted' class, and one in N-MNIST's Train/ is no non-digit folder."""
    make_ncaltech101(tmp_path / "c", per_class=2)
    (tmp_path / "c" / "extract" / "Caltech101" / ".thumbnails").mkdir()
    assert len(build_dvs_dataset("ncaltech101", tmp_path / "c", "val", dvs_args()).classes) == 3
    rng = np.random.default_rng(0)
    for path in ("Train/1/a.bin", "Test/2/b.bin"):
        write_atis(tmp_path / "n" / path, random_events(rng, 10, 34, 34))
    (tmp_path / "n" / "Train" / ".cache").mkdir()
    assert len(build_dvs_dataset("nmnist", tmp_path / "root", "train", dvs_args(dvs_raw_dir=str(tmp_path / "n")))) == 1


def test_every_atis_overflow_marker_advances_later_times_by_2_pow_23(tmp_path):
    """Two markers (y == 240): events after the first get + 2**23 us, after the second + 2 * 2**23."""
    events = {"t": np.array([10, 0, 20, 0, 30]), "x": np.array([1, 0, 2, 0, 3]), "y": np.array([4, 240, 5, 240, 6]),
              "p": np.array([1, 0, 0, 0, 1])}
    write_atis(tmp_path / "a.bin", events)
    decoded = read_atis(tmp_path / "a.bin")
    np.testing.assert_array_equal(decoded["t"], [10, 20 + 2 ** 23, 30 + 2 * 2 ** 23])
    np.testing.assert_array_equal(decoded["x"], [1, 2, 3])


# --------------------------------------------------------------------------------------------- data.neuromorphic
def test_a_one_element_img_size_is_square(tmp_path):
    """--img-size 48 given as a one-element list means 48 x 48 frames."""
    make_cifar10_dvs(tmp_path, per_class=1)
    dataset = build_dvs_dataset("cifar10-dvs", tmp_path, "train", dvs_args(img_size=[48], time_steps=2))
    assert dataset[0][0].shape == (2, 2, 48, 48)


def test_ncaltech_augmentation_is_on_by_default_only_for_ncaltech_training():
    """dvs_ncaltech_aug=None (the default) means STAtten's augmentation on N-Caltech101 training only; an explicit
    False turns it off there, True turns it on elsewhere."""
    from data.neuromorphic import _transform

    on = _transform("ncaltech101", argparse.Namespace(dvs_ncaltech_aug=None), True)
    assert [type(t) for t in on.transforms] == [NCaltechAugment]
    assert _transform("ncaltech101", argparse.Namespace(dvs_ncaltech_aug=None), False) is None
    assert _transform("ncaltech101", argparse.Namespace(dvs_ncaltech_aug=False), True) is None
    assert _transform("cifar10-dvs", argparse.Namespace(dvs_ncaltech_aug=None), True) is None
    assert [type(t) for t in _transform("gesture", argparse.Namespace(dvs_ncaltech_aug=True), True).transforms] == [
        NCaltechAugment]


def test_hidden_folders_in_events_np_are_no_classes_and_a_short_class_list_is_warned(tmp_path, caplog):
    """N-Caltech101 classes are events_np's folders, hidden ones excepted; 3 of the 101 classes are warned about."""
    make_ncaltech101(tmp_path, per_class=2)
    build_dvs_dataset("ncaltech101", tmp_path, "val", dvs_args(time_steps=2))
    (tmp_path / "events_np" / ".trash").mkdir()
    with caplog.at_level(logging.WARNING, logger="data.neuromorphic"):
        val = build_dvs_dataset("ncaltech101", tmp_path, "val", dvs_args(time_steps=2))
    assert val.classes == ["BACKGROUND_Google", "Faces_easy", "accordion"] and len(val) == 3
    assert "ncaltech101: found 3 classes, the full dataset has 101" in caplog.text


def test_a_reused_split_file_records_its_own_ratio(tmp_path):
    """A split saved with ratio 0.8 and reused by a run asking for 0.9: the file wins, so args.yaml must record 0.8
    (ceil(0.8 * 5) = 4 training samples per class are what was used)."""
    make_cifar10_dvs(tmp_path, per_class=5)
    path = str(tmp_path / "mine.json")
    build_dvs_dataset("cifar10-dvs", tmp_path, "val", dvs_args(dvs_split="first", dvs_split_ratio=0.8,
                                                               dvs_split_file=path, time_steps=2))
    args = dvs_args(dvs_split="first", dvs_split_ratio=0.9, dvs_split_file=path, time_steps=2)
    train = build_dvs_dataset("cifar10-dvs", tmp_path, "train", args)
    assert len(train) == 40 and args.dvs_split_ratio == 0.8


# --------------------------------------------------------------------------------------------- data.dvs_augment
def test_cutout_of_16_zeroes_a_whole_4x4_frame():
    """The 16 x 16 hole spans [c - 8, c + 8) clipped to the frame; with the centre anywhere in a 4 x 4 frame that
    covers rows and columns 0..3, border ones included."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        assert Cutout(1, 16)(torch.ones(2, 2, 4, 4), generator).sum() == 0


def test_flip_roll_probability_and_shift_range():
    """p=1 always flips and p=0 never (max_shift=0: no roll); with max_shift=1 the rolls cover all 9 offsets
    (dy, dx) in [-1, 1]^2, both ends included."""
    x = torch.arange(30.0).reshape(1, 1, 5, 6)
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(FlipRoll(p=1.0, max_shift=0)(x, generator), x.flip(-1))
    assert torch.equal(FlipRoll(p=0.0, max_shift=0)(x, generator), x)
    seen = set()
    for _ in range(100):
        y = FlipRoll(p=0.0, max_shift=1)(x, generator)
        seen |= {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if torch.equal(y, torch.roll(x, (dy, dx), (2, 3)))}
    assert seen == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}


def _point(size: int, row: int, col: int) -> torch.Tensor:
    x = torch.zeros(1, 2, size, size)
    x[:, :, row, col] = 1
    return x


def _where(x: torch.Tensor) -> list[list[int]]:
    return (x[0, 0] == 1).nonzero().tolist()


def test_snn_augment_wide_translate_y_rotate_and_shear_by_hand():
    """TranslateY 3.7 moves a point int(3.7) = 3 rows down; Rotate +90 deg is counter-clockwise about the centre
    (7.5, 7.5): (row 8, col 12) goes to (3, 8); ShearX 0.3 is in radians: a point 8 rows below the centre of a
    17 x 17 frame moves 8 * tan(0.3) = 2.5 columns (2 or 3 after NEAREST), the other way for -0.3."""
    aug = SNNAugmentWide()
    assert _where(aug.apply(_point(16, 8, 12), "TranslateY", 3.7)) == [[11, 12]]
    assert _where(aug.apply(_point(16, 8, 12), "Rotate", 90.0)) == [[3, 8]]
    (row, left), = _where(aug.apply(_point(17, 16, 8), "ShearX", 0.3))
    (_, right), = _where(aug.apply(_point(17, 16, 8), "ShearX", -0.3))
    assert row == 16 and 2 <= abs(left - 8) <= 3 and (left - 8) * (right - 8) < 0


def test_snn_augment_wide_magnitude_table_is_the_references():
    """The reference's SNNAugmentWide: ShearX +-0.3, TranslateX/Y +-5, Rotate +-30, 31 bins each."""
    table = SNNAugmentWide().magnitudes
    assert table["Identity"] is None
    for op, end in (("ShearX", 0.3), ("TranslateX", 5.0), ("TranslateY", 5.0), ("Rotate", 30.0)):
        assert len(table[op]) == 31 and table[op][0].item() == pytest.approx(-end) and table[op][-1].item() == \
            pytest.approx(end) and table[op][15].item() == pytest.approx(0.0, abs=1e-6)


def test_the_train_transform_runs_in_the_references_order():
    """The loader-level transform first, then Cutout, then SNNAugmentWide (SDT's order)."""
    transform = DVSTrainTransform(ncaltech=True, cutout=True, trivial=True)
    assert [type(t) for t in transform.transforms] == [NCaltechAugment, Cutout, SNNAugmentWide]
    transform = DVSTrainTransform(flip_roll=True, cutout=True, trivial=True)
    assert [type(t) for t in transform.transforms] == [FlipRoll, Cutout, SNNAugmentWide]


def test_ncaltech_augment_draws_each_of_roll_rotation_and_shear():
    """One of three ops, uniformly. On an all-ones 15 x 15 frame with max_shift=0 a roll changes nothing, a
    rotation zeroes all four corners and an x-shear only two opposite ones: all three patterns show up in 60 draws."""
    generator = torch.Generator().manual_seed(0)
    patterns = set()
    for _ in range(60):
        out = NCaltechAugment(max_shift=0)(torch.ones(1, 1, 15, 15), generator)[0, 0]
        corners = (out[0, 0], out[0, 14], out[14, 0], out[14, 14])
        patterns.add(sum(int(c == 0) for c in corners))
    assert {0, 2, 4} <= patterns


# --------------------------------------------------------------------------------------------- data.static
def test_odd_padding_puts_the_extra_pixel_right_and_below():
    """A 29 x 27 (H x W) image is padded to 32 x 32 with (left, top, right, bottom) = (2, 1, 3, 2): its top-left
    pixel lands at row 1, column 2."""
    from data.static import ArrayImageDataset

    images = np.zeros((1, 29, 27), dtype=np.uint8)
    images[0, 0, 0] = 200
    img, _ = ArrayImageDataset(images, np.array([0]), resize=False)[0]
    pixels = np.asarray(img)[:, :, 0]
    assert pixels.shape == (32, 32) and pixels[1, 2] == 200 and pixels.sum() == 200


def test_idx_magic_needs_both_leading_zero_bytes(tmp_path):
    """The IDX magic number is 0x00 0x00 <type> <ndim>: a second byte of 1 is another file."""
    from data.static import read_idx

    (tmp_path / "bad").write_bytes(bytes([0, 1, 0x08, 1]) + (2).to_bytes(4, "big") + b"\x05\x06")
    with pytest.raises(DatasetError, match="not an IDX file of unsigned bytes"):
        read_idx(str(tmp_path / "bad"))


def test_an_idx_file_cut_off_inside_its_header_is_truncated(tmp_path):
    """An images file (ndim 3) that ends after its first dimension, 8 of the 16 header bytes: one DatasetError
    naming the file as truncated, like a file cut off after its header."""
    from data.static import read_idx

    (tmp_path / "cut").write_bytes(bytes([0, 0, 0x08, 3]) + (5).to_bytes(4, "big"))
    with pytest.raises(DatasetError, match="cut is truncated"):
        read_idx(str(tmp_path / "cut"))


def test_a_larger_head_is_warned_about_for_the_evaluation_split_only(caplog):
    """check_class_count warns once a run: for 'val', which training and evaluation both build, never for 'train'."""
    from data.static import check_class_count

    with caplog.at_level(logging.WARNING, logger="data.static"):
        check_class_count("digits", "train", "train", 10, 12)
        assert not caplog.text
        check_class_count("digits", "validation", "val", 10, 12)
    assert "--num-classes is 12 but digits has 10 classes (labels 0..9 in its validation split)" in caplog.text


def test_digits_are_scaled_to_the_nearest_8_bit_level():
    """load_digits values v in 0..16 become round(v * 255 / 16): 1 -> 16 (15.94), 16 -> 255."""
    from data.static import _build_digits

    images = _build_digits("", "train", "train", argparse.Namespace()).images
    levels = {int(round(v * 255 / 16)) for v in range(17)}
    assert set(np.unique(images).tolist()) <= levels and 16 in np.unique(images) and images.max() == 255


def test_imagenet_evaluation_split_names_are_case_insensitive(tmp_path):
    """'VAL' or 'Validation' read root/val (or root/validation) like 'val', never root/VAL."""
    from data.static import _imagenet_split_folder

    (tmp_path / "validation").mkdir()
    for split in ("VAL", "Validation", "val"):
        assert _imagenet_split_folder(str(tmp_path), split, "val") == str(tmp_path / "validation")


def test_six_unknown_imagenet_classes_show_five_and_an_ellipsis(tmp_path):
    """An evaluation folder with classes train/ lacks names at most five of them, then ' ...'."""
    from data.static import _imagenet_classes

    (tmp_path / "train" / "n00").mkdir(parents=True)
    for i in range(7):
        (tmp_path / "val" / f"n{i:02d}").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"lacks: n01, n02, n03, n04, n05 \.\.\.$"):
        _imagenet_classes(str(tmp_path), str(tmp_path / "val"), "val", argparse.Namespace())
