"""Engine numbers pinned by hand (mutation audit, round 4): ASTER's skip rules and artefacts, the trace format's
encodings and checks, the energy recipe's corner cases, checkpoint resume bookkeeping, the YAML config's
conversions and the run-flag ranges."""
from __future__ import annotations

import argparse
import re

import pytest
import torch

from engine.skip import select_skip_blocks

torch.set_num_threads(1)

KEY = "MS_SSA_Conv{}_x_after_qkv"


# ------------------------------------------------------------------------------------------------------ skip rules
def test_a_block_rate_is_the_mean_over_the_steps_that_hold_it():
    """docs: the mean over the time steps *present*.  Block 0 is rated at t0 only (0.2): its rate is 0.2, not
    0.2 / 2 steps; block 1 at both (0.1, 0.3): 0.2."""
    rates = {"t0": {KEY.format(0): 0.2, KEY.format(1): 0.1}, "t1": {KEY.format(1): 0.3}}
    assert select_skip_blocks(2, rates, lowest=0).rates == pytest.approx([0.2, 0.2])


def test_an_explicit_list_with_a_repeated_block_skips_it_once():
    """--skip-blocks 2,0,2 names blocks 0 and 2: the list is sorted and each block appears once."""
    decision = select_skip_blocks(3, explicit=[2, 0, 2])
    assert decision.blocks == [0, 2]
    assert decision.reasons == ["block 0: skipped (explicit list)", "block 1: kept", "block 2: skipped (explicit list)"]


# ------------------------------------------------------------------------------------------------------ ASTER
def _bare_model(depths=2, T=2):
    import types

    return types.SimpleNamespace(depths=depths, T=T, attention_mode="SDT", chunk_size=1, skip_blocks=[7], TET=False)


def test_evaluation_runs_with_tet_and_restores_the_flag(monkeypatch):
    """evaluate_aster sets the model's TET flag (per-step logits) for its pass and puts the old value back; the
    summary counts the samples seen (3), not the time steps."""
    import engine.aster as aster

    bare, seen = _bare_model(), []

    def validate(model, loader, loss_fn, args, amp, log_suffix, observers):
        seen.append(model.TET)
        for observe in observers:
            observe(torch.tensor([[[2.0, 0.0]] * 3, [[2.0, 0.0]] * 3]), torch.tensor([0, 0, 1]))
        return {"loss": 0.1, "top1": 66.7, "top5": 100.0}

    monkeypatch.setattr(aster, "validate", validate)
    args = argparse.Namespace(amp=False, distributed=False, dataset="cifar10")
    result = aster.evaluate_aster(bare, None, None, args, thresholds=[0.5])
    assert seen == [True] and bare.TET is False
    assert result.summary()["samples"] == 3 and result.skipped_blocks == [7]


def test_the_study_covers_0_to_max_skip_blocks_adds_no_exit_once_and_restores_the_skip_list(monkeypatch):
    """--study with max_skip 2 on 2 blocks: k = 0, 1, 2 lowest-rate blocks (block 1 rates lower: [1], then
    [0, 1]), each at the given thresholds plus inf (no exit) once, even when inf is given too; the model's skip
    list is put back afterwards."""
    import engine.aster as aster
    from engine.early_exit import EarlyExitSweep

    bare, calls = _bare_model(), []

    def evaluate(model, loader, loss_fn, args, thresholds, metric, log_suffix):
        calls.append((list(model.skip_blocks), list(thresholds), log_suffix))
        sweep = EarlyExitSweep(thresholds, T=2)
        sweep.update(torch.tensor([[[2.0, 0.0]], [[2.0, 0.0]]]), torch.tensor([0]))
        return aster.AsterResult(T=2, metric=metric, skipped_blocks=list(model.skip_blocks), validation={},
                                 sweep=sweep, meter=None)

    monkeypatch.setattr(aster, "evaluate_aster", evaluate)
    rates = {"t0": {KEY.format(0): 0.3, KEY.format(1): 0.1}}
    rows = aster.run_study(bare, None, None, argparse.Namespace(), rates=rates, max_skip=2, thresholds=[0.5])
    inf = float("inf")
    assert calls == [([], [0.5, inf], " (skip 0)"), ([1], [0.5, inf], " (skip 1)"), ([0, 1], [0.5, inf], " (skip 2)")]
    assert [(r["skipped_layers"], r["skipped_blocks"], r["threshold"]) for r in rows] == [
        (0, "", 0.5), (0, "", inf), (1, "1", 0.5), (1, "1", inf), (2, "0 1", 0.5), (2, "0 1", inf)]
    assert bare.skip_blocks == [7]
    calls.clear()
    aster.run_study(bare, None, None, argparse.Namespace(), rates=rates, max_skip=0, thresholds=[0.5, inf])
    assert calls == [([], [0.5, inf], " (skip 0)")]


