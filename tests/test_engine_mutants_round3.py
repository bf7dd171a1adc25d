"""Engine numbers pinned by hand (mutation audit, round 3): the loaders' boundaries and flags, the evaluation checks
and trace count, the training loop's per-sample loss mean, resumed updates and recovery saves, the run folder's
name, and the early-exit records."""
import argparse
import contextlib
import os
import re
import types

import pytest
import torch
from _engine_helpers import TINY_FLAGS, tiny_args

from engine.distributed import init_distributed
from engine.errors import ConfigError
from engine.optim import Amp


def _args(*argv: str) -> argparse.Namespace:
    from engine.args import get_args_parser
    from engine.config import parse_args

    return parse_args(argparse.ArgumentParser(parents=[get_args_parser()]), list(argv))


def _digits_args(*extra: str) -> argparse.Namespace:
    from engine.model import resolve_model_args

    args = _args("--dataset", "digits", "--num-classes", "10", "--img-size", "32", "--device", "cpu", "-j", "0",
                 "-b", "16", "-vb", "32", "--mean", "0.3", "--std", "0.3", "--crop-pct", "1", *extra)
    args.distributed = False
    resolve_model_args(args)
    return args


# ------------------------------------------------------------------------------------------------------ loaders
def test_an_evaluation_set_of_one_sample_per_process_is_accepted():
    """The digits validation split has 360 samples: 360 processes get one each (rank 359 gets sample 359), only
    361 would leave a process without a sample."""
    from engine.loaders import _eval_dataset

    args = _args("--dataset", "digits")
    args.distributed, args.rank, args.world_size = True, 359, 360
    shard = _eval_dataset(args)
    assert len(shard) == 1 and list(shard.indices) == [359]
    args.world_size = 361
    with pytest.raises(ConfigError, match="has 360 samples for 361 processes"):
        _eval_dataset(args)


def test_mixup_arguments_map_each_flag_to_its_timm_keyword():
    """As timm's train.py: --mixup-prob is Mixup's ``prob``, --mixup-switch-prob its ``switch_prob`` (distinct
    values, so a swap shows); --cutmix-minmax alone turns mixing on."""
    from engine.loaders import mixup_args

    args = _args("--mixup", "0.8", "--mixup-prob", "0.7", "--mixup-switch-prob", "0.2", "--num-classes", "10")
    mix = mixup_args(args)
    assert (mix["mixup_alpha"], mix["prob"], mix["switch_prob"], mix["num_classes"]) == (0.8, 0.7, 0.2, 10)
    assert mixup_args(_args("--cutmix-minmax", "0.2", "0.8"))["cutmix_minmax"] == [0.2, 0.8]
    assert mixup_args(_args()) is None


def test_pin_memory_is_the_flag_when_given_else_whether_the_device_is_cuda():
    """--no-pin-mem on a CUDA device is kept (False); without the flag, pinned memory only for CUDA."""
    from engine.loaders import pin_memory

    def flags(pin_mem, device):
        return argparse.Namespace(pin_mem=pin_mem, device=device)

    assert [pin_memory(flags(False, "cuda:0")), pin_memory(flags(None, "cuda:0")), pin_memory(flags(None, "cpu")),
            pin_memory(flags(True, "cpu"))] == [False, True, False, True]


def test_event_mixup_drops_the_short_training_batch_but_no_evaluation_sample(monkeypatch):
    """Event frames with mixup: 5 samples in batches of 2.  Training drops the short last batch (2 batches), the
    evaluation loader keeps it: 3 batches, all 5 samples evaluated."""
    import engine.loaders

    data = torch.utils.data.TensorDataset(torch.zeros(5, 2, 2, 4, 4), torch.arange(5) % 2)
    monkeypatch.setattr(engine.loaders, "build_dataset", lambda *a: data)
    args = _args("--dataset", "cifar10-dvs", "--num-classes", "2", "--mixup", "0.5", "-b", "2", "-vb", "2",
                 "-j", "0", "--device", "cpu")
    args.distributed = False
    loaders = engine.loaders.build_loaders(args)
    assert loaders.mixup_fn is not None
    assert (len(loaders.train), len(loaders.eval)) == (2, 3)
    assert sum(len(y) for _, y in loaders.eval) == 5


