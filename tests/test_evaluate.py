"""firing_num.py / test.py: exact firing rates for any T, the reference log block, energy, traces, bad input."""
import argparse
import json
import subprocess
import sys

import pytest
import timm
import torch

from _engine_helpers import REPO, TINY_FLAGS, VARIANT_FLAGS, snapshot, subprocess_env
from engine.args import get_args_parser
from engine.config import parse_args
from engine.errors import ConfigError
from engine.evaluate import add_eval_arguments, run_evaluation
from engine.firing import load_firing_rates
from engine.skip import select_skip_blocks
from engine.traces import TraceReader

pytestmark = pytest.mark.slow


def _checkpoint(tmp_path, T, **model_kwargs):
    """A tiny digits model with BN statistics that make every layer fire, saved as a timm-style checkpoint."""
    import model  # noqa: F401

    torch.manual_seed(0)
    net = timm.create_model("sdt", img_size_h=32, img_size_w=32, in_channels=3, num_classes=10, embed_dims=32,
                            num_heads=4, mlp_ratios=2, depths=1, T=T, pooling_stat="1111", **model_kwargs)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.fill_(0.05)
            m.bias.data.fill_(0.3)
    path = tmp_path / f"tiny_t{T}.pth.tar"
    torch.save({"state_dict": net.state_dict(), "epoch": 0, "version": 2}, path)
    return path


def _eval_parser():
    return add_eval_arguments(argparse.ArgumentParser(parents=[get_args_parser()]))


def _evaluate(tmp_path, T, *extra):
    parser = _eval_parser()
    args = parse_args(parser, [*TINY_FLAGS, "--time-steps", str(T), "--output", str(tmp_path / "valid"),
                               "--resume", str(_checkpoint(tmp_path, T)), *extra])
    return run_evaluation(args, parser)


@pytest.mark.parametrize("T", [6, 16])
def test_rates_per_step_do_not_depend_on_batching(tmp_path, T):
    """360 validation images in batches of 128 (a short last batch of 104) or in one batch: the same averages."""
    batched = _evaluate(tmp_path, T, "-vb", "128", "--experiment", "batched")
    whole = _evaluate(tmp_path, T, "-vb", "360", "--experiment", "whole")
    assert batched["samples"] == whole["samples"] == 360
    assert list(batched["firing_rate"]) == [f"t{t}" for t in range(T)]
    for t, per_key in whole["firing_rate"].items():
        for key, value in per_key.items():
            assert batched["firing_rate"][t][key] == pytest.approx(value, abs=1e-12), (t, key)
            assert batched["non_zero"][t][key] == pytest.approx(whole["non_zero"][t][key], abs=1e-12)
    assert batched["top1"] == pytest.approx(whole["top1"])
    assert round(batched["top1"] * 360 / 100, 9) % 1 == 0  # an exact count of hits (timm's percent is float32)
    assert any(v > 0 for v in batched["firing_rate"]["t1"].values())


def _reference_parser(text):
    """ASTER's ``_parse_log_file``, step by step: 'firing_rate: \\n', the next 'INFO: {', JSON up to a blank line."""
    start = text.find("firing_rate: \n")
    brace = text.find("INFO: {", start) + len("INFO: ")
    end = text.find("\n\n", brace)
    return json.loads(text[brace:] if end < 0 else text[brace:end])


def test_outputs_and_reference_log(tmp_path):
    content = _evaluate(tmp_path, 4, "--experiment", "run", "--export-traces", str(tmp_path / "traces"),
                        "--trace-samples", "3")
    run = tmp_path / "valid" / "run"
    for name in ("sdt.log", "args.yaml", "firing.json", "firing.csv", "firing.png", "energy.csv"):
        assert (run / name).is_file(), name
    log = (run / "sdt.log").read_text()
    assert "INFO: top-1: " in log and "INFO: non_zero: \n" in log
    assert _reference_parser(log) == content["firing_rate"]
    # ASTER's skip selection reads the same log (issue 8)
    assert load_firing_rates(run / "sdt.log") == content["firing_rate"]
    assert select_skip_blocks(1, load_firing_rates(run / "sdt.log"), threshold=1.0).blocks == [0]
    energy = content["energy"]
    assert energy["energy_mj"] == pytest.approx(sum(r["energy_pj"] for r in energy["layers"]) * 1e-9)
    assert energy["layers"][0]["layer"] == "patch_embed.proj_conv" and energy["layers"][0]["macs"] > 0
    reader = TraceReader(tmp_path / "traces")
    assert len(reader) == 3 and content["traces"]["samples"] == 3


def test_a_second_run_never_overwrites_the_first(tmp_path):
    _evaluate(tmp_path, 2, "--experiment", "run")
    before = snapshot(tmp_path / "valid" / "run")
    _evaluate(tmp_path, 2, "--experiment", "run")
    assert snapshot(tmp_path / "valid" / "run") == before
    assert (tmp_path / "valid" / "run-1" / "firing.json").is_file()


