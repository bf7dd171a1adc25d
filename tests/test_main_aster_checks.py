"""main.py: EMA weights after training, checks before any output, the study's thresholds, args.yaml reuse."""
import csv
import json

import pytest
from _aster_helpers import ASTER_FLAGS, T, error_lines, reference_log, run_main, trained_run
from _engine_helpers import read_summary, snapshot

import finetune
import main
from engine.config import parse_args

pytestmark = pytest.mark.slow

RATES = {f"t{t}": {"MS_SSA_Conv0_x_after_qkv": 0.2, "MS_SSA_Conv1_x_after_qkv": 0.004} for t in range(T)}


def test_early_exit_after_training_evaluates_the_ema_weights(tmp_path):
    """model_best is ranked by the EMA's accuracy, so its EMA weights are the ones evaluated."""
    status, run_dir = run_main(tmp_path, "--model-ema", "--early-exit", experiment="ema")
    assert status == 0
    best = max(float(row["eval_top1"]) for row in read_summary(run_dir / "summary.csv"))
    assert json.loads((run_dir / "aster_eval.json").read_text())["validation"]["top1"] == pytest.approx(best)
    assert "model_best.pth.tar (state_dict_ema)" in (run_dir / "train.log").read_text()

    best_file = str(run_dir / "model_best.pth.tar")
    for flags, weights in (([], "state_dict"), (["--use-ema"], "state_dict_ema")):
        status, eval_dir = run_main(tmp_path, "--validate-only", "--initial-checkpoint", best_file, "--early-exit",
                                    *flags, experiment=f"validate-{weights}")
        assert status == 0 and f"Loaded initial weights ({weights})" in (eval_dir / "aster.log").read_text()
    ema_eval = json.loads((tmp_path / "validate-state_dict_ema" / "aster_eval.json").read_text())
    assert ema_eval["validation"]["top1"] == pytest.approx(best)  # the same number as training reported


@pytest.mark.parametrize("flags, message", [
    (["--skip-lowest", "1", "--log-file", "{tmp}/deep.json"], "come from a model with at least 3 blocks, not 2"),
    (["--study", "--initial-checkpoint", "{tmp}/any.pth.tar", "--log-file", "{tmp}/deep.json"], "at least 3 blocks"),
    (["--study", "--initial-checkpoint", "{tmp}/any.pth.tar", "--log-file", "{tmp}/sdt.log", "--study-max-skip", "5"],
     "--study-max-skip 5 must be between 0 and the number of blocks (2)"),
    (["--skip-lowest", "1", "--log-file", "{tmp}/na.log"], "is 'n/a', not a finite number"),
    (["--early-exit", "--exit-threshold", "nan"], "--exit-threshold nan is not a threshold"),
    (["--exit-sweep", "nan,0.5,inf"], "--exit-sweep holds nan"),
    (["--epochs", "0"], "--epochs 0: training needs at least 1 epoch"),
    (["--use-ema"], "--use-ema works with --validate-only/--study"),
    (["--skip-lowest", "1", "--log-file", "{tmp}/statten.log"], "the rate of attention mode STAtten, but the model "
                                                                 "runs attention mode SDT"),
    (["--skip-lowest", "1", "--log-file", "{tmp}/negative.log"], "is -0.5, not a finite number of at least 0"),
    (["--skip-lowest", "1", "--skip-blocks", "0", "--log-file", "{tmp}/sdt.log"],
     "give one skip rule (a rule in the -c config counts too: take it back with --skip-lowest '' or --skip-blocks '')"),
    (["--study", "--initial-checkpoint", "{tmp}/any.pth.tar", "--log-file", "{tmp}/sdt.log", "--early-exit",
      "--exit-threshold", "0.7"], "--study sweeps the thresholds of --exit-sweep and writes no per-sample exits"),
])
def test_bad_input_is_one_error_line_before_any_output(tmp_path, capfd, flags, message):
    deep = {t: {**rates, "MS_SSA_Conv2_x_after_qkv": 0.1} for t, rates in RATES.items()}
    (tmp_path / "deep.json").write_text(json.dumps({"format": "firing-rates/1", "T": T, "firing_rate": deep}))
    (tmp_path / "sdt.log").write_text(reference_log(RATES))
    (tmp_path / "na.log").write_text(reference_log(RATES).replace("0.004", '"n/a"'))
    (tmp_path / "statten.log").write_text(reference_log(RATES).replace("_x_after_qkv", "_after_qkv"))
    (tmp_path / "negative.log").write_text(reference_log(RATES).replace("0.004", "-0.5"))
    before = snapshot(tmp_path)
    status, _ = run_main(tmp_path, *[f.format(tmp=tmp_path) for f in flags])
    err = capfd.readouterr().err
    lines = error_lines(err)
    assert status == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0], lines[0]
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "deep.json", "na.log", "negative.log", "sdt.log", "statten.log"]


