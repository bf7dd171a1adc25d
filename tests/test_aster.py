"""ASTER: attention-skip selection and model bypass; early exit, sweeps and the SEENN oracle; rate files, strict
JSON artefacts."""
import argparse
import json
import math
import re

import pytest
import timm
import torch

import model  # noqa: F401
from engine.aster import AsterResult, check_exit_args, confidence_sample_count, read_firing_rates, write_aster_outputs
from engine.early_exit import EarlyExitMeter, EarlyExitSweep, exit_decisions, exit_scores, oracle_aet
from engine.errors import ConfigError
from engine.skip import select_skip_blocks
from reference_fixtures import FIXTURE_DIR, build_seeded, load_fixture

RATES = {"t0": {"MS_SSA_Conv0_x_after_qkv": 0.02, "MS_SSA_Conv1_x_after_qkv": 0.001, "MS_SSA_Conv2_x_after_qkv": 0.3},
         "t1": {"MS_SSA_Conv0_x_after_qkv": 0.0, "MS_SSA_Conv1_x_after_qkv": 0.001, "MS_SSA_Conv2_x_after_qkv": 0.1}}


def test_threshold_rule_is_inclusive_and_averages_over_steps():
    decision = select_skip_blocks(3, RATES, threshold=0.01)
    assert decision.blocks == [0, 1]  # block 0: mean(0.02, 0) = 0.01 <= 0.01
    assert decision.rates == pytest.approx([0.01, 0.001, 0.2])
    assert "skipped" in decision.reasons[0] and "kept" in decision.reasons[2]


def test_lowest_and_explicit_rules():
    assert select_skip_blocks(3, RATES, lowest=1).blocks == [1]
    assert select_skip_blocks(3, RATES, lowest=0).blocks == []
    assert select_skip_blocks(3, explicit=[2, 0]).blocks == [0, 2]
    with pytest.raises(ValueError, match="out of range"):
        select_skip_blocks(3, explicit=[3])
    with pytest.raises(ValueError, match="exactly one"):
        select_skip_blocks(3, RATES, threshold=0.1, lowest=1)
    with pytest.raises(ValueError, match="MS_SSA_Conv3_x_after_qkv"):
        select_skip_blocks(4, RATES, threshold=0.1)


@pytest.fixture(scope="module")
def calibrated():
    fixture = load_fixture(FIXTURE_DIR / "sdt_A_lif_static.pt")  # 2 blocks, T=4, every layer fires
    net = build_seeded(fixture)
    net.load_state_dict(fixture["state_dict"])
    return net.eval(), fixture["input"]


def test_skipping_removes_exactly_the_attention_branch(calibrated):
    net, x = calibrated
    with torch.no_grad():
        _, full = net(x, hook={})
        net.skip_blocks = [1]
        out, skipped = net(x, hook={})
        # by hand: block 1 becomes its MLP alone, applied to block 0's output
        net.reset_neurons()
        features = net.block[0](net.patch_embed(net.to_time_major(x)))
        expected = net.forward_head(net.block[1].mlp(features))
        net.skip_blocks = []
    assert torch.equal(out, expected)
    assert {k for k in full if k not in skipped} == {f"MS_SSA_Conv1_{s}" for s in (
        "first_lif", "q_lif", "k_lif", "v_lif", "kv_before", "kv", "x_after_qkv")}
    assert "MS_MLP_Conv1_fc1_lif" in skipped
    for key in ("MS_SSA_Conv0_q_lif", "MS_MLP_Conv0_fc2_lif"):
        assert torch.equal(full[key], skipped[key])


def _direct_early_exit(per_step, labels, threshold, metric):
    steps, correct = [], 0
    for b in range(per_step.shape[1]):
        partial = torch.zeros(per_step.shape[-1])
        for t in range(per_step.shape[0]):
            partial = partial + per_step[t, b]
            p = partial.softmax(-1)
            score = p.max().item() if metric == "confidence" else \
                1 - (-(p * p.log()).sum().item()) / math.log(p.numel())
            if score > threshold or t == per_step.shape[0] - 1:
                steps.append(t + 1)
                correct += int(partial.argmax().item() == labels[b].item())
                break
    return steps, 100.0 * correct / per_step.shape[1]


