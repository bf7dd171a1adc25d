"""Stopping after epoch k and resuming gives epoch k+1 exactly as an uninterrupted run does."""
import logging
import os
from pathlib import Path

import pytest
import torch
from _engine_helpers import read_summary, snapshot, tiny_args

from engine.checkpoint import load_checkpoint_file
from engine.run import run_training

pytestmark = pytest.mark.slow

# Mixup, random erasing and random crops exercise every random number generator; EMA and its restore are on.
RUN = ["--epochs", "3", "--checkpoint-hist", "5", "--mixup", "0.2", "--reprob", "0.25", "--model-ema",
       "--model-ema-decay", "0.9"]


def _assert_same_last_weights(run_a, run_b) -> None:
    """The weights and EMA weights of two runs' last.pth.tar are bit-identical."""
    last_a = load_checkpoint_file(str(run_a / "last.pth.tar"))
    last_b = load_checkpoint_file(str(run_b / "last.pth.tar"))
    for key in ("state_dict", "state_dict_ema"):
        for name, value in last_a[key].items():
            torch.testing.assert_close(last_b[key][name], value, rtol=0, atol=0, msg=f"{key} {name}")


def test_resume_repeats_uninterrupted_run(tmp_path):
    full = run_training(tiny_args(tmp_path, *RUN, "--experiment", "full"))
    rows = read_summary(tmp_path / "full" / "summary.csv")
    assert [r["epoch"] for r in rows] == ["0", "1", "2"]
    assert list(rows[0]) == ["epoch", "train_loss", "eval_loss", "eval_top1", "eval_top5", "lr"]
    assert float(rows[2]["train_loss"]) < float(rows[0]["train_loss"])

    stopped = tmp_path / "full" / "checkpoint-1.pth.tar"  # what a run stopped after epoch 1 leaves behind
    resumed = run_training(tiny_args(tmp_path, *RUN, "--experiment", "resumed", "--resume", str(stopped)))
    assert read_summary(tmp_path / "resumed" / "summary.csv") == [rows[2]]
    assert resumed["eval_metrics"] == full["eval_metrics"]

    _assert_same_last_weights(tmp_path / "full", tmp_path / "resumed")


def test_resume_in_place_continues_history(tmp_path):
    run_training(tiny_args(tmp_path, "--epochs", "1", "--checkpoint-hist", "2", "--experiment", "run"))
    run_dir = tmp_path / "run"
    before = (run_dir / "checkpoint-0.pth.tar").read_bytes()
    run_training(tiny_args(tmp_path, "--epochs", "2", "--checkpoint-hist", "2", "--experiment", "run",
                           "--resume", str(run_dir / "last.pth.tar")))
    assert [row["epoch"] for row in read_summary(run_dir / "summary.csv")] == ["0", "1"]
    assert (run_dir / "checkpoint-0.pth.tar").read_bytes() == before  # history restored, not rewritten
    assert {p.name for p in tmp_path.iterdir()} == {"run"}  # same folder, no "run-1"
    assert load_checkpoint_file(str(run_dir / "last.pth.tar"))["epoch"] == 1


def test_resume_from_an_earlier_checkpoint_replaces_the_later_epochs(tmp_path):
    """summary.csv holds each epoch once, the original args.yaml is kept and train.log says it resumed."""
    run_training(tiny_args(tmp_path, "--epochs", "2", "--checkpoint-hist", "3", "--experiment", "run"))
    run_dir = tmp_path / "run"
    original_args = (run_dir / "args.yaml").read_text()
    run_training(tiny_args(tmp_path, "--epochs", "2", "--checkpoint-hist", "3", "--experiment", "run",
                           "--resume", str(run_dir / "checkpoint-0.pth.tar")))
    assert [row["epoch"] for row in read_summary(run_dir / "summary.csv")] == ["0", "1"]
    assert (run_dir / "args.yaml").read_text() == original_args
    assert "resume: " + str(run_dir / "checkpoint-0.pth.tar") in (run_dir / "args-resume-1.yaml").read_text()
    assert "Resumed from " + str(run_dir / "checkpoint-0.pth.tar") in (run_dir / "train.log").read_text()


def test_resume_without_experiment_continues_in_the_checkpoint_folder(tmp_path):
    run_training(tiny_args(tmp_path, "--epochs", "1", "--experiment", "run"))
    result = run_training(tiny_args(tmp_path, "--epochs", "2", "--experiment", "",
                                    "--resume", str(tmp_path / "run" / "last.pth.tar")))
    assert result["output_dir"] == str(tmp_path / "run")
    assert [row["epoch"] for row in read_summary(tmp_path / "run" / "summary.csv")] == ["0", "1"]