def test_without_the_prefetcher_mixup_is_done_in_the_training_loop():
    """timm's train.py mixes in the collate function (FastCollateMixup) only with the prefetcher, which gives it
    uint8 images; with --no-prefetcher the loop's ``Mixup`` does it."""
    from timm.data import FastCollateMixup, Mixup

    from engine.loaders import build_loaders

    loaders = build_loaders(_digits_args("--no-prefetcher", "--mixup", "0.5"))
    assert isinstance(loaders.mixup_fn, Mixup) and loaders.mixup_active
    assert not isinstance(loaders.train.collate_fn, FastCollateMixup)


def test_no_aug_training_images_use_the_data_config_interpolation():
    """timm's train.py: with --no-aug the --train-interpolation is ignored and the training resize uses the data
    config's interpolation (bicubic here), not 'nearest'."""
    from engine.loaders import build_loaders

    loaders = build_loaders(_digits_args("--no-aug", "--train-interpolation", "nearest"))
    assert loaders.data_config["interpolation"] == "bicubic"
    resize = loaders.train.dataset.transform.transforms[0]
    assert str(resize.interpolation.value) == "bicubic"


def test_the_loader_epoch_reaches_both_the_sampler_and_the_dataset():
    """The event datasets seed their augmentation from (seed, epoch, index): the dataset is told the epoch as well
    as the distributed sampler."""
    from engine.loaders import set_loader_epoch

    class Part:
        epoch = None

        def set_epoch(self, epoch):
            self.epoch = epoch

    loader = types.SimpleNamespace(sampler=Part(), dataset=Part())
    set_loader_epoch(loader, 3)
    assert (loader.sampler.epoch, loader.dataset.epoch) == (3, 3)


# ------------------------------------------------------------------------------------------------------ evaluate
def _eval_flags(**values) -> argparse.Namespace:
    base = dict(e_mac=4.6, e_ac=0.9, encoding_steps=1, dataset="digits", time_steps=4, export_traces="",
                trace_samples=16)
    return argparse.Namespace(**{**base, **values})


def test_zero_energy_constants_and_one_trace_sample_are_accepted(tmp_path):
    """The energy per operation must be non-negative (0 pJ is allowed, e.g. to leave the MACs out), and one trace
    sample is the least an export takes."""
    from engine.evaluate import check_eval_args

    check_eval_args(_eval_flags(e_mac=0.0, e_ac=0.0))
    check_eval_args(_eval_flags(export_traces=str(tmp_path / "new"), trace_samples=1))
    with pytest.raises(ConfigError, match="--e-ac -0.1"):
        check_eval_args(_eval_flags(e_ac=-0.1))
    with pytest.raises(ConfigError, match="--trace-samples 0"):
        check_eval_args(_eval_flags(export_traces=str(tmp_path / "new"), trace_samples=0))


def test_resume_wins_over_the_initial_checkpoint():
    """With both flags the warning says --resume wins: its file is the one loaded and recorded in firing.json."""
    from engine.evaluate import _checkpoint_path

    assert _checkpoint_path(argparse.Namespace(resume="a.pth.tar", initial_checkpoint="b.pth.tar")) == "a.pth.tar"
    assert _checkpoint_path(argparse.Namespace(resume="", initial_checkpoint="b.pth.tar")) == "b.pth.tar"


def test_an_output_root_is_kept_when_the_parser_does_not_say_where_it_came_from():
    """Only a parser that records the command line's flags (``command_line_dests``, set by engine.config's
    parse_args) can show that --output came from a config; without that record the --output given is used."""
    from engine.evaluate import DEFAULT_VALID_ROOT, evaluation_output_root

    args = argparse.Namespace(output="my_root")
    parser = argparse.ArgumentParser()
    assert evaluation_output_root(args, parser) == "my_root"
    parser.command_line_dests = {"model"}  # --output came from the -c config
    assert evaluation_output_root(args, parser) == DEFAULT_VALID_ROOT
    parser.command_line_dests = {"output"}
    assert evaluation_output_root(args, parser) == "my_root"