def test_large_valid_runs_on_one_process(tmp_path):
    content = _evaluate(tmp_path, 1, "--experiment", "large", "--large-valid", "-vb", "360")
    layers = {r["layer"]: r for r in content["energy"]["layers"]}
    assert layers["patch_embed.proj_conv"]["output_size"] == "288x288"


def test_checkpoint_of_another_architecture_is_one_clear_error(tmp_path):
    wrong = tmp_path / "wide.pth.tar"
    import model  # noqa: F401

    net = timm.create_model("sdt_test", embed_dims=64, num_heads=4)
    torch.save({"state_dict": net.state_dict()}, wrong)
    (tmp_path / "valid").mkdir()
    cmd = [sys.executable, "test.py", *TINY_FLAGS, "--resume", str(wrong), "--output", str(tmp_path / "valid")]
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "does not fit this model" in errors[0] and "shape mismatches" in errors[0]
    assert not any((tmp_path / "valid").iterdir())


def test_evaluating_a_training_run_leaves_it_untouched(tmp_path, monkeypatch):
    """``-c <run>/args.yaml --resume <run>/model_best.pth.tar``: output/valid/<experiment>, not the training root."""
    run = tmp_path / "train" / "d"
    run.mkdir(parents=True)
    _checkpoint(tmp_path, 2).rename(run / "model_best.pth.tar")
    (run / "args.yaml").write_text(f"output: {tmp_path / 'train'}\nexperiment: d\ntime_steps: 2\n")
    before = snapshot(tmp_path / "train")
    monkeypatch.chdir(tmp_path)
    parser = _eval_parser()
    args = parse_args(parser, ["-c", str(run / "args.yaml"), *TINY_FLAGS, "--time-steps", "2",
                               "--resume", str(run / "model_best.pth.tar")])
    run_evaluation(args, parser)
    assert snapshot(tmp_path / "train") == before
    assert (tmp_path / "output" / "valid" / "d" / "firing.json").is_file()
    # --output on the command line still chooses the root
    args = parse_args(parser, ["-c", str(run / "args.yaml"), *TINY_FLAGS, "--time-steps", "2",
                               "--resume", str(run / "model_best.pth.tar"), "--output", str(tmp_path / "mine")])
    run_evaluation(args, parser)
    assert (tmp_path / "mine" / "d" / "firing.json").is_file() and snapshot(tmp_path / "train") == before


def _existing_trace(tmp_path):
    (tmp_path / "old_trace").mkdir()
    (tmp_path / "old_trace" / "meta.json").write_text("{}")
    return str(tmp_path / "old_trace")


def _a_file(tmp_path):
    (tmp_path / "file.txt").write_text("keep me")
    return str(tmp_path / "file.txt")


@pytest.mark.parametrize("flags,message", [
    (lambda p: ["--e-ac", "-0.9"], "--e-ac -0.9: an energy per operation must be a non-negative"),
    (lambda p: ["--e-mac", "nan"], "--e-mac nan"),
    (lambda p: ["--encoding-steps", "0"], "--encoding-steps 0: charge between 1 and T=2"),
    (lambda p: ["--encoding-steps", "3"], "--encoding-steps 3: charge between 1 and T=2"),
    (lambda p: ["--time-steps", "0"], "--time-steps 0: T must be a positive number"),
    (lambda p: ["--export-traces", _existing_trace(p)], "choose a new folder, or --export-traces '' for none"),
    (lambda p: ["--export-traces", _a_file(p)], "is a file, not a folder"),
    (lambda p: ["--export-traces", str(p / "new"), "--trace-samples", "0"], "--trace-samples 0"),
    (lambda p: ["--export-traces", str(p / "new"), "--trace-samples", "-3"], "--trace-samples -3"),
])
def test_bad_evaluation_flags_fail_before_anything_is_written(tmp_path, flags, message):
    with pytest.raises(ConfigError, match=message):
        _evaluate(tmp_path, 2, *flags(tmp_path))
    assert not (tmp_path / "valid").exists() and not (tmp_path / "new").exists()
    assert not (tmp_path / "old_trace").exists() or [p.name for p in (tmp_path / "old_trace").iterdir()] == \
        ["meta.json"]


def test_a_named_variants_time_steps_are_the_ones_checked(tmp_path):
    """``--model sdt_test`` runs T=2; its sizes were applied only when the model was built, after the flags had
    been checked against the default T=4, so ``--encoding-steps 3`` charged three encoding copies of a 2-step
    model."""
    parser = _eval_parser()
    args = parse_args(parser, [*VARIANT_FLAGS, "--encoding-steps", "3", "--output", str(tmp_path / "valid")])
    assert (args.time_steps, args.layer) == (2, 1)
    with pytest.raises(ConfigError, match="--encoding-steps 3: charge between 1 and T=2"):
        run_evaluation(args, parser)
    assert not (tmp_path / "valid").exists()


