"""A run's ``args.yaml`` (written by ``dump_args``) parses back with ``-c`` to the same arguments; --epochs checks."""
import json

import pytest

import finetune
import main
from engine.config import dump_args, parse_args, warn_inert_flags
from engine.errors import ConfigError
from engine.validate import check_run_args

# Every list-typed flag of finetune.py (main.py also has --exit-sweep), set away from its default.
LIST_FLAGS = ["--skip-blocks", "0,3", "--mean", "0.1", "0.2", "0.3", "--std", "1", "2", "3", "--input-size", "3", "32",
              "32", "--opt-betas", "0.8", "0.99", "--scale", "0.5", "1.0", "--ratio", "0.9", "1.1", "--lr-noise", "0.4",
              "0.9", "--cutmix-minmax", "0.2", "0.8", "--decay-milestones", "10", "20", "--firing-thresholds", "0.5"]


@pytest.mark.parametrize("make_parser, extra", [(main.make_parser, ["--exit-sweep", "0.5,0.9,inf"]),
                                                (finetune.make_parser, [])])
def test_args_yaml_round_trip(tmp_path, make_parser, extra):
    parser = make_parser()
    args = parse_args(parser, [*LIST_FLAGS, *extra])
    listed = [a.dest for a in parser._actions if a.nargs in ("+", "*") or (isinstance(a.nargs, int) and a.nargs > 0)
              or hasattr(a.type, "element_type")]
    assert "skip_blocks" in listed and all(getattr(args, dest) != parser.get_default(dest) for dest in listed)
    dump_args(args, tmp_path / "args.yaml")
    again = parse_args(make_parser(), ["-c", str(tmp_path / "args.yaml")])
    assert {k: v for k, v in vars(again).items() if k != "config"} == {k: v for k, v in vars(args).items()
                                                                       if k != "config"}


@pytest.mark.parametrize("line, message", [
    ("exit_sweep: [0.5, a]", "expected a comma-separated list of floats or a list of floats"),
    ("skip_blocks: [0.5]", "expected a comma-separated list of ints or a list of ints"),
    ("skip_blocks: [true]", "list of ints"),
])
def test_list_flags_reject_wrong_element_types(tmp_path, line, message):
    (tmp_path / "c.yml").write_text(line + "\n")
    with pytest.raises(ConfigError, match=message):
        parse_args(main.make_parser(), ["-c", str(tmp_path / "c.yml")])


def test_a_config_that_is_not_utf8_text_is_one_error(tmp_path):
    """``-c RUN/last.pth.tar`` (meant for --resume) or a YAML with a Latin-1 comment was a UnicodeDecodeError."""
    (tmp_path / "last.pth.tar").write_bytes(b"PK\x03\x04\x80\xff\xfe")
    with pytest.raises(ConfigError, match="last.pth.tar' is not UTF-8 text .a checkpoint passed to -c instead of"):
        parse_args(main.make_parser(), ["-c", str(tmp_path / "last.pth.tar")])


def test_yaml_lists_and_strings_both_work(tmp_path):
    (tmp_path / "c.yml").write_text("exit_sweep: [0.5, .inf, 1]\nskip_blocks: '0,1'\n")
    args = parse_args(main.make_parser(), ["-c", str(tmp_path / "c.yml")])
    assert args.exit_sweep == [0.5, float("inf"), 1.0] and args.skip_blocks == [0, 1]


@pytest.mark.parametrize("epochs", [0, -1])
def test_fewer_than_one_epoch_is_a_config_error(epochs):
    args = parse_args(main.make_parser(), ["--sched", "cosine", "--epochs", str(epochs)])
    with pytest.raises(ConfigError, match=f"--epochs {epochs}: training needs at least 1 epoch"):
        check_run_args(args, train=True)