def test_non_finite_numbers_inside_tuples_are_written_as_text():
    """skip.json and the evaluation JSON are strict: an inf inside a tuple (the sweep's thresholds may be one)
    becomes "inf" as inside a list."""
    from engine.aster import _finite_or_text

    assert _finite_or_text({"a": (1.0, float("inf")), "b": [float("-inf")], "c": float("nan")}) == \
        {"a": [1.0, "inf"], "b": ["-inf"], "c": "nan"}


def test_a_nan_skip_threshold_is_refused(tmp_path):
    """No rate is <= nan: --auto-skip --skip-threshold nan would silently skip nothing; it is a ConfigError."""
    import json

    from engine.aster import resolve_skip
    from engine.errors import ConfigError

    path = tmp_path / "firing.json"
    path.write_text(json.dumps({"format": "firing-rates/1", "T": 1, "firing_rate": {"t0": {KEY.format(0): 0.0}}}))
    args = argparse.Namespace(auto_skip=True, skip_threshold=float("nan"), skip_lowest=None, skip_blocks=None,
                              log_file=str(path), layer=1, time_steps=1, attention_mode="SDT")
    with pytest.raises(ConfigError, match="^--skip-threshold nan is not a threshold; give a number$"):
        resolve_skip(args)
    args.skip_threshold = 0.0
    assert resolve_skip(args).blocks == [0]


def test_the_skip_record_holds_the_threshold_only_for_the_threshold_rule():
    """skip.json: skip_threshold is the --auto-skip threshold, null for the other rules (the flag's default
    0.001 would otherwise read as if a threshold had chosen the blocks)."""
    from engine.aster import skip_record

    args = argparse.Namespace(layer=2, auto_skip=False, skip_lowest=None, skip_blocks=[1], skip_threshold=0.001,
                              log_file="")
    record = skip_record(args, select_skip_blocks(2, explicit=[1]))
    assert (record["rule"], record["skip_threshold"], record["skipped_blocks"], record["log_file"]) == \
        ("explicit", None, [1], None)
    assert record["block_rates"] == [None, None]
    args.auto_skip, args.skip_blocks = True, None
    assert skip_record(args, None)["skip_threshold"] == 0.001 and skip_record(args, None)["rule"] == "threshold"


# ------------------------------------------------------------------------------------------------------ energy
def test_a_nan_energy_constant_is_refused():
    """A NaN energy per operation would make every total NaN: refused like a negative one."""
    from engine.energy import EnergyConstants

    with pytest.raises(ValueError, match="e_ac_pj=nan must be a non-negative energy in pJ"):
        EnergyConstants(e_ac_pj=float("nan"))


def test_the_summary_ann_flops_count_every_layer():
    """ann_flops is the sum of all layers' FLOPs, the encoding one included: 4*3 + 3*2 = 18."""
    from engine.energy import EnergyMeter

    net = torch.nn.Sequential(torch.nn.Linear(4, 3, bias=False), torch.nn.Linear(3, 2, bias=False))
    with EnergyMeter(net, T=1) as meter:
        net(torch.ones(1, 1, 4))
    assert meter.summary()["ann_flops"] == 18 and meter.summary()["macs"] == 12


def test_a_dilated_conv_has_the_output_size_of_its_dilated_kernel():
    """A 3x3 conv with dilation 2 spans 5 pixels: on 7x7 without padding its output is (7 - 2*2 - 1) + 1 = 3, so
    3*3 * 3*3 * 1*2 = 162 FLOPs."""
    from engine.energy import _layer_flops, conv_output_hw

    conv = torch.nn.Conv2d(1, 2, 3, dilation=2, bias=False)
    assert conv_output_hw(conv, 7, 7) == (3, 3) == tuple(conv(torch.zeros(1, 1, 7, 7)).shape[-2:])
    assert _layer_flops(conv, torch.zeros(2, 1, 7, 7)) == (162, 49, "3x3")