def test_existing_trace_folder_is_one_error_line_from_the_script(tmp_path):
    cmd = [sys.executable, "firing_num.py", *TINY_FLAGS, "--resume", str(_checkpoint(tmp_path, 1)),
           "--output", str(tmp_path / "valid"), "--export-traces", _existing_trace(tmp_path)]
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "already holds a trace" in errors[0] and "--overwrite" not in errors[0]
    assert not (tmp_path / "valid").exists()


def test_main_validate_only_uses_the_same_trace_check(tmp_path):
    import main

    args = parse_args(main.make_parser(), [*TINY_FLAGS, "--validate-only", "--initial-checkpoint",
                                           str(_checkpoint(tmp_path, 1)), "--output", str(tmp_path / "aster"),
                                           "--export-traces", str(tmp_path / "t"), "--trace-samples", "0"])
    with pytest.raises(ConfigError, match="--trace-samples 0"):
        main.run(args)
    assert not (tmp_path / "aster").exists()


def test_large_valid_warns_for_a_model_built_for_small_images(caplog):
    import argparse

    from engine.evaluate import _apply_large_valid

    args = argparse.Namespace(large_valid=True, img_size=32, input_size=None, crop_pct=1.0, interpolation="")
    _apply_large_valid(args)
    assert args.img_size == 288 and "built for 32 px" in caplog.text
    # the reference's 288-px test: Resize(320), CenterCrop(288), bilinear
    assert (args.crop_pct, args.interpolation, args.input_size) == (288 / 320, "bilinear", None)
    caplog.clear()
    _apply_large_valid(argparse.Namespace(large_valid=True, img_size=224, input_size=None, crop_pct=0.875,
                                          interpolation=""))
    assert caplog.text == ""


def _synthetic_nmnist(tmp_path, n_train=4, n_test=8, seed=0):
    """An N-MNIST raw folder (slayerPytorch layout: label lists and ATIS .bs2 files) of random 34x34 events."""
    import numpy as np
    from test_data_dvs_formats import write_atis

    raw, rng = tmp_path / "raw", np.random.default_rng(seed)
    for name, ids in (("train1K.txt", range(n_train)), ("test100.txt", range(n_train, n_train + n_test))):
        for i in ids:
            n = 3000
            write_atis(raw / f"{i}.bs2", {"x": rng.integers(0, 34, n), "y": rng.integers(0, 34, n),
                                          "p": rng.integers(0, 2, n), "t": np.sort(rng.integers(0, 300_000, n))})
        (raw / name).write_text("#sample #class\n" + "".join(f"{i}\t{i % 10}\n" for i in ids))
    return raw


def test_event_input_is_charged_as_accumulates_whatever_dvs_mode_says(tmp_path):
    """Gesture's configs (and the reference's) build the model with dvs_mode off; its input is still events."""
    raw = _synthetic_nmnist(tmp_path)
    parser = _eval_parser()
    args = parse_args(parser, ["--dataset", "nmnist", "--data-dir", str(tmp_path / "nmnist"), "--dvs-raw-dir",
                               str(raw), "--no-dvs-mode", "--time-steps", "2", "--img-size", "32", "--in-channels",
                               "2", "--dim", "32", "--layer", "1", "--num-heads", "2", "--mlp-ratio", "2",
                               "--pooling-stat", "1111", "--num-classes", "10", "-vb", "8", "-j", "0", "--device",
                               "cpu", "--output", str(tmp_path / "valid")])
    first = run_evaluation(args, parser)["energy"]["layers"][0]
    assert first["layer"] == "patch_embed.proj_conv" and first["macs"] == 0
    assert first["sops"] == pytest.approx(first["rate"] * first["flops"] * 2)  # event counts at T=2 steps


