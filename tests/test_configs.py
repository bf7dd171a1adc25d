"""Every config in conf/ parses strictly, keeps the reference values and builds its model (on the meta device: no
memory, no time)."""
import argparse
from pathlib import Path

import pytest
import torch

from data import NEUROMORPHIC_DATASETS, STATIC_DATASETS
from engine.args import get_args_parser
from engine.config import parse_args
from engine.errors import ConfigError
from engine.model import build_model, resolve_model_args

CONF = Path(__file__).resolve().parents[1] / "conf"
CONFIGS = sorted(CONF.rglob("*.yml"))

# The values of the reference repos' configs (section 4 of the reference description) that the cleaned configs keep.
_TET = dict(TET=True, TET_means=1.0, TET_lamb=0.001)
_CIFAR = dict(
    model="sdt", num_heads=8, img_size=32, in_channels=3, pooling_stat="0011", time_steps=4, layer=2, mlp_ratio=4,
    scale=[1, 1], ratio=[1, 1], crop_pct=1.0, interpolation="bicubic", train_interpolation="bicubic",
    aa="rand-m9-n1-mstd0.4-inc1", color_jitter=0.5, mixup=0.5, mixup_prob=1.0, mixup_mode="batch",
    mixup_switch_prob=0.5, mixup_off_epoch=200, cutmix=0.0, amp=False, batch_size=64, val_batch_size=64, opt="adamw",
    lr=3e-4, min_lr=1e-5, warmup_lr=1e-6, warmup_epochs=20, cooldown_epochs=10, weight_decay=6e-2, sched="cosine",
    smoothing=0.1, workers=8, seed=42, data_dir="./data/", TET=False, hflip=0.5, reprob=0.0, spike_mode="lif")
_CIFAR10 = dict(_CIFAR, dataset="torch/cifar10", num_classes=10, mean=[0.4914, 0.4822, 0.4465],
                std=[0.2470, 0.2435, 0.2616])
_CIFAR100 = dict(_CIFAR, dataset="torch/cifar100", num_classes=100, mean=[0.5071, 0.4867, 0.4408],
                 std=[0.2675, 0.2565, 0.2761])
_SDT_CIFAR = dict(attention_mode="SDT", epochs=300)
_STATTEN_CIFAR = dict(attention_mode="STAtten", epochs=200, chunk_size=2)
_DVS = dict(
    model="sdt", dataset="cifar10-dvs", data_dir="./data/cifar10-dvs", num_classes=10, img_size=64, in_channels=2,
    pooling_stat="0011", time_steps=10, layer=2, dim=256, num_heads=8, mlp_ratio=4, amp=True, batch_size=32,
    val_batch_size=32, opt="adamw", lr=7.5e-3, min_lr=3e-4, warmup_lr=1e-3, warmup_epochs=10, cooldown_epochs=10,
    weight_decay=1e-4, epochs=200, sched="cosine", smoothing=0.1, mixup=0.0, cutmix=0.0, dvs_mode=True,
    attention_mode="SDT")
_STATTEN_DVS = dict(_DVS, attention_mode="STAtten", batch_size=16, val_batch_size=16, lr=0.01)
_NCALTECH = dict(_STATTEN_DVS, dataset="ncaltech101", data_dir="./data/ncaltech101", num_classes=101, TET=False)
_GESTURE = dict(
    model="sdt", dataset="gesture", data_dir="./data/DVSGesturedataset/", num_classes=11, img_size=128, in_channels=2,
    pooling_stat="0111", time_steps=10, layer=2, dim=256, mlp_ratio=4, amp=True, batch_size=16, val_batch_size=16,
    opt="lamb", lr=2e-3, min_lr=1e-5, warmup_lr=1e-5, warmup_epochs=10, weight_decay=1e-4, epochs=200,
    sched="cosine", TET=False, dvs_mode=False, attention_mode="SDT")
_IMAGENET = dict(
    model="sdt", dataset="imagenet", data_dir="/data/imagenet1k", num_classes=1000, img_size=224, in_channels=3,
    pooling_stat="1111", time_steps=4, num_heads=8, mlp_ratio=4, opt="lamb", sched="cosine", epochs=300,
    warmup_epochs=20, cooldown_epochs=10, warmup_lr=1e-5, weight_decay=0.01, amp=True, cutmix=1.0, mixup=0.2,
    mixup_switch_prob=0.5, mixup_off_epoch=0, smoothing=0.1, crop_pct=0.95, hflip=0.5, color_jitter=0.4, reprob=0.0,
    spike_mode="lif", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225], bce_loss=False, TET=False,
    attention_mode="SDT")


