"""``python -m profiler run/parse/plot`` on a tiny model, on the CPU."""
import argparse
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


@pytest.mark.parametrize("mode, reset", [("eval", True), ("train", False)])
def test_mode_warmup_and_reset_reach_the_forward_passes(tmp_path, mode, reset):
    """--warmup adds unrecorded passes, --mode eval runs eval() without autograd (BatchNorm statistics untouched),
    and without --reset the stateful neurons carry their membrane from run to run (auto_reset off)."""
    from profiler.cli import build_parser
    from profiler.run import build_model, make_inputs, run_profile

    _, run_parser = build_parser()
    args = run_parser.parse_args([*TINY_RUN, "--runs", "2", "--warmup", "1", "--mode", mode,
                                  *(["--reset"] if reset else []), "--out", str(tmp_path)])
    net = build_model(args)
    calls = []
    net.register_forward_hook(lambda m, i, out: calls.append((m.training, torch.is_grad_enabled())))
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running_mean" in k}
    run_profile(args, net, make_inputs(args, torch.device("cpu"), net))
    assert calls == [(mode == "train", mode == "train")] * 3  # one warm-up + two recorded runs
    moved = any(not torch.equal(v, stats[k]) for k, v in net.state_dict().items() if "running_mean" in k)
    assert moved == (mode == "train")
    assert net.auto_reset == reset and (net.neuron_backend == "fused") == reset


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
    assert f"unknown config key 'layers' in {config}; closest known keys: layer" in capsys.readouterr().err
    config.write_text("dim: 32\nlayer: 1\nnum_heads: 4\nnotes: x\nmode: sideways\n")
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


def _fixture_flags(config: dict) -> list[str]:
    """The ``run`` model flags of a reference fixture's ``create_model`` arguments (tests/fixtures/README.md)."""
    flags = {"--img-size": "img_size_h", "--in-channels": "in_channels", "--num-classes": "num_classes",
             "--dim": "embed_dims", "--num-heads": "num_heads", "--mlp-ratio": "mlp_ratios", "--layer": "depths",
             "--time-steps": "T", "--pooling-stat": "pooling_stat", "--spike-mode": "spike_mode",
             "--attention-mode": "attention_mode", "--chunk-size": "chunk_size"}
    return [*(item for flag, key in flags.items() for item in (flag, str(config[key]))),
            "--dvs-mode" if config["dvs_mode"] else "--no-dvs-mode"]


@pytest.mark.parametrize("name", ["statten_B_sdtmode_plif_static", "statten_C_sdtmode_dvs"])
def test_reference_statten_profiles_a_statten_checkpoint_in_sdt_mode(tmp_path, name):
    """``--reference statten`` builds the STAtten repo's SDT mode, whose output the fixture holds (as
    test_model_reference.py checks it); without the flag the plif checkpoint did not load (its stem and attention
    neurons are LIF) and the DVS one loaded into SDT's model (q not max-pooled), 0.5 off."""
    from reference_fixtures import FIXTURE_DIR, load_fixture
    from profiler.cli import build_parser
    from profiler.run import build_model

    path = FIXTURE_DIR / f"{name}.pt"
    fixture = load_fixture(path)
    _, run_parser = build_parser()
    args = run_parser.parse_args([*_fixture_flags(fixture["config"]), "--reference", "statten", "--checkpoint",
                                  str(path), "--mode", "eval", "--device", "cpu", "--out", str(tmp_path)])
    net = build_model(args).eval()
    with torch.no_grad():
        out = net(fixture["input"].float())
    assert out.shape == fixture["eval_output"].shape
    assert (out - fixture["eval_output"]).abs().max() < 1e-5