@pytest.mark.parametrize("metric", ["confidence", "entropy"])
@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
def test_meter_equals_direct_per_sample_computation(metric, threshold):
    generator = torch.Generator().manual_seed(1)
    per_step = torch.randn(5, 40, 4, generator=generator)
    labels = torch.randint(0, 4, (40,), generator=generator)
    meter = EarlyExitMeter(T=5, threshold=threshold, metric=metric)
    for chunk in range(0, 40, 16):  # batches of 16, 16, 8
        meter.update(per_step[:, chunk:chunk + 16], labels[chunk:chunk + 16])
    steps, accuracy = _direct_early_exit(per_step, labels, threshold, metric)
    assert meter.exit_steps == steps
    assert meter.overall()["accuracy"] == pytest.approx(accuracy)
    sweep = EarlyExitSweep([threshold], T=5, metric=metric)
    sweep.update(per_step, labels)
    row = sweep.rows()[0]
    assert row["accuracy"] == pytest.approx(accuracy)
    assert row["avg_timesteps"] == pytest.approx(sum(steps) / len(steps))


def test_threshold_extremes():
    per_step = torch.randn(4, 10, 3)
    scores, cumulative = exit_scores(per_step, "confidence")
    assert exit_decisions(scores, cumulative, 0.0)[0].tolist() == [1] * 10
    assert exit_decisions(scores, cumulative, 1.01)[0].tolist() == [4] * 10


def test_prediction_at_exit_equals_a_shorter_run(calibrated):
    """Causality: summing the first t per-step logits gives the output of running only t steps."""
    net, x = calibrated
    with torch.no_grad():
        net.TET = True
        per_step = net(x)
        net.TET = False
        for t in range(1, net.T + 1):
            net.T = t
            short = net(x)
            net.T = 4
            torch.testing.assert_close(per_step[:t].mean(0), short, rtol=1e-5, atol=1e-6)


def test_oracle_aet_by_hand():
    # 10 samples, T=3: 4 correct with 1 step, 7 with 2, 8 with 3 -> (4 + 2*3 + 3*1 + 3*2) / 10 = 1.9
    assert oracle_aet([4, 7, 8], 10, 3) == pytest.approx(1.9)
    sweep = EarlyExitSweep([0.5], T=2)
    per_step = torch.tensor([[[2.0, 0.0], [0.0, 1.0]], [[0.0, 0.0], [0.0, 3.0]]])  # [T=2, B=2, C=2]
    sweep.update(per_step, torch.tensor([0, 0]))
    assert sweep.fixed_step_accuracy() == [50.0, 50.0]
    assert sweep.oracle()["aet"] == pytest.approx((1 + 2 * 0 + 2 * 1) / 2)


def test_class_stats_and_exit_record():
    meter = EarlyExitMeter(T=3, threshold=0.9)
    per_step = torch.tensor([[[5.0, 0.0], [0.0, 0.1]], [[5.0, 0.0], [0.0, 0.1]], [[1.0, 0.0], [0.0, 0.1]]])
    meter.update(per_step, torch.tensor([0, 1]))
    stats = meter.class_stats()
    assert stats["overall"]["exit_timestep_ratio"] == [0.5, 0.0, 0.5]
    assert stats["per_class"]["0"] == {"samples": 1, "accuracy": 100.0, "avg_timestep": 1.0, "std_dev": 0.0,
                                       "exit_timesteps": [1]}
    assert stats["confidence"]["timestep_1"]["values"][0] == pytest.approx(torch.tensor([5.0, 0]).softmax(0)[0])
    # as the reference: a sample's score is recorded only at the steps it ran (sample 0 left at step 1)
    assert [len(stats["confidence"][f"timestep_{t}"]["values"]) for t in (1, 2, 3)] == [2, 1, 1]
    assert meter.exit_record()["exit_steps"] == [1, 3]
    assert meter.log_line().startswith("[Early Exit] Threshold: 0.9, Avg Time: 2.0000, Acc: 100.0000, Portion:")


