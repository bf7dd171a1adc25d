"""main.py: attention skipping through the model building, log parsing, early exit end to end, study, errors."""
import csv
import json
import math

import pytest
import torch
from _aster_helpers import ASTER_FLAGS, DEPTHS, T, error_lines, reference_log, run_main, trained_run
from _engine_helpers import snapshot

import main
from engine.checkpoint import load_checkpoint_file
from engine.config import parse_args
from engine.run import setup_evaluation
from engine.traces import capture_sample

pytestmark = pytest.mark.slow

SDSA_KEYS = ("first_lif", "q_lif", "k_lif", "v_lif", "kv_before", "kv", "x_after_qkv")
# Block 1 fires least: --auto-skip at 0.01 and --skip-lowest 1 both pick it.  T=3 (t0..t2), not the reference's 4.
RATES = {f"t{t}": {"MS_SSA_Conv0_x_after_qkv": 0.2 + 0.01 * t, "MS_SSA_Conv1_x_after_qkv": 0.004 + 0.001 * t,
                   "MS_MLP_Conv0_fc1_lif": 0.1} for t in range(T)}


def _checkpoint() -> str:
    return str(trained_run() / "model_best.pth.tar")


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _evaluation_setup(tmp_path, *extra):
    """Model and loader built exactly as ``main.py --validate-only`` builds them."""
    args = parse_args(main.make_parser(), [*ASTER_FLAGS, "--output", str(tmp_path), "--initial-checkpoint",
                                           _checkpoint(), *extra])
    skip, hooks = main.skip_hooks(args)
    return skip, setup_evaluation(args, None, hooks)


def test_training_writes_the_aster_artefacts():
    run_dir = trained_run()
    for name in ("skip.json", "exit_steps.json", "early_exit_class_stats.json", "exit_sweep.csv",
                 "exit_sweep_portion.csv", "exit_sweep.png", "aster_eval.json", "fixed_step_accuracy.csv"):
        assert (run_dir / name).is_file(), name
    assert "Early exit: evaluating" in (run_dir / "train.log").read_text()
    record = json.loads((run_dir / "exit_steps.json").read_text())
    assert record["format"] == "early-exit/1" and record["T"] == T and len(record["exit_steps"]) == 360
    stats = json.loads((run_dir / "early_exit_class_stats.json").read_text())
    assert sum(c["samples"] for c in stats["per_class"].values()) == 360
    assert stats["overall"]["threshold"] == 0.9 and len(stats["overall"]["exit_timestep_ratio"]) == T
    assert [row["threshold"] for row in _read_csv(run_dir / "exit_sweep.csv")] == ["0.5", "0.9"]


def test_skipping_a_block_removes_exactly_its_sdsa_path(tmp_path):
    skip, s = _evaluation_setup(tmp_path, "--skip-blocks", "1")
    net = s.model.eval()
    assert skip["skipped_blocks"] == [1] and net.skip_blocks == [1]
    x = next(iter(s.loaders.eval))[0][:8]
    with torch.no_grad():
        out, skipped = net(x, hook={})
        net.skip_blocks = []
        _, full = net(x, hook={})
        net.reset_neurons()  # by hand: block 1 is its MLP alone, applied to block 0's output
        expected = net.forward_head(net.block[1].mlp(net.block[0](net.patch_embed(net.to_time_major(x)))))
        net.skip_blocks = [1]
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert set(full) - set(skipped) == {f"MS_SSA_Conv1_{k}" for k in SDSA_KEYS}
    assert set(skipped) <= set(full)
    for key in ("MS_SSA_Conv0_x_after_qkv", "MS_MLP_Conv0_fc2_lif", "MS_SPS_lif"):
        torch.testing.assert_close(full[key], skipped[key], rtol=0, atol=0)
    assert skipped["MS_MLP_Conv1_fc1_lif"].shape == full["MS_MLP_Conv1_fc1_lif"].shape

    # The trace for hw/ shows the same: no SDSA operation of block 1 (convs, LIFs, attention, residual), MLP intact.
    capture = capture_sample(net, x[:1])
    net.skip_blocks = []
    reference = capture_sample(net, x[:1])
    net.skip_blocks = [1]
    assert capture.skipped_blocks == [1] and reference.skipped_blocks == []
    block1 = [op for op in capture.ops if op.block == 1]
    assert block1 and not any(op.sdsa for op in block1)
    assert [op.name for op in block1] == [op.name for op in reference.ops if op.block == 1 and not op.sdsa]
    assert {op.kind for op in reference.ops if op.block == 1 and op.sdsa} >= {"conv", "lif", "attention", "residual"}