def _training_args_yaml(tmp_path: Path) -> Path:
    """The args.yaml of a tiny ``finetune.py --skip-lowest 1`` run: every training key, the model's sizes resolved,
    ``skip_blocks: null`` and the block the rule chose in ``skipped_blocks`` (as the run records them)."""
    import finetune
    from _engine_helpers import TINY_FLAGS
    from engine.config import dump_args, parse_args
    from engine.model import resolve_model_args

    args = parse_args(finetune.make_parser(), [*TINY_FLAGS, "--layer", "2", "--TET", "--finetune-checkpoint",
                                               "start.pth.tar", "--skip-lowest", "1", "--log-file", "rates.json"])
    resolve_model_args(args)
    args.skipped_blocks, args.rank, args.world_size, args.distributed = [1], 0, 1, False
    path = tmp_path / "args.yaml"
    dump_args(args, path)
    return path


def test_a_training_run_s_args_yaml_profiles_its_model(tmp_path, caplog, capsys):
    """``-c RUN/args.yaml`` failed on "unknown config key 'TET'": the keys of the project's other scripts are dropped
    (and listed), the run's model keys and its skipped blocks used; a key no script has is still an error, or
    dropped with its own log line under --ignore-unknown-keys."""
    caplog.set_level(logging.INFO)
    config = _training_args_yaml(tmp_path)
    assert main(["run", "-c", str(config), "-b", "2", "--runs", "1", "--no-timers", "--out", str(tmp_path / "a")]) == 0
    written = yaml.safe_load((tmp_path / "a" / "args.yaml").read_text())
    assert (written["dim"], written["layer"], written["num_heads"], written["skip_blocks"]) == (32, 2, 4, [1])
    assert "TET, TET_lamb, TET_means" in caplog.text and "belong to another script of the project" in caplog.text
    assert "skipping the attention of blocks [1], the skipped_blocks of the run that wrote it" in caplog.text
    blocks = {(r.block, r.label) for r in load_capture(tmp_path / "a" / "records.jsonl").records()}
    assert (0, "q") in blocks and (1, "q") not in blocks and (1, "MLP x") in blocks
    with config.open("a") as f:
        f.write("mlp_ration: 4\n")
    with pytest.raises(SystemExit):
        main(["run", "-c", str(config), "--out", str(tmp_path / "bad")])
    assert f"unknown config key 'mlp_ration' in {config}; closest known keys: mlp_ratio" in capsys.readouterr().err
    caplog.clear()
    main(["run", "-c", str(config), "--ignore-unknown-keys", "-b", "2", "--runs", "1", "--no-timers", "--out",
          str(tmp_path / "b")])
    assert "mlp_ration, no option of any script of the project, ignored (--ignore-unknown-keys)" in caplog.text
    dropped = next(r.getMessage() for r in caplog.records if "belong to another script" in r.getMessage())
    assert "TET, " in dropped and "mlp_ration" not in dropped


