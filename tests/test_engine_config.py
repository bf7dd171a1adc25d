"""Argument parsing and YAML configs: precedence, strictness, booleans, flags that reach the model."""
import argparse

import pytest
import torch

from engine.args import get_args_parser
from engine.config import dump_args, load_config, parse_args
from engine.errors import ConfigError
from engine.model import build_model, resolve_model_args


def _parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(parents=[get_args_parser()])


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "cfg.yml"
    path.write_text(text)
    return str(path)


def test_reference_defaults():
    args = parse_args(_parser(), [])
    assert (args.dataset, args.model, args.pooling_stat, args.layer, args.time_steps) == \
        ("torch/cifar10", "sdt", "1111", 4, 4)
    assert (args.opt, args.lr, args.sched, args.epochs, args.batch_size, args.val_batch_size) == \
        ("sgd", 0.01, "step", 200, 32, 16)
    assert (args.chunk_size, args.attention_mode, args.TET, args.model_ema_decay) == (2, "SDT", False, 0.9998)


def test_amp_switches_as_the_reference_without_apex():
    """--native-amp is torch.amp (--amp); --apex-amp without apex left the reference in float32 (it warns)."""
    assert parse_args(_parser(), ["--native-amp"]).amp is True
    assert parse_args(_parser(), ["--apex-amp"]).amp is False


def test_a_config_s_native_amp_does_not_beat_no_amp_on_the_command_line(tmp_path):
    cfg = _yaml(tmp_path, "native_amp: true\n")
    assert parse_args(_parser(), ["-c", cfg, "--no-amp"]).amp is False
    assert parse_args(_parser(), ["-c", cfg]).amp is True


def test_precedence_cli_over_yaml_over_default(tmp_path):
    cfg = _yaml(tmp_path, "lr: 3e-4\nepochs: 7\nmodel-ema: true\n")
    args = parse_args(_parser(), ["-c", cfg, "--epochs", "9"])
    assert args.epochs == 9  # CLI wins
    assert args.lr == pytest.approx(3e-4) and isinstance(args.lr, float)  # YAML "3e-4" is a str in YAML 1.1
    assert args.model_ema is True  # hyphenated key means the underscore flag
    assert args.weight_decay == 1e-4  # default


def test_unknown_key_names_key_and_closest(tmp_path):
    cfg = _yaml(tmp_path, "mlp_ration: 4\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'mlp_ration'.*mlp_ratio"):
        load_config(cfg, _parser())


@pytest.mark.parametrize("key, closest", [("tet", "TET"), ("depths", "layer"), ("embed_dims", "dim"),
                                          ("T", "time_steps"), ("no_TET", "TET")])
def test_closest_keys_ignore_case_and_know_the_model_s_argument_names(tmp_path, key, closest):
    with pytest.raises(ConfigError, match=f"unknown config key '{key}' .*; closest known keys: {closest}(,|$)"):
        load_config(_yaml(tmp_path, f"{key}: 1\n"), _parser())


def test_every_name_of_an_option_is_a_key(tmp_path):
    cfg = load_config(_yaml(tmp_path, "dr: 0.5\nb: 7\nvb: 8\nj: 1\nd: digits\nlocal-rank: 2\n"), _parser())
    assert cfg == {"decay_rate": 0.5, "batch_size": 7, "val_batch_size": 8, "workers": 1, "dataset": "digits",
                   "local_rank": 2}
    with pytest.raises(ConfigError, match="config key 'decay-rate' .* is given twice \\(also as 'dr'"):
        load_config(_yaml(tmp_path, "dr: 0.5\ndecay-rate: 0.1\n"), _parser())


