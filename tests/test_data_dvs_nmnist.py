"""Real N-MNIST recordings through the N-Caltech101 reader path; per-sample reproducible augmentations.

The recordings are read from ``../shared/fixtures/events/nmnist`` (never copied into the project); the tests that
need them are skipped when that folder is absent.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from data.dvs_args import add_dvs_arguments
from data.dvs_augment import Cutout, FlipRoll, NCaltechAugment, SNNAugmentWide, sample_generator
from data.dvs_build import load_events
from data.neuromorphic import DVS_DATASETS, DVS_INFO, NUM_CLASSES, build_dvs_dataset
from engine.args import get_args_parser
from engine.config import dump_args, parse_args
from test_data_dvs_formats import dvs_args, make_cifar10_dvs, numpy_frames

NMNIST = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "events" / "nmnist"
needs_nmnist = pytest.mark.skipif(not (NMNIST / "train1K.txt").is_file(),
                                  reason=f"real N-MNIST recordings not found at {NMNIST} (../shared is absent)")


def _read_list(name):
    rows = [line.split() for line in (NMNIST / name).read_text().splitlines() if line and not line.startswith("#")]
    return [(sample, int(label)) for sample, label in rows]


def _subset(tmp_path: Path, n_train=60, n_test=20) -> tuple[Path, list, list]:
    """A raw folder of symlinks to the first recordings, with trimmed label lists (the slayerPytorch layout)."""
    raw = tmp_path / "raw"
    raw.mkdir()
    train, test = _read_list("train1K.txt")[:n_train], _read_list("test100.txt")[:n_test]
    for name, rows in (("train1K.txt", train), ("test100.txt", test)):
        (raw / name).write_text("#sample #class\n" + "".join(f"{s}\t{c}\n" for s, c in rows))
        for sample, _ in rows:
            os.symlink(NMNIST / f"{sample}.bs2", raw / f"{sample}.bs2")
    return raw, train, test


@needs_nmnist
def test_real_nmnist_loads_through_the_ncaltech101_reader(tmp_path):
    raw, train_rows, test_rows = _subset(tmp_path)
    args = dvs_args(dvs_raw_dir=str(raw), time_steps=4)
    train = build_dvs_dataset("nmnist", tmp_path / "nmnist", "train", args)
    test = build_dvs_dataset("nmnist", tmp_path / "nmnist", "val", args)
    assert len(train) == 60 and len(test) == 20 and args.dvs_split == "official"
    recorded = argparse.Namespace(device="", **{k: v for k, v in vars(args).items() if k.startswith("dvs_split")})
    dump_args(recorded, tmp_path / "args.yaml")  # what the run records reads back with -c (it once was refused)
    assert parse_args(get_args_parser(), ["-c", str(tmp_path / "args.yaml")]).dvs_split == "official"
    labels = dict(train_rows)
    assert [labels[s.rsplit("/", 1)[1]] for s in train.sample_ids] == train.targets
    frames, label = train[0]
    assert frames.shape == (4, 2, 34, 34) and frames.dtype == torch.float32 and frames.sum() > 1000

    # the same files laid out as N-Caltech101 (Caltech101/<class>/<name>.bin) give the same events and frames
    caltech = tmp_path / "caltech"
    for sample, digit in train_rows:
        (caltech / "extract" / "Caltech101" / str(digit)).mkdir(parents=True, exist_ok=True)
        os.symlink(NMNIST / f"{sample}.bs2", caltech / "extract" / "Caltech101" / str(digit) / f"{sample}.bin")
    as_caltech = build_dvs_dataset("ncaltech101", caltech, "train",
                                   dvs_args(time_steps=4, img_size=[180, 240], dvs_split_ratio=1.0))
    assert len(as_caltech) == 60
    for i in range(0, 60, 6):
        sample, digit = train_rows[i]
        ours = load_events(tmp_path / "nmnist" / "events_np" / "train" / str(digit) / f"{sample}.npz")
        theirs = load_events(caltech / "events_np" / str(digit) / f"{sample}.npz")
        for key in "txyp":
            np.testing.assert_array_equal(ours[key], theirs[key])
        assert ours["x"].max() < 34 and ours["y"].max() < 34 and np.all(np.diff(ours["t"]) >= 0)
        j = as_caltech.sample_ids.index(f"{digit}/{sample}")
        big = as_caltech[j][0]
        k = train.sample_ids.index(f"train/{digit}/{sample}")
        torch.testing.assert_close(big[:, :, :34, :34], train[k][0])
        assert big[:, :, 34:].sum() == 0 and big[:, :, :, 34:].sum() == 0
        np.testing.assert_array_equal(train[k][0].numpy(), numpy_frames(ours, 4, 34, 34))

    # spikingjelly's own classes read the folders we wrote (same layout and formats)
    from spikingjelly.datasets import NCaltech101, NMNIST as SJNMNIST

    sj = NCaltech101(str(caltech), data_type="event")
    sample_dict, sj_label = sj[0]
    first = sj.samples[0][0]
    np.testing.assert_array_equal(sample_dict["t"], load_events(first)["t"])
    assert sj.classes[sj_label] == Path(first).parent.name
    sj_frames = SJNMNIST(str(tmp_path / "nmnist"), train=True, data_type="frame", frames_number=4, split_by="number")
    assert len(sj_frames) == 60
    np.testing.assert_array_equal(sj_frames[0][0], train[0][0].numpy())  # both sorted by class, then name


def test_published_split_run_records_args_that_parse_back(tmp_path):
    """A 'published' run recorded dvs_split_ratio: null, which `-c args.yaml` refused; the rerun reuses the split."""
    make_cifar10_dvs(tmp_path / "c10", indices=[0, 1, 100, 101])
    args = dvs_args(dvs_split="published")
    val = build_dvs_dataset("cifar10-dvs", tmp_path / "c10", "val", args)
    recorded = argparse.Namespace(device="", **{k: v for k, v in vars(args).items() if k.startswith("dvs_split")})
    dump_args(recorded, tmp_path / "args.yaml")
    again = parse_args(get_args_parser(), ["-c", str(tmp_path / "args.yaml")])
    assert (again.dvs_split, again.dvs_split_file) == ("published", args.dvs_split_file)
    rerun = build_dvs_dataset("cifar10-dvs", tmp_path / "c10", "val",
                              dvs_args(**{k: getattr(again, k) for k in vars(recorded) if k != "device"}))
    assert rerun.sample_ids == val.sample_ids and len(val) == 20


@needs_nmnist
def test_nmnist_official_zip_layout_matches_list_layout(tmp_path):
    raw, train_rows, test_rows = _subset(tmp_path, 20, 10)
    official = tmp_path / "official"
    for split, rows in (("Train", train_rows), ("Test", test_rows)):
        for sample, digit in rows:
            (official / split / str(digit)).mkdir(parents=True, exist_ok=True)
            os.symlink(NMNIST / f"{sample}.bs2", official / split / str(digit) / f"{sample}.bin")
    a = build_dvs_dataset("nmnist", tmp_path / "a", "val", dvs_args(dvs_raw_dir=str(raw)))
    b = build_dvs_dataset("nmnist", tmp_path / "b", "val", dvs_args(dvs_raw_dir=str(official)))
    assert a.sample_ids == b.sample_ids and a.targets == b.targets
    torch.testing.assert_close(a[3][0], b[3][0])


def test_registry_and_argument_helper():
    assert DVS_DATASETS == ("cifar10-dvs", "cifar10-dvs-tet", "gesture", "ncaltech101", "nmnist")
    assert NUM_CLASSES == {"cifar10-dvs": 10, "cifar10-dvs-tet": 10, "gesture": 11, "ncaltech101": 101, "nmnist": 10}
    assert {k: v.img_size for k, v in DVS_INFO.items()} == {"cifar10-dvs": 64, "cifar10-dvs-tet": 64, "gesture": 128,
                                                            "ncaltech101": 64, "nmnist": 34}
    parser = argparse.ArgumentParser()
    parser.add_argument("--download", action=argparse.BooleanOptionalAction, default=False)  # the engine's own
    add_dvs_arguments(parser.add_argument_group("DVS"))
    args = parser.parse_args(["--dvs-split", "first", "--dvs-split-ratio", "0.8", "--no-dvs-ncaltech-aug"])
    assert (args.dvs_split, args.dvs_split_ratio, args.dvs_ncaltech_aug, args.download) == ("first", 0.8, False, False)
    with pytest.raises(SystemExit):
        parser.parse_args(["--dvs-split", "random"])


# --------------------------------------------------------------------------------------------- augmentations
def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path):
    make_cifar10_dvs(tmp_path, per_class=2)
    args = dvs_args(dvs_aug=True, dvs_trival_aug=True, dvs_flip_roll=True)
    train = build_dvs_dataset("cifar10-dvs", tmp_path, "train", args)
    plain = build_dvs_dataset("cifar10-dvs", tmp_path, "val", args)
    assert plain.transform is None and len(train.transform.transforms) == 3
    train.set_epoch(3)
    first = [train[i][0] for i in range(len(train))]
    assert all(torch.equal(first[i], train[i][0]) for i in (0, 5, 7))  # any order, any number of times
    # workers and a DistributedSampler-style partition see the same augmented samples
    loader = torch.utils.data.DataLoader(train, batch_size=4, num_workers=2)
    batched = torch.cat([x for x, _ in loader])
    assert torch.equal(batched, torch.stack(first))
    rank1 = list(torch.utils.data.DistributedSampler(train, num_replicas=2, rank=1, shuffle=True, seed=0))
    assert all(torch.equal(train[i][0], first[i]) for i in rank1)
    train.set_epoch(4)
    assert sum(not torch.equal(train[i][0], first[i]) for i in range(len(train))) > len(train) // 2


def test_sample_generators_of_seeds_a_multiple_of_2_to_the_32_apart_differ():
    """Every --seed gets its own DVS augmentation stream (the seed was cut to 32 bits, so 0 and 2**32 augmented
    alike), and seeds below 2**32 keep the streams they had."""
    def draws(seed):
        return torch.randint(0, 2**31, (4,), generator=sample_generator(seed, 1, 7)).tolist()

    assert draws(0) != draws(2**32) and draws(5) != draws(5 + 2**33)
    state = np.random.SeedSequence([123, 1, 7]).generate_state(2, np.uint32)
    same = torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)
    assert draws(123) == torch.randint(0, 2**31, (4,), generator=same).tolist()


def test_cutout_is_per_sample_and_batch_mode_is_the_references():
    generator = torch.Generator().manual_seed(0)
    cutout = Cutout(1, 16)
    samples = [cutout(torch.ones(3, 2, 64, 64), generator) for _ in range(8)]
    holes = {tuple((s[0, 0] == 0).nonzero().min(0).values.tolist()) for s in samples}
    assert len(holes) > 1  # different masks for different samples
    for s in samples:  # one square hole of at most 16x16, the same in every frame and channel
        zero = s == 0
        assert 0 < zero[0, 0].sum() <= 256 and torch.equal(zero, zero[:1, :1].expand_as(zero))
    batch = cutout(torch.ones(4, 3, 2, 64, 64), generator)  # the reference: one mask for the whole batch
    assert torch.equal(batch == 0, (batch[:1] == 0).expand_as(batch))


def test_snn_augment_wide_draws_like_the_reference_and_applies_ops():
    aug = SNNAugmentWide()
    for seed in range(20):  # the reference's order of draws on the global generator
        torch.manual_seed(seed)
        op_index = int(torch.randint(5, (1,)).item())
        op = aug.OPS[op_index]
        expected = 0.0
        if op != "Identity":
            expected = float(aug.magnitudes[op][torch.randint(31, (1,), dtype=torch.long)].item())
            if torch.randint(2, (1,)):
                expected = -expected
        torch.manual_seed(seed)
        assert aug.draw() == (op, expected)
    x = torch.zeros(2, 2, 16, 16)
    x[:, :, 8, 8] = 1
    moved = aug.apply(x, "TranslateX", 4.6)  # int(4.6) = 4 px
    assert moved[0, 0, 8, 12] == 1 and moved.sum() == x.sum()
    assert torch.equal(aug.apply(x, "Identity", 0.0), x)
    assert aug.apply(x, "Rotate", 90.0)[0, 0].sum() == 1


def test_flip_roll_and_ncaltech_augment_keep_the_events():
    x = torch.rand(3, 2, 20, 24)
    generator = torch.Generator().manual_seed(1)
    for _ in range(10):
        y = FlipRoll()(x, generator)
        candidates = [torch.roll(f, (dy, dx), (-2, -1)) for f in (x, x.flip(-1))
                      for dy in range(-5, 6) for dx in range(-5, 6)]
        assert any(torch.equal(y, c) for c in candidates)
    outs = [NCaltechAugment()(x, generator) for _ in range(30)]
    assert all(o.shape == x.shape for o in outs)
    rolled = [o for o in outs if torch.isclose(o.sum(), x.sum())]
    assert rolled and len(rolled) < len(outs)  # rolls keep every count; rotations/shears crop some


@needs_nmnist
def test_events_converted_from_another_raw_folder_are_warned_about(tmp_path, caplog):
    """The demo's conversion of the fixture files is kept when the full dataset is pointed at later: say so."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    small, _, _ = _subset(tmp_path / "a", n_train=10, n_test=5)
    large, _, _ = _subset(tmp_path / "b", n_train=20, n_test=5)
    root = tmp_path / "nmnist"
    assert len(build_dvs_dataset("nmnist", root, "train", dvs_args(dvs_raw_dir=str(small), time_steps=2))) == 10
    caplog.clear()
    build_dvs_dataset("nmnist", root, "train", dvs_args(dvs_raw_dir=str(small), time_steps=2))
    assert "was converted from" not in caplog.text
    again = build_dvs_dataset("nmnist", root, "train", dvs_args(dvs_raw_dir=str(large), time_steps=2))
    assert len(again) == 10  # kept as it is ...
    assert f"was converted from {small.resolve()}, not from {large}" in caplog.text  # ... and said