def test_resume_continues_in_the_checkpoint_folder_when_only_the_config_names_an_experiment(tmp_path):
    import argparse

    from _engine_helpers import TINY_FLAGS

    from engine.args import get_args_parser
    from engine.config import parse_args

    config = tmp_path / "run.yml"
    config.write_text("experiment: from-config\n")

    def train(*flags: str) -> dict:
        parser = argparse.ArgumentParser(parents=[get_args_parser()])
        args = parse_args(parser, ["-c", str(config), *TINY_FLAGS, "--output", str(tmp_path), *flags])
        return run_training(args, parser)

    train("--epochs", "1", "--experiment", "mine")
    result = train("--epochs", "2", "--resume", str(tmp_path / "mine" / "last.pth.tar"))
    assert result["output_dir"] == str(tmp_path / "mine")
    assert not (tmp_path / "from-config").exists()


def test_resume_with_another_optimizer_is_refused_and_a_new_lr_warned(tmp_path, caplog):
    from engine.errors import CheckpointError

    run_training(tiny_args(tmp_path, "--epochs", "1", "--experiment", "run"))
    last = str(tmp_path / "run" / "last.pth.tar")
    with pytest.raises(CheckpointError, match="optimizer 'adamw', this run uses --opt 'sgd'.*--no-resume-opt"):
        run_training(tiny_args(tmp_path, "--epochs", "2", "--experiment", "run", "--opt", "sgd", "--resume", last))
    assert [row["epoch"] for row in read_summary(tmp_path / "run" / "summary.csv")] == ["0"]
    run_training(tiny_args(tmp_path, "--epochs", "2", "--experiment", "run", "--lr", "0.5", "--resume", last))
    assert "--lr 0.5 (checkpoint: 0.003) will not take effect" in caplog.text


@pytest.mark.parametrize("loader", [[], ["--no-prefetcher"]], ids=["mixup_in_collate", "mixup_in_loop"])
def test_resume_from_a_recovery_checkpoint_finishes_its_epoch_exactly(tmp_path, loader):
    """A run killed mid-epoch resumes after the last recovery batch: same weights as the uninterrupted run."""
    recovery = [*RUN, *loader, "--epochs", "2", "--recovery-interval", "4"]
    full = run_training(tiny_args(tmp_path, *recovery, "--experiment", "full"))
    kept = sorted(p.name for p in (tmp_path / "full").glob("recovery-*.pth.tar"))
    assert "recovery-1-7.pth.tar" in kept, kept
    # its checkpoint history leaves out its unfinished epoch: checkpoint-1 (written when epoch 1 ended) entered the
    # restored history unranked, and was the first file evicted whatever its metric
    saver_state = load_checkpoint_file(str(tmp_path / "full" / "recovery-1-7.pth.tar"))["saver"]
    assert tuple(saver_state["pending"]) == (None, None)
    killed = tmp_path / "killed"  # what a run killed in epoch 1 after batch 7 leaves behind
    killed.mkdir()
    (killed / "recovery-1-7.pth.tar").write_bytes((tmp_path / "full" / "recovery-1-7.pth.tar").read_bytes())
    resumed = run_training(tiny_args(tmp_path, *recovery, "--experiment", "resumed",
                                     "--resume", str(killed / "recovery-1-7.pth.tar")))
    rows = read_summary(tmp_path / "resumed" / "summary.csv")
    assert [r["epoch"] for r in rows] == ["1"]
    assert resumed["eval_metrics"] == full["eval_metrics"]
    # the epoch's loss is the whole epoch's (the checkpoint keeps the sum so far), not that of its last batches
    assert rows[0]["train_loss"] == read_summary(tmp_path / "full" / "summary.csv")[1]["train_loss"]
    _assert_same_last_weights(tmp_path / "full", tmp_path / "resumed")
    if loader:
        return
    from engine.errors import CheckpointError

    other_batch = [*recovery[:-2], "--recovery-interval", "4", "-b", "64", "--experiment", "other"]
    with pytest.raises(CheckpointError, match="trained with -b 128 on 1 process.*this run has -b 64 on 1"):
        run_training(tiny_args(tmp_path, *other_batch, "--resume", str(killed / "recovery-1-7.pth.tar")))


