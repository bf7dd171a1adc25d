"""Setup errors: one clear error line, and nothing written into an existing run folder."""
import re
import subprocess
import sys

import pytest
import torch
from _engine_helpers import REPO, TINY_FLAGS, snapshot, subprocess_env

from engine.run import cli_main, run_training
from train import make_parser


@pytest.fixture
def existing_run(tmp_path):
    """An earlier run folder ``tmp_path/exp`` holding a checkpoint of a different architecture (dim 64)."""
    import timm

    import model as _registers_sdt  # noqa: F401

    run_dir = tmp_path / "exp"
    run_dir.mkdir()
    other = timm.create_model("sdt", img_size_h=32, img_size_w=32, in_channels=3, num_classes=10, embed_dims=64,
                              num_heads=4, depths=1, T=1, pooling_stat="1111")
    torch.save({"state_dict": other.state_dict(), "epoch": 3, "version": 2, "arch": "sdt"}, run_dir / "last.pth.tar")
    (run_dir / "summary.csv").write_text("epoch,train_loss\n0,2.3\n")
    (run_dir / "args.yaml").write_text("dim: 64\n")
    return run_dir


def _run_cli(argv, capfd):
    status = cli_main(make_parser, run_training, argv)
    err = capfd.readouterr().err
    return status, [line for line in err.splitlines() if " ERROR: " in line], err


@pytest.mark.parametrize("case, extra, message", [
    ("unknown_key", None, "unknown config key 'mlp_ration'.*closest known keys: mlp_ratio"),
    ("missing_dataset", ["--dataset", "torch/cifar10", "--data-dir", "{tmp}/nowhere"], "cifar-10-batches-py"),
    ("wrong_checkpoint", ["--resume", "{tmp}/exp/last.pth.tar"],
     "does not fit this model .*shape mismatches"),
])
def test_setup_error_is_one_line_and_writes_nothing(tmp_path, existing_run, capfd, case, extra, message):
    argv = [*TINY_FLAGS, "--output", str(tmp_path), "--experiment", "exp"]
    if case == "unknown_key":
        (tmp_path / "bad.yml").write_text("dim: 32\nmlp_ration: 4\n")
        argv = ["-c", str(tmp_path / "bad.yml"), *argv]
    else:
        argv += [a.format(tmp=tmp_path) for a in extra]
    before = snapshot(tmp_path)
    status, error_lines, err = _run_cli(argv, capfd)
    assert status == 2
    assert len(error_lines) == 1 and "Traceback" not in err, err
    assert re.search(message, error_lines[0]), error_lines[0]
    assert snapshot(tmp_path) == before  # nothing created, nothing overwritten