# ------------------------------------------------------------------------------------------------------ traces
def test_255_is_still_a_byte_and_finer_than_sixteenths_is_float32():
    """Counts up to 255 are stored as uint8 (255 included), 256 needs uint16; multiples of 1/32 are finer than the
    1/16 of MAX_FRACTION_BITS = 4 and stay float32."""
    from engine.traces import _encode

    arr, entry = _encode(torch.tensor([[[0.0], [255.0]]]))  # [T=1, C=2, 1]
    assert entry == {"encoding": "uint8", "repeat_t": False} and arr.reshape(-1).tolist() == [0, 255]
    assert _encode(torch.tensor([[[0.0], [256.0]]]))[1] == {"encoding": "uint16", "repeat_t": False}
    assert _encode(torch.tensor([[[0.03125], [1.0]]]))[1] == {"encoding": "float32", "repeat_t": False}


def test_a_tensor_equal_at_both_of_two_steps_is_stored_once():
    """T=2, both steps the same spikes: one stored step (repeat_t), 3 channels packed into one byte; decoding
    gives back both steps of the 3 channels."""
    from engine.traces import _encode

    from engine.traces import TensorSpec, _decode

    x = torch.tensor([[1.0, 0.0, 1.0], [1.0, 0.0, 1.0]])
    arr, entry = _encode(x)
    assert entry == {"encoding": "bits", "repeat_t": True} and arr.shape == (1, 1)
    assert arr[0, 0] == 0b10100000
    assert torch.equal(_decode(arr, TensorSpec((2, 3)), entry), x)  # 3 channels back, not the byte's 8


def test_the_reader_accepts_four_fraction_bits():
    """An index entry with fraction_bits 4 (the writer's largest) is valid; 5 and a float32 tensor's are not."""
    from pathlib import Path

    from engine.traces import TraceFormatError, _check_entry

    entry = {"encoding": "uint8", "repeat_t": False, "fraction_bits": 4}
    assert _check_entry(Path("s.npz"), "in:x", entry) is entry
    for bad in ({**entry, "fraction_bits": 5}, {"encoding": "float32", "repeat_t": False, "fraction_bits": 1}):
        with pytest.raises(TraceFormatError, match="expected 1..4 on a uint8 or uint16 tensor"):
            _check_entry(Path("s.npz"), "in:x", bad)


def test_a_pool_called_twice_is_named_by_call_and_a_pool_called_once_by_its_module():
    """Trace op names are unique: the second call of one max-pool module is ``name#1``, the first keeps the
    module's name (docs/traces.md: ``name#1``, ...)."""
    from engine.traces import _Recorder

    class Pools(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.once, self.twice = torch.nn.MaxPool2d(2), torch.nn.MaxPool2d(1)

        def forward(self, x):
            return self.once(self.twice(self.twice(x)))

    net = Pools()
    recorder = _Recorder(net, T=1)
    net(torch.ones(1, 2, 4, 4))
    recorder.remove()
    assert [(op.name, op.kind, op.in_shape, op.out_shape) for op in recorder.ops] == [
        ("twice", "pool", (2, 4, 4), (2, 4, 4)), ("twice#1", "pool", (2, 4, 4), (2, 4, 4)),
        ("once", "pool", (2, 4, 4), (2, 2, 2))]
    assert recorder.ops[-1].attrs == {"kernel": [2, 2], "stride": [2, 2], "binary_input": True}


# ------------------------------------------------------------------------------------------------------ meta.json
def _meta() -> dict:
    """A valid meta.json by hand: T=2, a linear head on 4 features and an SDT attention core (4 channels = 2 heads
    x 2, one token), one sample."""
    layer = {"kernel": [1, 1], "stride": [1, 1], "padding": [0, 0], "dilation": [1, 1], "groups": 1,
             "in_channels": 4, "out_channels": 3, "bias": False, "first": True}
    names = {f: f"attn:0:{f}" for f in ("q", "k", "v", "out", "mask")}
    attention = {"mode": "SDT", "heads": 2, "head_dim": 2, "tokens": 1, "chunk_size": 1, "dvs": False,
                 "reference": "sdt", "tensors": names}
    return {"format": "spike-trace", "format_version": 3, "T": 2, "dataset": "x", "input_kind": "static",
            "model": {}, "skipped_blocks": [],
            "ops": [{"name": "block.0.attn.core", "kind": "attention", "block": 0, "sdsa": True,
                     "in_shape": [4, 1, 1], "out_shape": [4, 1, 1], "tensor": None, "attrs": attention},
                    {"name": "head", "kind": "linear", "block": None, "sdsa": False, "in_shape": [4],
                     "out_shape": [3], "tensor": "in:head", "attrs": layer}],
            "tensors": {"in:head": {"shape": [2, 4], "dtype": "float32"},
                        **{name: {"shape": [2, 4, 1, 1], "dtype": "float32"} for name in names.values()},
                        "attn:0:mask": {"shape": [2, 4], "dtype": "float32"}},
            "samples": [{"id": 0, "file": "sample_00000.npz", "label": 1, "pred_per_step": [0, 1]}]}


def _edited(edit) -> dict:
    d = _meta()
    edit(d)
    return d


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(T=0), "field 'T' is 0; expected an integer >= 1"),
    (lambda d: d["tensors"].update(extra={"shape": [2], "dtype": "float32"}),
     r"field 'tensors.extra.shape' is \[2\]; expected \[T=2, C, ...\]"),
    (lambda d: d["samples"][0].update(pred_per_step=[0]), "field 'samples\\[0\\].pred_per_step' is \\[0\\]; expected "
                                                          "a list of 2 integers >= 0"),
    (lambda d: d["samples"].append(d["samples"][0]), "field 'samples' lists sample 0 twice"),
    (lambda d: d["samples"][0].update(file="../sample_00000.npz"), "expected a .npz file name in the trace folder"),
    (lambda d: d["tensors"]["attn:0:mask"].update(shape=[2, 3]),
     r"tensor 'attn:0:mask' of op 'block.0.attn.core' has shape \[2, 3\]; the op implies \[2, 4\]"),
    (lambda d: d["ops"][0]["attrs"].update(tokens=2), "heads 2 x head_dim 2 and tokens 2 do not match in_shape"),
    (lambda d: d["ops"][0]["attrs"]["tensors"].pop("mask"), "missing field 'ops\\[0\\].attrs.tensors.mask'"),
], ids=["T 0", "tensor without channels", "short predictions", "sample twice", "file outside", "mask shape", "tokens",
        "SDT without mask"])
