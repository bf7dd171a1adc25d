"""engine.checkpoint: one clear error for a wrong path or file, a warning for a computation-changing mismatch."""
import argparse
import json
import logging
import os

import pytest
import timm
import torch

from engine.checkpoint import load_checkpoint_file, load_model_weights
from engine.errors import CheckpointError


def _tiny(**kwargs):
    import model  # noqa: F401  (registers the sdt models)

    torch.manual_seed(0)
    return timm.create_model("sdt", img_size_h=32, img_size_w=32, in_channels=3, num_classes=10, embed_dims=32,
                             num_heads=4, mlp_ratios=2, depths=1, T=2, pooling_stat="1111", **kwargs)


def test_directory_is_not_reported_as_missing(tmp_path):
    with pytest.raises(CheckpointError, match="is a directory; expected a checkpoint file") as info:
        load_checkpoint_file(str(tmp_path))
    assert "not found" not in str(info.value)


def test_file_torch_cannot_read_says_so_first(tmp_path):
    path = tmp_path / "args.json"
    path.write_text(json.dumps({"lr": 0.1}))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(str(path))
    message = str(info.value)
    assert message.startswith(f"cannot read checkpoint {str(path)!r}: not a checkpoint file readable by torch.load")
    assert "Weights only load failed" not in message and "\n" not in message
    (tmp_path / "text.pth").write_text("hello")  # torch.load raises KeyError on this one
    with pytest.raises(CheckpointError, match="not a checkpoint file readable by torch.load"):
        load_checkpoint_file(str(tmp_path / "text.pth"))


def test_a_corrupted_pickle_is_one_checkpoint_error(tmp_path):
    """A corrupted pickle makes torch.load raise TypeError, AttributeError, ...: that was a traceback."""
    import zipfile

    torch.save({"epoch": 1}, tmp_path / "good.pth.tar")
    path = tmp_path / "corrupt.pth.tar"
    with zipfile.ZipFile(tmp_path / "good.pth.tar") as good, zipfile.ZipFile(path, "w") as corrupt:
        for info in good.infolist():  # an allowed global called without its arguments
            pickled = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)R." if info.filename.endswith("data.pkl") else None
            corrupt.writestr(info, pickled or good.read(info))
    with pytest.raises(CheckpointError, match="not a checkpoint file readable by torch.load .*_rebuild_tensor") as info:
        load_checkpoint_file(str(path))
    assert str(path) in str(info.value) and isinstance(info.value.__cause__, TypeError)


def test_a_checkpoint_holding_other_objects_names_the_weights_only_refusal(tmp_path):
    import numpy as np

    path = tmp_path / "numpy_metric.pth.tar"
    torch.save({"state_dict": {}, "metric": np.float64(0.5)}, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_file(str(path))
    message = str(info.value)
    assert message.startswith(f"cannot read checkpoint {str(path)!r}: it holds objects that weights_only loading "
                              "refuses (numpy.")
    assert "weights_only=False" in message and "not a checkpoint file" not in message and "\n" not in message


@pytest.mark.parametrize("content,what", [({"state_dict": [1, 2]}, "'state_dict' is not a state dict"),
                                          ({"state_dict": {"w": 1}}, "has non-tensor values"),
                                          ({"epoch": 3}, "has no 'state_dict' and is not a bare state dict")])
def test_not_a_state_dict_is_one_clear_error(tmp_path, content, what):
    path = tmp_path / "odd.pth.tar"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=what):
        load_model_weights(_tiny(), load_checkpoint_file(str(path)), str(path))


def _trained_args(**fields):
    base = dict(attention_mode="SDT", reference=None, chunk_size=2, dvs_mode=False, pooling_stat="1111",
                time_steps=2, img_size=32)
    return argparse.Namespace(**{**base, **fields})


def test_attention_mode_mismatch_warns(tmp_path, caplog):
    checkpoint = {"state_dict": _tiny().state_dict(), "args": _trained_args()}
    with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
        load_model_weights(_tiny(attention_mode="STAtten"), checkpoint, "sdt.pth.tar")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "attention_mode='SDT' (this model: 'STAtten')" in warnings[0]
    assert "reference='sdt' (this model: 'statten')" in warnings[0]