def test_class_stats_of_large_classes_and_confidence_sample_count():
    """The reference writes "too many to store" for a class of more than 100 samples, and scores of the first
    10 samples only on ImageNet (``confidence_samples``)."""
    meter = EarlyExitMeter(T=2, threshold=2.0, confidence_samples=10)  # nobody exits early: both steps run
    meter.update(torch.randn(2, 101, 3), torch.zeros(101, dtype=torch.long))
    stats = meter.class_stats()
    assert stats["per_class"]["0"]["exit_timesteps"] == "too many to store"
    assert stats["per_class"]["0"]["samples"] == 101
    assert [len(stats["confidence"][f"timestep_{t}"]["values"]) for t in (1, 2)] == [10, 10]
    assert [confidence_sample_count(name) for name in ("imagenet", "ImageNet1k", "torch/cifar10")] == [10, 10, 100]


def test_skip_blocks_validated_on_the_model():
    net = timm.create_model("sdt_test", depths=2)
    with pytest.raises(ValueError, match="skip_blocks"):
        net.skip_blocks = [2]


def test_rates_of_a_deeper_model_are_rejected():
    with pytest.raises(ValueError, match="MS_SSA_Conv2_\\* keys, so they come from a model with at least 3 blocks"):
        select_skip_blocks(2, RATES, lowest=1)


@pytest.mark.parametrize("mode, other", [("SDT", "STAtten"), ("STAtten", "SDT")])
def test_rates_of_the_other_attention_mode_are_refused(tmp_path, mode, other):
    """An SDT-mode model ranked its blocks by a STAtten-mode model's _after_qkv rates (and the reverse): the two
    keys were taken interchangeably.  Each mode is rated by its own key only."""
    key = {"SDT": "MS_SSA_Conv0_x_after_qkv", "STAtten": "MS_SSA_Conv0_after_qkv"}
    path = tmp_path / "firing.json"
    _firing_json(path, {"t0": {key[other]: 0.1}, "t1": {key[other]: 0.2}})
    with pytest.raises(ConfigError, match=re.escape(
            f"{path}: the firing rates hold {key[other]}, the rate of attention mode {other}, but the model runs "
            f"attention mode {mode} (rated by {key[mode]})")):
        read_firing_rates(str(path), 1, 2, mode)
    assert read_firing_rates(str(path), 1, 2, other) == {"t0": {key[other]: 0.1}, "t1": {key[other]: 0.2}}
    assert select_skip_blocks(1, {"t0": {key[mode]: 0.1}}, lowest=1, attention_mode=mode).rates == [0.1]
    with pytest.raises(ValueError, match=f"runs attention mode {mode}"):
        select_skip_blocks(1, {"t0": {key[other]: 0.1}}, lowest=1, attention_mode=mode)


def _firing_json(path, rates, T=None):
    path.write_text(json.dumps({"format": "firing-rates/1", "T": len(rates) if T is None else T,
                                "firing_rate": rates}))


