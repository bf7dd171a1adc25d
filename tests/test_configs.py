"""Every config in conf/ parses strictly and builds its model (on the meta device: no memory, no time)."""
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


def _build(path: Path, *extra: str):
    args = parse_args(argparse.ArgumentParser(parents=[get_args_parser()]), ["-c", str(path), *extra])
    resolve_model_args(args)
    with torch.device("meta"):
        return args, build_model(args)


def test_every_reference_config_is_present():
    names = {str(p.relative_to(CONF)) for p in CONFIGS}
    for family, datasets in (("sdt", ("cifar10", "cifar100", "cifar10-dvs", "gesture", "imagenet")),
                             ("statten", ("cifar10", "cifar100", "cifar10-dvs", "ncaltech101", "imagenet"))):
        for dataset in datasets:
            assert any(n.startswith(f"{family}/{dataset}/") for n in names), (family, dataset)
    assert any(n.startswith("digits/") for n in names)


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
