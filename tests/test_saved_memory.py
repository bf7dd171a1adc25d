"""benchmarks/saved_memory.py: activation bytes kept for the backward, counted on the meta device."""
import json

import pytest
import timm
import torch

import model  # noqa: F401  (registers the sdt models)
from benchmarks.bench_train import TINY
from benchmarks.saved_memory import main, saved_bytes


def test_counts_each_storage_once_and_leaves_parameters_out():
    lin = torch.nn.Linear(8, 8)
    x = torch.randn(4, 8, requires_grad=True)
    # mul saves both operands (x twice: once as a view), the linear layer its input; the weight is a parameter
    assert saved_bytes(lin, lambda: lin(x * x.view(4, 8))) == 2 * x.numel() * 4


def test_fused_pairs_drop_exactly_the_batch_norm_outputs():
    """The fused pairs keep their BN input but not their BN output; BN's backward also keeps the running mean and
    variance beside the batch mean and invstd ([C] each), the fused op only the [2, C] batch table: the difference
    is the BN outputs of the fused pairs plus two [C] vectors per pair, to the byte."""
    def build(**kwargs):
        with torch.device("meta"):
            return timm.create_model("sdt_test", **kwargs).train(), torch.randn(2, 3, 32, 32)

    fused, x = build(fuse_bn_lif=True)
    unfused, _ = build()
    bn_outputs = []
    pairs = [unfused.patch_embed.proj_bn1, unfused.patch_embed.proj_bn2]  # stage 0 of a static image runs once
    for blk in unfused.block:
        pairs += [blk.attn.q_bn, blk.attn.k_bn, blk.attn.v_bn, blk.mlp.fc1_bn]
    for bn in pairs:
        bn.register_forward_hook(lambda m, inputs, out: bn_outputs.append(out.numel()))
    unfused_bytes = saved_bytes(unfused, lambda: unfused(x))
    assert len(bn_outputs) == len(pairs)
    running_stats = 2 * sum(bn.num_features for bn in pairs)
    assert unfused_bytes - saved_bytes(fused, lambda: fused(x)) == 4 * (sum(bn_outputs) + running_stats)


def test_every_tiny_config_and_path(tmp_path):
    out = tmp_path / "saved.json"
    results = main(["--tiny", "--json", str(out)])
    assert json.loads(out.read_text()) == results and set(results) == set(TINY)
    for name, r in results.items():
        assert r["bn_lif"]["saved_gib"] < r["default"]["saved_gib"] < r["spikingjelly"]["saved_gib"], name
        assert r["default"]["state_gib"] == pytest.approx(r["bn_lif"]["state_gib"]), name
    assert results["tiny-sdt-bf16"]["default"]["dtype"] == "bfloat16"
    fp32, bf16 = (results[f"tiny-sdt-{p}"]["default"]["saved_gib"] for p in ("fp32", "bf16"))
    # the same tensors in half the bytes, but for the ones that stay as they are (indices, fp32 statistics and loss)
    assert fp32 / 2 < bf16 < 0.6 * fp32


@pytest.mark.parametrize("script", ["saved_memory", "roofline"])
def test_a_json_path_that_cannot_be_written_is_refused_before_measuring(script, tmp_path, capsys, monkeypatch):
    """Both measured every config, then failed on the JSON's temporary name (a path the user never gave)."""
    import importlib

    import benchmarks.saved_memory as shared

    monkeypatch.setattr(shared, "TINY", {})  # nothing to measure: the check must come first
    script_main = importlib.import_module(f"benchmarks.{script}").main
    for path, message in ((tmp_path / "missing" / "out.json", "does not exist"), (tmp_path, "is a folder")):
        with pytest.raises(SystemExit) as exit_info:
            script_main(["--tiny", "--json", str(path)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
