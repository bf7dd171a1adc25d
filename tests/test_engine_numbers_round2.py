"""Numbers of the engine pinned by hand (mutation audit, round 2): skip ties, firing-log blocks, ASTER tables,
depthwise-conv FLOPs, BCE with mixup, plateau LR noise on resume, recovery files at the resume point, trace
fixed-point encoding, the training-batch check and event-clip mixup."""
import argparse
import csv
import json
import os

import numpy as np
import pytest
import torch
from _aster_helpers import reference_log
from _engine_helpers import tiny_args

from engine.aster import AsterResult, write_aster_outputs
from engine.early_exit import EarlyExitSweep
from engine.energy import _layer_flops
from engine.firing import load_firing_rates, parse_firing_log
from engine.skip import select_skip_blocks


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------------------------ skip / rates
def test_skip_lowest_breaks_a_tie_towards_the_lower_block():
    """Blocks 0 and 1 both fire at 0.1, block 2 at 0.3: the one lowest is block 0 (docs/aster.md: "ties go to the
    lower index"), ranked 1 of 3, block 1 ranked 2."""
    rates = {"t0": {"MS_SSA_Conv0_x_after_qkv": 0.1, "MS_SSA_Conv1_x_after_qkv": 0.1, "MS_SSA_Conv2_x_after_qkv": 0.3}}
    decision = select_skip_blocks(3, rates, lowest=1)
    assert decision.blocks == [0]
    assert "rank 1 of 3: skipped" in decision.reasons[0] and "rank 2 of 3: kept" in decision.reasons[1]


def test_a_log_with_two_firing_rate_blocks_reads_the_latest(tmp_path):
    """The run log is opened in append mode, so a second measurement into the same folder adds a second
    ``firing_rate:`` block after the first: the rates read are the last block's (0.2), not the stale 0.9."""
    key = "MS_SSA_Conv0_x_after_qkv"
    path = tmp_path / "sdt.log"
    path.write_text(reference_log({"t0": {key: 0.9}}) + reference_log({"t0": {key: 0.2}}))
    assert parse_firing_log(path) == {"t0": {key: 0.2}}


def test_firing_json_whose_T_disagrees_with_its_steps_is_refused(tmp_path):
    """A firing.json stating T=3 but holding 2 steps is inconsistent: ValueError, not 2 steps read silently."""
    rates = {"t0": {"MS_SSA_Conv0_x_after_qkv": 0.1}, "t1": {"MS_SSA_Conv0_x_after_qkv": 0.2}}
    path = tmp_path / "firing.json"
    path.write_text(json.dumps({"format": "firing-rates/1", "T": 3, "firing_rate": rates}))
    with pytest.raises(ValueError, match="T is 3 but firing_rate has 2 time steps"):
        load_firing_rates(path)
    path.write_text(json.dumps({"format": "firing-rates/1", "T": 2, "firing_rate": rates}))
    assert load_firing_rates(path) == rates


# ------------------------------------------------------------------------------------------------------ ASTER tables
def _hand_result() -> AsterResult:
    """T=2, two samples of class 0.  Sample 0: logits [2, 0] at both steps, right at t=1 and t=2.  Sample 1: [1, 0]
    then [0, 3] (cumulative [1, 3]): right at t=1, wrong at t=2.  Fixed-t accuracies 100 % and 50 %.
    Confidence at t=1: softmax max 0.881 (sample 0) and 0.731 (sample 1).  Threshold 0.8: sample 0 exits at 1,
    sample 1 at T=2 -> average 1.5 steps, portions [0.5, 0.5].  Threshold 2: nobody exits early -> 2 steps, [0, 1]."""
    per_step = torch.tensor([[[2.0, 0.0], [1.0, 0.0]], [[2.0, 0.0], [0.0, 3.0]]])  # [T, B, C]
    sweep = EarlyExitSweep([0.8, 2.0], T=2)
    sweep.update(per_step, torch.tensor([0, 0]))
    return AsterResult(T=2, metric="confidence", skipped_blocks=[], sweep=sweep, meter=None,
                       validation={"loss": 0.5, "top1": 50.0, "top5": 100.0})