def test_a_config_with_the_short_names_of_training_options_profiles(tmp_path, caplog):
    """train.py takes any name of an option as a key (``j``, ``vb``); the profiler drops them as other scripts' keys
    instead of calling them unknown."""
    caplog.set_level(logging.INFO)
    config = tmp_path / "short.yml"
    config.write_text("j: 0\nvb: 16\ndim: 32\nlayer: 1\nnum_heads: 2\nnum_classes: 10\n")
    assert main(["run", "-c", str(config), "--runs", "1", "--no-timers", "--out", str(tmp_path / "a")]) == 0
    assert "j, vb belong to another script of the project" in caplog.text


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
                                                        "stem_times", "layer_sparsity", "step_sparsity"])
    ] + ["inputs.json"]
    with pytest.raises(SystemExit):
        main(["parse", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "tables")])
    # two sources that differ only by their extension keep it in their file names (they shared them)
    (tmp_path / "same").mkdir()
    shutil.copy(tmp_path / "run" / "capture.txt", tmp_path / "same" / "cpu.txt")
    shutil.copy(tmp_path / "run" / "records.jsonl", tmp_path / "same" / "cpu.jsonl")
    main(["parse", str(tmp_path / "same" / "cpu.txt"), str(tmp_path / "same" / "cpu.jsonl"), "--out",
          str(tmp_path / "same_tables")])
    written = main(["plot", str(tmp_path / "same_tables"), "--out", str(tmp_path / "same_plots")])
    assert written == 0 and len(list((tmp_path / "same_plots").glob("*.png"))) == 12


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_an_earlier_capture_is_kept_and_an_interrupted_run_writes_nothing(tmp_path, monkeypatch, caplog):
    out = tmp_path / "run"
    main(["run", *TINY_RUN, "--runs", "1", "--out", str(out)])
    before = _outputs(out)

    def interrupted(args, device, net):  # one input, then Ctrl-C
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
    ([], "batch_size: 0\n", "config key 'batch_size': expected a whole number of at least 1, got 0"),
    ([], "dim: [32\nlayer: 1\n", "is not valid YAML: while parsing a flow sequence"),
    ([], "pooling_stat: 0011\n", "'pooling_stat': expected text, got the int 9; put the value in quotes"),
    (["--out", "FILE"], None, "is a file: give a folder"),
    (["--no-timers", "--no-sparsity"], None, "--no-timers with --no-sparsity records nothing"),
    ([], "mean: 0.5\n", "config key 'mean': expected a list, got 0.5"),
    ([], "model: [sdt]\n", "config key 'model': expected a single value, got ['sdt']"),
    (["--input", "dataset", "--dataset", "digits", "--interpolation", "cubic"], None,
     "--interpolation 'cubic': choose one of"),
    (["--input", "dataset", "--dataset", "digits", "--std", "0.5", "0", "1"], None, "every value must be positive"),
    (["--model", "sdt_8_786"], None, "--model 'sdt_8_786' is unknown; choose one of sdt, sdt_8_384, sdt_8_512, "),
    (["--skip-blocks", "0,2"], None, "--skip-blocks: skip_blocks=[2] out of range: the model has blocks 0..1"),
    (["--model", "resnet18"], None, "--model 'resnet18' is not a spiking transformer of this project; choose one of "
                                    "sdt, "),
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


DIGITS = ROOT / "conf" / "digits" / "sdt_digits.yml"
_TRANSFORM_KEYS = ("mean", "std", "crop_pct", "interpolation")


def _test_py_first_batch(config: Path, batch_size: int) -> torch.Tensor:
    """The first validation batch of ``python test.py -c CONFIG`` (its parser, model and loader) on the CPU."""
    from engine.args import get_args_parser
    from engine.config import parse_args
    from engine.evaluate import add_eval_arguments
    from engine.run import setup_evaluation

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    parser = add_eval_arguments(argparse.ArgumentParser(parents=[get_args_parser()]))
    args = parse_args(parser, ["-c", str(config), "--device", "cpu", "--workers", "0", "-vb", str(batch_size)])
    try:
        images, _ = next(iter(setup_evaluation(args).loaders.eval))
    finally:  # the engine's console handlers stay out of the other tests
        root.handlers[:], root.level = handlers, level
    return images


def _profiler_inputs(argv: list[str]):
    """``python -m profiler run ARGV``'s input stream, with its arguments (as profiler.cli builds them)."""
    from profiler.cli import build_parser
    from profiler.config import load_config
    from profiler.run import build_model, make_inputs

    parser, run_parser = build_parser()
    args = parser.parse_args(["run", *argv])
    if args.config is not None:
        run_parser.set_defaults(**load_config(args.config, run_parser, args.ignore_unknown_keys))
        args = parser.parse_args(["run", *argv])
    return make_inputs(args, torch.device("cpu"), build_model(args)), args


@pytest.mark.parametrize("transform_keys", [True, False], ids=["config-mean-std-crop", "model-pretrained-cfg"])
def test_dataset_batches_are_the_ones_test_py_sees(tmp_path, transform_keys):
    """--input dataset: the same normalisation, crop and interpolation as test.py: the config's (digits: 0.31/0.35,
    crop 1.0), or, without those keys, the model's pretrained config (0.5/0.5, crop 0.9), not ImageNet's."""
    config = DIGITS
    if not transform_keys:
        kept = {k: v for k, v in yaml.safe_load(DIGITS.read_text()).items() if k not in _TRANSFORM_KEYS}
        config = tmp_path / "digits_model_cfg.yml"
        config.write_text(yaml.safe_dump(kept))
    inputs, args = _profiler_inputs(["-c", str(config), "--ignore-unknown-keys", "--input", "dataset", "--device",
                                     "cpu", "-b", "128", "--out", str(tmp_path / "unused")])
    assert (args.mean, args.crop_pct) == (([0.31] * 3, 1.0) if transform_keys else (None, None))
    assert torch.equal(next(inputs), _test_py_first_batch(config, 128))