def _imagenet(layer, dim, batch_size, val_batch_size, lr, min_lr, aa, mixup_prob, scale, **more):
    return dict(_IMAGENET, layer=layer, dim=dim, batch_size=batch_size, val_batch_size=val_batch_size, lr=lr,
                min_lr=min_lr, aa=aa, mixup_prob=mixup_prob, scale=scale, **more)


_STATTEN_IMAGENET = dict(epochs=200, chunk_size=2, attention_mode="STAtten")
REFERENCE_CONFIGS = {
    "sdt/cifar10/2_256_300E_t4.yml": dict(_CIFAR10, **_SDT_CIFAR, dim=256),
    "sdt/cifar10/2_512_300E_t4.yml": dict(_CIFAR10, **_SDT_CIFAR, dim=512),
    "sdt/cifar10/2_512_300E_t4_TET.yml": dict(_CIFAR10, **_SDT_CIFAR, dim=512, **_TET),
    "sdt/cifar100/2_256_300E_t4.yml": dict(_CIFAR100, **_SDT_CIFAR, dim=256),
    "sdt/cifar100/2_512_300E_t4.yml": dict(_CIFAR100, **_SDT_CIFAR, dim=512),
    "sdt/cifar10-dvs/2_256_200E_t10_TET.yml": dict(_DVS, **_TET),
    "sdt/gesture/2_256_200E_t10.yml": _GESTURE,
    "sdt/gesture/2_256_200E_t16.yml": dict(_GESTURE, time_steps=16, lr=3e-4, warmup_lr=1e-6, weight_decay=6e-2),
    "sdt/imagenet/10_384_300E_t4.yml": _imagenet(10, 512, 36, 36, 1e-3, 2e-5, "rand-m7-mstd0.5-inc1", 0.75, [0.2, 1]),
    "sdt/imagenet/6_512_300E_t4.yml": _imagenet(6, 512, 48, 48, 1e-3, 2e-5, "rand-m7-mstd0.5-inc1", 0.6, [0.08, 1]),
    "sdt/imagenet/8_384_300E_t4.yml": _imagenet(8, 384, 48, 48, 1.5e-3, 1.5e-5, "rand-m5-mstd0.5-inc1", 0.6, [0.2, 1]),
    "sdt/imagenet/8_512_300E_t4.yml": _imagenet(8, 512, 48, 48, 1.5e-3, 1.5e-5, "rand-m5-mstd0.5-inc1", 0.6, [0.2, 1]),
    "sdt/imagenet/8_768_300E_t4.yml": _imagenet(8, 768, 36, 36, 1e-3, 2e-5, "rand-m7-mstd0.5-inc1", 1.0, [0.08, 1]),
    "statten/cifar10/2_256_200E_t4.yml": dict(_CIFAR10, **_STATTEN_CIFAR, dim=256),
    "statten/cifar10/2_512_200E_t4.yml": dict(_CIFAR10, **_STATTEN_CIFAR, dim=512),
    "statten/cifar100/2_256_200E_t4.yml": dict(_CIFAR100, **_STATTEN_CIFAR, dim=256),
    "statten/cifar100/2_512_200E_t4.yml": dict(_CIFAR100, **_STATTEN_CIFAR, dim=512),
    "statten/cifar10-dvs/2_256_200E_t10_TET.yml": dict(_STATTEN_DVS, chunk_size=5, **_TET),
    "statten/cifar10-dvs/2_256_200E_t16_TET.yml": dict(_STATTEN_DVS, time_steps=16, chunk_size=4, **_TET),
    "statten/ncaltech101/2_256_200E_t10.yml": dict(_NCALTECH, chunk_size=5),
    "statten/ncaltech101/2_256_200E_t16.yml": dict(_NCALTECH, time_steps=16, chunk_size=4),
    "statten/imagenet/8_512_200E_t4.yml": _imagenet(8, 512, 48, 48, 1e-3, 1.5e-5, "rand-m5-mstd0.5-inc1", 0.6,
                                                    [0.2, 1], **_STATTEN_IMAGENET),
    "statten/imagenet/8_768_200E_t4.yml": _imagenet(8, 768, 64, 16, 1e-3, 2e-5, "rand-m7-mstd0.5-inc1", 1.0,
                                                    [0.08, 1], **_STATTEN_IMAGENET),
}


def _parse(path: Path, *extra: str):
    return parse_args(argparse.ArgumentParser(parents=[get_args_parser()]), ["-c", str(path), *extra])


def _build(path: Path, *extra: str):
    args = _parse(path, *extra)
    resolve_model_args(args)
    with torch.device("meta"):
        return args, build_model(args)


def test_every_reference_config_is_present():
    names = {str(p.relative_to(CONF)) for p in CONFIGS}
    assert {n for n in names if n.startswith(("sdt/", "statten/"))} == set(REFERENCE_CONFIGS)
    assert any(n.startswith("digits/") for n in names)


