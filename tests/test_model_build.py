"""Model construction: registry, parameter counts, argument validation, neuron state handling."""
import subprocess
import sys

import pytest
import timm
import torch

import model  # noqa: F401
from model import SpikeDrivenTransformer
from reference_fixtures import FIXTURE_DIR, build_seeded, load_fixture

TINY = dict(img_size_h=32, img_size_w=32, in_channels=3, num_classes=10, embed_dims=32, num_heads=4, mlp_ratios=4,
            depths=1, T=4, pooling_stat="0011")


def firing(net: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """``net`` with BatchNorms that make every LIF fire at 10-70 % (an untrained model in eval mode is silent: its
    logits equal ``head.bias`` for any input, so comparing outputs would check nothing)."""
    generator = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            m.running_var.fill_(1e-3)
            m.bias.data = torch.randn(m.bias.shape, generator=generator) * 0.5 + 0.8
    return net


def _count(name, **kwargs):
    with torch.device("meta"):
        net = timm.create_model(name, **kwargs)
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("name, kwargs, millions", [
    ("sdt_8_384", {}, 16.82),
    ("sdt_8_512", {}, 29.69),
    ("sdt_8_512", dict(depths=6), 23.37),
    ("sdt_8_512", dict(depths=10), 36.01),
    ("sdt_8_768", {}, 66.34),
    ("sdt_cifar_2_512", {}, 10.23),
    ("sdt_cifar_2_512", dict(num_classes=100), 10.28),
    ("sdt_dvs_2_256", {}, 2.57),
])
def test_parameter_counts_match_paper(name, kwargs, millions):
    assert round(_count(name, **kwargs) / 1e6, 2) == millions


def test_generic_entry_point_equals_variant():
    assert _count("sdt", img_size_h=224, img_size_w=224, in_channels=3, num_classes=1000, embed_dims=512,
                  depths=8, T=4, pooling_stat="1111") == _count("sdt_8_512")


@pytest.mark.parametrize("kwargs, parameter", [
    (dict(attention_mode="STAtten", T=4, chunk_size=3), "chunk_size"),
    (dict(attention_mode="linear"), "attention_mode"),
    (dict(spike_mode="hlif"), "spike_mode"),
    (dict(embed_dims=36, num_heads=8), "num_heads"),
    (dict(img_size_h=30, img_size_w=30), "img_size_h"),
    (dict(img_size_w=18), "img_size_w"),
    (dict(pooling_stat="011"), "pooling_stat"),
    (dict(pooling_stat=1111), "pooling_stat"),
    (dict(attention_mode="STAtten", T=4, chunk_size=2.0), "chunk_size"),
    (dict(depths=[2]), "depths"),
    (dict(reference="spikformer"), "reference"),
    (dict(T=True), "T"),
    (dict(in_chans=3, in_channels=2), "in_chans"),
    (dict(img_size=32, img_size_h=64), "img_size"),
    (dict(attention_mode="STAtten", T=6, chunk_size=-3), "chunk_size=-3 must be a positive int"),
    (dict(num_heads=-4), "num_heads=-4 must be a positive int"),
    (dict(num_heads=4.0), "num_heads=4.0 must be a positive int"),
    (dict(embed_dims=32.0), "embed_dims=32.0 must be a positive int"),
    (dict(in_channels=3.0), "in_channels=3.0 must be a positive int"),
    (dict(num_classes=2.5), "num_classes=2.5 must be an int of at least 0"),
    (dict(img_size_h=-32), "img_size_h=-32 must be a positive int"),
])
def test_bad_arguments_name_the_parameter(kwargs, parameter):
    with pytest.raises(ValueError, match=parameter):
        timm.create_model("sdt", **{**TINY, **kwargs})


@pytest.mark.parametrize("name", ["sdt", "sdt_test"])
def test_timms_size_keywords_build_that_size(name):
    sizes = ("in_channels", "img_size_h", "img_size_w")
    net = timm.create_model(name, **{k: v for k, v in TINY.items() if k not in sizes}, in_chans=1, img_size=(16, 32))
    assert net.patch_embed.proj_conv.in_channels == 1
    assert net(torch.rand(2, 1, 16, 32)).shape == (2, net.num_classes)


def test_unknown_keyword_is_rejected():
    with pytest.raises(TypeError, match="chunksize"):
        SpikeDrivenTransformer(**TINY, chunksize=2)


@pytest.mark.parametrize("attention_mode", ["SDT", "STAtten"])
@pytest.mark.parametrize("T", [2, 6])
def test_any_T_and_tet_shapes(attention_mode, T):
    """Every T (6 is above the references' T<=4 limit) gives per-step logits whose mean is the output, with the
    neurons firing (checked, so that the comparison is not between two copies of ``head.bias``)."""
    torch.manual_seed(0)
    net = firing(timm.create_model("sdt", **{**TINY, "T": T, "attention_mode": attention_mode, "chunk_size": 2}))
    net.eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out, hook = net(x, hook={})
    assert out.shape == (3, 10)
    assert all(v.shape[0] == T for v in hook.values())
    assert all(0.05 < hook[key].mean() < 0.95 for key in ("MS_SPS_lif", "MS_MLP_Conv0_fc2_lif", "head_lif"))
    net.TET = True
    with torch.no_grad():
        per_step = net(x)
    assert per_step.shape == (T, 3, 10)
    assert not torch.equal(per_step[0], per_step[-1])
    torch.testing.assert_close(per_step.mean(0), out)


def test_statten_refuses_a_non_square_token_grid():
    """STAtten scales by 1/H of the token grid: a model built square, fed a 32x64 image (an 8x16 grid), ran with
    1/8 and no error; SDT does not scale and takes any size."""
    shape = dict(img_size_h=32, img_size_w=32)
    statten = timm.create_model("sdt", **{**TINY, **shape, "attention_mode": "STAtten", "chunk_size": 2}).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="needs a square token grid; this input gives a 8x16 grid"):
        statten(torch.randn(1, 3, 32, 64))
    sdt = timm.create_model("sdt", **{**TINY, **shape}).eval()
    with torch.no_grad():
        assert sdt(torch.randn(1, 3, 32, 64)).shape == (1, 10)
        assert statten(torch.randn(1, 3, 64, 64)).shape == (1, 10)


