"""Numbers checked by hand: per-step sparsity, run cutting and cv of the profiler, the DVS default split, the
models' normalisation constants."""
import timm
import torch
from pytest import approx

import model  # noqa: F401  (registers the sdt variants)
from data.neuromorphic import build_dvs_dataset
from module import instrument
from module.instrument import Recorder, recording
from profiler.capture import load_capture
from profiler.tables import layer_sparsity, read_csv, write_tables
from test_data_dvs_formats import dvs_args, make_cifar10_dvs

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # the published ImageNet statistics


def test_per_step_sparsity_is_over_one_time_step():
    """A [T=4, 2, 3] tensor with 0, 1, 3, 6 nonzeros at t = 0..3: per step 1 - nnz_t / 6 (6 = 24 / T elements per
    step), i.e. 1, 5/6, 1/2, 0; the whole-tensor probe of the same tensor is 1 - 10 / 24."""
    x = torch.zeros(4, 2, 3)
    for t, nnz in enumerate((0, 1, 3, 6)):
        x[t].view(-1)[:nnz] = 1.0
    with recording(Recorder(timers=False)) as recorder:
        instrument.sparsity("Attention postReshape chunk x", x, per_step=True)
        instrument.sparsity("x", x)
        got = recorder.collect()
    per_step = {m.t: m.value for m in got if m.label == "Attention postReshape chunk x"}
    assert per_step == approx({0: 1.0, 1: 5 / 6, 2: 0.5, 3: 0.0})
    assert all(m.shape == (4, 2, 3) for m in got)
    (whole,) = [m.value for m in got if m.label == "x"]
    assert whole == approx(1 - 10 / 24)


def test_one_line_per_block_is_cut_into_runs_of_whole_blocks(tmp_path):
    """16 "sparsity x:" lines and nothing else (the cap8 layout cut down to one probe): every line is a block of its
    own, so 16 blocks = 2 complete runs of the default 8 layers; layer k of run r holds k/100 + r/1000, so the
    by-layer mean is k/100 + 0.0005 over 2 runs."""
    path = tmp_path / "one_probe.txt"
    path.write_text("".join(f"sparsity x: {k / 100 + r / 1000}\n" for r in range(2) for k in range(8)))
    capture = load_capture(path)
    assert capture.num_layers == 8 and not capture.incomplete and not capture.skipped
    assert [run.blocks for run in capture.runs] == [8, 8]
    rows = {row["layer"]: row for row in layer_sparsity(capture) if row["label"] == "x"}
    assert sorted(rows) == list(range(8))
    for k, row in rows.items():
        assert row["runs"] == 2 and row["mean"] == approx(k / 100 + 0.0005)


def test_spread_cv_is_std_over_mean(tmp_path):
    """2 runs of 2 layers: layer 0 holds 0.1, 0.3 (mean 0.2, sample std sqrt(0.02) = 0.14142, cv 0.70711), layer 1
    holds 0.2, 0.4 (mean 0.3, std 0.14142, cv 0.47140), as spread.csv writes them."""
    path = tmp_path / "two_runs.txt"
    path.write_text("".join(f"sparsity x: {v}\n" for v in (0.1, 0.2, 0.3, 0.4)))
    paths = write_tables([load_capture(path, num_layers=2)], tmp_path / "tables")
    rows = {row["layer"]: row for row in read_csv(paths["spread"])}
    expected = {0: (0.2, 0.02 ** 0.5), 1: (0.3, 0.02 ** 0.5)}
    assert sorted(rows) == [0, 1]
    for layer, (mean, std) in expected.items():
        row = rows[layer]
        assert (row["runs"], row["unit"]) == (2, "fraction")
        assert row["mean"] == approx(mean) and row["std"] == approx(std)
        assert row["cv"] == approx(std / mean)
    assert rows[0]["cv"] == approx(0.5 ** 0.5) and rows[1]["cv"] == approx(0.4714045)


def test_cifar10_dvs_default_split_is_9_to_1_without_a_ratio(tmp_path):
    """args without ``dvs_split_ratio``: the reference's 9:1 CIFAR10-DVS split (split_to_train_test_set(0.9, ...),
    reference_code.md), so 10 samples per class give ceil(0.9 * 10) = 9 train and 1 val per class."""
    make_cifar10_dvs(tmp_path, per_class=10)
    args = dvs_args(img_size=32)
    del args.dvs_split_ratio
    train = build_dvs_dataset("cifar10-dvs", tmp_path, "train", args)
    val = build_dvs_dataset("cifar10-dvs", tmp_path, "val", args)
    assert (len(train), len(val)) == (90, 10)
    assert args.dvs_split_ratio == 0.9
    assert sorted(train.targets) == sorted(list(range(10)) * 9) and sorted(val.targets) == list(range(10))


def _data_config(name: str, **kwargs) -> dict:
    from timm.data import resolve_data_config

    net = timm.create_model(name, embed_dims=32, num_heads=4, depths=1, **kwargs)
    return resolve_data_config({}, model=net)


def test_default_data_config_normalisation():
    """The ImageNet variants normalise with the published ImageNet mean/std; ``sdt`` with the reference's timm ViT
    cfg (0.5, 0.5, 0.5); the DVS variant leaves the event frames as they are (mean 0, std 1 on 2 channels)."""
    for name in ("sdt_8_384", "sdt_8_512", "sdt_8_768"):
        config = _data_config(name, img_size=32)
        assert config["mean"] == approx(IMAGENET_MEAN) and config["std"] == approx(IMAGENET_STD), name
    config = _data_config("sdt", img_size_h=32, img_size_w=32, num_classes=10, pooling_stat="0011")
    assert config["mean"] == approx((0.5,) * 3) and config["std"] == approx((0.5,) * 3)
    config = _data_config("sdt_dvs_2_256", T=2)
    assert config["mean"] == approx((0.0, 0.0)) and config["std"] == approx((1.0, 1.0))