def test_cli_reports_exactly_one_line(tmp_path):
    (tmp_path / "bad.yml").write_text("epochs: 3\nlearning_rate: 0.1\n")
    result = subprocess.run([sys.executable, "train.py", "-c", str(tmp_path / "bad.yml")], cwd=REPO,
                            env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown config key 'learning_rate'" in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "bad.yml"]


def test_sync_bn_on_cpu_is_a_config_error(tmp_path):
    from _engine_helpers import tiny_args

    from engine.errors import ConfigError
    from engine.model import build_model, prepare_model, resolve_model_args

    args = tiny_args(tmp_path, "--sync-bn")
    args.distributed = True
    resolve_model_args(args)
    with pytest.raises(ConfigError, match="SyncBatchNorm"):
        prepare_model(args, build_model(args))


def test_fusing_bn_and_lif_under_sync_bn_is_warned_about(tmp_path, caplog):
    """The fused kernel only takes a plain BatchNorm2d: under --sync-bn no pair was fused, without a word (the
    warning comes before --sync-bn's CUDA check, which stops this CPU run)."""
    import logging

    from _engine_helpers import tiny_args

    from engine.errors import ConfigError
    from engine.model import build_model, prepare_model, resolve_model_args
    from module.bn_lif import can_fuse

    args = tiny_args(tmp_path, "--sync-bn", "--fuse-bn-lif")
    args.distributed = True
    resolve_model_args(args)
    model = build_model(args)
    with caplog.at_level(logging.WARNING, logger="engine.model"), pytest.raises(ConfigError):
        prepare_model(args, model)
    assert [r.getMessage() for r in caplog.records if r.name == "engine.model"] == [
        "--fuse-bn-lif with --sync-bn fuses nothing: the fused kernel takes the batch statistics of its own process, "
        "SyncBatchNorm those of all processes"]
    assert can_fuse(model.patch_embed.proj_bn, model.patch_embed.proj_lif)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    assert not can_fuse(synced.patch_embed.proj_bn, synced.patch_embed.proj_lif)  # why nothing is fused


@pytest.mark.parametrize("flags, message", [
    (["--sched", "foo"], r"--sched 'foo' is not a scheduler"),
    (["--device", "foo"], r"--device 'foo' is not a device"),
    (["-b", "0"], r"-b/--batch-size 0 must be at least 1"),
    (["--log-interval", "0"], r"--log-interval 0 must be at least 1"),
    (["--checkpoint-hist", "0"], r"--checkpoint-hist 0 must be at least 1"),
    (["--lr", "-1"], r"--lr -1.0 must be positive"),
    (["--smoothing", "1.5"], r"--smoothing 1.5 must be in \[0, 1\)"),
    (["--scale", "0.1", "0.2", "0.3"], r"--scale 0.1 0.2 0.3: expected two values"),
    (["--opt-betas", "0.9"], r"--opt-betas 0.9: expected two values"),
    (["--mean", "0.5", "0.5"], r"--mean has 2 values but the input has 3 channels"),
    (["--in-channels", "1", "--mean", "0.3", "--std", "0.3"],
     r"--in-channels: .* 1 input channels but --dataset digits gives images with 3 channels .*--in-channels 3"),
    (["--dataset", "nmnist"], r"--in-channels: .* 3 input channels but --dataset nmnist gives event frames with 2"),
    (["--interpolation", "foo"], r"--interpolation 'foo'"),
    (["--aa", "foo"], r"image transforms .*Unknown AA policy foo"),
    (["--dim", "0"], r"embed_dims=0 must be a positive int"),
    (["--mlp-ratio", "0"], r"mlp_ratios=0 must be positive"),
    (["--model", "resnet18"], r"'resnet18' is not a spiking transformer of this project"),
    (["--num-classes", "5"], r"labels 0..9 but --num-classes is 5; set --num-classes 10"),
    (["--split-bn", "--aug-splits", "2"], r"--split-bn is not supported"),
    (["--aug-splits", "1"], r"--aug-splits 1: give 0 \(off\) or at least 2"),
    (["--aug-splits", "2", "--no-prefetcher"], r"--aug-splits needs the prefetcher"),
    (["--aug-splits", "2", "--jsd", "--mixup", "0.5"], r"--jsd needs hard labels"),
    (["--model", "sdt_dvs_2_256"], r"--in-channels: .* 2 input channels but --dataset digits gives images with 3"),
    (["--input-size", "3", "32", "48"], r"--input-size 3 32 48: the model takes square images"),
    (["--start-epoch", "-1"], r"--start-epoch -1 must be 0 or more"),
    (["--sched", "step", "--decay-epochs", "0"], r"--decay-epochs 0.0 must be positive with --sched step"),
    (["--sched", "wsd"], r"--sched wsd: the schedule flags do not fit .*--decay-epochs 30 .*--epochs 1"),
    (["--sched", "rsqrt", "--warmup-epochs", "1"],
     r"--sched rsqrt: the schedule flags do not fit .*--decay-epochs 30 .*--epochs 1"),
    (["--start-epoch", "5"], r"nothing to train: --start-epoch is epoch 5, and the run has 1 epochs"),
])
def test_bad_flag_is_one_line_before_anything_is_written(tmp_path, capfd, flags, message):
    """Values the libraries would reject with a traceback (or only mid-run) are one line naming the flag."""
    argv = [*TINY_FLAGS, "--output", str(tmp_path / "out"), "--epochs", "1", "--cooldown-epochs", "0", *flags]
    status, error_lines, err = _run_cli(argv, capfd)
    assert status == 2
    assert len(error_lines) == 1 and "Traceback" not in err, err
    assert re.search(message, error_lines[0]), error_lines[0]
    assert not (tmp_path / "out").exists()


def test_output_that_is_a_file_is_refused(tmp_path, capfd):
    (tmp_path / "out").write_text("results of something else\n")
    status, error_lines, _ = _run_cli([*TINY_FLAGS, "--output", str(tmp_path / "out")], capfd)
    assert status == 2 and "--output" in error_lines[0] and "is a file" in error_lines[0]
    assert (tmp_path / "out").read_text() == "results of something else\n"


def test_output_inside_a_file_is_refused(tmp_path, capfd):
    """A file above --output: os.makedirs failed with a NotADirectoryError traceback after the whole setup."""
    (tmp_path / "afile").write_text("results of something else\n")
    status, error_lines, err = _run_cli([*TINY_FLAGS, "--output", str(tmp_path / "afile" / "sub")], capfd)
    assert status == 2 and len(error_lines) == 1 and "Traceback" not in err, err
    assert re.search(r"--output .*afile/sub' is inside .*afile', which is a file", error_lines[0]), error_lines[0]
    assert (tmp_path / "afile").read_text() == "results of something else\n"


@pytest.mark.parametrize("flags", [("--torchcompile", "--torchcompile-mode", "reduce-overhead"),
                                   ("--torchcompile", "--torchcompile-mode", "max-autotune"),
                                   ("--torchcompile", "cudagraphs")], ids=["reduce-overhead", "max-autotune",
                                                                           "cudagraphs-backend"])
def test_cuda_graph_compiles_need_stateless_neurons(tmp_path, flags):
    """Inductor's CUDA-graph modes (triton.cudagraphs) and the cudagraphs backend replay CUDA graphs, which would
    replay a stale membrane."""
    from _engine_helpers import tiny_args

    from engine.errors import ConfigError
    from engine.model import build_model, compile_model, resolve_model_args

    args = tiny_args(tmp_path, "--neuron-backend", "spikingjelly", *flags)
    resolve_model_args(args)
    with pytest.raises(ConfigError, match=f"{' '.join(flags[-2:])} replays CUDA graphs"):
        compile_model(args, build_model(args))


@pytest.mark.parametrize("backend", [(), ("--torchcompile", "aot_eager")], ids=["no-backend", "aot_eager"])
def test_a_compile_mode_needs_inductor(tmp_path, backend):
    """torch.compile ignores a mode with another backend (a warning), and the engine with no backend at all: neither
    replays CUDA graphs, so neither may claim to."""
    from _engine_helpers import tiny_args

    from engine.errors import ConfigError
    from engine.model import build_model, compile_model, replays_cuda_graphs, resolve_model_args

    args = tiny_args(tmp_path, *backend, "--torchcompile-mode", "reduce-overhead")
    resolve_model_args(args)
    assert not replays_cuda_graphs(args)
    with pytest.raises(ConfigError, match="--torchcompile-mode reduce-overhead is an inductor mode and "
                                          + ("--torchcompile aot_eager ignores it" if backend else
                                             "--torchcompile is off")):
        compile_model(args, build_model(args))


def test_unknown_compile_backend_is_named(tmp_path, capfd):
    status, error_lines, _ = _run_cli([*TINY_FLAGS, "--torchcompile", "inductr", "--output", str(tmp_path)], capfd)
    assert status == 2 and "--torchcompile inductr" in error_lines[0] and "cudagraphs, " in error_lines[0]


@pytest.mark.parametrize("stop, status, name", [("ctrl-c", 130, "Ctrl-C"), ("sigterm", 143, "SIGTERM")])
def test_ctrl_c_is_logged_in_the_run_and_ends_without_a_traceback(tmp_path, capfd, monkeypatch, stop, status, name):
    """Ctrl-C and SIGTERM (kill, a scheduler's time limit: the run ended silently with 143) log the file to resume
    from; here epoch 0's last.pth.tar (the hint named "the last finished epoch" even when there was none)."""
    import os
    import signal

    import engine.run

    finished = engine.run.train_one_epoch

    def interrupted_in_epoch_1(epoch, *args, **kwargs):
        if epoch == 1:
            if stop == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt
        return finished(epoch, *args, **kwargs)

    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setattr(engine.run, "train_one_epoch", interrupted_in_epoch_1)
    code, error_lines, err = _run_cli([*TINY_FLAGS, "--output", str(tmp_path), "--experiment", "run", "--epochs",
                                       "2"], capfd)
    assert code == status and "Traceback" not in err and error_lines[-1].endswith(f"Interrupted ({name}).")
    log = (tmp_path / "run" / "train.log").read_text()
    assert f"Interrupted. Resume with --resume {tmp_path / 'run' / 'last.pth.tar'} (the furthest point saved)" in log
    assert signal.getsignal(signal.SIGTERM) is handler


class _UnreadableFrames(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        from engine.errors import DatasetError

        raise DatasetError(f"frame file {index}.npz is truncated; delete the frame cache and run again")


def test_a_setup_error_in_a_loader_worker_is_one_line_naming_the_worker(capfd):
    """DataLoader re-raises a worker's exception with the worker's traceback in its message; the CLI shows the
    original message and the worker, as one line."""
    def run(args, parser):
        next(iter(torch.utils.data.DataLoader(_UnreadableFrames(), num_workers=1)))

    status = cli_main(make_parser, run, [*TINY_FLAGS])
    error_lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]
    assert status == 2 and len(error_lines) == 1 and error_lines[0].endswith(
        " ERROR: frame file 0.npz is truncated; delete the frame cache and run again (raised in DataLoader worker "
        "process 0)")


def test_one_line_keeps_a_message_whose_traceback_does_not_end_in_its_error():
    """A message that mentions ``Original Traceback`` without the error's own ``module.Class: `` line is not a
    worker's re-raised error: it is shown as it is."""
    from engine.errors import DatasetError, one_line

    text = "Caught DatasetError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n  x"
    assert one_line(DatasetError(text)) == text


def test_one_line_takes_the_last_error_line_of_a_chained_worker_traceback():
    """In a traceback the error finally raised comes last (an exception it was raised while handling comes first):
    its message is the one shown."""
    from engine.errors import DatasetError, one_line

    text = ("Caught DatasetError in DataLoader worker process 1.\nOriginal Traceback (most recent call last):\n"
            "engine.errors.DatasetError: first\n\nDuring handling of the above exception, another exception "
            "occurred:\n\nTraceback (most recent call last):\nengine.errors.DatasetError: second\n")
    assert one_line(DatasetError(text)) == "second (raised in DataLoader worker process 1)"
