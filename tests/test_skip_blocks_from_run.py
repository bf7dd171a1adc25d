"""test.py / firing_num.py -c <finetune run>/args.yaml evaluate the model with the blocks that run skipped.

A finetune run chosen by --skip-lowest or --auto-skip records its blocks only in ``skipped_blocks`` (its
``skip_blocks`` is null); the evaluation scripts dropped that key and the rule keys, and evaluated the checkpoint
with every attention branch running, with only a checkpoint warning.
"""
import argparse
import importlib.util
import logging

import pytest
import timm
import torch

import finetune
import main
from _engine_helpers import REPO, TINY_FLAGS
from engine.config import dump_args, parse_args, warn_inert_flags
from engine.errors import ConfigError
from engine.evaluate import run_evaluation
from engine.run import project_option_dests

FLAGS = [*TINY_FLAGS, "--layer", "2"]
FROM_YAML = "skipping the attention of blocks [0, 1], the skipped_blocks of the run that wrote it"
TRAINED_WITH_SKIPS = "was trained with skipped_blocks=[0, 1] (this model: [])"


def _evaluation_parser(script: str) -> argparse.ArgumentParser:
    """``make_parser()`` of ``test.py`` or ``firing_num.py``, loaded from its file (``test`` is also a stdlib
    package)."""
    spec = importlib.util.spec_from_file_location(f"_{script}_script", REPO / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_parser()


def _finetune_args_yaml(tmp_path, skipped_blocks=(0, 1)):
    """The args.yaml of ``finetune.py --skip-lowest 2``: the rule keys, ``skip_blocks: null`` and the blocks the
    rule chose in ``skipped_blocks`` (set by finetune.py's model hook)."""
    args = parse_args(finetune.make_parser(), [*FLAGS, "--finetune-checkpoint", "start.pth.tar", "--skip-lowest",
                                               "2", "--log-file", "rates.json", "--output", str(tmp_path)])
    args.skipped_blocks = list(skipped_blocks)
    path = tmp_path / "args.yaml"
    dump_args(args, path)
    return path


def _parse(parser, *argv):
    args = parse_args(parser, list(argv), foreign_keys=project_option_dests())
    warn_inert_flags(args, parser)  # called once the run's log records
    return args


@pytest.mark.parametrize("script", ["test", "firing_num"])
@pytest.mark.parametrize("extra, expected", [([], [0, 1]), (["--skip-blocks", "1"], [1]), (["--skip-blocks", ""], [])])
def test_the_run_s_skipped_blocks_are_the_default_and_the_command_line_wins(tmp_path, caplog, script, extra,
                                                                           expected):
    caplog.set_level(logging.INFO)
    args = _parse(_evaluation_parser(script), "-c", str(_finetune_args_yaml(tmp_path)), *extra)
    assert args.skip_blocks == expected
    assert caplog.text.count(FROM_YAML) == (0 if extra else 1)


@pytest.mark.parametrize("line, expected", [("skip_blocks: [1]", [1]), ("skip_blocks: []", []),
                                            ("skip_blocks: ''", [])])
def test_the_config_s_own_skip_blocks_wins(tmp_path, caplog, line, expected):
    caplog.set_level(logging.INFO)
    (tmp_path / "c.yaml").write_text(f"{line}\nskipped_blocks: [0, 1]\n")
    assert _parse(_evaluation_parser("test"), "-c", str(tmp_path / "c.yaml")).skip_blocks == expected
    assert FROM_YAML not in caplog.text


def test_a_bad_skipped_blocks_names_the_key(tmp_path):
    (tmp_path / "c.yaml").write_text("skipped_blocks: [0.5]\n")
    with pytest.raises(ConfigError, match="config key 'skipped_blocks': expected a comma-separated list of ints"):
        _parse(_evaluation_parser("firing_num"), "-c", str(tmp_path / "c.yaml"))


@pytest.mark.parametrize("make_parser", [main.make_parser, finetune.make_parser])
def test_main_and_finetune_resolve_the_recorded_rule_again(tmp_path, caplog, make_parser):
    """Their args.yaml's --skip-lowest (or --auto-skip) chooses the blocks again; a skip_blocks taken from
    skipped_blocks would be a second skip rule."""
    caplog.set_level(logging.INFO)
    args = _parse(make_parser(), "-c", str(_finetune_args_yaml(tmp_path)))
    assert args.skip_blocks is None and args.skip_lowest == 2 and args.log_file == "rates.json"
    assert FROM_YAML not in caplog.text


def _skipping_checkpoint(tmp_path):
    """A tiny 2-block model saved as a checkpoint of a run that skipped the attention of both blocks."""
    import model  # noqa: F401

    torch.manual_seed(0)
    net = timm.create_model("sdt", img_size_h=32, img_size_w=32, in_channels=3, num_classes=10, embed_dims=32,
                            num_heads=4, mlp_ratios=2, depths=2, T=1, pooling_stat="1111")
    path = tmp_path / "model_best.pth.tar"
    torch.save({"state_dict": net.state_dict(), "epoch": 0, "version": 2,
                "args": argparse.Namespace(skipped_blocks=[0, 1])}, path)
    return path


def test_evaluating_the_finetune_run_skips_its_blocks(tmp_path, caplog):
    """With -c args.yaml the model skips the run's blocks (no attention rates, no mismatch warning); with
    --skip-blocks '' it runs them all, and the checkpoint warning says the model differs from the trained one."""
    caplog.set_level(logging.INFO)
    config, checkpoint = str(_finetune_args_yaml(tmp_path)), str(_skipping_checkpoint(tmp_path))
    rates = {}
    for name, extra in (("as_trained", []), ("unskipped", ["--skip-blocks", ""])):
        parser = _evaluation_parser("test")
        args = parse_args(parser, ["-c", config, "--resume", checkpoint, "--output", str(tmp_path / "valid"),
                                   "--experiment", name, *extra], foreign_keys=project_option_dests())
        rates[name] = run_evaluation(args, parser)["firing_rate"]["t0"]
        assert (FROM_YAML in caplog.text, TRAINED_WITH_SKIPS in caplog.text) == (not extra, bool(extra))
        caplog.clear()
    assert not any(key.startswith("MS_SSA_Conv") for key in rates["as_trained"])
    assert {"MS_SSA_Conv0_q_lif", "MS_SSA_Conv1_q_lif"} <= set(rates["unskipped"])
    recorded = (tmp_path / "valid" / "as_trained" / "args.yaml").read_text()
    assert "skip_blocks:\n- 0\n- 1\n" in recorded