def test_the_evaluation_records_the_blocks_the_model_skips():
    """--skip-blocks 2,0,2 is recorded in the evaluation's args.yaml as ``skipped_blocks`` [0, 2], the blocks the
    model skips (its setter sorts and de-duplicates, as SDT's)."""
    from engine.evaluate import _configure_model

    class Skipping:
        _blocks: list = []

        @property
        def skip_blocks(self):
            return self._blocks

        @skip_blocks.setter
        def skip_blocks(self, value):
            self._blocks = sorted(set(value))

    args = argparse.Namespace(skip_blocks=[2, 0, 2], large_valid=False, img_size=32)
    _configure_model(args, Skipping())
    assert args.skipped_blocks == [0, 2]


def test_trace_samples_come_one_at_a_time_with_their_own_labels():
    """A batch of 3 is split into [1, ...] inputs, in order, each with its own label (trace sample i is
    validation sample i)."""
    from engine.evaluate import _single_samples

    inputs = torch.arange(3.0).view(3, 1, 1)
    samples = list(_single_samples([(inputs, torch.tensor([7, 4, 9]))], "cpu"))
    assert [(x.shape, x.item(), y) for x, y in samples] == [((1, 1, 1), 0.0, 7), ((1, 1, 1), 1.0, 4),
                                                           ((1, 1, 1), 2.0, 9)]



def test_firing_json_counts_the_trace_samples_written_not_those_asked_for(tmp_path, monkeypatch):
    """export_traces writes *up to* --trace-samples samples: a validation set of 360 and --trace-samples 500 give
    360 traces, and firing.json (returned and on disk) says 360 (the export is replaced by its count here)."""
    import json

    import engine.evaluate
    from engine.args import get_args_parser
    from engine.config import parse_args

    monkeypatch.setattr(engine.evaluate, "export_model_traces",
                        lambda model, loader, args, trace_dir, num_samples: types.SimpleNamespace(
                            samples=list(range(min(num_samples, 360)))))
    parser = engine.evaluate.add_eval_arguments(argparse.ArgumentParser(parents=[get_args_parser()]))
    args = parse_args(parser, [*TINY_FLAGS, "-vb", "360", "--output", str(tmp_path / "valid"), "--experiment", "run",
                               "--export-traces", str(tmp_path / "traces"), "--trace-samples", "500"])
    content = engine.evaluate.run_evaluation(args, parser)
    expected = {"dir": str(tmp_path / "traces"), "samples": 360}
    assert content["traces"] == expected
    assert json.loads((tmp_path / "valid" / "run" / "firing.json").read_text())["traces"] == expected

# ------------------------------------------------------------------------------------------------------ loop
class _Net(torch.nn.Module):
    """A model with neurons to reset: ``dirty`` is set by a forward and cleared by ``reset_neurons``."""

    num_classes = 2

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(2))
        self.dirty, self.resets = False, 0

    def forward(self, x):
        self.dirty = True
        return x.flatten(1)[:, :1] * self.weight

    def reset_neurons(self):
        self.dirty, self.resets = False, self.resets + 1


def _target_mean_loss(output, target):
    """The batch's loss is the mean of its targets (the gradient is zero, so nothing else changes)."""
    return output.sum() * 0 + target.float().mean()


def _batches(*targets):
    return [(torch.zeros(len(t), 1), torch.tensor(t)) for t in targets]


def _train_epoch(tmp_path, batches, *flags, **kwargs):
    from engine.loop import train_one_epoch

    args = tiny_args(tmp_path, *flags)
    init_distributed(args)
    model = _Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    kwargs.setdefault("epoch", 0)
    metrics = train_one_epoch(kwargs.pop("epoch"), model, batches, optimizer, _target_mean_loss, args,
                              amp=Amp(contextlib.nullcontext), **kwargs)
    return metrics, model, args


def test_the_device_mean_weights_each_value_by_its_batch_size():
    """Batch-size weighted: 2.0 over 3 samples and 4.0 over 1 give (6 + 4) / 4 = 2.5."""
    from engine.loop import _DeviceMean

    mean = _DeviceMean()
    assert mean.avg == 0.0
    mean.update(torch.tensor(2.0), 3)
    mean.update(torch.tensor(4.0), 1)
    assert mean.avg == 2.5 and mean.last.item() == 4.0


def test_the_epoch_loss_is_the_mean_over_samples_and_the_neurons_end_reset(tmp_path):
    """Batch losses 1 (2 samples) and 4 (1 sample): the epoch's loss is (2 * 1 + 4) / 3 = 2, not the mean of the
    batch losses 2.5.  The model leaves the epoch with its neurons reset (the reference's reset_net after every
    step)."""
    metrics, model, _ = _train_epoch(tmp_path, _batches([1, 1], [4]))
    assert metrics["loss"] == pytest.approx(2.0, rel=1e-6)
    assert not model.dirty