@pytest.mark.parametrize("case, message", [
    ("text rate", "rate of 'MS_SSA_Conv0_x_after_qkv' at 't0' is 'n/a', not a finite number"),
    ("null rate", "is None, not a finite number"),
    ("nan rate", "is nan, not a finite number"),
    ("nan in log", "is nan, not a finite number"),
    ("list table", "its firing_rate is not shaped"),
    ("T disagrees", "T is 5 but firing_rate has 2 time steps"),
    ("other T", "holds the rates of 2 time steps, the model runs --time-steps 3"),
    ("binary", "not a text file (byte 0 is not UTF-8)"),
    ("directory", "is a directory"),
    ("not a mapping", "not a firing.json (format 'list'"),
])
def test_bad_rate_files_are_one_short_error_naming_the_file(tmp_path, case, message):
    two = {t: dict(RATES[t]) for t in RATES}
    path = tmp_path / "firing.json"
    depths, T = 3, 2
    if case in ("text rate", "null rate", "nan rate"):
        two["t0"]["MS_SSA_Conv0_x_after_qkv"] = {"text rate": "n/a", "null rate": None, "nan rate": math.nan}[case]
        _firing_json(path, two)
    elif case == "nan in log":
        path = tmp_path / "sdt.log"
        path.write_text("x INFO: firing_rate: \nx INFO: " + json.dumps(two).replace("0.3", "NaN") + "\n")
    elif case == "list table":
        path.write_text(json.dumps({"format": "firing-rates/1", "T": 2, "firing_rate": [0.1, 0.2]}))
    elif case == "T disagrees":
        _firing_json(path, two, T=5)
    elif case == "other T":
        _firing_json(path, two)
        T = 3
    elif case == "binary":
        path = tmp_path / "sdt.log"
        path.write_bytes(bytes(range(255, 0, -1)) * 30)
    elif case == "directory":
        path = tmp_path
    else:
        path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        read_firing_rates(str(path), depths, T)
    assert str(path) in str(err.value) and len(str(err.value)) < 300


def test_reference_log_of_a_short_model_reads_its_steps(tmp_path):
    """The reference's firing_num.py always wrote t0..t3, leaving the steps beyond T empty: a T=2 model's log is
    read as 2 steps; a log with rates at step 3 is still another T."""
    from _aster_helpers import reference_log

    key = "MS_SSA_Conv0_x_after_qkv"
    path = tmp_path / "sdt.log"
    path.write_text(reference_log({"t0": {key: 0.1}, "t1": {key: 0.2}, "t2": {}, "t3": {}}))
    assert read_firing_rates(str(path), 1, 2) == {"t0": {key: 0.1}, "t1": {key: 0.2}}
    path.write_text(reference_log({"t0": {key: 0.1}, "t1": {key: 0.2}, "t2": {key: 0.3}, "t3": {}}))
    assert read_firing_rates(str(path), 1, 3) == {"t0": {key: 0.1}, "t1": {key: 0.2}, "t2": {key: 0.3}}
    with pytest.raises(ConfigError, match="holds the rates of 3 time steps"):
        read_firing_rates(str(path), 1, 2)


def test_reference_log_of_a_short_model_is_refused_by_a_longer_model(tmp_path):
    """Trailing empty steps were dropped only beyond T, so a T=2 model's reference log (t2, t3 empty) passed as
    the rates of a T=4 model."""
    from _aster_helpers import reference_log

    key = "MS_SSA_Conv0_x_after_qkv"
    path = tmp_path / "sdt.log"
    path.write_text(reference_log({"t0": {key: 0.1}, "t1": {key: 0.2}, "t2": {}, "t3": {}}))
    with pytest.raises(ConfigError, match=re.escape(f"{path} holds the rates of 2 time steps, the model runs "
                                                    "--time-steps 4")):
        read_firing_rates(str(path), 1, 4)


def test_nan_thresholds_are_rejected():
    args = argparse.Namespace(exit_threshold=math.inf, exit_sweep=[0.5, math.inf, -1.0, 2.0])
    check_exit_args(args)
    with pytest.raises(ConfigError, match="--exit-threshold nan"):
        check_exit_args(argparse.Namespace(exit_threshold=math.nan, exit_sweep=None))
    with pytest.raises(ConfigError, match="--exit-sweep holds nan"):
        check_exit_args(argparse.Namespace(exit_threshold=0.9, exit_sweep=[0.5, math.nan]))