def test_skip_flags_are_checked_against_a_named_variants_blocks(tmp_path, capfd):
    """``--model sdt_test`` has 1 block: --skip-blocks 3 passed the check against the default 4 blocks, and the
    model then raised a traceback (skip.json would have listed 4 blocks)."""
    from _engine_helpers import VARIANT_FLAGS

    from engine.run import cli_main

    for script in (main, finetune):
        argv = [*VARIANT_FLAGS, "--output", str(tmp_path), "--skip-blocks", "3",
                *(["--validate-only", "--initial-checkpoint"] if script is main else ["--finetune-checkpoint"]),
                str(tmp_path / "any.pth.tar")]
        assert cli_main(script.make_parser, script.run, argv) == 2
        err = capfd.readouterr().err
        lines = error_lines(err)
        assert len(lines) == 1 and "Traceback" not in err and "--skip-blocks" in lines[0], err
        assert "1 block" in lines[0] or "0..0" in lines[0], lines[0]
    assert list(tmp_path.iterdir()) == []


def test_study_lists_no_exit_once(tmp_path):
    log = tmp_path / "sdt.log"
    log.write_text(reference_log(RATES))
    status, run_dir = run_main(tmp_path, "--study", "--initial-checkpoint", str(trained_run() / "model_best.pth.tar"),
                               "--log-file", str(log), "--exit-sweep", "0.9,inf", "--study-max-skip", "1")
    assert status == 0
    with open(run_dir / "aster_heatmap.csv") as f:
        rows = [(r["skipped_layers"], r["threshold"]) for r in csv.DictReader(f)]
    assert rows == [("0", "0.9"), ("0", "inf"), ("1", "0.9"), ("1", "inf")]


def test_a_runs_args_yaml_parses_back():
    """README: a run's args.yaml can be passed back with -c (it holds exit_sweep: [0.5, 0.9] as a YAML list)."""
    args = parse_args(main.make_parser(), ["-c", str(trained_run() / "args.yaml")])
    direct = parse_args(main.make_parser(), [*ASTER_FLAGS, "--early-exit", "--exit-sweep", "0.5,0.9"])
    assert args.exit_sweep == [0.5, 0.9] and args.early_exit
    assert (args.layer, args.time_steps, args.mean) == (direct.layer, direct.time_steps, direct.mean)


@pytest.mark.parametrize("resume", [False, True])
def test_validate_only_with_a_runs_args_yaml_writes_under_output_aster(tmp_path, monkeypatch, capfd, resume):
    """``-c <run>/args.yaml``: the config's ``output`` is the training root; the evaluation goes to output/aster
    (it made a second folder next to the training run, like another training run).  With ``--resume`` into the
    run it wrote into the training run itself, replacing its skip.json, exit_steps.json and aster_eval.json; the
    --resume checkpoint is not the one evaluated, which is warned about."""
    from engine.run import cli_main

    run = trained_run()
    before = snapshot(run.parent)
    monkeypatch.chdir(tmp_path)
    argv = ["-c", str(run / "args.yaml"), "--validate-only", "--initial-checkpoint", str(run / "model_best.pth.tar"),
            *(["--resume", str(run / "last.pth.tar"), "--experiment", ""] if resume else [])]
    assert cli_main(main.make_parser, main.run, argv) == 0
    assert snapshot(run.parent) == before
    assert len(list((tmp_path / "output" / "aster").glob("*/skip.json"))) == 1
    assert (f"--resume {run / 'last.pth.tar'} is not read" in capfd.readouterr().err) == resume


def test_a_resumed_run_sets_the_evaluation_of_the_run_before_it_aside(tmp_path, capfd):
    """Resumed into its folder, a main.py run kept aster_eval.json and exit_steps.json of the model_best before it
    (stale when it evaluated nothing, or replaced while that model_best was set aside); they now go with the
    abandoned checkpoints.  Another skip list in that folder (epochs of two models in one summary.csv) is refused."""
    from engine.run import cli_main

    def resume(checkpoint: str, *extra: str) -> int:
        argv = [*ASTER_FLAGS, "--output", str(tmp_path), "--skip-blocks", "0", "--resume", str(run / checkpoint),
                *extra]
        return cli_main(main.make_parser, main.run, argv)

    status, run = run_main(tmp_path, "--skip-blocks", "0", "--epochs", "2", "--checkpoint-hist", "3",
                           "--early-exit", experiment="run")
    assert status == 0
    evaluation = {name: (run / name).read_bytes() for name in ("aster_eval.json", "exit_steps.json")}
    before = snapshot(tmp_path)
    assert resume("checkpoint-0.pth.tar", "--epochs", "2", "--skip-blocks", "1") == 2
    lines = error_lines(capfd.readouterr().err)
    assert len(lines) == 1 and "continues a run trained with skipped_blocks=[0] (this run: [1])" in lines[0], lines
    assert snapshot(tmp_path) == before
    assert resume("last.pth.tar", "--epochs", "3") == 0
    aside = run / "superseded-from-epoch-2"
    assert {name: (aside / name).read_bytes() for name in evaluation} == evaluation
    assert not any((run / name).exists() for name in evaluation)
    assert len(read_summary(run / "summary.csv")) == 3