@pytest.mark.parametrize("text, match", [
    ("epochs: many\n", "expected a int"),
    ("TET: 'False'\n", "expected true or false"),
    ("spike_mode: xlif\n", "not one of"),
    ("input_size: [3, 32]\n", "expected 3 values"),
    ("mean: 0.5\n", "expected a list"),
    ("model-ema: true\nmodel_ema: false\n", "given twice"),
    ("epochs: 3\nlr: 0.1\nepochs: 5\n", r"config key 'epochs' .* is given twice \(lines 1 and 3\); keep one"),
    ("- a\n- b\n", "must hold a mapping"),
    ("epochs: 1.7\n", "'epochs': expected an int, got 1.7"),
    ("lr: null\n", "'lr': null is not a value here"),
    ("pooling_stat: 0011\n", "'pooling_stat': expected text, got the int 9; put the value in quotes"),
    ("experiment: 2024\n", "'experiment': expected text, got the int 2024"),
    ("experiment: 2024-01-05\n", "'experiment': expected text, got the date"),
    ("experiment: yes\n", "'experiment': expected text, got the bool True"),
    ("dvs_raw_dir: 2024-01-05\n", "'dvs_raw_dir': expected text, got the date"),  # text options of default None
    ("dvs_split_file: 2024\n", "'dvs_split_file': expected text, got the int 2024"),
    ("aa: off\n", "'aa': expected text, got the bool False"),
    ("gp: 5\n", "'gp': expected text"),
    ("train_split_path: 5\n", "'train_split_path': expected text"),
    ("torchcompile: 1\n", "'torchcompile': expected text"),
    ("scale: null\n", "'scale': null is not a value here"),
])
def test_bad_values_are_errors(tmp_path, text, match):
    with pytest.raises(ConfigError, match=match):
        load_config(_yaml(tmp_path, text), _parser())


def test_a_merge_key_is_yaml_not_a_repeated_key(tmp_path):
    """``<<: {...}`` merges defaults that the mapping's own keys override: no key is given twice."""
    cfg = load_config(_yaml(tmp_path, "<<: {epochs: 3, lr: 0.1}\nepochs: 5\n"), _parser())
    assert (cfg["epochs"], cfg["lr"]) == (5, 0.1)


def test_tet_is_a_real_boolean():
    assert parse_args(_parser(), ["--TET"]).TET is True
    assert parse_args(_parser(), ["--no-TET"]).TET is False
    assert parse_args(_parser(), ["--TET", "--lr", "0.1"]).TET is True


@pytest.mark.parametrize("argv, message", [
    (["--TET", "False"], "--TET False: --TET is a flag and takes no value \\(the reference's type=bool --TET read "
                         "any text, even False, as true\\); write --TET for true and --no-TET for false"),
    (["--TET", "true"], "--TET true: .* write --TET for true and --no-TET for false"),
    (["--TET=True"], "--TET True: .* write --TET for true and --no-TET for false"),
    (["--no-aug", "0"], "--no-aug 0: --no-aug is a flag and takes no value; write --no-aug for true and --aug for "
                        "false"),
])
def test_a_flag_given_a_value_is_one_error_naming_both_spellings(argv, message):
    """The reference's ``--TET False`` (type=bool) was an argparse usage text and 'unrecognized arguments: False'."""
    with pytest.raises(ConfigError, match=message):
        parse_args(_parser(), argv)


def test_the_command_line_takes_back_a_config_s_no_flags(tmp_path):
    cfg = _yaml(tmp_path, "no_aug: true\nno_prefetcher: true\nno_resume_opt: true\n")
    for argv, expected in (([], True), (["--aug", "--prefetcher", "--resume-opt"], False)):
        args = parse_args(_parser(), ["-c", cfg, *argv])
        assert (args.no_aug, args.no_prefetcher, args.no_resume_opt) == (expected, expected, expected)
    assert parse_args(_parser(), ["--no-aug"]).no_aug is True and parse_args(_parser(), []).no_aug is False


def test_an_empty_value_sets_a_none_default_back_to_none(tmp_path):
    options = {"start_epoch": 3, "clip_grad": 1.0, "opt_eps": 1e-8, "img_size": 32, "dvs_split_seed": 4,
               "dvs_raw_dir": "raw", "aa": "rand-m9-n1-mstd0.4-inc1", "torchcompile": "inductor"}
    cfg = _yaml(tmp_path, "".join(f"{dest}: {value!r}\n" for dest, value in options.items()))
    assert {dest: getattr(parse_args(_parser(), ["-c", cfg]), dest) for dest in options} == options
    argv = [token for dest in options for token in ("--" + dest.replace("_", "-"), "")]
    args = parse_args(_parser(), ["-c", cfg, *argv])
    assert all(getattr(args, dest) is None for dest in options)
    assert load_config(_yaml(tmp_path, "start_epoch: ''\n"), _parser()) == {"start_epoch": None}
    with pytest.raises(SystemExit):
        parse_args(_parser(), ["--start-epoch", "x"])