def test_resuming_without_ema_and_float16_amp_warns_that_their_state_is_dropped(tmp_path, caplog):
    """A --model-ema run resumed without --model-ema dropped the EMA weights without a word, and its later
    checkpoints were ranked by the model's metric instead of the EMA's; likewise the float16 scaler's state."""
    from engine.run import setup_training

    run_training(tiny_args(tmp_path, "--epochs", "1", "--experiment", "run", "--model-ema", "--amp"))
    setup_training(tiny_args(tmp_path, "--epochs", "2", "--resume", str(tmp_path / "run" / "last.pth.tar")))
    assert "holds EMA weights (state_dict_ema), but this run has no --model-ema: they are dropped" in caplog.text
    assert "float16 loss scaler (amp_scaler), and this run has none: it is dropped" in caplog.text


def test_runs_started_together_get_their_own_folders(tmp_path):
    """The folder is claimed with os.mkdir when it is chosen: two runs of one name started at the same moment both
    picked the free name and wrote into one folder."""
    from engine.outputs import resolve_output_dir

    args = tiny_args(tmp_path, "--experiment", "same")
    args.distributed = False
    first, second = resolve_output_dir(args), resolve_output_dir(args)
    assert (first, second) == (str(tmp_path / "same"), str(tmp_path / "same-1"))
    assert (tmp_path / "same").is_dir() and (tmp_path / "same-1").is_dir()


def test_resuming_a_finished_run_names_the_epoch_the_checkpoint_holds(tmp_path):
    from engine.errors import ConfigError

    run_training(tiny_args(tmp_path, "--epochs", "1", "--experiment", "done"))
    with pytest.raises(ConfigError, match="holds epoch 0, so the run would go on at epoch 1, and the run has 1 epochs"):
        run_training(tiny_args(tmp_path, "--epochs", "1", "--resume", str(tmp_path / "done" / "last.pth.tar")))


def test_eval_metric_loss_ranks_checkpoints_by_the_lowest_loss(tmp_path):
    """--eval-metric loss: model_best is the epoch of the lowest validation loss (a decreasing metric)."""
    run_training(tiny_args(tmp_path, "--epochs", "3", "--experiment", "loss", "--eval-metric", "loss", "--lr", "0.05"))
    rows = read_summary(tmp_path / "loss" / "summary.csv")
    losses = [float(r["eval_loss"]) for r in rows]
    best = load_checkpoint_file(str(tmp_path / "loss" / "model_best.pth.tar"))
    assert best["metric"] == pytest.approx(min(losses)) and best["epoch"] == losses.index(min(losses))
    assert len(set(losses)) == 3 and losses.index(min(losses)) != losses.index(max(losses))


def test_resume_from_an_earlier_checkpoint_sets_the_abandoned_epochs_files_aside(tmp_path):
    """model_best, last and checkpoint-N of the abandoned epochs move to superseded-from-epoch-1/, none is lost.
    Ranked by the loss, which falls every epoch here (the tiny run's top-1 stays at 10 %, so a ranking by it kept
    epoch 0 as the best, and the case of an abandoned best was never tested)."""
    flags = ("--checkpoint-hist", "5", "--experiment", "run", "--eval-metric", "loss")
    run_training(tiny_args(tmp_path, "--epochs", "3", *flags))
    run_dir = tmp_path / "run"
    abandoned = {name: (run_dir / name).read_bytes() for name in
                 ("checkpoint-1.pth.tar", "checkpoint-2.pth.tar", "last.pth.tar", "model_best.pth.tar")}
    assert load_checkpoint_file(str(run_dir / "model_best.pth.tar"))["epoch"] >= 1  # an epoch the resume abandons
    resumed = run_training(tiny_args(tmp_path, "--epochs", "2", *flags,
                                     "--resume", str(run_dir / "checkpoint-0.pth.tar"), "--lr", "1e-9"))
    aside = run_dir / "superseded-from-epoch-1"
    assert {name: (aside / name).read_bytes() for name in abandoned} == abandoned
    rows = read_summary(run_dir / "summary.csv")
    best = min(rows, key=lambda row: float(row["eval_loss"]))  # min keeps the earlier epoch of a tie, as timm
    assert resumed["best_epoch"] == int(best["epoch"])
    assert load_checkpoint_file(str(run_dir / "model_best.pth.tar"))["epoch"] == int(best["epoch"])
    assert sorted(p.name for p in run_dir.glob("checkpoint-*")) == ["checkpoint-0.pth.tar", "checkpoint-1.pth.tar"]