def test_numpy_counts_are_kept_as_python_ints():
    """Numpy ints pass the argument checks; kept as they were, they broke json.dumps of the trace's model summary."""
    import json

    import numpy as np

    from engine.traces import model_summary

    counts = {k: np.int64(v) for k, v in TINY.items() if isinstance(v, int)}
    net = timm.create_model("sdt", **{**TINY, **counts, "attention_mode": "STAtten", "chunk_size": np.int64(2)})
    summary = model_summary(net)
    assert type(net.T) is int and type(net.chunk_size) is int and json.loads(json.dumps(summary))["T"] == 4


def test_skip_blocks_takes_a_single_index():
    net = timm.create_model("sdt", **{**TINY, "depths": 2}, skip_blocks=1)
    assert net.skip_blocks == [1]


def test_dvs_input_is_time_major_inside():
    net = timm.create_model("sdt", **{**TINY, "in_channels": 2, "dvs_mode": True, "T": 3}).eval()
    x = torch.rand(2, 3, 2, 32, 32)
    with torch.no_grad():
        _, hook = net(x, hook={})
    assert hook["MS_SPS_lif"].shape == (3, 2, 4, 32, 32)
    with pytest.raises(ValueError, match=r"the event input has 4 time steps .* built with T=3"):
        net(torch.rand(2, 4, 2, 32, 32))


@pytest.mark.parametrize("encode_once", [True, False])
def test_an_unbatched_image_is_a_batch_of_one(encode_once):
    """The reference repeats a ``[C, H, W]`` image into ``[T, 1, C, H, W]``; the encode-once stem took it for a
    batch of C grey images and failed in its first convolution."""
    torch.manual_seed(0)
    net = firing(timm.create_model("sdt", **TINY, encode_once=encode_once)).eval()
    x = torch.randn(3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(x), net(x[None]), rtol=0, atol=0)
        assert not torch.equal(net(x), net(x[None] + 1))


def test_pretrained_and_the_references_defaults():
    from timm.data import resolve_data_config

    assert SpikeDrivenTransformer(pretrained=False, **TINY).num_classes == 10
    with pytest.raises(ValueError, match="pretrained=True"):
        SpikeDrivenTransformer(pretrained=True, **TINY)
    net = timm.create_model("sdt", **{k: v for k, v in TINY.items() if k != "num_classes"})
    assert net.num_classes == 11 and resolve_data_config({}, model=net)["mean"] == (0.5, 0.5, 0.5)


def test_state_carries_over_only_when_auto_reset_is_off():
    fixture = load_fixture(FIXTURE_DIR / "sdt_A_lif_static.pt")  # calibrated weights: every layer fires
    net = build_seeded(fixture, neuron_backend="spikingjelly")  # the stateful neurons: the fused ones keep none
    net.load_state_dict(fixture["state_dict"])
    net.eval()
    x = fixture["input"]
    with torch.no_grad():
        first = net(x)
        assert torch.equal(net(x), first)
        net.auto_reset = False
        net.reset_neurons()
        assert torch.equal(net(x), first)
        carried = net(x)  # starts from the membrane potential left by the previous call
        net.reset_neurons()
        assert torch.equal(net(x), first)
    assert not torch.equal(carried, first)