@pytest.mark.parametrize("argv", [["-data-dir", "/x"], ["--data-dir", "/x"], ["-c", "{cfg}"]])
def test_data_dir_spellings(tmp_path, argv):
    cfg = _yaml(tmp_path, "data_dir: /x\n")
    assert parse_args(_parser(), [a.format(cfg=cfg) for a in argv]).data_dir == "/x"


@pytest.mark.parametrize("argv", [["--local-rank=1"], ["--local_rank", "1"]])
def test_local_rank_spellings(argv):
    assert parse_args(_parser(), argv).local_rank == 1


def test_model_flags_reach_the_model():
    args = parse_args(_parser(), [
        "--dim", "64", "--layer", "2", "--num-heads", "4", "--mlp-ratio", "2", "--pooling-stat", "0111",
        "--time-steps", "4", "--spike-mode", "plif", "--in-channels", "2", "--dvs-mode", "--img-size", "32",
        "--num-classes", "7", "--attention_mode", "STAtten", "--chunk-size", "4", "--TET"])
    resolve_model_args(args)
    with torch.device("meta"):
        model = build_model(args)
    assert (model.embed_dim, len(model.block), model.T, model.dvs, model.TET) == (64, 2, 4, True, True)
    assert (model.attention_mode, model.chunk_size, model.num_classes) == ("STAtten", 4, 7)
    assert model.patch_embed.proj_conv.in_channels == 2
    assert model.block[0].mlp.fc1_conv.out_channels == 128
    assert model.head_lif.parametric and model.neuron_backend == "fused"


def test_dvs_mode_default_follows_dataset():
    for dataset, expected in (("cifar10-dvs", True), ("ncaltech101", True), ("gesture", False), ("digits", False)):
        args = parse_args(_parser(), ["--dataset", dataset])
        resolve_model_args(args)
        assert args.dvs_mode is expected


def test_bad_model_dimensions_are_config_errors():
    args = parse_args(_parser(), ["--attention_mode", "STAtten", "--time-steps", "4", "--chunk-size", "3",
                                  "--img-size", "32", "--dim", "32", "--layer", "1"])
    resolve_model_args(args)
    with pytest.raises(ConfigError, match="chunk_size"):
        build_model(args)


def test_args_yaml_round_trip(tmp_path):
    args = parse_args(_parser(), ["--dim", "64", "--mean", "0.1", "0.2", "0.3"])
    dump_args(args, str(tmp_path / "args.yaml"))
    again = parse_args(_parser(), ["-c", str(tmp_path / "args.yaml")])
    assert vars(again) == {**vars(args), "config": str(tmp_path / "args.yaml")}


def test_whole_float_is_an_int_and_null_keeps_a_none_default(tmp_path):
    cfg = load_config(_yaml(tmp_path, "epochs: 3.0\naa: null\n"), _parser())
    assert cfg == {"epochs": 3, "aa": None} and isinstance(cfg["epochs"], int)


def test_args_yaml_records_the_device_asked_for(tmp_path):
    """A resolved device (cpu here, cuda:0 on a GPU) would pin a reused args.yaml to one machine and one rank."""
    from engine.distributed import init_distributed

    args = parse_args(_parser(), [])
    init_distributed(args)
    assert args.device == "cpu" or args.device.startswith("cuda")
    dump_args(args, str(tmp_path / "args.yaml"))
    assert parse_args(_parser(), ["-c", str(tmp_path / "args.yaml")]).device == ""