def test_aster_eval_numbers_by_hand():
    """Fixed-t rows are labelled t = 1..T; the oracle's accuracy is the accuracy at T (50 %), the accuracy SEENN's
    AET formula assumes (the N - acc_T samples wrong at T run all T steps), not the best fixed-t accuracy (100 %).
    Oracle AET with acc = [2, 1], N = 2, T = 2: (2 + 2 * (1 - 2) + 2 * (2 - 1)) / 2 = 1."""
    summary = _hand_result().summary()
    assert summary["fixed_step_accuracy"] == [{"t": 1, "accuracy": 100.0}, {"t": 2, "accuracy": 50.0}]
    assert summary["oracle"] == {"aet": pytest.approx(1.0), "accuracy": 50.0}


def test_exit_sweep_csvs_by_hand(tmp_path):
    """exit_sweep.csv: time_reduction = T - average steps (docs/aster.md, the paper's "timesteps reduction"), in
    steps: 2 - 1.5 = 0.5 and 2 - 2 = 0.  exit_sweep_portion.csv and fixed_step_accuracy.csv count t from 1."""
    write_aster_outputs(tmp_path, _hand_result(), {"reasons": [], "skipped_blocks": [], "block_rates": [None]})
    sweep = _read_csv(tmp_path / "exit_sweep.csv")
    assert [(float(r["threshold"]), float(r["avg_timesteps"]), float(r["time_reduction"])) for r in sweep] == \
        [(0.8, 1.5, 0.5), (2.0, 2.0, 0.0)]
    portions = _read_csv(tmp_path / "exit_sweep_portion.csv")
    assert [(float(r["threshold"]), int(r["t"]), float(r["portion"])) for r in portions] == \
        [(0.8, 1, 0.5), (0.8, 2, 0.5), (2.0, 1, 0.0), (2.0, 2, 1.0)]
    fixed = _read_csv(tmp_path / "fixed_step_accuracy.csv")
    assert [(int(r["t"]), float(r["accuracy"])) for r in fixed] == [(1, 100.0), (2, 50.0)]


# ------------------------------------------------------------------------------------------------------ energy
def test_depthwise_conv_flops_divide_by_groups():
    """A 3x3 depthwise conv (groups = 4 channels) on 4x5x5 with padding 1: each of the 4 output channels reads one
    input channel, 3 * 3 * 5 * 5 * 4 * 4 / 4 = 900 FLOPs, not the dense 3600."""
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False)
    assert _layer_flops(conv, torch.zeros(2, 4, 5, 5)) == (900, 100, "5x5")
    grouped = torch.nn.Conv2d(4, 6, 1, groups=2, bias=False)  # 1 * 1 * 25 * 4 * 6 / 2 = 300
    assert _layer_flops(grouped, torch.zeros(1, 4, 5, 5))[0] == 300


# ------------------------------------------------------------------------------------------------------ loss
def test_bce_with_mixup_does_not_smooth_again():
    """With mixup the targets come from timm's Mixup, already smoothed by --smoothing: the BCE criterion must not
    smooth (0.0).  On a class-index target it is then plain BCE with the one-hot target."""
    from engine.args import get_args_parser
    from engine.config import parse_args
    from engine.losses import build_train_loss

    args = parse_args(argparse.ArgumentParser(parents=[get_args_parser()]), ["--bce-loss", "--smoothing", "0.1"])
    criterion = build_train_loss(args, mixup_active=True)
    assert criterion.smoothing == 0.0
    logits, target = torch.tensor([[1.0, -1.0, 0.5]]), torch.tensor([2])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.tensor([[0.0, 0.0, 1.0]]))
    torch.testing.assert_close(criterion(logits, target), expected)


# ------------------------------------------------------------------------------------------------------ optimizer
def test_plateau_resumed_with_lr_noise_keeps_the_checkpoint_lr(tmp_path):
    """--lr-noise 0.2 of 10 epochs: noise from epoch 2.  The checkpoint's LR (3e-4) was saved after the step to
    epoch 5, with that epoch's seeded noise n already on it; rebuilding takes it off (3e-4 / (1 + n)) before the
    step puts it back, so the optimizer holds 3e-4 again, and the LR restored at the next step is 3e-4 / (1 + n)."""
    from engine.optim import build_scheduler

    args = tiny_args(tmp_path, "--sched", "plateau", "--warmup-epochs", "0", "--lr", "3e-3", "--epochs", "10",
                     "--lr-noise", "0.2")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.lr)
    optimizer.param_groups[0].update(lr=3e-4, initial_lr=3e-3)
    scheduler, _ = build_scheduler(args, optimizer, updates_per_epoch=10, start_epoch=5, lr_from_checkpoint=True)
    noise = scheduler._calculate_noise(5)
    assert abs(noise) > 1e-3  # the check below means something
    assert optimizer.param_groups[0]["lr"] == pytest.approx(3e-4, rel=1e-12)
    assert scheduler.restore_lr == [pytest.approx(3e-4 / (1 + noise), rel=1e-12)]