def test_skip_blocks_evaluates_the_skipping_model_and_a_mismatch_is_warned(tmp_path, caplog):
    """firing_num.py/test.py had no skip flag, so a checkpoint trained (or fine-tuned) with skipped attention was
    evaluated unskipped without a word; --skip-blocks bypasses the branch, and a checkpoint whose recorded
    skipped_blocks differ from the model's is warned about."""
    full = _evaluate(tmp_path, 2, "--experiment", "full")
    skipped = _evaluate(tmp_path, 2, "--experiment", "skip", "--skip-blocks", "0")
    assert any(k.startswith("MS_SSA_Conv0") for k in full["firing_rate"]["t0"])
    assert not any(k.startswith("MS_SSA_Conv0") for k in skipped["firing_rate"]["t0"])
    attention_layers = [[row for row in run["energy"]["layers"] if "attn" in str(row)] for run in (full, skipped)]
    assert attention_layers[0] and not attention_layers[1]
    checkpoint = torch.load(_checkpoint(tmp_path, 2), weights_only=False)
    checkpoint["args"] = argparse.Namespace(skipped_blocks=[0])
    torch.save(checkpoint, tmp_path / "finetuned.pth.tar")
    parser = _eval_parser()
    args = parse_args(parser, [*TINY_FLAGS, "--time-steps", "2", "--output", str(tmp_path / "valid"),
                               "--resume", str(tmp_path / "finetuned.pth.tar")])
    run_evaluation(args, parser)
    assert "skipped_blocks=[0] (this model: [])" in caplog.text and "--skip-blocks" in caplog.text
    caplog.clear()  # skipping blocks of a model trained without skipping is what main.py and finetune.py do
    checkpoint["args"] = argparse.Namespace(skipped_blocks=[])
    torch.save(checkpoint, tmp_path / "unskipped.pth.tar")
    args = parse_args(parser, [*TINY_FLAGS, "--time-steps", "2", "--output", str(tmp_path / "valid"),
                               "--resume", str(tmp_path / "unskipped.pth.tar"), "--skip-blocks", "0"])
    run_evaluation(args, parser)
    assert "skipped_blocks" not in caplog.text
    args = parse_args(parser, [*TINY_FLAGS, "--time-steps", "2", "--output", str(tmp_path / "valid"),
                               "--resume", str(tmp_path / "unskipped.pth.tar"), "--skip-blocks", "3"])
    with pytest.raises(ConfigError, match="--skip-blocks: skip_blocks=\\[3\\] out of range"):
        run_evaluation(args, parser)


def test_output_root_given_on_the_command_line_is_kept_even_when_the_config_has_it(tmp_path):
    """--output equal to the config's output was taken for the config's (a training root) and replaced."""
    from engine.evaluate import DEFAULT_VALID_ROOT, evaluation_output_root

    (tmp_path / "args.yaml").write_text(f"output: {tmp_path}\n")
    for argv, expected in (([], DEFAULT_VALID_ROOT), (["--output", str(tmp_path)], str(tmp_path))):
        parser = _eval_parser()
        args = parse_args(parser, ["-c", str(tmp_path / "args.yaml"), *argv])
        assert evaluation_output_root(args, parser) == expected


@pytest.mark.parametrize("tet", [False, True])
def test_reported_accuracy_is_the_count_of_correct_argmax(tmp_path, tet):
    """top-1/top-5 of firing.json against a direct count over the same validation images (a swapped pair or a
    wrong normalisation passed the batching comparisons); a TET model's per-step logits are averaged over T."""
    import model  # noqa: F401
    from engine.loaders import build_loaders
    from engine.model import build_model, resolve_model_args

    flags = ["--TET"] if tet else []
    result = _evaluate(tmp_path, 2, "-vb", "100", *flags)
    args = parse_args(_eval_parser(), [*TINY_FLAGS, "--time-steps", "2", *flags])
    args.distributed = False
    resolve_model_args(args)
    net = build_model(args)
    net.load_state_dict(torch.load(_checkpoint(tmp_path, 2), weights_only=False)["state_dict"])
    net.eval()
    top1 = top5 = seen = 0
    with torch.no_grad():
        for images, labels in build_loaders(args, net, train=False).eval:
            logits = net(images)
            assert logits.dim() == (3 if tet else 2)
            logits = logits.mean(0) if tet else logits
            top1 += (logits.argmax(-1) == labels).sum().item()
            top5 += (logits.topk(5, -1).indices == labels[:, None]).any(-1).sum().item()
            seen += labels.numel()
    assert seen == result["samples"] == 360 and 0 < top1 < top5
    assert (result["top1"], result["top5"]) == (pytest.approx(100 * top1 / 360), pytest.approx(100 * top5 / 360))


def test_save_qkv_writes_each_batchs_hook_dict(tmp_path):
    """--save-qkv: qkv_<batch>.pkl per batch, the hook dict whose spikes the firing rates average."""
    content = _evaluate(tmp_path, 2, "-vb", "200", "--save-qkv", "--experiment", "qkv")
    run = tmp_path / "valid" / "qkv"
    hooks = [torch.load(run / f"qkv_{i}.pkl", weights_only=False) for i in range(2)]  # 360 images: 200 + 160
    assert not (run / "qkv_2.pkl").exists() and [h["head_lif"].shape[1] for h in hooks] == [200, 160]
    key = "MS_SPS_lif"
    rate = sum(h[key][0].float().sum() for h in hooks) / sum(h[key][0].numel() for h in hooks)
    assert content["firing_rate"]["t0"][key] == pytest.approx(rate.item())