def test_multistep_milestones_and_which_schedules_add_cooldown():
    from engine.optim import build_scheduler

    def schedule(*flags):
        args = parse_args(_parser(), ["--lr", "1", "--warmup-epochs", "0", "--epochs", "10", *flags])
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1)
        scheduler, num_epochs = build_scheduler(args, optimizer, 1)
        lrs = []
        for epoch in range(num_epochs):
            scheduler.step(epoch)
            lrs.append(round(optimizer.param_groups[0]["lr"], 6))
        return num_epochs, lrs

    num_epochs, lrs = schedule("--sched", "multistep", "--decay-milestones", "5", "8")
    assert num_epochs == 10 and lrs == [1.0] * 4 + [0.1] * 3 + [0.01] * 3  # timm: the milestone epoch is 1-based
    assert schedule("--sched", "cosine", "--cooldown-epochs", "3")[0] == 13
    assert schedule("--sched", "step", "--cooldown-epochs", "3")[0] == 10


@pytest.mark.parametrize("key, closest", [("img_size_h", "img_size, input_size"),
                                          ("drop_path_rate", "drop_path"), ("TET_LANB", "TET_lamb, TET_means")])
def test_closest_keys_are_listed_once_and_matched_in_lower_case(tmp_path, key, closest):
    """A synonym that is also the closest spelling (``img_size_h``: ``img_size``) is named once; a misspelt key in
    capitals (``TET_LANB``) is matched by spelling in lower case, not only by the substring fallback (``TET``)."""
    with pytest.raises(ConfigError, match=f"unknown config key '{key}' .*; closest known keys: {closest}$"):
        load_config(_yaml(tmp_path, f"{key}: 1\n"), _parser())


def test_an_int_option_of_default_none_refuses_a_fraction_in_a_config(tmp_path):
    """``start_epoch`` parses with ``int`` behind the empty-means-none wrapper: 2.5 is refused, as for ``epochs``,
    not cut to 2."""
    with pytest.raises(ConfigError, match="'start_epoch': expected an int, got 2.5"):
        load_config(_yaml(tmp_path, "start_epoch: 2.5\n"), _parser())


def test_an_empty_text_in_a_config_sets_a_none_default_to_none_as_on_the_command_line(tmp_path):
    """``dvs_raw_dir: ''`` gives None, as ``--dvs-raw-dir ''`` does, not the empty path."""
    assert load_config(_yaml(tmp_path, "dvs_raw_dir: ''\naa: ''\n"), _parser()) == {"dvs_raw_dir": None, "aa": None}


def test_an_empty_value_resets_list_and_choice_options_too(tmp_path, capsys):
    """A run's args.yaml from a GPU run with --torchcompile-mode reduce-overhead could not be resumed on the CPU:
    ``--torchcompile ''`` left the mode, which then needs --torchcompile, and ``--torchcompile-mode ''`` was an
    invalid choice; likewise a config's --mean/--reference could not be taken back. ``''`` is None for these, alone
    (``--mean 0.5 ''`` is an error, not the list ``[0.5, None]``)."""
    options = {"torchcompile": "inductor", "torchcompile_mode": "reduce-overhead", "reference": "statten",
               "mean": [0.5, 0.4, 0.3], "lr_noise": [0.4, 0.9], "cutmix_minmax": [0.2, 0.8]}
    cfg = _yaml(tmp_path, "".join(f"{dest}: {value!r}\n" for dest, value in options.items()))
    assert {dest: getattr(parse_args(_parser(), ["-c", cfg]), dest) for dest in options} == options
    argv = [token for dest in options for token in ("--" + dest.replace("_", "-"), "")]
    args = parse_args(_parser(), ["-c", cfg, *argv])
    assert all(getattr(args, dest) is None for dest in options)
    with pytest.raises(SystemExit):
        parse_args(_parser(), ["--mean", "0.5", ""])
    assert "--mean: '' (none) must be the only value, got '0.5 '" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(_parser(), ["--reference", "foo"])
    assert "invalid choice: 'foo' (choose from 'sdt', 'statten')" in capsys.readouterr().err


def test_errors_of_an_int_option_of_default_none_name_its_type(tmp_path, capsys):
    """The empty-means-none wrapper keeps the type's name in the messages: ``--start-epoch x`` is argparse's
    "invalid int value", a list in a config "expected a int"."""
    with pytest.raises(SystemExit):
        parse_args(_parser(), ["--start-epoch", "x"])
    assert "invalid int value: 'x'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"'start_epoch': expected a int, got \[1\]"):
        load_config(_yaml(tmp_path, "start_epoch: [1]\n"), _parser())