def test_dataset_cycle_skips_the_short_last_batch(tmp_path, caplog, capsys):
    """360 digits in batches of 100: every run gets 100 images (the short batch of 60 would restart the carried
    membrane from zero), the cycle starts again after 3 batches, and a batch larger than the split is an error."""
    caplog.set_level(logging.INFO)
    inputs, _ = _profiler_inputs([*TINY_RUN, "--input", "dataset", "--dataset", "digits", "-b", "100"])
    batches = [next(inputs) for _ in range(4)]
    assert {tuple(b.shape) for b in batches} == {(100, 3, 32, 32)} and torch.equal(batches[3], batches[0])
    assert caplog.text.count("360 validation images in batches of 100; the last 60 are skipped") == 1
    with pytest.raises(SystemExit):
        main(["run", *TINY_RUN, "--input", "dataset", "--dataset", "digits", "-b", "361", "--out",
              str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert "'digits' has 360 validation images, fewer than one batch (--batch-size 361)" in err
    assert "Traceback" not in err and not (tmp_path / "bad").exists()


def test_a_train_py_args_yaml_picks_the_device_and_says_where_the_batch_size_comes_from(tmp_path, caplog):
    """train.py's args.yaml holds ``device: ''`` (pick automatically) and its training batch size: the device is
    resolved (and recorded), the batch size used and logged with its origin; -b overrides it."""
    caplog.set_level(logging.INFO)
    config = tmp_path / "args.yaml"
    config.write_text("device: ''\nbatch_size: 3\ndim: 32\nlayer: 1\nnum_heads: 4\nnum_classes: 10\nepochs: 1\n")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert main(["run", "-c", str(config), "--ignore-unknown-keys", "--runs", "1", "--out", str(tmp_path / "a")]) == 0
    written = yaml.safe_load((tmp_path / "a" / "args.yaml").read_text())
    assert (written["device"], written["batch_size"]) == (expected, 3)
    assert f"batch size 3, from 'batch_size' in {config}" in caplog.text
    caplog.clear()
    main(["run", "-c", str(config), "--ignore-unknown-keys", "-b", "2", "--device", "cpu", "--runs", "1",
          "--no-timers", "--out", str(tmp_path / "b")])
    assert "batch size 2, from -b/--batch-size" in caplog.text
    caplog.clear()
    main(["run", *TINY_RUN, "--runs", "1", "--no-timers", "--out", str(tmp_path / "c")])
    assert "batch size 1, the default (the fork's)" in caplog.text


def test_a_named_variant_builds_its_own_sizes(tmp_path, caplog):
    """--model sdt_test built the profiler's default 8-768 (66M parameters); flags still win over the variant."""
    caplog.set_level(logging.INFO)
    main(["run", "--model", "sdt_test", "--num-classes", "7", "--runs", "1", "--device", "cpu",
          "--out", str(tmp_path / "variant")])
    args = yaml.safe_load((tmp_path / "variant" / "args.yaml").read_text())
    assert (args["dim"], args["layer"], args["time_steps"], args["num_heads"], args["num_classes"]) == (32, 1, 2, 4, 7)
    assert "--model sdt_test: " in caplog.text
    main(["run", "--model", "sdt_test", "--dim", "768", "--runs", "1", "--device", "cpu",
          "--out", str(tmp_path / "given")])
    assert yaml.safe_load((tmp_path / "given" / "args.yaml").read_text())["dim"] == 768  # the default, but given