def test_chunk_size_mismatch_warns_and_matching_args_do_not(tmp_path, caplog):
    statten = _tiny(attention_mode="STAtten", chunk_size=1)
    state = statten.state_dict()
    with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
        load_model_weights(statten, {"state_dict": state, "args": _trained_args(attention_mode="STAtten",
                                                                                chunk_size=1)}, "same")
        assert not caplog.records
        load_model_weights(statten, {"state_dict": state, "args": _trained_args(attention_mode="STAtten")}, "c2")
    assert len(caplog.records) == 1 and "chunk_size=2 (this model: 1)" in caplog.records[0].getMessage()


def test_time_steps_and_image_size_mismatches_warn(caplog):
    """Evaluating at another T (or image size) on purpose is legitimate, but was silent, unlike --pooling-stat."""
    checkpoint = {"state_dict": _tiny().state_dict(), "args": _trained_args(time_steps=4, img_size=64)}
    with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
        load_model_weights(_tiny(), checkpoint, "t4.pth.tar")
        load_model_weights(_tiny(), checkpoint, "t4.pth.tar", args=argparse.Namespace(img_size=32))
    without_args, with_args = [r.getMessage() for r in caplog.records]
    assert "time_steps=4 (this model: 2)" in without_args and "img_size" not in without_args
    assert "time_steps=4 (this model: 2), img_size=64 (this model: 32)" in with_args


def test_evaluation_scripts_warn_about_another_image_size(tmp_path, caplog):
    """test.py / firing_num.py load with the run's args, so a 64 px checkpoint evaluated at 32 px warns."""
    from engine.evaluate import _load_weights

    path = tmp_path / "px64.pth.tar"
    torch.save({"state_dict": _tiny().state_dict(), "args": _trained_args(img_size=64)}, path)
    args = argparse.Namespace(resume=str(path), initial_checkpoint="", use_ema=False, img_size=32)
    with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
        _load_weights(args, _tiny())
    assert [r.getMessage() for r in caplog.records if "img_size=64 (this model: 32)" in r.getMessage()]


def test_resuming_without_ema_or_float16_scaler_warns_that_their_state_is_dropped(tmp_path, caplog):
    """A --model-ema run resumed without --model-ema dropped its EMA weights without a word (and ranked the later
    checkpoints by another metric); likewise the float16 scaler's state."""
    from engine.checkpoint import restore_model_ema, resume_checkpoint

    model = _tiny()
    path = str(tmp_path / "last.pth.tar")
    torch.save({"epoch": 0, "version": 2, "state_dict": model.state_dict(), "state_dict_ema": model.state_dict(),
                "amp_scaler": {"scale": 1024.0}}, path)
    args = argparse.Namespace(resume=path, no_resume_opt=False, start_epoch=None)
    with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
        _, _, checkpoint = resume_checkpoint(args, model, None, loss_scaler=None)
        restore_model_ema(None, checkpoint, path)
    scaler, ema = [r.getMessage() for r in caplog.records]
    assert "amp_scaler" in scaler and "it is dropped (pass --amp with --amp-dtype float16" in scaler
    assert "holds EMA weights (state_dict_ema), but this run has no --model-ema: they are dropped" in ema
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):  # --no-resume-opt drops the scaler on purpose
        resume_checkpoint(argparse.Namespace(resume=path, no_resume_opt=True, start_epoch=None), model, None)
        restore_model_ema(None, None, path)
    assert not caplog.records


def _recovery_checkpoint(folder, epoch: int, batch_idx: int) -> str:
    """A recovery checkpoint of a tiny model, as ``--recovery-interval`` writes it."""
    from engine.checkpoint import _saver_class

    model = _tiny()
    saver = _saver_class()(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                           checkpoint_dir=str(folder), recovery_dir=str(folder))
    saver.epoch_loss = [2.0, 8.0]
    saver.save_recovery(epoch, batch_idx=batch_idx)
    return str(folder / f"recovery-{epoch}-{batch_idx}.pth.tar")