def test_meta_json_checks_by_field(edit, message):
    """Each edit of a valid meta.json is one TraceFormatError naming the file and the field (docs/traces.md); the
    unedited file parses."""
    from pathlib import Path

    from engine.trace_meta import TraceFormatError, TraceMeta

    assert TraceMeta.from_json(_meta(), Path("meta.json")).T == 2
    with pytest.raises(TraceFormatError, match=f"^meta.json: .*{message}"):
        TraceMeta.from_json(_edited(edit), Path("meta.json"))


def test_logits_of_another_number_of_steps_are_refused():
    """A sample's logits must hold T rows: 3 rows for T=2 is a TraceFormatError naming the file."""
    from pathlib import Path

    import numpy as np

    from engine.trace_meta import TraceFormatError, TraceMeta
    from engine.traces import TraceReader

    reader = object.__new__(TraceReader)
    reader.meta = TraceMeta.from_json(_meta(), Path("meta.json"))
    reader._check_outputs(Path("s.npz"), np.zeros((2, 5), np.float32), np.zeros((0, 2), np.int64))
    with pytest.raises(TraceFormatError, match=r"^s.npz: lif_nnz \(0, 2\) / logits \(3, 5\) do not match"):
        reader._check_outputs(Path("s.npz"), np.zeros((3, 5), np.float32), np.zeros((0, 2), np.int64))


def test_a_member_with_a_version_2_npy_header_is_read(tmp_path):
    """.npy format 2.0 has a 4-byte header length (1.0: 2 bytes); the memory-mapped reader takes both."""
    import io
    import zipfile

    import numpy as np

    from engine.traces import _read_npz

    arrays = {"a": np.arange(6, dtype=np.uint8).reshape(2, 3), "b": np.ones(4, np.float32)}
    with zipfile.ZipFile(tmp_path / "s.npz", "w", zipfile.ZIP_STORED) as z:
        for (name, arr), version in zip(arrays.items(), ((2, 0), (1, 0))):
            f = io.BytesIO()
            np.lib.format.write_array(f, arr, version=version)
            z.writestr(f"{name}.npy", f.getvalue())
    read = _read_npz(tmp_path / "s.npz", check_crc=True)
    assert read.keys() == arrays.keys() and all(np.array_equal(read[k], arrays[k]) for k in arrays)