def test_hook_dict_is_optional_and_leaves_no_hooks_behind():
    torch.manual_seed(0)
    net = firing(timm.create_model("sdt", **TINY)).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        plain = net(x)
        out, hook = net(x, hook={})
        assert torch.equal(plain, out)
        assert all(not m._forward_hooks for m in net.modules())
    assert 0.05 < hook["head_lif"].mean() < 0.95
    assert not torch.equal(plain, net.head.bias.expand_as(plain))


def test_cpu_path_never_imports_cupy():
    code = ("import sys, torch, timm, model; "
            "m = timm.create_model('sdt_test'); m(torch.randn(1, 3, 32, 32)).sum().backward(); "
            "assert 'cupy' not in sys.modules, 'cupy imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=str(__import__("pathlib").Path(__file__).parents[1]))


@pytest.mark.parametrize("pooling_stat", ["1111", "0011"])
def test_every_batch_norm_that_runs_is_a_registered_module(pooling_stat):
    """``SyncBatchNorm.convert_sync_batchnorm`` (``--sync-bn``) replaces registered modules; the stem ran stale
    BatchNorm2d copies kept in a list, so its four BNs were never synchronised (and missed dtype moves)."""
    net = timm.create_model("sdt", img_size_h=32, img_size_w=32, in_channels=3, embed_dims=32, num_heads=2,
                            depths=1, T=2, num_classes=10, pooling_stat=pooling_stat)
    net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net).eval().double()
    ran = []
    for name, m in net.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            assert isinstance(m, torch.nn.SyncBatchNorm), name
            m.register_forward_hook(lambda m, i, o, name=name: ran.append(name))
    with torch.no_grad():
        assert net(torch.randn(2, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64
    expected = {n for n, m in net.named_modules() if isinstance(m, torch.nn.SyncBatchNorm)} - {"patch_embed.rpe_bn"}
    assert expected <= set(ran)


def test_mlp_ratio_1_has_the_references_inner_residual():
    """Hidden width = input width (``self.res`` in the reference): h = x + fc1_bn(fc1_conv(lif(x))), output
    h + fc2_bn(fc2_conv(lif(h))); other widths have only the outer residual."""
    from module import MS_MLP_Conv

    torch.manual_seed(0)
    x = torch.randn(2, 3, 16, 4, 4) * 2
    for hidden in (16, 32):
        mlp = MS_MLP_Conv(16, hidden_features=hidden).eval()
        tb = lambda f, t: f(t.flatten(0, 1)).unflatten(0, t.shape[:2])  # noqa: E731
        with torch.no_grad():
            h = tb(lambda t: mlp.fc1_bn(mlp.fc1_conv(t)), mlp.fc1_lif(x))
            if hidden == 16:
                h = x + h
                expected = h + tb(lambda t: mlp.fc2_bn(mlp.fc2_conv(t)), mlp.fc2_lif(h))
            else:
                expected = x + tb(lambda t: mlp.fc2_bn(mlp.fc2_conv(t)), mlp.fc2_lif(h))
            torch.testing.assert_close(mlp(x), expected, rtol=0, atol=0)


def test_named_variants_keep_their_sizes_from_the_command_line(tmp_path):
    """``--model sdt_8_384`` built the script's default 8-512 (train.py) or 8-768 (profiler) silently; the
    variant's sizes now fill the options the command line and the config leave unset, even where the given value
    equals the script's default (--layer 4, pooling_stat 1111)."""
    import argparse

    from engine.args import get_args_parser
    from engine.config import parse_args
    from engine.model import model_kwargs, resolve_model_args

    def built(*argv):
        parser = argparse.ArgumentParser(parents=[get_args_parser()])
        args = parse_args(parser, ["--dataset", "digits", *argv])
        resolve_model_args(args)
        return model_kwargs(args)

    kwargs = built("--model", "sdt_8_384")
    assert (kwargs["embed_dims"], kwargs["depths"], kwargs["img_size_h"], kwargs["num_classes"]) == (384, 8, 224, 1000)
    assert _count("sdt_8_384", **kwargs) == _count("sdt_8_384")
    (tmp_path / "c.yml").write_text("pooling_stat: '1111'\n")
    kwargs = built("--model", "sdt_cifar_2_512", "--dim", "64", "--num-classes", "100", "--layer", "4", "-c",
                   str(tmp_path / "c.yml"))
    assert (kwargs["embed_dims"], kwargs["depths"], kwargs["img_size_h"], kwargs["num_classes"]) == (64, 4, 32, 100)
    assert (kwargs["pooling_stat"], kwargs["T"]) == ("1111", 4)