@pytest.mark.parametrize("flags, expected, rule", [
    (["--auto-skip", "--skip-threshold", "0.01"], [1], "threshold"),
    (["--auto-skip", "--skip-threshold", "0.004"], [], "threshold"),  # block 1: mean(0.004, 0.005, 0.006) > 0.004
    (["--skip-lowest", "1"], [1], "lowest"),
    (["--skip-lowest", "2"], [0, 1], "lowest"),
])
@pytest.mark.parametrize("trailer", [False, True])
def test_skip_list_from_a_reference_format_log(tmp_path, flags, expected, rule, trailer):
    log = tmp_path / "sdt.log"
    log.write_text(reference_log(RATES, trailer=trailer))
    args = parse_args(main.make_parser(), [*ASTER_FLAGS, "--log-file", str(log), *flags])
    skip, hooks = main.skip_hooks(args)
    assert skip["skipped_blocks"] == expected and skip["rule"] == rule and skip["log_file"] == str(log)
    assert skip["block_rates"] == pytest.approx([0.21, 0.005])
    assert len(skip["reasons"]) == DEPTHS


def test_skip_list_from_firing_json_and_what_the_hardware_model_reads(tmp_path):
    """--auto-skip from a firing.json, early exit, and traces of the skipping model: hw/ reads all three."""
    from hw.workload import Workload

    rates = tmp_path / "firing.json"
    rates.write_text(json.dumps({"format": "firing-rates/1", "T": T, "firing_rate": RATES}))
    status, run_dir = run_main(tmp_path, "--validate-only", "--initial-checkpoint", _checkpoint(), "--auto-skip",
                               "--skip-threshold", "0.01", "--log-file", str(rates), "--early-exit",
                               "--export-traces", str(tmp_path / "trace"), "--trace-samples", "3")
    assert status == 0
    skip = json.loads((run_dir / "skip.json").read_text())
    assert skip["skipped_blocks"] == [1] and skip["format"] == "skip-blocks/1"
    assert json.loads((run_dir / "aster_eval.json").read_text())["skipped_blocks"] == [1]
    assert "block 1: rate 0.005 <= threshold 0.01: skipped" in (run_dir / "aster.log").read_text()

    workload = Workload.open(tmp_path / "trace", run_dir / "skip.json", run_dir / "exit_steps.json")
    assert workload.skip == {1} and workload.meta.skipped_blocks == [1] and workload.meta.T == T
    steps = json.loads((run_dir / "exit_steps.json").read_text())["exit_steps"]
    assert [workload.exit_steps[i] for i in range(3)] == steps[:3]
    record = json.loads((run_dir / "exit_steps.json").read_text())
    assert [s.pred_per_step[record["exit_steps"][s.id] - 1] for s in workload.meta.samples] == \
        record["predictions"][:3]  # the trace's prediction at the exit step is the early-exit prediction


@pytest.mark.parametrize("case, flags, message", [
    ("missing", ["--auto-skip", "--log-file", "{tmp}/nowhere/sdt.log"], "nowhere/sdt.log does not exist"),
    ("no block", ["--auto-skip", "--log-file", "{tmp}/other.log"], "other.log: no 'firing_rate: ' block"),
    ("broken json", ["--skip-lowest", "1", "--log-file", "{tmp}/broken.json"], "broken.json"),
    ("truncated log", ["--auto-skip", "--log-file", "{tmp}/cut.log"], "cut.log: the firing_rate JSON block does not"),
    ("wrong depth", ["--auto-skip", "--log-file", "{tmp}/sdt.log", "--layer", "3"], "MS_SSA_Conv2_x_after_qkv"),
    ("no log", ["--auto-skip"], "--auto-skip needs --log-file"),
    ("two rules", ["--skip-lowest", "1", "--skip-blocks", "0"], "alternatives"),
    ("bad index", ["--skip-blocks", "0,2"], "out of range"),
    ("no checkpoint", ["--validate-only"], "--validate-only needs --initial-checkpoint"),
    ("traces in training", ["--export-traces", "{tmp}/trace"], "--export-traces works with --validate-only"),
])
def test_bad_skip_input_is_one_error_line_and_writes_nothing(tmp_path, capfd, case, flags, message):
    (tmp_path / "other.log").write_text("2024-05-01 12:00:00,000 INFO: top-1: 97.0\n")
    (tmp_path / "broken.json").write_text('{"format": "firing-rates/1", "firing_rate": {')
    (tmp_path / "sdt.log").write_text(reference_log(RATES))
    (tmp_path / "cut.log").write_text(reference_log(RATES)[:-40])
    before = snapshot(tmp_path)
    status, _ = run_main(tmp_path, *[f.format(tmp=tmp_path) for f in flags])
    err = capfd.readouterr().err
    assert status == 2, err
    lines = error_lines(err)
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0], lines[0]
    assert snapshot(tmp_path) == before