# ------------------------------------------------------------------------------------------------------ checkpoints
def _checkpoint(folder, name: str, epoch: int) -> str:
    path = str(folder / name)
    torch.save({"epoch": epoch}, path)
    return path


def test_set_aside_moves_exactly_what_trained_past_the_resume_point(tmp_path, monkeypatch):
    """Resuming at batch 5 of epoch 2 (recovery-2-4 trained batches 0..4): an epoch-2 end checkpoint and
    recovery-2-5 (6 batches) trained past it and move; recovery-2-4's copy (5 batches, not past) and epoch 1's
    checkpoint stay.  A second set-aside gets the next free folder name (-1, then -2)."""
    import os

    from engine.checkpoint import set_aside_later_checkpoints

    resumed = _checkpoint(tmp_path, "resume-from.pth.tar", 2)
    for name, epoch in (("checkpoint-1.pth.tar", 1), ("checkpoint-2.pth.tar", 2), ("recovery-2-4.pth.tar", 2),
                        ("recovery-2-5.pth.tar", 2)):
        _checkpoint(tmp_path, name, epoch)
    moved = set_aside_later_checkpoints(str(tmp_path), 2, 5, resumed)
    assert [os.path.relpath(p, tmp_path) for p in moved] == [
        os.path.join("superseded-from-epoch-2", name) for name in ("checkpoint-2.pth.tar", "recovery-2-5.pth.tar")]
    assert sorted(p.name for p in tmp_path.glob("*.pth.tar")) == [
        "checkpoint-1.pth.tar", "recovery-2-4.pth.tar", "resume-from.pth.tar"]
    (tmp_path / "superseded-from-epoch-2-1").mkdir()
    _checkpoint(tmp_path, "last.pth.tar", 3)
    exists, asked = os.path.exists, []

    def bounded(path):  # the search for a free name must end (a suffix that never grows would loop forever)
        asked.append(path)
        assert len(asked) < 50, "set_aside_later_checkpoints keeps asking for the same folder names"
        return exists(path)

    monkeypatch.setattr(os.path, "exists", bounded)
    moved = set_aside_later_checkpoints(str(tmp_path), 2, 5, resumed)
    assert [os.path.relpath(p, tmp_path) for p in moved] == [os.path.join("superseded-from-epoch-2-2", "last.pth.tar")]


def test_listing_shows_eight_items_then_counts_the_rest():
    from engine.checkpoint import _listing

    assert _listing([str(i) for i in range(8)]) == "0, 1, 2, 3, 4, 5, 6, 7"
    assert _listing([str(i) for i in range(9)]) == "0, 1, 2, 3, 4, 5, 6, 7, ... (+1 more)"


def test_chunk_size_is_compared_when_either_side_runs_statten():
    """STAtten chunks the time steps: an SDT checkpoint loaded into a STAtten model (chunk 4) differs in
    attention_mode and chunk_size, both reported; SDT on both sides compares no chunk size."""
    import types

    from engine.checkpoint import _computation_args

    trained = argparse.Namespace(attention_mode="SDT", chunk_size=2)
    statten = types.SimpleNamespace(attention_mode="STAtten", chunk_size=4)
    pairs = {k: (a, b) for k, a, b in _computation_args(trained, statten, None)}
    assert pairs["attention_mode"] == ("SDT", "STAtten") and pairs["chunk_size"] == (2, 4)
    sdt = types.SimpleNamespace(attention_mode="SDT", chunk_size=4)
    assert "chunk_size" not in {k for k, _, _ in _computation_args(trained, sdt, None)}


def test_a_recovery_checkpoint_without_a_recorded_batch_size_is_not_refused():
    """Only a recorded -b / process count that differs refuses a mid-epoch resume; an args without batch_size
    (unknown) is not a difference."""
    from engine.checkpoint import CheckpointError, _check_same_batches

    args = argparse.Namespace(batch_size=8, world_size=1, resume="recovery-0-3.pth.tar")
    _check_same_batches(args, {"args": argparse.Namespace(world_size=1)})
    with pytest.raises(CheckpointError, match="trained with -b 16 on 1 process"):
        _check_same_batches(args, {"args": argparse.Namespace(batch_size=16, world_size=1)})


def test_a_key_error_while_loading_names_its_type():
    """A bare KeyError message ('x') says nothing: the detail is prefixed with the exception's type."""
    from engine.checkpoint import _load_error_detail

    assert _load_error_detail(KeyError("x")) == "KeyError: 'x'"
    assert _load_error_detail(ValueError("bad\nmore")) == "bad"


