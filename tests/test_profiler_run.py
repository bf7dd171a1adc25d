"""``python -m profiler run/parse/plot`` on a tiny model, on the CPU."""
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from profiler.capture import load_capture
from profiler.cli import main
from profiler.fork_format import LABELS
from profiler.tables import read_csv
from profiler_helpers import TINY_RUN

ROOT = Path(__file__).resolve().parents[1]
_FORK_SECONDS = 0.5e-4 * 1e9  # the fork prints seconds with 4 decimals: half a unit of the last digit, in ns


def _pairs(path: Path):
    capture = load_capture(path)
    assert not capture.skipped and not capture.incomplete
    return capture, [((r.run, r.block, r.label, r.t, r.kind), r.value) for r in capture.records()]


def _assert_same_numbers(text: Path, jsonl: Path, exact: bool) -> None:
    text_capture, from_text = _pairs(text)
    _, from_jsonl = _pairs(jsonl)
    assert [key for key, _ in from_text] == [key for key, _ in from_jsonl]
    for (key, a), (_, b) in zip(from_text, from_jsonl):
        label, kind = key[2], key[4]
        if kind == "sparsity" or (LABELS[label].unit == "nanoseconds" and label != "Run total"):
            assert a == b, key
        else:  # printed in seconds
            assert a == (pytest.approx(b, rel=1e-12) if exact else pytest.approx(b, abs=_FORK_SECONDS)), key
    assert len(text_capture.runs) > 0


def test_command_writes_both_formats_and_they_agree(tmp_path):
    out = tmp_path / "run"
    subprocess.run([sys.executable, "-m", "profiler", "run", *TINY_RUN, "--runs", "3", "--out", str(out)],
                   cwd=ROOT, check=True, capture_output=True, timeout=120)
    assert {p.name for p in out.iterdir()} == {"capture.txt", "records.jsonl", "args.yaml", "meta.json"}
    capture = load_capture(out / "capture.txt")
    assert [run.number for run in capture.runs] == [1, 2, 3] and {run.blocks for run in capture.runs} == {2}
    assert yaml.safe_load((out / "args.yaml").read_text())["runs"] == 3
    _assert_same_numbers(out / "capture.txt", out / "records.jsonl", exact=False)


def test_ns_text_units_are_lossless(tmp_path):
    assert main(["run", *TINY_RUN, "--runs", "2", "--text-units", "ns", "--out", str(tmp_path)]) == 0
    _assert_same_numbers(tmp_path / "capture.txt", tmp_path / "records.jsonl", exact=True)


def test_options_eval_reset_warmup_timers_only(tmp_path):
    main(["run", *TINY_RUN, "--runs", "2", "--warmup", "1", "--mode", "eval", "--reset", "--no-sparsity",
          "--out", str(tmp_path)])
    capture = load_capture(tmp_path / "records.jsonl")
    assert [run.number for run in capture.runs] == [1, 2]
    assert {r.kind for r in capture.records()} == {"time"}


def test_config_file_is_strict_and_cli_wins(tmp_path, capsys):
    config = tmp_path / "sdt.yml"
    config.write_text("dim: 32\nlayer: 1\nnum_heads: 4\nnum-classes: 10\nattention_mode: SDT\nruns: 5\n")
    main(["run", "-c", str(config), "--device", "cpu", "--runs", "1", "--out", str(tmp_path / "out")])
    capture = load_capture(tmp_path / "out" / "records.jsonl")
    assert len(capture.runs) == 1 and capture.num_layers == 1
    assert "KV LIF" in {r.label for r in capture.records()}
    config.write_text("dim: 32\nlayers: 1\nlr: 0.1\n")
    with pytest.raises(SystemExit):
        main(["run", "-c", str(config), "--out", str(tmp_path / "bad")])
    assert "unknown config key 'layers'; did you mean layer" in capsys.readouterr().err
    config.write_text("dim: 32\nlayer: 1\nnum_heads: 4\nlr: 0.1\nmode: sideways\n")
    with pytest.raises(SystemExit):
        main(["run", "-c", str(config), "--ignore-unknown-keys", "--out", str(tmp_path / "bad")])
    assert "'sideways' is not one of" in capsys.readouterr().err