def test_a_resumed_epoch_steps_the_schedule_from_its_first_untrained_batch(tmp_path):
    """Epoch 1 of 4 batches resumed after 2 of them: the schedule is first set to update 1 * 4 + 2 = 6 (before the
    first trained batch), then advanced to 7 and 8 after the two trained batches."""
    updates = []
    scheduler = types.SimpleNamespace(step_update=lambda num_updates: updates.append(num_updates))
    _train_epoch(tmp_path, _batches([0], [0], [0], [0]), epoch=1, start_batch=2, lr_scheduler=scheduler)
    assert updates == [6, 7, 8]


def test_a_resumed_epoch_loss_adds_this_process_share_of_the_earlier_sums(tmp_path):
    """One process of two (equal shares, so the mean over the processes is this one's): the recovery checkpoint's
    (sum, count) = (10, 4) covers both processes, this process's half is (5, 2); its two trained batches of 2
    samples add losses 3 and 3 (sum 12): the epoch's loss is (5 + 12) / (2 + 4) = 17/6, which is also the whole
    epoch's (10 + 2 * 12) / (4 + 2 * 4); adding the whole (10, 4) would give 22/8."""
    from engine.loop import train_one_epoch

    args = tiny_args(tmp_path)
    init_distributed(args)
    args.world_size = 2
    model = _Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics = train_one_epoch(0, model, _batches([0, 0], [3, 3], [3, 3]), optimizer, _target_mean_loss, args,
                              amp=Amp(contextlib.nullcontext), start_batch=1, start_loss=(10.0, 4.0))
    assert metrics["loss"] == pytest.approx(17 / 6, rel=1e-6)  # a float32 tensor at the end


def test_recovery_checkpoints_hold_the_loss_so_far_and_skip_the_last_batch(tmp_path):
    """--recovery-interval 2 over 4 batches: one recovery save after batch 1 (the end-of-epoch checkpoint covers
    batch 3), holding [sum, count] of the losses so far (1 * 2 + 2 * 2 = 6 over 4 samples); the saver's
    epoch_loss is cleared after it, or the epoch's own checkpoint would look like a recovery file."""
    saves = []

    class Saver:
        epoch_loss = None

        def save_recovery(self, epoch, batch_idx=0):
            saves.append((epoch, batch_idx, self.epoch_loss))

    saver = Saver()
    _train_epoch(tmp_path, _batches([1, 1], [2, 2], [3, 3], [4, 4]), "--recovery-interval", "2", saver=saver)
    assert saves == [(0, 1, [6.0, 4.0])]
    assert saver.epoch_loss is None


def test_validation_of_no_batch_is_zero_not_nan(tmp_path):
    """An empty loader (no sample in this process's share) gives loss and accuracies 0, not 0 / 0."""
    from engine.loop import validate

    args = tiny_args(tmp_path)
    init_distributed(args)
    metrics = validate(_Net(), [], torch.nn.CrossEntropyLoss(), args, amp=Amp(contextlib.nullcontext))
    assert dict(metrics) == {"loss": 0.0, "top1": 0.0, "top5": 0.0}


def test_validation_ends_with_the_neurons_reset(tmp_path):
    """As the reference's reset_net after every validation batch, the model leaves validation with no state."""
    from engine.loop import validate

    args = tiny_args(tmp_path)
    init_distributed(args)
    model = _Net()
    validate(model, _batches([0, 1]), torch.nn.CrossEntropyLoss(), args, amp=Amp(contextlib.nullcontext))
    assert model.resets == 1 and not model.dirty


# ------------------------------------------------------------------------------------------------------ outputs
def test_the_default_run_folder_names_the_dataset_by_its_last_path_part():
    """As the reference: ``<YYYYmmdd-HHMMSS>-sdt-data-<dataset suffix>-t-<T>-spike-<mode>``; torch/cifar10 is
    named cifar10."""
    from engine.outputs import _default_experiment

    args = argparse.Namespace(dataset="torch/cifar10", model="sdt", time_steps=4, spike_mode="lif")
    assert re.fullmatch(r"\d{8}-\d{6}-sdt-data-cifar10-t-4-spike-lif", _default_experiment(args))