def test_the_optimizer_name_is_compared_ignoring_case():
    """--opt AdamW and a checkpoint of --opt adamw are the same timm optimizer: its state is restored."""
    from engine.checkpoint import _restore_optimizer

    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.AdamW([weight], lr=0.1)
    weight.grad = torch.ones(2)
    optimizer.step()
    fresh = torch.optim.AdamW([weight], lr=0.1)
    checkpoint = {"args": argparse.Namespace(opt="adamw"), "optimizer": optimizer.state_dict()}
    _restore_optimizer(argparse.Namespace(opt="AdamW", resume="last.pth.tar"), fresh, checkpoint)
    assert fresh.state_dict()["state"][0]["step"] == 1


def test_another_worker_count_is_warned_about_for_static_images_only(caplog):
    """-j changes the augmentation of static images (drawn per worker); event frames are drawn per sample."""
    from engine.checkpoint import _warn_other_workers

    checkpoint = {"args": argparse.Namespace(workers=0)}
    with caplog.at_level("WARNING", logger="engine.checkpoint"):
        _warn_other_workers(argparse.Namespace(workers=4, dataset="cifar10-dvs", resume="r"), checkpoint)
        assert not caplog.records
        _warn_other_workers(argparse.Namespace(workers=4, dataset="cifar10", resume="r"), checkpoint)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and messages[0].startswith("'r' was trained with -j 0, this run loads with -j 4:")


def test_an_interrupted_save_of_a_worse_epoch_stays_out_of_a_full_history(tmp_path):
    """--checkpoint-hist 1 holding epoch 0 (top1 50): a kill cut short the save of epoch 1 (top1 40, worse).  On
    resume it does not enter the full history; a better epoch 1 (60) replaces epoch 0's file."""
    from engine.checkpoint import _saver_class

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    args = argparse.Namespace(eval_metric="top1", model="sdt")
    for metric, kept in ((40.0, "checkpoint-0.pth.tar"), (60.0, "checkpoint-1.pth.tar")):
        folder = tmp_path / str(metric)
        folder.mkdir()
        saver = _saver_class()(model=model, optimizer=optimizer, args=args, checkpoint_dir=str(folder),
                               recovery_dir=str(folder), max_history=1)
        saver.save_checkpoint(0, metric=50.0)
        torch.save({"epoch": 1}, folder / "last.pth.tar")
        saver.finish_interrupted_save(str(folder / "last.pth.tar"), (1, metric))
        assert sorted(p.name for p in folder.glob("checkpoint-*")) == [kept]


# ------------------------------------------------------------------------------------------------------ run flags
@pytest.mark.parametrize("values, error", [
    ({"scale": [1.0, 1.0]}, None),  # MIN == MAX: a fixed crop area
    ({"opt_betas": [0.0, 0.999]}, None),  # beta1 = 0 (no momentum) is in [0, 1)
    ({"smoothing": 1.0}, "--smoothing 1.0 must be in [0, 1)"),
    ({"aug_splits": -1}, "--aug-splits -1: give 0 (off) or at least 2"),
    ({"std": [0.0]}, "--std 0.0: every value must be positive"),
])
def test_run_flag_ranges_at_their_bounds(tmp_path, values, error):
    """Each range of check_run_args at its boundary: the inclusive ends pass, the excluded ones are one
    ConfigError naming the flag (the bounds the messages state)."""
    from engine.errors import ConfigError
    from engine.validate import check_run_args

    args = argparse.Namespace(output=str(tmp_path), **values)
    if error is None:
        check_run_args(args, train=True)
    else:
        with pytest.raises(ConfigError, match=f"^{re.escape(error)}"):
            check_run_args(args, train=True)


# ------------------------------------------------------------------------------------------------------ YAML config
def test_an_unknown_key_suggests_up_to_three_close_keys():
    """``lr_nois`` is close to three keys, all named (the nearest first; difflib orders the equally close ones);
    a model argument's name suggests its option (depths: layer)."""
    from engine.config import _closest

    suggested = _closest("lr_nois", ["lr", "lr_noise", "lr_noise_pct", "lr_noise_std", "epochs"]).split(", ")
    assert suggested[0] == "lr_noise" and sorted(suggested[1:]) == ["lr_noise_pct", "lr_noise_std"]
    assert _closest("depths", ["layer", "dim"]) == "layer"