def test_a_resumed_plateau_schedule_repeats_the_uninterrupted_learning_rates(tmp_path):
    """timm's plateau scheduler sets its warmup LR when built and, after the warmup, only lowers the LR it finds: a
    run resumed past the warmup trained at the warmup LR to the end.  Now it goes on from the checkpoint's LR,
    reductions included (patience 0: epoch 2 did not beat epoch 1's accuracy, so epoch 3 runs at half the LR)."""
    plateau = ["--sched", "plateau", "--warmup-epochs", "1", "--warmup-lr", "1e-4", "--epochs", "4",
               "--checkpoint-hist", "5", "--patience-epochs", "0", "--decay-rate", "0.5"]
    run_training(tiny_args(tmp_path, *plateau, "--experiment", "full"))
    rows = read_summary(tmp_path / "full" / "summary.csv")
    assert [float(row["lr"]) for row in rows] == [1e-4, 3e-3, 3e-3, 1.5e-3]
    run_training(tiny_args(tmp_path, *plateau, "--experiment", "resumed", "--resume",
                           str(tmp_path / "full" / "checkpoint-2.pth.tar")))
    assert read_summary(tmp_path / "resumed" / "summary.csv") == rows[3:]


def test_a_resumed_plateau_schedule_goes_on_with_its_best_value_and_patience(tmp_path):
    """timm does not save the plateau schedule's best value and patience counter, so a run resumed after one epoch
    without progress started counting again and lowered its LR an epoch late.  The saver now stores them (patience
    1: epochs 2 and 3 do not beat epoch 1's top-1, so the LR halves for epoch 4)."""
    plateau = ["--sched", "plateau", "--warmup-epochs", "1", "--warmup-lr", "1e-4", "--epochs", "5",
               "--checkpoint-hist", "5", "--patience-epochs", "1", "--decay-rate", "0.5"]
    run_training(tiny_args(tmp_path, *plateau, "--experiment", "full"))
    rows = read_summary(tmp_path / "full" / "summary.csv")
    assert [float(row["lr"]) for row in rows] == [1e-4, 3e-3, 3e-3, 3e-3, 1.5e-3]
    assert rows[1]["eval_top1"] == rows[2]["eval_top1"] == rows[3]["eval_top1"]
    checkpoint = tmp_path / "full" / "checkpoint-2.pth.tar"
    progress = load_checkpoint_file(str(checkpoint))["saver"]["plateau"]
    assert progress == {"eval_metric": "top1", "best": float(rows[1]["eval_top1"]), "num_bad_epochs": 1,
                        "cooldown_counter": 0, "last_epoch": 2}
    run_training(tiny_args(tmp_path, *plateau, "--experiment", "resumed", "--resume", str(checkpoint)))
    assert read_summary(tmp_path / "resumed" / "summary.csv") == rows[3:]


def test_timms_plateau_warning_that_the_counters_are_not_saved_is_not_shown():
    """timm warns on every plateau schedule that its counters are not saved in checkpoints; ours are."""
    import warnings

    from engine.optim import build_scheduler

    args = tiny_args(Path("unused"), "--sched", "plateau")
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build_scheduler(args, optimizer, updates_per_epoch=4)
    assert not [w for w in caught if "PlateauLRScheduler" in str(w.message)]


def test_a_plateau_progress_of_another_eval_metric_starts_afresh(tmp_path, caplog):
    """The best top-1 is no best loss: resumed with another --eval-metric, the counters start afresh, warned."""
    plateau = ["--sched", "plateau", "--warmup-epochs", "1", "--epochs", "4", "--checkpoint-hist", "5",
               "--patience-epochs", "1", "--decay-rate", "0.5"]
    run_training(tiny_args(tmp_path, *plateau, "--experiment", "full"))
    with caplog.at_level(logging.WARNING):
        run_training(tiny_args(tmp_path, *plateau, "--experiment", "resumed", "--eval-metric", "loss", "--resume",
                               str(tmp_path / "full" / "checkpoint-2.pth.tar")))
    assert "counted on --eval-metric top1, and this run ranks by loss: they start afresh" in caplog.text
    progress = load_checkpoint_file(str(tmp_path / "resumed" / "last.pth.tar"))["saver"]["plateau"]
    assert progress["eval_metric"] == "loss" and progress["last_epoch"] == 1


