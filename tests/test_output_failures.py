"""Outputs that cannot be written: a read-only folder is refused before anything is built, a full disk during the
run is one error line (with the resume hint), and neither leaves a partial file or harms what was written before."""
import errno
import logging
import os

import pytest
import torch
from _engine_helpers import TINY_FLAGS, read_summary, tiny_args

import train
from engine.errors import ConfigError
from engine.evaluate import check_export_traces
from engine.run import cli_main, run_training
from engine.validate import check_run_args


def _read_only(monkeypatch, folder) -> None:
    """``folder`` answers os.access as a read-only mount does (root ignores permission bits, so no chmod)."""
    access = os.access

    def fake(path, mode, *args, **kwargs):
        if os.path.abspath(path) == os.path.abspath(folder) and mode & os.W_OK:
            return False
        return access(path, mode, *args, **kwargs)

    monkeypatch.setattr(os, "access", fake)


def test_a_read_only_output_root_is_refused_before_the_run(tmp_path, monkeypatch):
    """A read-only --output was a 16-line EROFS traceback after the model and the data were built."""
    _read_only(monkeypatch, tmp_path)
    args = tiny_args(tmp_path / "runs" / "new")
    with pytest.raises(ConfigError, match=f"--output '{tmp_path}/runs/new': {tmp_path} is not writable"):
        check_run_args(args, train=True)
    monkeypatch.chdir(tmp_path)
    args.output = ""
    with pytest.raises(ConfigError, match=f"the default output root is under the current folder, but {tmp_path} is"):
        check_run_args(args, train=True)


def test_traces_into_a_read_only_folder_are_refused_before_the_evaluation(tmp_path, monkeypatch):
    """--export-traces on a read-only mount failed after the whole evaluation had run."""
    _read_only(monkeypatch, tmp_path)
    args = tiny_args(tmp_path, "--experiment", "e")
    args.export_traces, args.trace_samples = str(tmp_path / "traces"), 2
    with pytest.raises(ConfigError, match=f"--export-traces {tmp_path}/traces: {tmp_path} is not writable"):
        check_export_traces(args)


def test_a_full_disk_at_a_checkpoint_is_one_error_and_keeps_the_last_epoch(tmp_path, monkeypatch, caplog):
    """torch.save on a full disk raised a RuntimeError ('unexpected pos'): a 51-line traceback, a partial tmp.pth.tar
    left behind and no resume hint.  Now: exit 1, one error line, the hint, and epoch 0's last.pth.tar intact."""
    save = torch.save
    calls = []

    def disk_fills_at_epoch_1(obj, path, *args, **kwargs):
        calls.append(obj["epoch"])
        if obj["epoch"] == 1:
            with open(path, "wb") as f:
                f.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 52")
        save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_at_epoch_1)
    argv = [*TINY_FLAGS, "--output", str(tmp_path), "--experiment", "run", "--epochs", "3"]
    with caplog.at_level(logging.INFO):
        assert cli_main(train.make_parser, run_training, argv) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    run = tmp_path / "run"
    assert errors == [f"Could not write an output: writing {run}/tmp.pth.tar failed ([enforce fail at "
                      f"inline_container.cc:626] . unexpected pos 64 vs 52); is the disk full? The checkpoints written "
                      f"before it are kept"]
    assert len(errors) == 1 and f"Resume with --resume {run / 'last.pth.tar'}" in caplog.text and calls == [0, 1]
    assert not (run / "tmp.pth.tar").exists()  # the partial file
    assert torch.load(run / "last.pth.tar", weights_only=False)["epoch"] == 0
    assert [row["epoch"] for row in read_summary(run / "summary.csv")] == ["0", "1"]


def test_a_read_only_dataset_folder_is_one_error_when_frames_are_built(tmp_path, monkeypatch):
    """Building events_np in a read-only --data-dir was a 42-line traceback at the temporary folder's mkdir."""
    from pathlib import Path

    from data.dvs_build import atomic_dir
    from data.dvs_raw import DVSDataError

    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    with pytest.raises(DVSDataError, match=f"cannot build {tmp_path}/events_np .Read-only file system.: the "
                                           f"converted data is written inside the dataset folder {tmp_path}"):
        with atomic_dir(tmp_path, "events_np"):
            pass


def test_a_full_disk_elsewhere_is_one_error_naming_the_file(tmp_path, monkeypatch, caplog):
    """An OSError of a full disk (here at summary.csv, epoch 0) is one error line naming the file, exit 1."""
    import engine.outputs

    def full(path, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(engine.outputs, "write_text_atomic", full)
    argv = [*TINY_FLAGS, "--output", str(tmp_path), "--experiment", "run", "--epochs", "1"]
    assert cli_main(train.make_parser, run_training, argv) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [f"Could not write an output: {tmp_path}/run/summary.csv: No space left on device; free some "
                      f"space or choose another folder"]


def test_a_second_run_into_a_folder_in_use_is_refused_before_writing(tmp_path):
    """Two runs resumed from one checkpoint at once shared its folder: summary.csv held epochs 2-4 twice, and both
    wrote timm's fixed tmp.pth.tar.  The run folder is locked for the run's life; the second run stops first."""
    from engine.outputs import RunOutputs

    args = tiny_args(tmp_path)
    first = RunOutputs(args, str(tmp_path / "run"))
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    with pytest.raises(ConfigError, match=f"another run is writing into {tmp_path}/run .resumed from one of its "
                                          f"checkpoints too..; wait for it to end, or give --experiment NAME"):
        RunOutputs(args, str(tmp_path / "run"), resume_epoch=2)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before == ["args.yaml", "tensorboard", "train.log"]
    first.close()
    RunOutputs(args, str(tmp_path / "run"), resume_epoch=2).close()  # free again once the first run has ended