def test_args_yaml_reruns_the_same_capture_and_config_may_hold_out(tmp_path, capsys):
    """``-c DIR/args.yaml`` repeats a run (the CLI's own keys are not written into it); ``out`` may come from the
    config; without any ``--out`` the error says where to give it."""
    main(["run", *TINY_RUN, "--runs", "2", "--no-timers", "--out", str(tmp_path / "first")])
    assert main(["run", "-c", str(tmp_path / "first" / "args.yaml")]) == 0  # out: first -> first-1
    first, again = (load_capture(tmp_path / name / "records.jsonl") for name in ("first", "first-1"))
    sparsity = lambda capture: [(r.label, r.value) for r in capture.records() if r.kind == "sparsity"]  # noqa: E731
    assert sparsity(again) == sparsity(first) and len(sparsity(first)) > 100
    with pytest.raises(SystemExit):
        main(["run", *TINY_RUN])
    assert "--out DIR is required (or 'out' in the config)" in capsys.readouterr().err


def test_checkpoint_weights_and_the_forks_stem(tmp_path, caplog):
    """``--checkpoint`` loads trained weights (eval mode without it warns); the stem convolves T copies by default,
    as the fork did, so SPS.PSM times the same work."""
    from profiler.run import build_model
    from profiler.cli import build_parser

    _, run_parser = build_parser()
    args = run_parser.parse_args([*TINY_RUN, "--mode", "eval", "--out", str(tmp_path / "x")])
    net = build_model(args)
    assert not net.encode_once and "--mode eval without --checkpoint" in caplog.text
    for p in net.parameters():
        p.data.add_(0.5)
    torch.save({"state_dict": net.state_dict(), "epoch": 0, "version": 2}, tmp_path / "ckpt.pth.tar")
    args.checkpoint = tmp_path / "ckpt.pth.tar"
    loaded = build_model(args)
    for (name, a), b in zip(net.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name


def test_dataset_input_runs_on_validation_batches(tmp_path, capsys):
    """``--input dataset``: the engine's validation loader, cycled (digits: 360 images, no download)."""
    assert main(["run", *TINY_RUN, "--runs", "2", "-b", "4", "--input", "dataset", "--dataset", "digits",
                 "--out", str(tmp_path / "run")]) == 0
    capture = load_capture(tmp_path / "run" / "records.jsonl")
    assert len(capture.runs) == 2 and not capture.skipped
    for argv, message in ((["--input", "dataset"], "--input dataset needs --dataset"),
                          (["--input", "dataset", "--dataset", "torch/cifar10", "--data-dir", str(tmp_path / "none")],
                           "cifar-10-batches-py")):
        with pytest.raises(SystemExit):
            main(["run", *TINY_RUN, *argv, "--out", str(tmp_path / "bad")])
        assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_json_lines_streams_joined_into_one_file_keep_their_runs(tmp_path, caplog):
    for name in ("a", "b"):
        assert main(["run", *TINY_RUN, "--runs", "2", "--no-timers", "--out", str(tmp_path / name)]) == 0
    joined = tmp_path / "joined.jsonl"
    joined.write_text("".join((tmp_path / name / "records.jsonl").read_text() for name in ("a", "b")))
    capture = load_capture(joined)
    assert [run.number for run in capture.runs] == [1, 2, 3, 4] and not capture.incomplete
    assert "start again at line" in caplog.text


def test_parse_and_plot_our_capture(tmp_path):
    main(["run", *TINY_RUN, "--runs", "2", "--out", str(tmp_path / "run")])
    (tmp_path / "again").mkdir()
    shutil.copy(tmp_path / "run" / "records.jsonl", tmp_path / "again" / "records.jsonl")
    main(["parse", str(tmp_path / "run" / "capture.txt"), str(tmp_path / "run" / "records.jsonl"),
          str(tmp_path / "again" / "records.jsonl"), "--out", str(tmp_path / "tables")])
    sources = {row["source"] for row in read_csv(tmp_path / "tables" / "runs.csv")}
    assert sources == {"capture.txt", "run/records.jsonl", "again/records.jsonl"}
    main(["plot", str(tmp_path / "tables"), "--out", str(tmp_path / "plots"), "--source", "again/records.jsonl"])
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        f"again_records_{name}.png" for name in sorted(["times_breakdown", "layer_times", "attention_breakdown",
                                                        "stem_times", "layer_sparsity", "step_sparsity"])]
    with pytest.raises(SystemExit):
        main(["parse", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "tables")])
    # two sources that differ only by their extension keep it in their file names (they shared them)
    (tmp_path / "same").mkdir()
    shutil.copy(tmp_path / "run" / "capture.txt", tmp_path / "same" / "cpu.txt")
    shutil.copy(tmp_path / "run" / "records.jsonl", tmp_path / "same" / "cpu.jsonl")
    main(["parse", str(tmp_path / "same" / "cpu.txt"), str(tmp_path / "same" / "cpu.jsonl"), "--out",
          str(tmp_path / "same_tables")])
    written = main(["plot", str(tmp_path / "same_tables"), "--out", str(tmp_path / "same_plots")])
    assert written == 0 and len(list((tmp_path / "same_plots").iterdir())) == 12


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_an_earlier_capture_is_kept_and_an_interrupted_run_writes_nothing(tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    main(["run", *TINY_RUN, "--runs", "1", "--out", str(out)])
    before = _outputs(out)

    def interrupted(args, device):  # one input, then Ctrl-C
        yield torch.randn(1, 3, 32, 32)
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr("profiler.cli.make_inputs", interrupted)
        with pytest.raises(KeyboardInterrupt):
            main(["run", *TINY_RUN, "--runs", "2", "--out", str(out)])
    assert _outputs(out) == before and list((tmp_path / "run-1").iterdir()) == []
    assert f"{out} already holds a capture; writing to {out}-1" in caplog.text
    main(["run", *TINY_RUN, "--runs", "2", "--out", str(out)])  # run-1 holds no capture: used
    assert _outputs(out) == before and set(_outputs(tmp_path / "run-1")) == set(before)
    assert len(load_capture(tmp_path / "run-1" / "records.jsonl").runs) == 2


@pytest.mark.parametrize("argv, config, message", [
    (["-b", "0"], None, "argument -b/--batch-size: 0 is less than 1"),
    (["--runs", "0"], None, "argument --runs: 0 is less than 1"),
    (["--runs", "-1"], None, "argument --runs: -1 is less than 1"),
    (["--warmup", "-1"], None, "argument --warmup: -1 is less than 0"),
    ([], "batch_size: 0\n", "config key 'batch_size': 0 is less than 1"),
    ([], "dim: [32\nlayer: 1\n", "is not valid YAML: while parsing a flow sequence"),
    (["--out", "FILE"], None, "is a file: give a folder"),
    (["--no-timers", "--no-sparsity"], None, "--no-timers with --no-sparsity records nothing"),
])
def test_bad_run_options_are_one_error_before_anything_is_written(tmp_path, capsys, argv, config, message):
    (tmp_path / "FILE").write_text("keep me")
    argv = [str(tmp_path / "FILE") if arg == "FILE" else arg for arg in argv]
    if config is not None:
        (tmp_path / "c.yml").write_text(config)
        argv += ["-c", str(tmp_path / "c.yml")]
    with pytest.raises(SystemExit):
        main(["run", *TINY_RUN, "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and (tmp_path / "FILE").read_text() == "keep me"
