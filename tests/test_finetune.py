"""finetune.py: only the classifier head trains; tolerant checkpoint loading; --finetune-checkpoint wins."""
import json

import pytest
import timm
import torch
from _aster_helpers import ASTER_FLAGS, trained_run

import finetune
import model as _registers_sdt  # noqa: F401
from engine.checkpoint import load_checkpoint_file
from engine.errors import CheckpointError
from engine.model import freeze_parameters
from engine.run import cli_main


def _tiny_model(**kwargs):
    return timm.create_model("sdt", img_size_h=32, img_size_w=32, in_channels=3, num_classes=10, embed_dims=32,
                             num_heads=4, mlp_ratios=2, depths=2, T=3, pooling_stat="1111", **kwargs)


@pytest.mark.slow
def test_finetune_trains_only_the_head(tmp_path, capfd):
    start = str(trained_run() / "model_best.pth.tar")
    argv = [*ASTER_FLAGS, "--output", str(tmp_path), "--experiment", "ft", "--finetune-checkpoint", start,
            "--resume", start, "--skip-blocks", "1", "--lr", "0.05", "--recovery-interval", "2"]
    assert cli_main(finetune.make_parser, finetune.run, argv) == 0
    err = capfd.readouterr().err
    assert "wins over --resume" in err and "wins over --resume" in (tmp_path / "ft" / "train.log").read_text()
    assert "--recovery-interval 2: finetune.py does not resume" in err  # it wrote checkpoints nothing could read
    assert not list((tmp_path / "ft").glob("recovery-*"))
    assert "Trainable parameters: 330 of " in err and "head.weight, head.bias" in err  # 32 x 10 + 10

    before = load_checkpoint_file(start)["state_dict"]
    after = load_checkpoint_file(str(tmp_path / "ft" / "last.pth.tar"))["state_dict"]
    assert after.keys() == before.keys()
    changed = sorted(k for k in before if not torch.equal(before[k], after[k]))
    assert changed == ["head.bias", "head.weight"]  # parameters and BatchNorm statistics bit-identical
    assert json.loads((tmp_path / "ft" / "skip.json").read_text())["skipped_blocks"] == [1]


def test_tolerant_load_of_a_checkpoint_without_the_skipped_attention(tmp_path, caplog):
    source = _tiny_model()
    state = {k: v for k, v in source.state_dict().items() if not k.startswith("block.1.attn.")}
    state["aux_head.weight"] = torch.zeros(3)
    path = tmp_path / "pruned.pth.tar"
    torch.save({"state_dict": state}, path)

    target = _tiny_model()
    ignored, missing = finetune.load_finetune_weights(str(path), target, skipped_blocks=[1])
    assert ignored == ["aux_head.weight"]
    assert missing and all(k.startswith("block.1.attn.") for k in missing)
    assert "Ignored 1 checkpoint keys" in caplog.text and "block.1.attn.q_conv.weight" in caplog.text
    for key, value in state.items():
        if key in target.state_dict():
            assert torch.equal(target.state_dict()[key], value), key
    with pytest.raises(CheckpointError, match="missing keys"):  # block 1 runs its attention: its weights are needed
        finetune.load_finetune_weights(str(path), _tiny_model(), skipped_blocks=[])


def test_a_checkpoint_of_a_deeper_model_is_refused(tmp_path):
    path = tmp_path / "deep.pth.tar"
    torch.save({"state_dict": _tiny_model().state_dict()}, path)
    shallow = timm.create_model("sdt", img_size_h=32, img_size_w=32, in_channels=3, num_classes=10, embed_dims=32,
                                num_heads=4, mlp_ratios=2, depths=1, T=3, pooling_stat="1111")
    with pytest.raises(CheckpointError, match=r"blocks \[1\] beyond this model's 1 \(--layer 1\)"):
        finetune.load_finetune_weights(str(path), shallow, skipped_blocks=[])
    extra = {**_tiny_model().state_dict(), "block.1.attn.extra.weight": torch.zeros(2)}  # in an existing block
    torch.save({"state_dict": extra}, path)
    ignored, _ = finetune.load_finetune_weights(str(path), _tiny_model(), skipped_blocks=[])
    assert ignored == ["block.1.attn.extra.weight"]