def test_a_renamed_recovery_checkpoint_still_finishes_its_epoch(tmp_path):
    """Whether a checkpoint was saved mid-epoch was read from its name: a copy under another name resumed at the
    next epoch, skipping the rest of its own."""
    import shutil

    from engine.checkpoint import resume_start

    copied = str(tmp_path / "copied.pth.tar")
    shutil.copy(_recovery_checkpoint(tmp_path, 1, 7), copied)
    checkpoint = load_checkpoint_file(copied)
    assert resume_start(argparse.Namespace(resume=copied, start_epoch=None), checkpoint) == (1, 8)
    assert checkpoint["saver"]["batches_done"] == 8


def test_an_older_recovery_checkpoint_is_known_by_its_name_and_refused_when_renamed(tmp_path):
    """Recovery files saved before they recorded their batch: the name tells it; without it, one clear error."""
    from engine.checkpoint import resume_start

    path = _recovery_checkpoint(tmp_path, 1, 7)
    older = load_checkpoint_file(path)
    older["saver"].pop("batches_done", None)
    assert resume_start(argparse.Namespace(resume=path, start_epoch=None), older) == (1, 8)
    with pytest.raises(CheckpointError, match="'copied.pth.tar' is a recovery checkpoint part-way through epoch 1.*"
                                              "rename it back"):
        resume_start(argparse.Namespace(resume="copied.pth.tar", start_epoch=None), older)


def test_only_files_past_the_resume_point_are_set_aside(tmp_path):
    """A recovery resume keeps the same epoch's earlier recovery files; an epoch resume moves them."""
    from engine.checkpoint import set_aside_later_checkpoints

    epochs = {"checkpoint-0": 0, "checkpoint-1": 1, "recovery-1-3": 1, "recovery-1-7": 1, "recovery-2-3": 2,
              "last": 1, "model_best": 0}
    for name, epoch in epochs.items():
        torch.save({"epoch": epoch}, tmp_path / f"{name}.pth.tar")
    moved = set_aside_later_checkpoints(str(tmp_path), 1, 8, str(tmp_path / "recovery-1-7.pth.tar"))
    assert sorted(os.path.basename(path) for path in moved) == ["checkpoint-1.pth.tar", "last.pth.tar",
                                                                "recovery-2-3.pth.tar"]
    assert all(os.path.dirname(path) == str(tmp_path / "superseded-from-epoch-1") for path in moved)
    moved = set_aside_later_checkpoints(str(tmp_path), 1, 0, str(tmp_path / "checkpoint-0.pth.tar"))
    assert sorted(os.path.basename(path) for path in moved) == ["recovery-1-3.pth.tar", "recovery-1-7.pth.tar"]
    assert os.path.dirname(moved[0]) == str(tmp_path / "superseded-from-epoch-1-1")


def test_a_recovery_file_one_batch_past_the_resume_point_is_set_aside(tmp_path):
    from engine.checkpoint import set_aside_later_checkpoints

    for name in ("recovery-1-7", "recovery-1-8"):
        torch.save({"epoch": 1, "version": 2}, tmp_path / f"{name}.pth.tar")
    moved = set_aside_later_checkpoints(str(tmp_path), 1, 8, str(tmp_path / "recovery-1-7.pth.tar"))
    assert [os.path.basename(path) for path in moved] == ["recovery-1-8.pth.tar"]


def test_resume_point_of_each_checkpoint_kind(tmp_path):
    """Version 2 stores the finished epoch, version 1 the next one, a recovery file its unfinished epoch;
    --start-epoch wins and restarts the epoch from its first batch."""
    from engine.checkpoint import resume_start

    def point(name, checkpoint, start_epoch=None):
        return resume_start(argparse.Namespace(resume=str(tmp_path / name), start_epoch=start_epoch), checkpoint)

    assert point("checkpoint-3.pth.tar", {"epoch": 3, "version": 2}) == (4, 0)
    assert point("checkpoint-3.pth.tar", {"epoch": 3}) == (3, 0)
    assert point("recovery-3-7.pth.tar", {"epoch": 3, "version": 2}) == (3, 8)
    assert point("recovery-3-7.pth.tar", {"epoch": 3, "version": 2}, start_epoch=1) == (1, 0)
    assert point("weights.pth", {}) == (0, 0)


