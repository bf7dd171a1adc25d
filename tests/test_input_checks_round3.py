"""Third round on the input checks and warnings: the boundaries the schedule and EMA checks must let through, each
static-image flag the event-data warning names, the split and EMA messages of a resumed or reloaded checkpoint, the
exit wait, the lost-peer errors, the evaluation's compile warning and the back-to-back benchmark timing."""
import argparse
import datetime
import logging
import types

import pytest
import torch
from _engine_helpers import TINY_FLAGS, tiny_args

from engine.errors import ConfigError

# ------------------------------------------------------------------------------------------ schedule and EMA ranges


@pytest.mark.parametrize("flags", [
    ["--min-lr", "0"], ["--warmup-lr", "0", "--warmup-epochs", "1"], ["--patience-epochs", "0"],
    ["--model-ema", "--model-ema-decay", "1"], ["--model-ema", "--model-ema-decay", "0"],
])
def test_the_range_boundaries_are_accepted(tmp_path, flags):
    """A cosine schedule down to --min-lr 0, a warmup from --warmup-lr 0 and a plateau that cuts at once (patience
    0) are usual timm settings; decays 0 and 1 are the ends of the [0, 1] the EMA check names."""
    from engine.validate import check_run_args

    check_run_args(tiny_args(tmp_path, *flags), True)


@pytest.mark.parametrize("flags, message", [
    (["--patience-epochs", "-1"], "--patience-epochs -1 must be 0 or more"),
    (["--model-ema", "--model-ema-decay", "-0.5"], r"--model-ema-decay -0.5 must be in \[0, 1\]"),
    (["--sched", "multistep", "--decay-milestones", "0", "2"],
     "--decay-milestones 0 2: give distinct epochs from 1 on"),
])
def test_the_values_below_the_ranges_are_refused(tmp_path, flags, message):
    """The lower ends of the ranges: a negative patience, a negative EMA decay (the EMA swings past the weights) and a
    milestone 0, which the message excludes (milestones count epochs from 1)."""
    from engine.validate import check_run_args

    with pytest.raises(ConfigError, match="^" + message):
        check_run_args(tiny_args(tmp_path, *flags), True)


def test_one_augmentation_split_on_event_data_names_the_event_data(tmp_path):
    """--aug-splits 1 on N-MNIST: the error to give is that event frames take no splits at all; "give at least 2"
    would only lead to that error on the next try."""
    from engine.validate import check_run_args

    args = tiny_args(tmp_path, "--dataset", "nmnist", "--in-channels", "2", "--mean", "0.3", "--std", "0.3",
                     "--mixup", "0", "--cutmix", "0", "--aug-splits", "1")
    with pytest.raises(ConfigError, match=r"^--aug-splits / --jsd need the augmented copies .* --dataset nmnist"):
        check_run_args(args, True)


# ------------------------------------------------------------------------------------------ static-image flags


@pytest.mark.parametrize("flags", [
    ["--no-aug"], ["--scale", "0.5", "1.0"], ["--ratio", "0.5", "2.0"], ["--hflip", "0.2"], ["--vflip", "0.5"],
    ["--color-jitter", "0.3"], ["--aa", "rand-m9-n1"], ["--reprob", "0.25"], ["--remode", "pixel"],
    ["--recount", "2"], ["--resplit"], ["--train-interpolation", "bilinear"], ["--interpolation", "bicubic"],
    ["--crop-pct", "0.9"], ["--mean", "0.5"], ["--std", "0.2"],
])
def test_each_static_image_flag_on_event_data_is_named(caplog, flags):
    """Every flag of timm's static-image transforms, set on its own for N-MNIST, is named (with "has")."""
    from engine.args import get_args_parser
    from engine.config import parse_args, warn_inert_flags

    parser = get_args_parser()
    with caplog.at_level(logging.WARNING, logger="engine.config"):
        warn_inert_flags(parse_args(parser, ["--dataset", "nmnist", *flags]), parser)
    assert [r.getMessage().split(" (static-image")[0] for r in caplog.records] == [
        f"{flags[0]} has no effect on the event frames of --dataset nmnist"]


def test_two_static_image_flags_have_no_effect(caplog):
    """Two flags: "have" (one: "has", the existing test covered one and three)."""
    from engine.args import get_args_parser
    from engine.config import parse_args, warn_inert_flags

    parser = get_args_parser()
    with caplog.at_level(logging.WARNING, logger="engine.config"):
        warn_inert_flags(parse_args(parser, ["--dataset", "nmnist", "--vflip", "0.5", "--reprob", "0.25"]), parser)
    assert [r.getMessage().split(" (static-image")[0] for r in caplog.records] == [
        "--vflip, --reprob have no effect on the event frames of --dataset nmnist"]