def test_a_resumed_run_replaces_the_tensorboard_scalars_of_the_epochs_it_trains_again(tmp_path):
    """Epochs 0..2 logged, then resumed at epoch 1: TensorBoard shows train/loss 0 at epoch 0 and the new 10 at
    epoch 1; the abandoned run's epochs 1 and 2 are purged (as its summary.csv rows are)."""
    from collections import OrderedDict

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from engine.outputs import RunOutputs

    args, run = tiny_args(tmp_path), str(tmp_path / "run")
    evaluation = OrderedDict(loss=1.0, top1=50.0, top5=90.0)
    outputs = RunOutputs(args, run)
    for epoch in range(3):
        outputs.log_epoch(epoch, OrderedDict(loss=float(epoch)), evaluation, lr=0.1)
    outputs.close()
    outputs = RunOutputs(args, run, resume_epoch=1)
    outputs.log_epoch(1, OrderedDict(loss=10.0), evaluation, lr=0.1)
    outputs.close()
    events = EventAccumulator(os.path.join(run, "tensorboard"))
    events.Reload()
    assert [(s.step, s.value) for s in events.Scalars("train/loss")] == [(0, 0.0), (1, 10.0)]


# ------------------------------------------------------------------------------------------------------ firing
def test_firing_csv_counts_steps_from_zero_as_the_json_keys(tmp_path):
    """firing.csv row (key, t) holds the firing.json value of "t<t>": T=2, one key with rates 0.25 and 0.75."""
    import csv

    from engine.firing import FiringRateMeter

    meter = FiringRateMeter()
    meter.update({"head_lif": torch.tensor([[[1.0, 0.0, 0.0, 0.0]], [[1.0, 1.0, 1.0, 0.0]]])})  # [T=2, B=1, 4]
    meter.write(tmp_path)
    with open(tmp_path / "firing.csv") as f:
        rows = [(r["key"], r["t"], float(r["firing_rate"]), float(r["non_zero"])) for r in csv.DictReader(f)]
    assert rows == [("head_lif", "0", 0.25, 0.25), ("head_lif", "1", 0.75, 0.75)]


def test_non_zero_counts_negative_values_too():
    """non_zero is the fraction of elements that are not 0: [-1, 0, 2, 0] has 2 of 4 (mean 0.25)."""
    from engine.firing import FiringRateMeter

    meter = FiringRateMeter()
    meter.update({"x": torch.tensor([[[-1.0, 0.0, 2.0, 0.0]]])})
    assert (meter.non_zero(), meter.firing_rate()) == ({"t0": {"x": 0.5}}, {"t0": {"x": 0.25}})


def test_a_boolean_rate_in_a_firing_json_is_refused(tmp_path):
    """JSON ``true`` is a Python bool (an int subclass), not a rate."""
    import json

    from engine.firing import load_firing_rates

    path = tmp_path / "firing.json"
    path.write_text(json.dumps({"format": "firing-rates/1", "firing_rate": {"t0": {"head_lif": True}}}))
    with pytest.raises(ValueError, match="the rate of 'head_lif' at 't0' is True, not a finite number"):
        load_firing_rates(path)


def test_a_rate_file_not_named_json_is_read_as_a_reference_log(tmp_path):
    """Any file but a .json is a reference-format log (SDT's sdt.log, or a copy named rates.txt)."""
    from _aster_helpers import reference_log

    from engine.firing import load_firing_rates

    rates = {"t0": {"MS_SSA_Conv0_x_after_qkv": 0.125}}
    path = tmp_path / "rates.txt"
    path.write_text(reference_log(rates))
    assert load_firing_rates(path) == rates