def test_one_scripts_args_yaml_runs_another(tmp_path, caplog):
    """firing_num.py -c <a finetune.py run>/args.yaml failed on 'unknown config key auto_skip': the keys of the
    project's other scripts are dropped (and listed), their shared keys kept; a key no script has is still an error."""
    import logging

    import firing_num
    from engine.run import project_option_dests

    caplog.set_level(logging.INFO)
    tuned = parse_args(finetune.make_parser(), ["--finetune-checkpoint", "x.pth.tar", "--skip-blocks", "0", "--dim",
                                                "64"])
    dump_args(tuned, tmp_path / "args.yaml")
    for make_parser in (firing_num.make_parser, main.make_parser):
        parser = make_parser()
        args = parse_args(parser, ["-c", str(tmp_path / "args.yaml")], foreign_keys=project_option_dests())
        assert args.dim == 64 and args.skip_blocks == [0]
        warn_inert_flags(args, parser)  # called once the run's log records (it reaches train.log / sdt.log)
    assert "finetune_checkpoint, freeze_bn_stats belong to another script of the project" in caplog.text
    (tmp_path / "bad.yaml").write_text("finetune_checkpoint: x\nmlp_ration: 4\n")
    with pytest.raises(ConfigError, match="unknown config key 'mlp_ration'"):
        parse_args(firing_num.make_parser(), ["-c", str(tmp_path / "bad.yaml")], foreign_keys=project_option_dests())


def test_a_run_s_args_yaml_does_not_restart_it_at_the_recorded_epoch(tmp_path, caplog):
    """train.py -c RUN/args.yaml --resume RUN/last.pth.tar went on at the start_epoch recorded (and into a new
    folder); the recorded resume would resume from an old checkpoint. A hand-written config still sets both."""
    import logging

    import firing_num
    from engine.run import project_option_dests

    caplog.set_level(logging.INFO)
    run = parse_args(main.make_parser(), ["--resume", "old/last.pth.tar", "--start-epoch", "2",
                                          "--initial-checkpoint", "start.pth.tar"])
    dump_args(run, tmp_path / "args.yaml")
    parser = main.make_parser()
    args = parse_args(parser, ["-c", str(tmp_path / "args.yaml"), "--resume", "run/last.pth.tar"])
    warn_inert_flags(args, parser)
    assert (args.start_epoch, args.resume, args.initial_checkpoint) == (None, "run/last.pth.tar", "start.pth.tar")
    assert "not applying start_epoch 2 (keys that only meant the start of that run" in caplog.text
    args = parse_args(main.make_parser(), ["-c", str(tmp_path / "args.yaml"), "--start-epoch", "1"])
    assert (args.start_epoch, args.resume) == (1, "")
    (tmp_path / "hand.yml").write_text("start_epoch: 3\nresume: old/last.pth.tar\n")
    args = parse_args(main.make_parser(), ["-c", str(tmp_path / "hand.yml")])
    assert (args.start_epoch, args.resume) == (3, "old/last.pth.tar")
    evaluation = parse_args(firing_num.make_parser(), ["--resume", "best.pth.tar"])  # the checkpoint it evaluated
    dump_args(evaluation, tmp_path / "eval.yaml")
    again = ["-c", str(tmp_path / "eval.yaml")]
    assert parse_args(firing_num.make_parser(), again).resume == "best.pth.tar"
    assert parse_args(main.make_parser(), again, foreign_keys=project_option_dests()).resume == ""


@pytest.mark.parametrize("make_parser", [main.make_parser, finetune.make_parser, "firing_num"])
def test_no_use_ema_takes_back_a_finetune_run_s_use_ema(tmp_path, make_parser):
    """finetune.py's use_ema (start from the EMA weights) reads as "evaluate the EMA weights" in test.py and
    main.py, which failed on a checkpoint without them and had no --no-use-ema."""
    from engine.run import project_option_dests

    if make_parser == "firing_num":
        import firing_num

        make_parser = firing_num.make_parser
    tuned = parse_args(finetune.make_parser(), ["--finetune-checkpoint", "x.pth.tar", "--use-ema"])
    dump_args(tuned, tmp_path / "args.yaml")
    config = ["-c", str(tmp_path / "args.yaml")]
    assert parse_args(make_parser(), config, foreign_keys=project_option_dests()).use_ema is True
    assert parse_args(make_parser(), [*config, "--no-use-ema"], foreign_keys=project_option_dests()).use_ema is False