# ------------------------------------------------------------------------------------------ checkpoint messages


def _split_warnings(caplog, trained, now):
    from engine.checkpoint import load_model_weights
    from test_checkpoint_errors import _tiny

    model = _tiny()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="engine.checkpoint"):
        load_model_weights(model, {"epoch": 0, "state_dict": model.state_dict(), "args": trained}, "best.pth.tar",
                           args=now)
    return [r.getMessage() for r in caplog.records if r.name == "engine.checkpoint"]


def test_a_checkpoint_of_another_split_mode_or_ratio_is_warned_about(tmp_path, caplog):
    """The split mode and the ratio choose the samples as the seed does: a checkpoint trained on the stratified 90 %
    split and evaluated on the 'first' split, or on the stratified 50 % one, is scored on samples it trained on."""
    from data.neuromorphic import build_dvs_dataset
    from test_data_dvs_formats import dvs_args, make_cifar10_dvs

    make_cifar10_dvs(tmp_path, per_class=10)
    trained = dvs_args(dataset="cifar10-dvs", time_steps=2)
    train_ids = set(build_dvs_dataset("cifar10-dvs", tmp_path, "train", trained).sample_ids)
    for now, changed, hint in (
            (dvs_args(dataset="cifar10-dvs", dvs_split="first"), "dvs_split='stratified' (this run: 'first')",
             "--dvs-split stratified"),
            (dvs_args(dataset="cifar10-dvs", dvs_split_ratio=0.5), "dvs_split_ratio=0.9 (this run: 0.5)",
             "--dvs-split-ratio 0.9")):
        assert set(build_dvs_dataset("cifar10-dvs", tmp_path, "val", now).sample_ids) & train_ids  # the leak
        assert _split_warnings(caplog, trained, now) == [
            f"checkpoint 'best.pth.tar' was trained on another split of cifar10-dvs: {changed}; this run's validation "
            f"samples may include samples it was trained on; pass {hint} (-c the run's args.yaml gives them all)"]


def test_a_checkpoint_without_recorded_split_values_is_not_warned_about(caplog):
    """A checkpoint whose args lack the split values (written before they were recorded, or by another code base)
    says nothing about its split: no warning, and no "pass --dvs-split-seed None" hint."""
    trained = argparse.Namespace(dataset="cifar10-dvs")
    now = argparse.Namespace(dataset="cifar10-dvs", dvs_split="stratified", dvs_split_ratio=0.9, dvs_split_seed=42)
    assert _split_warnings(caplog, trained, now) == []


def test_the_published_split_with_another_ratio_flag_is_not_warned_about(tmp_path, caplog):
    """--dvs-split published is spikingjelly's fixed split (samples 0..99 of each class for validation): the ratio
    plays no part, so two runs that gave different ratios used the same split, and evaluating one's checkpoint on
    the other's validation set scores no training sample."""
    from data.neuromorphic import build_dvs_dataset
    from test_data_dvs_formats import dvs_args, make_cifar10_dvs

    make_cifar10_dvs(tmp_path, indices=[0, 1, 100, 101, 102])
    trained = dvs_args(dataset="cifar10-dvs", dvs_split="published", dvs_split_ratio=0.8, time_steps=2)
    train_ids = set(build_dvs_dataset("cifar10-dvs", tmp_path, "train", trained).sample_ids)
    now = dvs_args(dataset="cifar10-dvs", dvs_split="published", time_steps=2)
    assert not set(build_dvs_dataset("cifar10-dvs", tmp_path, "val", now).sample_ids) & train_ids  # no leak
    assert _split_warnings(caplog, trained, now) == []


def test_resuming_a_checkpoint_without_ema_weights_in_a_run_without_ema_says_nothing(caplog):
    """No EMA in the checkpoint and none in the run: nothing starts from anything, so no INFO line about the EMA."""
    from engine.checkpoint import restore_model_ema
    from test_checkpoint_errors import _tiny

    with caplog.at_level(logging.INFO, logger="engine.checkpoint"):
        restore_model_ema(None, {"epoch": 0, "state_dict": _tiny().state_dict()}, "x.pth.tar")
    assert not [r for r in caplog.records if r.name == "engine.checkpoint"]


# ------------------------------------------------------------------------------------------ distributed