def test_artefacts_are_strict_json_with_infinite_thresholds_as_text(tmp_path):
    from hw.workload import load_exit_json

    per_step, labels = torch.randn(3, 20, 4), torch.randint(0, 4, (20,))
    sweep, meter = EarlyExitSweep([0.5, math.inf, -math.inf], T=3), EarlyExitMeter(T=3, threshold=math.inf)
    sweep.update(per_step, labels)
    meter.update(per_step, labels)
    result = AsterResult(T=3, metric="confidence", skipped_blocks=[], sweep=sweep, meter=meter,
                         validation={"loss": math.nan, "top1": 50.0, "top5": 90.0})
    write_aster_outputs(tmp_path, result, {"reasons": [], "skipped_blocks": [], "block_rates": [None]})

    def reject(constant):
        raise ValueError(f"not strict JSON: {constant}")

    content = {name: json.loads((tmp_path / name).read_text(), parse_constant=reject)
               for name in ("aster_eval.json", "exit_steps.json", "early_exit_class_stats.json", "skip.json")}
    assert [row["threshold"] for row in content["aster_eval.json"]["sweep"]] == [0.5, "inf", "-inf"]
    assert content["aster_eval.json"]["validation"]["loss"] == "nan"
    assert content["exit_steps.json"]["threshold"] == "inf" == content["early_exit_class_stats.json"]["overall"][
        "threshold"]
    assert content["exit_steps.json"]["exit_steps"] == [3] * 20
    steps, portion = load_exit_json(tmp_path / "exit_steps.json", 3)  # what hw/ reads is unchanged
    assert list(steps.values()) == [3] * 20 and portion.tolist() == [0.0, 0.0, 1.0]


def test_the_study_ranks_blocks_by_the_model_s_own_attention_mode():
    """``--study`` ranks the blocks of an SDT-mode model by ``_x_after_qkv`` only: a STAtten-mode model's rates are
    refused before any evaluation (the model restored), as ``--skip-lowest`` refuses them."""
    import types

    from engine.aster import run_study

    bare = types.SimpleNamespace(depths=1, attention_mode="SDT", skip_blocks=[])
    with pytest.raises(ValueError, match="runs attention mode SDT"):
        run_study(bare, None, None, argparse.Namespace(), rates={"t0": {"MS_SSA_Conv0_after_qkv": 0.1}},
                  max_skip=1, thresholds=[0.5])
    assert bare.skip_blocks == []


def test_skip_rates_of_the_other_attention_mode_are_a_log_file_error(tmp_path):
    """resolve_skip reads the rates for the model's mode: the other mode's file is a ``--log-file`` error naming
    the file, not a skip-rule error."""
    from engine.aster import resolve_skip

    path = tmp_path / "firing.json"
    _firing_json(path, {"t0": {"MS_SSA_Conv0_after_qkv": 0.1}})
    args = argparse.Namespace(auto_skip=False, skip_lowest=1, skip_blocks=None, log_file=str(path), layer=1,
                              time_steps=1, attention_mode="SDT", skip_threshold=0.1)
    with pytest.raises(ConfigError, match=f"^--log-file: {re.escape(str(path))}: the firing rates hold "
                                          "MS_SSA_Conv0_after_qkv, the rate of attention mode STAtten"):
        resolve_skip(args)


def test_a_plot_that_fails_to_save_leaves_the_earlier_one_and_no_temporary_file(tmp_path):
    """A savefig error left '.<name>.tmp.png' behind (the temporary file was not removed)."""
    from engine.aster import _pyplot, _save

    (tmp_path / "exit_sweep.png").write_bytes(b"earlier")
    fig = _pyplot().figure()

    def fails(f, **kwargs):
        f.write(b"\x89PNG half")
        raise OSError(28, "No space left on device")

    fig.savefig = fails
    with pytest.raises(OSError, match="No space left"):
        _save(fig, tmp_path / "exit_sweep.png")
    assert [(p.name, p.read_bytes()) for p in tmp_path.iterdir()] == [("exit_sweep.png", b"earlier")]
    assert not _pyplot().get_fignums()  # closed all the same