# ------------------------------------------------------------------------------------------------------ checkpoints
def test_a_recovery_file_at_the_resume_point_is_kept(tmp_path):
    """recovery-1-7 holds batches 0..7 of epoch 1, i.e. 8 batches: resuming at (epoch 1, batch 8) from a copy of it
    elsewhere, it holds nothing past the resume point and stays; recovery-1-8 (9 batches) is set aside."""
    from engine.checkpoint import set_aside_later_checkpoints

    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir(), elsewhere.mkdir()
    for folder, name in ((run, "recovery-1-7"), (run, "recovery-1-8"), (elsewhere, "recovery-1-7")):
        torch.save({"epoch": 1, "version": 2}, folder / f"{name}.pth.tar")
    moved = set_aside_later_checkpoints(str(run), 1, 8, str(elsewhere / "recovery-1-7.pth.tar"))
    assert [os.path.basename(path) for path in moved] == ["recovery-1-8.pth.tar"]
    assert (run / "recovery-1-7.pth.tar").exists()


# ------------------------------------------------------------------------------------------------------ traces
def test_sixteenths_are_stored_with_four_fraction_bits():
    """DVS counts averaged over 4x4 are multiples of 1/16: 4 fraction bits (MAX_FRACTION_BITS) store them exactly
    as uint8 units (3/16 -> 3, 1.5 -> 24), not as float32."""
    from engine.traces import MAX_FRACTION_BITS, _encode, _fraction_bits

    x = torch.tensor([[[[3 / 16, 1.5]]]])  # [T=1, C=1, 1, 2]
    assert MAX_FRACTION_BITS == 4 and _fraction_bits(x) == 4
    arr, entry = _encode(x)
    assert entry == {"encoding": "uint8", "repeat_t": False, "fraction_bits": 4}
    assert arr.reshape(-1).tolist() == [3, 24]


def test_a_tensor_equal_at_its_first_and_last_step_only_is_stored_per_step():
    """Steps [1, 0, 1] (T=3): step 1 differs, so all three are stored (repeat_t false), not the first one alone."""
    from engine.traces import _encode

    x = torch.tensor([1.0, 0.0, 1.0]).reshape(3, 1, 1, 1)
    arr, entry = _encode(x)
    assert entry["repeat_t"] is False and arr.shape[0] == 3
    assert _encode(torch.ones(3, 1, 1, 1))[1]["repeat_t"] is True


# ------------------------------------------------------------------------------------------------------ loaders
def test_a_training_share_of_exactly_one_batch_is_accepted():
    """8 samples, -b 8, drop_last: one full batch per epoch, accepted; with -b 9 the only batch is dropped."""
    from engine.errors import ConfigError
    from engine.loaders import _check_training_batches

    args = argparse.Namespace(distributed=False, world_size=1, batch_size=8, train_split="train", dataset="digits")
    _check_training_batches(args, list(range(8)), drop_last=True)
    args.batch_size = 9
    with pytest.raises(ConfigError, match="fewer than -b/--batch-size 9"):
        _check_training_batches(args, list(range(8)), drop_last=True)


def test_event_mixup_mixes_each_clip_with_the_flipped_clip_step_by_step():
    """Mixup (mode batch) on [B=2, T=2, C=1, H=2, W=2]: clip 0 becomes lam * clip 0 + (1 - lam) * clip 1 at every
    step (timm pairs sample i with sample B-1-i), lam read from the soft target of clip 0 (its class-0 weight)."""
    from engine.loaders import _event_mixup

    mix = _event_mixup(dict(mixup_alpha=100.0, cutmix_alpha=0.0, cutmix_minmax=None, prob=1.0, switch_prob=0.5,
                            mode="batch", label_smoothing=0.0, num_classes=2))
    torch.manual_seed(0)
    x = torch.rand(2, 2, 1, 2, 2)
    np.random.seed(1)  # timm draws lam from Beta(100, 100) with numpy: near 0.5
    mixed, target = mix(x.clone(), torch.tensor([0, 1]))
    lam = target[0, 0].item()
    assert 0.3 < lam < 0.7
    torch.testing.assert_close(mixed[0], lam * x[0] + (1 - lam) * x[1])
    torch.testing.assert_close(mixed[1], lam * x[1] + (1 - lam) * x[0])