@pytest.fixture
def one_process_run(monkeypatch):
    """init_distributed in a run of WORLD_SIZE 2 whose group is a one-process gloo group (no peer to wait for); yields
    the calls made on the group's store from then on."""
    import torch.distributed as dist

    join, default_store, calls = dist.init_process_group, dist.distributed_c10d._get_default_store, []

    class RecordingStore:
        def __init__(self, store):
            self.store = store

        def set(self, key, value):
            calls.append(("set", key))
            self.store.set(key, value)

        def wait(self, keys, timeout):
            calls.append(("wait", tuple(keys), timeout))
            self.store.wait(keys, timeout)

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(dist, "init_process_group",
                        lambda *a, **k: join("gloo", store=dist.HashStore(), rank=0, world_size=1))
    monkeypatch.setattr(dist.distributed_c10d, "_get_default_store", lambda: RecordingStore(default_store()))
    yield calls
    if dist.is_initialized():
        dist.destroy_process_group()


def test_the_end_of_run_wait_is_on_the_store_for_a_day_or_more(one_process_run):
    """The exit barrier waits on the rendezvous store with a timeout far past gloo's 30 and NCCL's 10 minutes, since
    rank 0 may still export traces or evaluate for hours (the slow torchrun test waits 6 s, which a timeout of
    seconds would pass too); rank 0 also waits for every process's leaving mark, as its process may serve the
    store."""
    import torch.distributed as dist

    from engine import distributed

    assert distributed.EXIT_WAIT >= datetime.timedelta(days=1)
    distributed.init_distributed(argparse.Namespace(device="cpu", local_rank=0))
    distributed.cleanup_distributed(wait_for_peers=True)
    wait = distributed.EXIT_WAIT
    assert one_process_run == [("set", "exit/arrived/0"), ("wait", ("exit/arrived/0",), wait),
                               ("set", "exit/left/0"), ("wait", ("exit/left/0",), wait)]
    assert not dist.is_initialized()
    distributed.init_distributed(argparse.Namespace(device="cpu", local_rank=0))
    distributed.cleanup_distributed(wait_for_peers=False)  # after an error: no wait (a peer may be gone)
    assert len(one_process_run) == 4 and not dist.is_initialized()


def test_the_other_lost_peer_errors_are_recognised():
    """gloo reports a peer that has gone as "Connection reset by peer" too, and the store as a DistNetworkError;
    neither is a peer error outside a joined group."""
    import torch.distributed as dist

    from engine.distributed import lost_peer

    reset = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:598] Connection reset by peer")
    network = dist.DistNetworkError("failed to recv, got 0 bytes")
    assert not lost_peer(reset) and not lost_peer(network)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        assert lost_peer(reset) and lost_peer(network)
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ run


def test_a_lost_peer_is_reported_with_the_first_line_of_its_error(tmp_path, monkeypatch, caplog):
    """The error line names the collective's error by its first line: gloo's messages go on with the C++ frames
    ("Exception raised from ..."), which the one-line report leaves out."""
    import torch.distributed as dist

    import train
    from engine import run

    closed = RuntimeError("[pair.cc:547] Connection closed by peer [127.0.0.1]:29320\nException raised from recvLoop "
                          "at pair.cc:547 (most recent call first):\nframe #0: c10::Error::Error")

    def peer_gone(*args, **kwargs):
        raise closed

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    monkeypatch.setattr(run, "_train_epochs", peer_gone)
    with caplog.at_level(logging.WARNING):
        assert run.cli_main(train.make_parser, run.run_training, [*TINY_FLAGS, "--output", str(tmp_path)]) == 1
    assert caplog.records[-1].getMessage() == (
        "Another process of this run stopped (Ctrl-C or an error: see its output), so this one stops too "
        "([pair.cc:547] Connection closed by peer [127.0.0.1]:29320)")


def test_another_runtime_error_in_training_is_no_interruption(tmp_path, monkeypatch, caplog):
    """Only Ctrl-C and a lost peer end with "Interrupted. Resume with --resume ...": an out-of-memory error keeps its
    traceback and is not called an interruption."""
    from engine import run

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(run, "_train_epochs", out_of_memory)
    with caplog.at_level(logging.WARNING), pytest.raises(RuntimeError, match="CUDA out of memory"):
        run.run_training(tiny_args(tmp_path))
    assert not [r for r in caplog.records if r.getMessage().startswith("Interrupted")]


def test_both_compile_flags_in_an_evaluation_are_named_in_one_warning(tmp_path, caplog):
    """--torchcompile with --torchcompile-mode: one warning naming both (the existing test gave one at a time)."""
    from engine.run import setup_evaluation

    with caplog.at_level(logging.WARNING, logger="engine.run"):
        setup_evaluation(tiny_args(tmp_path, "--torchcompile", "--torchcompile-mode", "max-autotune-no-cudagraphs"))
    assert [r.getMessage() for r in caplog.records if r.name == "engine.run"] == [
        "--torchcompile --torchcompile-mode: no effect on evaluation, which runs the model without torch.compile "
        "(only training compiles it)"]