def _direct_exits(s, skipped, threshold, metric="confidence"):
    """Per sample, from runs of exactly t steps (no per-step logits): exit step and prediction, in loader order."""
    net = s.model.eval()
    net.skip_blocks = skipped
    inputs, labels = map(torch.cat, zip(*[(x, y) for x, y in s.loaders.eval]))
    with torch.no_grad():
        sums = []
        for t in range(1, T + 1):
            net.T = t
            sums.append(net(inputs) * t)  # mean over t steps x t = cumulative sum of the first t step logits
        net.T = T
    if metric == "confidence":
        scores = [s_t.softmax(-1).max(-1).values for s_t in sums]
    else:  # 1 - H / ln C
        scores = [1 + (s_t.softmax(-1) * s_t.log_softmax(-1)).sum(-1) / math.log(s_t.shape[-1]) for s_t in sums]
    steps, predictions = [], []
    for b in range(len(labels)):
        t_exit = next((t for t in range(T) if scores[t][b].item() > threshold), T - 1)
        steps.append(t_exit + 1)
        predictions.append(sums[t_exit][b].argmax().item())
    return steps, predictions, labels.tolist(), scores


def test_early_exit_equals_a_direct_per_sample_computation(tmp_path):
    """main.py --validate-only --early-exit with block 1 skipped, against runs of 1..T steps of the same model.
    With --amp too: the exit pass runs in float32, as the reference's (bfloat16 logits move exits near a
    threshold)."""
    _, s = _evaluation_setup(tmp_path / "direct", "--skip-blocks", "1")
    # A threshold between two neighbouring scores near the median at the first step where the scores differ (at
    # step 1 the head neurons may not fire yet, leaving every sample with the bias alone), so that samples exit
    # at several steps.
    scores = next(sorted(set(s_t.tolist())) for s_t in _direct_exits(s, [1], 2.0)[3] if len(set(s_t.tolist())) > 2)
    threshold = round((scores[len(scores) // 2] + scores[len(scores) // 2 + 1]) / 2, 12)
    steps, predictions, labels, _ = _direct_exits(s, [1], threshold)
    assert len(set(steps)) >= 2

    status, run_dir = run_main(tmp_path, "--validate-only", "--initial-checkpoint", _checkpoint(), "--skip-blocks",
                               "1", "--early-exit", "--exit-threshold", repr(threshold), "--exit-sweep",
                               f"0,{threshold!r},1.01", "--amp", "--amp-dtype", "bfloat16")
    assert status == 0
    record = json.loads((run_dir / "exit_steps.json").read_text())
    assert record["exit_steps"] == steps and record["predictions"] == predictions and record["labels"] == labels
    assert record["sample_ids"] == list(range(len(labels))) and record["skipped_blocks"] == [1]
    accuracy = 100.0 * sum(p == y for p, y in zip(predictions, labels)) / len(labels)
    summary = json.loads((run_dir / "aster_eval.json").read_text())
    assert summary["early_exit"]["accuracy"] == pytest.approx(accuracy)
    assert summary["early_exit"]["avg_timestep"] == pytest.approx(sum(steps) / len(steps))
    assert summary["early_exit"]["exit_timestep_ratio"] == pytest.approx([steps.count(t) / len(steps)
                                                                          for t in range(1, T + 1)])
    stats = json.loads((run_dir / "early_exit_class_stats.json").read_text())
    assert stats["overall"] == summary["early_exit"]
    for label, entry in stats["per_class"].items():
        idx = [i for i, y in enumerate(labels) if y == int(label)]
        assert entry["samples"] == len(idx)
        assert entry["avg_timestep"] == pytest.approx(sum(steps[i] for i in idx) / len(idx))

    fixed = [e["accuracy"] for e in summary["fixed_step_accuracy"]]
    rows = {float(r["threshold"]): r for r in _read_csv(run_dir / "exit_sweep.csv")}
    portions = _read_csv(run_dir / "exit_sweep_portion.csv")
    assert float(rows[0.0]["avg_timesteps"]) == 1.0  # threshold 0: every sample exits at t=1
    assert float(rows[0.0]["accuracy"]) == pytest.approx(fixed[0])
    assert [float(p["portion"]) for p in portions if float(p["threshold"]) == 0.0] == [1.0] + [0.0] * (T - 1)
    assert float(rows[1.01]["avg_timesteps"]) == T  # threshold above 1: nobody exits early
    assert float(rows[1.01]["accuracy"]) == pytest.approx(fixed[-1])
    assert fixed[-1] == pytest.approx(summary["validation"]["top1"])
    assert float(rows[threshold]["accuracy"]) == pytest.approx(accuracy)
    assert 1.0 <= summary["oracle"]["aet"] <= T and summary["oracle"]["accuracy"] == fixed[-1]


def test_entropy_exit_reaches_main_py(tmp_path):
    """--exit-metric entropy: the exits of 1 - H/ln C scores, computed directly (no test passed the flag)."""
    _, s = _evaluation_setup(tmp_path / "direct")
    scores = next(sorted(set(s_t.tolist())) for s_t in _direct_exits(s, [], 2.0, "entropy")[3]
                  if len(set(s_t.tolist())) > 2)
    threshold = round((scores[len(scores) // 2] + scores[len(scores) // 2 + 1]) / 2, 12)
    steps, predictions, _, _ = _direct_exits(s, [], threshold, "entropy")
    assert len(set(steps)) >= 2
    status, run_dir = run_main(tmp_path, "--validate-only", "--initial-checkpoint", _checkpoint(), "--early-exit",
                               "--exit-metric", "entropy", "--exit-threshold", repr(threshold))
    record = json.loads((run_dir / "exit_steps.json").read_text())
    assert status == 0 and record["metric"] == "entropy"
    assert record["exit_steps"] == steps and record["predictions"] == predictions


def test_study_writes_the_heat_map(tmp_path):
    log = tmp_path / "sdt.log"
    log.write_text(reference_log(RATES))
    status, run_dir = run_main(tmp_path, "--study", "--initial-checkpoint", _checkpoint(), "--log-file", str(log),
                               "--exit-sweep", "0,0.9")
    assert status == 0
    rows = _read_csv(run_dir / "aster_heatmap.csv")
    assert [(r["skipped_layers"], r["skipped_blocks"], r["threshold"]) for r in rows] == [
        (str(k), blocks, thr) for k, blocks in ((0, ""), (1, "1"), (2, "0 1")) for thr in ("0.0", "0.9", "inf")]
    assert all(float(r["avg_timesteps"]) == 1.0 for r in rows if r["threshold"] == "0.0")
    assert all(float(r["avg_timesteps"]) == T for r in rows if r["threshold"] == "inf")
    assert (run_dir / "aster_heatmap.png").stat().st_size > 1000
    summary = json.loads((trained_run() / "aster_eval.json").read_text())
    assert float(rows[2]["accuracy"]) == pytest.approx(summary["validation"]["top1"])  # 0 skipped, no exit
    _, setup = _evaluation_setup(tmp_path / "direct")
    for row in rows[3:]:  # the skipping rows against runs of the model with those blocks skipped
        blocks = [int(b) for b in row["skipped_blocks"].split()]
        _, predictions, labels, _ = _direct_exits(setup, blocks, {"0.0": 0.0, "0.9": 0.9, "inf": 2.0}[row["threshold"]])
        assert float(row["accuracy"]) == pytest.approx(100 * sum(p == y for p, y in zip(predictions, labels))
                                                       / len(labels)), row


def test_study_evaluates_the_ema_weights_with_use_ema(tmp_path):
    """A checkpoint whose EMA weights are the trained ones and whose plain weights are a head that always says
    class 3 (weights 0, bias 10 on class 3: every logit of every step, so every exit, picks it).  By hand, the
    study's row "0 skipped, no exit" is then the trained top-1 with --use-ema and 100 x (share of class 3 in the
    validation set) without."""
    trained = load_checkpoint_file(_checkpoint())["state_dict"]
    constant = {k: v.clone() for k, v in trained.items()}
    constant["head.weight"].zero_()
    constant["head.bias"].zero_()[3] = 10.0
    ckpt = tmp_path / "both.pth.tar"
    torch.save({"epoch": 0, "state_dict": constant, "state_dict_ema": trained}, ckpt)
    log = tmp_path / "sdt.log"
    log.write_text(reference_log(RATES))
    labels = torch.cat([y for _, y in _evaluation_setup(tmp_path / "direct")[1].loaders.eval])
    top1 = json.loads((trained_run() / "aster_eval.json").read_text())["validation"]["top1"]
    for flags, expected in (([], 100 * (labels == 3).float().mean().item()), (["--use-ema"], top1)):
        status, run_dir = run_main(tmp_path, "--study", "--initial-checkpoint", str(ckpt), "--log-file", str(log),
                                   "--study-max-skip", "0", "--exit-sweep", "0.9", *flags,
                                   experiment="ema" if flags else "plain")
        assert status == 0, flags
        no_exit = next(r for r in _read_csv(run_dir / "aster_heatmap.csv") if r["threshold"] == "inf")
        assert no_exit["skipped_layers"] == "0"
        assert float(no_exit["accuracy"]) == pytest.approx(expected), flags
    assert top1 != pytest.approx(100 * (labels == 3).float().mean().item())  # the two weight sets are told apart