def test_summing_the_rates_of_one_process_changes_nothing(monkeypatch):
    """all_reduce over a single process (the collective an identity): the sample count (3) and the element counts
    (6 and 3) stay, so the rates stay 1/6 and 2/3."""
    from engine.firing import FiringRateMeter

    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor: None)
    meter = FiringRateMeter()
    meter.update({"a": torch.tensor([[[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]]),  # [T=1, B=3, 2]
                  "b": torch.tensor([[1.0, 0.0, 1.0]])})  # [T=1, B=3]
    before = meter.as_dict()
    meter.all_reduce()
    assert meter.samples == 3 and meter.as_dict() == before
    assert meter.firing_rate() == {"t0": {"a": pytest.approx(1 / 6), "b": pytest.approx(2 / 3)}}


# ------------------------------------------------------------------------------------------------------ early exit
def test_entropy_score_of_a_certain_prediction_is_one():
    """Logits [0, -200]: softmax gives exactly [1, 0] in float32; with 0 * log 0 taken as 0 the entropy is 0 and
    the score 1 - 0 / ln 2 = 1 (not NaN), so the sample exits at step 1."""
    from engine.early_exit import exit_decisions, exit_scores

    scores, cumulative = exit_scores(torch.tensor([[[0.0, -200.0]], [[0.0, 0.0]]]), "entropy")
    assert scores[0].item() == 1.0
    assert exit_decisions(scores, cumulative, 0.9)[0].tolist() == [1]


def test_a_class_of_exactly_100_samples_lists_its_exit_steps_and_20_scores_are_kept():
    """The reference lists a class's exit steps when it has <= 100 samples, and keeps the first 20 score values
    per step."""
    from engine.early_exit import EarlyExitMeter

    meter = EarlyExitMeter(T=2, threshold=2.0)  # nobody exits early
    meter.update(torch.randn(2, 100, 3, generator=torch.Generator().manual_seed(0)), torch.zeros(100, dtype=torch.long))
    stats = meter.class_stats()
    assert stats["per_class"]["0"]["exit_timesteps"] == [2] * 100
    assert [len(stats["confidence"][f"timestep_{t}"]["values"]) for t in (1, 2)] == [20, 20]


def test_confidence_summary_by_hand():
    """T=1, three samples with logits [ln 3, 0], [0, 0], [ln 4, 0]: scores 3/4, 1/2, 4/5; avg 0.68333, min 1/2
    (the second sample's, not the first one's), max 4/5."""
    import math

    from engine.early_exit import EarlyExitMeter

    meter = EarlyExitMeter(T=1)
    meter.update(torch.tensor([[[math.log(3), 0.0], [0.0, 0.0], [math.log(4), 0.0]]]), torch.tensor([0, 0, 0]))
    step = meter.confidence_summary()["timestep_1"]
    assert (step["avg"], step["min"], step["max"]) == (pytest.approx((0.75 + 0.5 + 0.8) / 3), pytest.approx(0.5),
                                                       pytest.approx(0.8))


def test_per_class_statistics_are_in_increasing_class_order():
    """Classes seen as 10, 9, 2 are listed 2, 9, 10 (numeric order, not the order seen nor the text order)."""
    from engine.early_exit import EarlyExitMeter

    meter = EarlyExitMeter(T=1)
    meter.update(torch.zeros(1, 3, 11), torch.tensor([10, 9, 2]))
    assert list(meter.per_class()) == ["2", "9", "10"]


def test_gathered_records_follow_the_sample_ids_and_keep_the_first_scores(monkeypatch):
    """Two processes: this one holds samples 0 and 2, the other 1 and 3.  After gathering, the records are in
    sample order 0..3 and, with confidence_samples 3, the scores of samples 0, 1, 2 are kept.  An explicit id list
    given to exit_record names the samples."""
    from engine.early_exit import EarlyExitMeter

    def fill(labels):
        meter = EarlyExitMeter(T=1, confidence_samples=3)
        meter.update(torch.tensor([[[3.0, 0.0], [0.0, 3.0]]]), torch.tensor(labels))
        return meter

    other = fill([1, 0])
    theirs = ([1, 3], other.exit_steps, other.predictions, other.labels, [[0.1], [0.3]])
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    monkeypatch.setattr(torch.distributed, "all_gather_object",
                        lambda shares, mine: shares.__setitem__(slice(None), [mine, theirs]))
    meter = fill([0, 1])
    meter._confidence = [[0.0], [0.2]]  # scores named by sample index, to see which are kept
    meter.gather([0, 2])
    assert meter.sample_ids == [0, 1, 2, 3] and meter.labels == [0, 1, 1, 0] and meter.predictions == [0, 0, 1, 1]
    assert meter._confidence == [[0.0], [0.1], [0.2]]
    assert meter.exit_record()["sample_ids"] == [0, 1, 2, 3]
    assert meter.exit_record([10, 11, 12, 13])["sample_ids"] == [10, 11, 12, 13]