def test_a_recovery_checkpoint_of_another_process_count_is_refused():
    from engine.checkpoint import _check_same_batches

    trained = argparse.Namespace(batch_size=64, world_size=1)
    args = argparse.Namespace(resume="recovery-1-7.pth.tar", batch_size=64, world_size=2)
    with pytest.raises(CheckpointError, match=r"-b 64 on 1 process\(es\); this run has -b 64 on 2,"):
        _check_same_batches(args, {"args": trained})
    _check_same_batches(argparse.Namespace(resume="r", batch_size=64, world_size=1), {"args": trained})


def test_weights_key_use_ema_and_ema_only_checkpoints():
    from engine.checkpoint import weights_key

    both, ema_only = {"state_dict": {}, "state_dict_ema": {}}, {"state_dict_ema": {}}
    assert (weights_key(both, "c"), weights_key(both, "c", use_ema=True)) == ("state_dict", "state_dict_ema")
    assert weights_key(ema_only, "c") == "state_dict_ema"
    with pytest.raises(CheckpointError, match="has no EMA weights .*drop --use-ema"):
        weights_key({"state_dict": {}}, "c", use_ema=True)


@pytest.mark.parametrize("saver", [{"epoch_loss": [2.0, 8.0]}, {"pending": (None, None)}])
def test_either_mark_of_an_older_recovery_checkpoint_refuses_a_name_without_its_batch(saver):
    """Only recovery files record ``epoch_loss`` or a ``pending`` of ``(None, None)``: each alone marks a renamed
    older one (no ``batches_done``), which is refused; without either mark the file is an epoch checkpoint (0)."""
    from engine.checkpoint import batches_done

    with pytest.raises(CheckpointError, match="'copied.pth.tar' is a recovery checkpoint part-way through epoch 1"):
        batches_done("copied.pth.tar", {"epoch": 1, "version": 2, "saver": saver})
    assert batches_done("copied.pth.tar", {"epoch": 1, "version": 2, "saver": {}}) == 0


def test_resuming_and_initial_weights_warn_about_another_image_size(tmp_path, caplog):
    """--resume and --initial-checkpoint load with the run's args, as the evaluation scripts do: a 64 px checkpoint
    continued or started from at 32 px warns (the model does not hold img_size, so only the args tell)."""
    from engine.checkpoint import load_initial_checkpoint, resume_checkpoint

    path = str(tmp_path / "px64.pth.tar")
    torch.save({"epoch": 0, "version": 2, "state_dict": _tiny().state_dict(), "args": _trained_args(img_size=64)},
               path)
    with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
        resume_checkpoint(argparse.Namespace(resume=path, no_resume_opt=True, start_epoch=None, img_size=32),
                          _tiny(), None)
        load_initial_checkpoint(argparse.Namespace(initial_checkpoint=path, use_ema=False, img_size=32), _tiny())
    assert len([r for r in caplog.records if "img_size=64 (this model: 32)" in r.getMessage()]) == 2


def test_restoring_ema_from_a_checkpoint_without_ema_weights_leaves_the_ema_model_alone(tmp_path, caplog):
    """A run with --model-ema resumed from a checkpoint of a run without it: nothing to restore, no error."""
    import types

    from engine.checkpoint import restore_model_ema

    ema = types.SimpleNamespace(module=_tiny())
    before = {k: v.clone() for k, v in ema.module.state_dict().items()}
    other = _tiny(attention_mode="STAtten")
    with caplog.at_level(logging.INFO, logger="engine.checkpoint"):
        restore_model_ema(ema, {"epoch": 0, "state_dict": other.state_dict(), "args": _trained_args()}, "x.pth.tar")
    assert all(torch.equal(before[k], v) for k, v in ema.module.state_dict().items())
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "checkpoint 'x.pth.tar' has no EMA weights (state_dict_ema): the EMA starts from its model "
                       "weights")]