@pytest.mark.parametrize("name", sorted(REFERENCE_CONFIGS))
def test_reference_config_keeps_the_reference_values(name):
    expected = REFERENCE_CONFIGS[name]
    args = _parse(CONF / name)
    assert {key: getattr(args, key) for key in expected} == expected


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(CONF)))
def test_config_parses_and_builds(path):
    args, model = _build(path)
    assert args.dataset in STATIC_DATASETS or args.dataset in NEUROMORPHIC_DATASETS
    family = path.relative_to(CONF).parts[0]
    assert model.attention_mode == {"statten": "STAtten"}.get(family, "SDT")
    assert (model.T, model.embed_dim, len(model.block), model.num_classes, model.TET) == \
        (args.time_steps, args.dim, args.layer, args.num_classes, args.TET)
    if model.attention_mode == "STAtten":
        assert model.chunk_size == args.chunk_size and args.time_steps % args.chunk_size == 0
    params = sum(p.numel() for p in model.parameters())
    assert params > 0 and all(p.device.type == "meta" for p in model.parameters())
    if family in ("sdt", "statten") and args.dataset in STATIC_DATASETS:  # every reference image config sets both
        assert (args.interpolation, args.train_interpolation) == ("bicubic", "bicubic")


def test_paper_sizes():
    """The ImageNet configs build the models of the SDT paper (parameter counts of section 6.6)."""
    expected = {"sdt/imagenet/8_384_300E_t4.yml": 16.82, "sdt/imagenet/8_512_300E_t4.yml": 29.69,
                "sdt/imagenet/8_768_300E_t4.yml": 66.34}
    for rel, millions in expected.items():
        _, model = _build(CONF / rel)
        assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(millions, abs=0.01)


@pytest.mark.parametrize("extra, match", [
    (["--chunk-size", "3"], "chunk_size"),
    (["--num-heads", "7"], "divisible by num_heads"),
    (["--img-size", "34"], "img_size_h"),
])
def test_bad_overrides_are_caught(extra, match):
    with pytest.raises(ConfigError, match=match):
        _build(CONF / "statten" / "cifar10" / "2_256_200E_t4.yml", *extra)


@pytest.mark.parametrize("config_text, argv, expected", [
    ("input_size: [2, 32, 32]\n", ["--img-size", "64"], (2, 64)),  # the config's channels, the command line's size
    ("input_size: [2, 32, 32]\n", ["--in-channels", "3", "--img-size", "48"], (3, 48)),
    ("img_size: 32\nin_channels: 2\n", ["--input-size", "3", "64", "64"], (3, 64)),
    ("input_size: [2, 32, 32]\nimg_size: 32\n", [], (2, 32)),
])
def test_sizes_on_the_command_line_beat_the_config_s_input_size(tmp_path, config_text, argv, expected):
    """CLI > YAML for the input size given either way (a config's input_size silently beat --img-size)."""
    config = tmp_path / "input_size.yml"
    config.write_text(config_text)
    args = _parse(config, *argv)
    resolve_model_args(args)
    assert (args.in_channels, args.img_size) == expected


@pytest.mark.parametrize("config_text, argv, where", [
    ("input_size: [3, 32, 32]\nimg_size: 64\n", [], "in the config"),
    ("", ["--input-size", "3", "32", "32", "--in-channels", "2"], "on the command line"),
])
def test_input_size_contradicted_at_the_same_level_is_refused(tmp_path, config_text, argv, where):
    config = tmp_path / "input_size.yml"
    config.write_text(config_text or "{}\n")
    message = rf"--input-size 3 32 32 disagrees with .*both {where}; give the size one way"
    with pytest.raises(ConfigError, match=message):
        _parse(config, *argv)


def test_a_config_s_non_square_input_size_is_refused_when_the_command_line_gives_a_size(tmp_path):
    """A config's input_size folded into the sizes the command line leaves is still checked: 32 x 48 is not an
    img_size x img_size image, whatever --in-channels says."""
    config = tmp_path / "input_size.yml"
    config.write_text("input_size: [3, 32, 48]\n")
    with pytest.raises(ConfigError, match="--input-size 3 32 48: the model takes square images"):
        _parse(config, "--in-channels", "2")


def test_a_config_s_input_size_folded_in_is_not_replaced_by_the_variant_s_defaults(tmp_path):
    """--model sdt_8_384 gives 3 channels unless they are given: the config's input_size gave 2 (its img_size gives
    way to --img-size 64), so the run has 2 channels of 64 px."""
    config = tmp_path / "input_size.yml"
    config.write_text("input_size: [2, 32, 32]\n")
    args = _parse(config, "--model", "sdt_8_384", "--img-size", "64")
    resolve_model_args(args)
    assert (args.in_channels, args.img_size) == (2, 64)
