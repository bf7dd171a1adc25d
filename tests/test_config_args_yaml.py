"""A run's ``args.yaml`` (written by ``dump_args``) parses back with ``-c`` to the same arguments; --epochs checks."""
import pytest

import finetune
import main
from engine.config import dump_args, parse_args, warn_inert_flags
from engine.errors import ConfigError
from engine.validate import check_run_args

# Every list-typed flag of finetune.py (main.py also has --exit-sweep), set away from its default.
LIST_FLAGS = ["--skip-blocks", "0,3", "--mean", "0.1", "0.2", "0.3", "--std", "1", "2", "3", "--input-size", "3", "32",
              "32", "--opt-betas", "0.8", "0.99", "--scale", "0.5", "1.0", "--ratio", "0.9", "1.1", "--lr-noise", "0.4",
              "0.9", "--cutmix-minmax", "0.2", "0.8", "--decay-milestones", "10", "20"]


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