def test_the_compile_warning_of_an_evaluation_comes_from_rank_0_only(tmp_path, monkeypatch, caplog):
    """The first process of a second node logs warnings (RANK 1, LOCAL_RANK 0): the compile warning, the same on
    every process, comes from rank 0 alone."""
    from engine.run import setup_evaluation

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    level = logging.getLogger().level
    try:
        with caplog.at_level(logging.WARNING, logger="engine.run"):
            args = tiny_args(tmp_path, "--torchcompile")
            setup_evaluation(args)
    finally:
        logging.getLogger().setLevel(level)  # setup_console_logging gave rank 1 its WARNING level
    assert args.rank == 1 and not [r for r in caplog.records if r.name == "engine.run"]


def test_sync_bn_without_fuse_bn_lif_has_no_fusing_warning(tmp_path, caplog):
    """The --fuse-bn-lif warning under --sync-bn is for runs that asked for the fusion."""
    from engine.model import build_model, prepare_model, resolve_model_args

    args = tiny_args(tmp_path, "--sync-bn")
    args.distributed = True
    resolve_model_args(args)
    with caplog.at_level(logging.WARNING, logger="engine.model"), pytest.raises(ConfigError, match="--sync-bn needs"):
        prepare_model(args, build_model(args))
    assert not [r for r in caplog.records if "--fuse-bn-lif" in r.getMessage()]


# ------------------------------------------------------------------------------------------ profiler and benchmark


def test_a_parse_error_is_one_line_without_the_usage_block(tmp_path, capsys):
    """profiler parse (not only profiler run) reports a bad capture as one line, without argparse's usage block."""
    from profiler.cli import main

    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(SystemExit) as exit_info:
        main(["parse", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "tables")])
    err = capsys.readouterr().err  # the log lines of the parse, then the error
    assert exit_info.value.code == 2 and "usage:" not in err
    assert [line for line in err.splitlines() if ": error: " in line] == [err.splitlines()[-1]]
    assert err.endswith("empty.txt: no capture lines found: the file is empty\n")


def test_back_to_back_ms_is_the_time_per_step_of_the_untimed_loop(monkeypatch):
    """On a clock that each step advances by exactly 1 ms, the back-to-back loop's time per step is 1 ms, as the
    synchronised steps' median is (a total of all steps, or one step short, would differ)."""
    from benchmarks import bench_train

    clock = [0.0]

    def one_ms_step(*args, **kwargs):
        clock[0] += 1e-3
        return torch.zeros(())

    monkeypatch.setattr(bench_train, "train_step", one_ms_step)
    monkeypatch.setattr(bench_train, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    args = bench_train.engine_args([*bench_train.TINY["tiny-sdt-fp32"].flags, "--device", "cpu"])
    r = bench_train.bench_step(args, warmup=1, steps=4, profile_steps=0)
    assert r["ms_per_step"]["median"] == pytest.approx(1.0)
    assert r["back_to_back_ms"] == pytest.approx(1.0)


def test_the_back_to_back_column_holds_the_back_to_back_time():
    """The table's "b2b ms" cell is back_to_back_ms and its "host ms" cell host_ms (the two were added side by
    side)."""
    from benchmarks.bench_train import _COLUMNS, table_rows

    result = dict(precision="float32", neuron_backend="fused", encode_once=True, event_frames=False,
                  channels_last=False, torchcompile=None, ms_per_step=dict(median=3.0, p10=2.0, p90=4.0),
                  back_to_back_ms=2.5, host_ms=1.25, images_per_s=100.0, gpu_busy_ms=None, kernels_per_step=None,
                  peak_memory_gib=1.0, tflop_per_step=None, tflops=None, mfu=None, peak_tflops=None)
    cells = dict(zip(_COLUMNS, table_rows({"tiny": result})[0]))
    assert (cells["ms/step"], cells["b2b ms"], cells["host ms"]) == ("3.00", "2.50", "1.25")


def test_the_seed_of_a_first_split_is_not_compared(caplog):
    """--dvs-split first takes the first samples of each class in sorted order: the seed chooses nothing there, so
    checkpoints of runs with other seeds share that split; its ratio still counts."""
    trained = argparse.Namespace(dataset="cifar10-dvs", dvs_split="first", dvs_split_ratio=0.9, dvs_split_seed=1)
    now = argparse.Namespace(dataset="cifar10-dvs", dvs_split="first", dvs_split_ratio=0.9, dvs_split_seed=42)
    assert _split_warnings(caplog, trained, now) == []
    now.dvs_split_ratio = 0.5
    assert _split_warnings(caplog, trained, now)[0].endswith(
        "dvs_split_ratio=0.9 (this run: 0.5); this run's validation samples may include samples it was trained on; "
        "pass --dvs-split-ratio 0.9 (-c the run's args.yaml gives them all)")