def test_a_plif_checkpoint_is_refused_by_a_lif_model(tmp_path):
    """Its learnable time constants (*_lif.w) were ignored with a warning, and the head fine-tuned on a backbone
    with other neuron dynamics; LIF into PLIF was already an error (missing keys)."""
    path = tmp_path / "plif.pth.tar"
    torch.save({"state_dict": _tiny_model(spike_mode="plif").state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"has PLIF neurons \(22 learnable time constants, e\.g\. "
                                              r"patch_embed\.proj_lif\.w\) .*pass --spike-mode plif"):
        finetune.load_finetune_weights(str(path), _tiny_model(), skipped_blocks=[])
    assert finetune.load_finetune_weights(str(path), _tiny_model(spike_mode="plif"), skipped_blocks=[]) == ([], [])
    torch.save({"state_dict": _tiny_model().state_dict()}, path)
    with pytest.raises(CheckpointError, match="missing keys"):
        finetune.load_finetune_weights(str(path), _tiny_model(spike_mode="plif"), skipped_blocks=[])


@pytest.mark.parametrize("use_ema", [False, True])
def test_use_ema_starts_from_the_ema_weights(tmp_path, use_ema):
    plain, ema = _tiny_model().state_dict(), _tiny_model().state_dict()
    path = tmp_path / "ema.pth.tar"
    torch.save({"state_dict": plain, "state_dict_ema": ema}, path)
    target = _tiny_model()
    finetune.load_finetune_weights(str(path), target, skipped_blocks=[], use_ema=use_ema)
    assert torch.equal(target.state_dict()["head.weight"], (ema if use_ema else plain)["head.weight"])


def test_finetune_needs_a_checkpoint(tmp_path, capfd):
    assert cli_main(finetune.make_parser, finetune.run, [*ASTER_FLAGS, "--output", str(tmp_path)]) == 2
    assert "--finetune-checkpoint CKPT is required" in capfd.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("freeze_bn_stats", [True, False])
def test_freeze_parameters(freeze_bn_stats):
    net = _tiny_model()
    trainable, total = freeze_parameters(net, finetune.TRAINABLE_PREFIXES, freeze_bn_stats=freeze_bn_stats)
    assert (trainable, total) == (330, sum(p.numel() for p in net.parameters()))
    assert [n for n, p in net.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    net.train()
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    moved = [k for k, v in net.state_dict().items() if "running" in k and not torch.equal(v, stats[k])]
    assert (moved == []) == freeze_bn_stats
    assert all(p.grad is None for n, p in net.named_parameters() if not n.startswith("head."))


def test_frozen_batchnorms_stay_in_eval_mode_after_sync_bn_conversion():
    """--sync-bn replaces every BatchNorm with a SyncBatchNorm that has none of the old layer's hooks: the frozen
    statistics then drifted with the training batches (the hook now sits on the model)."""
    net = _tiny_model()
    freeze_parameters(net, finetune.TRAINABLE_PREFIXES)
    net = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    net.train()
    net(torch.randn(4, 3, 32, 32))
    norms = [m for m in net.modules() if isinstance(m, torch.nn.SyncBatchNorm)]
    assert norms and not any(m.training for m in norms)
    assert all(torch.equal(v, stats[k]) for k, v in net.state_dict().items() if "running" in k)


def test_an_extra_plif_key_of_a_plif_checkpoint_is_only_ignored_by_a_plif_model(tmp_path):
    """The PLIF check is for a LIF model: a PLIF model that lacks one of a PLIF checkpoint's time constants ignores
    it as any other extra key (same dynamics)."""
    path = tmp_path / "plif.pth.tar"
    extra = {**_tiny_model(spike_mode="plif").state_dict(), "block.1.attn.extra_lif.w": torch.zeros(())}
    torch.save({"state_dict": extra}, path)
    ignored, _ = finetune.load_finetune_weights(str(path), _tiny_model(spike_mode="plif"), skipped_blocks=[])
    assert ignored == ["block.1.attn.extra_lif.w"]