def test_a_resumed_plateau_schedule_adds_its_lr_noise_once(tmp_path):
    """With ``--lr-noise`` the checkpoint's LR already carries the next epoch's noise; the resumed scheduler used
    to add it a second time (epoch 3 at ``lr * (1 + noise) ** 2``)."""
    plateau = ["--sched", "plateau", "--warmup-epochs", "1", "--warmup-lr", "1e-4", "--epochs", "4",
               "--checkpoint-hist", "5", "--patience-epochs", "10", "--lr-noise", "0.5", "--lr-noise-std", "0.3"]
    run_training(tiny_args(tmp_path, *plateau, "--experiment", "full"))
    rows = read_summary(tmp_path / "full" / "summary.csv")
    lrs = [float(row["lr"]) for row in rows]
    assert lrs[:2] == [1e-4, 3e-3] and lrs[2] != 3e-3 and lrs[3] != 3e-3  # noise from epoch 2 on
    run_training(tiny_args(tmp_path, *plateau, "--experiment", "resumed", "--resume",
                           str(tmp_path / "full" / "checkpoint-2.pth.tar")))
    resumed = read_summary(tmp_path / "resumed" / "summary.csv")
    assert float(resumed[0]["lr"]) == pytest.approx(lrs[3], rel=1e-12)
    assert [{k: v for k, v in row.items() if k != "lr"} for row in resumed] == [
        {k: v for k, v in row.items() if k != "lr"} for row in rows[3:]]
    # without the optimizer's state the LR restarts from the base LR, which carries no noise yet (no reductions)
    run_training(tiny_args(tmp_path, *plateau, "--experiment", "fresh_optimizer", "--no-resume-opt", "--resume",
                           str(tmp_path / "full" / "checkpoint-2.pth.tar")))
    fresh = read_summary(tmp_path / "fresh_optimizer" / "summary.csv")
    assert float(fresh[0]["lr"]) == pytest.approx(lrs[3], rel=1e-12)


def test_restarting_the_schedule_with_start_epoch_leaves_the_run_intact(tmp_path):
    """--resume CKPT --start-epoch 0 is a new run from the loaded weights: it went into the checkpoint's folder and
    dropped its summary rows and TensorBoard scalars and overwrote its checkpoint-0/1, last and model_best."""
    run_training(tiny_args(tmp_path, "--epochs", "3", "--checkpoint-hist", "5", "--experiment", "run"))
    run_dir = tmp_path / "run"
    before = snapshot(run_dir)
    restart = ["--epochs", "1", "--resume", str(run_dir / "checkpoint-1.pth.tar"), "--start-epoch", "0",
               "--no-resume-opt"]
    without_name = run_training(tiny_args(tmp_path, *restart, "--experiment", ""))
    named = run_training(tiny_args(tmp_path, *restart, "--experiment", "run"))
    assert snapshot(run_dir) == before
    assert named["output_dir"] == str(tmp_path / "run-1")
    assert without_name["output_dir"] not in (str(run_dir), named["output_dir"])
    assert [row["epoch"] for row in read_summary(tmp_path / "run-1" / "summary.csv")] == ["0"]


def test_a_run_killed_in_its_first_epoch_resumes_in_its_folder(tmp_path):
    """Before its first summary.csv row the folder holds args.yaml: the resumed run went to a new timestamped one."""
    from engine.outputs import resolve_output_dir

    killed = tmp_path / "killed"
    killed.mkdir()
    (killed / "args.yaml").write_text("epochs: 2\n")
    (killed / "recovery-0-3.pth.tar").write_bytes(b"")
    args = tiny_args(tmp_path, "--experiment", "", "--resume", str(killed / "recovery-0-3.pth.tar"))
    args.distributed = False
    assert resolve_output_dir(args) == str(killed)


def test_the_saver_replaces_last_and_best_in_one_step(tmp_path, monkeypatch):
    """timm's saver deleted last.pth.tar before renaming tmp.pth.tar over it, and model_best.pth.tar before linking
    last to it: a kill in between left none."""
    import types

    from engine.checkpoint import _saver_class

    (tmp_path / "tmp.pth.tar").write_bytes(b"new")
    (tmp_path / "last.pth.tar").write_bytes(b"old")
    (tmp_path / "model_best.pth.tar").write_bytes(b"older")
    targets = {str(tmp_path / "last.pth.tar"), str(tmp_path / "model_best.pth.tar")}
    unlink = os.unlink

    def refuse(path, *args, **kwargs):
        if str(path) in targets:
            raise AssertionError(f"{path} deleted before being replaced")
        unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", refuse)
    monkeypatch.setattr(os, "remove", refuse)
    saver = types.SimpleNamespace(can_hardlink=True)
    _saver_class()._replace(saver, str(tmp_path / "tmp.pth.tar"), str(tmp_path / "last.pth.tar"))
    assert (tmp_path / "last.pth.tar").read_bytes() == b"new" and not (tmp_path / "tmp.pth.tar").exists()
    _saver_class()._duplicate(saver, str(tmp_path / "last.pth.tar"), str(tmp_path / "model_best.pth.tar"))
    assert (tmp_path / "model_best.pth.tar").read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth.tar", "model_best.pth.tar"]