def test_an_empty_skip_lowest_takes_back_the_config_s_rule(tmp_path):
    """main.py -c sk.yml --skip-blocks 0, sk.yml holding skip_lowest: 2, was "two skip rules" with no way out."""
    from engine.aster import resolve_skip

    (tmp_path / "sk.yml").write_text("skip_lowest: 2\nlayer: 2\n")
    args = parse_args(main.make_parser(), ["-c", str(tmp_path / "sk.yml"), "--skip-lowest", "", "--skip-blocks", "0"])
    assert args.skip_lowest is None and resolve_skip(args).blocks == [0]


def test_an_empty_skip_blocks_takes_back_the_config_s_rule(tmp_path):
    """main.py -c sk.yml --skip-blocks '' --skip-lowest 1, sk.yml holding skip_blocks: [1] (a finetuned run's
    args.yaml), was "two skip rules"; '' alone is no rule: skip.json records rule none, nothing skipped."""
    from engine.aster import resolve_skip, skip_record

    (tmp_path / "sk.yml").write_text("skip_blocks: [1]\nlayer: 2\n")
    rates = {f"t{t}": {f"MS_SSA_Conv{b}_x_after_qkv": rate for b, rate in enumerate(pair)}
             for t, pair in enumerate(((0.3, 0.1), (0.5, 0.1)))}
    (tmp_path / "firing.json").write_text(json.dumps({"format": "firing-rates/1", "T": 2, "firing_rate": rates}))
    config = ["-c", str(tmp_path / "sk.yml"), "--skip-blocks", "", "--time-steps", "2"]
    args = parse_args(main.make_parser(), config)
    assert args.skip_blocks == [] and resolve_skip(args) is None
    assert skip_record(args, None)["rule"] == "none" and skip_record(args, None)["skipped_blocks"] == []
    args = parse_args(main.make_parser(), [*config, "--skip-lowest", "1", "--log-file", str(tmp_path / "firing.json")])
    assert resolve_skip(args).blocks == [1] and skip_record(args, resolve_skip(args))["rule"] == "lowest"


@pytest.mark.parametrize("make_parser", [main.make_parser, finetune.make_parser])
def test_aster_s_firing_thresholds_is_accepted_and_has_no_effect(make_parser, caplog):
    parser = make_parser()
    args = parse_args(parser, ["--firing-thresholds", "0.5", "0.9"])
    warn_inert_flags(args, parser)
    assert args.firing_thresholds == [0.5, 0.9] and "--firing-thresholds has no effect" in caplog.text


def test_a_run_s_args_yaml_with_default_one_shot_keys_logs_nothing_about_them(tmp_path, caplog):
    """A run started without --resume / --start-epoch records ``resume: ''`` and ``start_epoch: null``, the
    defaults: there is nothing left out to log."""
    import logging

    caplog.set_level(logging.INFO)
    dump_args(parse_args(main.make_parser(), []), tmp_path / "args.yaml")
    parser = main.make_parser()
    args = parse_args(parser, ["-c", str(tmp_path / "args.yaml")])
    warn_inert_flags(args, parser)
    assert parser.one_shot_config_keys[1] == {} and "not applying" not in caplog.text


def test_an_evaluation_s_args_yaml_gives_back_only_its_checkpoint(tmp_path):
    """An evaluation script's args.yaml gives its ``resume`` (the checkpoint evaluated) to an evaluation script,
    and like any run's args.yaml not its other one-shot key, ``start_epoch``."""
    import firing_num

    dump_args(parse_args(firing_num.make_parser(), ["--resume", "best.pth.tar", "--start-epoch", "3"]),
              tmp_path / "eval.yaml")
    args = parse_args(firing_num.make_parser(), ["-c", str(tmp_path / "eval.yaml")])
    assert (args.resume, args.start_epoch) == ("best.pth.tar", None)


def test_a_run_record_is_known_by_its_keys_in_either_spelling(tmp_path):
    """Keys are normalised once (``world-size`` is ``world_size``): a run record written with ``-`` spellings does
    not apply its recorded start_epoch either."""
    (tmp_path / "args.yaml").write_text("world-size: 1\nstart-epoch: 2\n")
    assert parse_args(main.make_parser(), ["-c", str(tmp_path / "args.yaml")]).start_epoch is None