def test_a_checkpoint_trained_on_another_split_of_the_event_dataset_is_warned_about(tmp_path, caplog):
    """An event dataset's stratified split follows --seed: a checkpoint trained with --seed 1 and evaluated with the
    config's seed 42 was scored on a validation set holding its training samples, without a word."""
    from data.neuromorphic import build_dvs_dataset
    from test_data_dvs_formats import dvs_args, make_cifar10_dvs

    make_cifar10_dvs(tmp_path, per_class=10)
    trained = dvs_args(seed=1, dataset="cifar10-dvs", time_steps=2)
    train_ids = set(build_dvs_dataset("cifar10-dvs", tmp_path, "train", trained).sample_ids)
    now = dvs_args(seed=42, dataset="cifar10-dvs")
    assert set(build_dvs_dataset("cifar10-dvs", tmp_path, "val", now).sample_ids) & train_ids  # the leak
    model = _tiny()
    checkpoint = {"epoch": 0, "state_dict": model.state_dict(), "args": trained}
    with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
        load_model_weights(model, checkpoint, "best.pth.tar", args=now)
    assert [r.getMessage() for r in caplog.records if r.name == "engine.checkpoint"] == [
        "checkpoint 'best.pth.tar' was trained on another split of cifar10-dvs: dvs_split_seed=1 (this run: 42); "
        "this run's validation samples may include samples it was trained on; pass --dvs-split-seed 1 (-c the run's "
        "args.yaml gives them all)"]
    caplog.clear()
    same = dvs_args(seed=42, dvs_split_seed=1, dataset="cifar10-dvs")
    assert not set(build_dvs_dataset("cifar10-dvs", tmp_path, "val", same).sample_ids) & train_ids
    official = argparse.Namespace(dataset="cifar10-dvs", dvs_split="official", dvs_split_seed=None)
    with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
        for args in (same, official, argparse.Namespace(dataset="digits")):
            load_model_weights(model, checkpoint, "best.pth.tar", args=args)
    assert not [r for r in caplog.records if r.name == "engine.checkpoint"]


@pytest.mark.parametrize("killed_at", ["checkpoint-1", "model_best"])
def test_a_save_killed_after_last_is_finished_on_resume(tmp_path, monkeypatch, killed_at):
    """A kill after last.pth.tar (epoch 1, the best) was written but before checkpoint-1 was linked left epoch 1
    out of the ranking for good; one before model_best was linked left model_best at epoch 0 while the restored
    history named epoch 1 the best.  Resuming from last.pth.tar finishes that save."""
    from _engine_helpers import tiny_args

    from engine.checkpoint import _saver_class, _stored_epoch, build_saver

    model = _tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    args = tiny_args(tmp_path, "--checkpoint-hist", "5")
    saver = build_saver(args, model, optimizer, str(tmp_path))
    saver.save_checkpoint(0, metric=50.0)
    duplicate = _saver_class()._duplicate

    def killed(self, src, dst):
        if os.path.basename(dst).startswith(killed_at):
            raise KeyboardInterrupt
        duplicate(self, src, dst)

    monkeypatch.setattr(_saver_class(), "_duplicate", killed)
    with pytest.raises(KeyboardInterrupt):
        saver.save_checkpoint(1, metric=60.0)
    monkeypatch.setattr(_saver_class(), "_duplicate", duplicate)
    assert _stored_epoch(str(tmp_path / "last.pth.tar")) == 1
    assert _stored_epoch(str(tmp_path / "model_best.pth.tar")) == 0

    args.resume = str(tmp_path / "last.pth.tar")
    checkpoint = load_checkpoint_file(args.resume)
    resumed = build_saver(args, model, optimizer, str(tmp_path), resume_checkpoint_dict=checkpoint)
    assert [(os.path.basename(f), m) for f, m in resumed.checkpoint_files] == [("checkpoint-1.pth.tar", 60.0),
                                                                              ("checkpoint-0.pth.tar", 50.0)]
    assert (resumed.best_epoch, resumed.best_metric) == (1, 60.0)
    assert _stored_epoch(str(tmp_path / "checkpoint-1.pth.tar")) == 1
    assert _stored_epoch(str(tmp_path / "model_best.pth.tar")) == 1