def test_summary_rows_are_added_by_replacing_the_file(tmp_path):
    """summary.csv is rewritten atomically (a new file each epoch, not appended in place), in timm's format."""
    from collections import OrderedDict

    from timm.utils import update_summary

    from engine.outputs import RunOutputs

    outputs = RunOutputs(tiny_args(tmp_path), str(tmp_path / "run"))
    expected = str(tmp_path / "timm.csv")
    try:
        inodes = []
        for epoch in range(2):
            train, evaluation = OrderedDict(loss=2.0 - epoch), OrderedDict(loss=1.5, top1=50.0 + epoch, top5=90.0)
            outputs.log_epoch(epoch, train, evaluation, lr=1e-3)
            update_summary(epoch, train, evaluation, expected, lr=1e-3)
            inodes.append(os.stat(outputs.summary_path).st_ino)
    finally:
        outputs.close()
    assert inodes[0] != inodes[1]
    assert (tmp_path / "run" / "summary.csv").read_bytes() == (tmp_path / "timm.csv").read_bytes()


def test_a_run_resumed_into_its_folder_trains_the_same_model(tmp_path):
    """Resumed into its own folder with another --time-steps, the run's summary.csv would hold epochs of two models:
    refused before anything is written.  With --experiment the changed model trains from those weights in a new
    folder."""
    from engine.errors import CheckpointError

    run_training(tiny_args(tmp_path, "--epochs", "1", "--experiment", "run"))
    before = snapshot(tmp_path)
    resumed = tiny_args(tmp_path, "--epochs", "2", "--time-steps", "2", "--resume",
                        str(tmp_path / "run" / "last.pth.tar"))
    resumed.experiment = ""  # as when -c names none: the run goes on in its checkpoint's folder
    with pytest.raises(CheckpointError, match=r"continues a run trained with time_steps=1 \(this run: 2\)"):
        run_training(resumed)
    assert snapshot(tmp_path) == before
    result = run_training(tiny_args(tmp_path, "--epochs", "2", "--time-steps", "2", "--experiment", "changed",
                                    "--resume", str(tmp_path / "run" / "last.pth.tar")))
    assert result["output_dir"] == str(tmp_path / "changed") and len(read_summary(tmp_path / "changed" /
                                                                                  "summary.csv")) == 1
    skipping = load_checkpoint_file(str(tmp_path / "run" / "last.pth.tar"))
    skipping["args"].skipped_blocks = [0]  # as main.py --skip-blocks 0 records it; train.py has no skip flag
    torch.save(skipping, tmp_path / "run" / "skipping.pth.tar")
    resumed = tiny_args(tmp_path, "--epochs", "2", "--resume", str(tmp_path / "run" / "skipping.pth.tar"))
    resumed.experiment = ""
    with pytest.raises(CheckpointError, match=r"skipped_blocks=\[0\] \(this run: \[\]\).*resume it with main\.py -c"):
        run_training(resumed)


def test_a_resumed_run_rotates_the_recovery_files_of_the_run_it_continues(tmp_path):
    """timm's saver removes only recovery files it wrote itself: those the killed run left (full checkpoints with the
    optimizer's state) stayed for good. The resumed run now takes them over, so the folder ends with the last two
    recovery files, as an uninterrupted run's does."""
    run_training(tiny_args(tmp_path, "--epochs", "1", "--recovery-interval", "2", "--experiment", "run"))
    run = tmp_path / "run"
    assert sorted(p.name for p in run.glob("recovery-*")) == ["recovery-0-7.pth.tar", "recovery-0-9.pth.tar"]
    resumed = tiny_args(tmp_path, "--epochs", "2", "--recovery-interval", "2", "--resume",
                        str(run / "recovery-0-7.pth.tar"))
    resumed.experiment = ""
    run_training(resumed)
    assert sorted(p.name for p in run.glob("recovery-*")) == ["recovery-1-7.pth.tar", "recovery-1-9.pth.tar"]
