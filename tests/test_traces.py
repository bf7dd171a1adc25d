"""engine.traces: capture, the on-disk format, the reader's round trip and its errors on bad files."""
from __future__ import annotations

import dataclasses
import json
import zipfile

import numpy as np
import pytest
import torch
from torch import nn

from engine.traces import FORMAT_VERSION, TraceFormatError, TraceReader, TraceWriter, capture_sample, export_traces
from hw.synthetic import dvs_events, firing_model
from module import is_neuron
from hw_helpers import tiny_capture, write

CASES = [("SDT", True, ()), ("STAtten", True, ()), ("SDT", False, (1,)), ("STAtten", False, ())]


@pytest.mark.parametrize("mode,dvs,skip", CASES)
def test_round_trip_equals_originals(tmp_path, mode, dvs, skip):
    capture, config = tiny_capture(mode, dvs, skip=skip)
    reader = TraceReader(write(tmp_path / "trace", [capture, capture], config, labels=[3, 4]))
    assert reader.sample_ids == [0, 1]
    sample = reader.load(1)
    assert set(sample.tensors) == set(capture.tensors)
    for name, original in capture.tensors.items():
        restored = sample.tensors[name]
        assert restored.dtype == original.dtype and restored.shape == original.shape, name
        assert torch.count_nonzero(restored) == torch.count_nonzero(original), name
        assert torch.equal(restored, original), name
    assert torch.equal(sample.logits, capture.logits) and torch.equal(sample.lif_nnz, capture.lif_nnz)
    assert sample.label == 4
    assert list(sample.pred_per_step) == capture.logits.cumsum(0).argmax(-1).tolist()
    assert reader.meta.skipped_blocks == list(skip)


def test_inputs_are_what_each_layer_saw(tmp_path):
    """The stored inputs equal an independent forward-pre hook capture, max-pools between LIF and conv included."""
    net = firing_model(T=3, embed_dims=64, img_size=32)
    x = dvs_events(3, 32, seed=1)
    seen, spikes = {}, []
    handles = [m.register_forward_pre_hook(lambda m, i, name=name: seen.__setitem__(name, i[0].detach().clone()))
               for name, m in net.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    handles += [m.register_forward_hook(lambda m, i, out: spikes.append((out != 0).flatten(1).sum(1)))
                for m in net.modules() if is_neuron(m)]
    capture = capture_sample(net, x)
    for h in handles:
        h.remove()
    for name, x_in in seen.items():
        assert torch.equal(capture.tensors[f"in:{name}"].reshape(x_in.shape), x_in), name
    assert torch.equal(capture.lif_nnz, torch.stack(spikes))


def test_meta_json_format(tmp_path):
    capture, config = tiny_capture("SDT", True)
    write(tmp_path / "t", [capture], config, labels=[7])
    meta = json.loads((tmp_path / "t" / "meta.json").read_text())
    assert meta["format"] == "spike-trace" and meta["format_version"] == FORMAT_VERSION
    assert meta["T"] == 4 and meta["dataset"] == "test" and meta["input_kind"] == "events"
    assert meta["model"]["embed_dim"] == 64 and meta["skipped_blocks"] == []
    assert meta["samples"] == [{"id": 0, "file": "sample_00000.npz", "label": 7,
                                "pred_per_step": capture.logits.cumsum(0).argmax(-1).tolist()}]
    first, conv1 = meta["ops"][0], next(op for op in meta["ops"] if op["name"] == "patch_embed.proj_conv1")
    assert first["kind"] == "conv" and first["attrs"]["first"] and not conv1["attrs"]["first"]
    assert conv1["attrs"] | {"first": False} == {
        "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1, "in_channels": 8,
        "out_channels": 16, "bias": False, "first": False}
    assert conv1["in_shape"] == [8, 32, 32] and conv1["out_shape"] == [16, 32, 32]
    kinds = {op["kind"] for op in meta["ops"]}
    assert kinds == {"conv", "linear", "lif", "pool", "residual", "attention"}
    attn = next(op for op in meta["ops"] if op["kind"] == "attention")
    assert attn["block"] == 0 and attn["sdsa"] and attn["attrs"]["tensors"] == {
        f: f"attn:0:{f}" for f in ("q", "k", "v", "mask", "out")}
    assert meta["tensors"]["attn:0:mask"]["shape"] == [4, 64]
    assert meta["tensors"]["in:head"]["shape"] == [4, 64]


def test_storage_is_compact(tmp_path):
    """Spikes are bit-packed along channels, q/k/v inputs and the attention output are stored once, a static
    image once for all T, event counts as uint8."""
    static, _ = tiny_capture("SDT", False)
    events, _ = tiny_capture("SDT", True)
    write(tmp_path / "s", [static])
    write(tmp_path / "e", [events])
    raw_s, raw_e = TraceReader(tmp_path / "s").load_raw(0), TraceReader(tmp_path / "e").load_raw(0)
    assert raw_s.index["in:patch_embed.proj_conv"] == {"encoding": "float32", "repeat_t": True}
    assert raw_s.arrays["in:patch_embed.proj_conv"].shape == (1, 32, 32, 3)
    assert raw_e.index["in:patch_embed.proj_conv"]["encoding"] == "uint8"
    assert raw_e.index["in:block.0.attn.q_conv"]["encoding"] == "bits"
    assert raw_e.arrays["in:block.0.attn.q_conv"].shape == (4, 8, 8, 8)  # 64 channels -> 8 bytes per token
    with zipfile.ZipFile(tmp_path / "e" / "sample_00000.npz") as z:
        names = {n.removesuffix(".npy") for n in z.namelist()}
    assert "in:block.0.attn.k_conv" not in names and "in:block.0.attn.proj_conv" not in names  # aliases
    assert np.shares_memory(raw_e.arrays["in:block.0.attn.k_conv"], raw_e.arrays["in:block.0.attn.q_conv"])


def test_writer_refuses_an_existing_trace(tmp_path):
    capture, _ = tiny_capture()
    write(tmp_path / "t", [capture])
    with pytest.raises(FileExistsError, match="already holds a trace") as info:
        TraceWriter(tmp_path / "t", "test")
    assert "--overwrite" not in str(info.value)  # no such flag
    TraceWriter(tmp_path / "t", "test", overwrite=True)
    assert not list((tmp_path / "t").glob("sample_*.npz"))


def test_export_traces_and_structure_check(tmp_path):
    net = firing_model(T=2, embed_dims=64, img_size=32)
    samples = [(dvs_events(2, 32, seed=s), s) for s in range(5)]
    meta = export_traces(net, samples, tmp_path / "t", "synthetic", num_samples=3, progress=False)
    assert [s.label for s in meta.samples] == [0, 1, 2] and meta.model["T"] == 2
    writer = TraceWriter(tmp_path / "u", "x")
    writer.record(net, samples[0][0])
    with pytest.raises(ValueError, match="structure"):
        writer.record(firing_model(T=2, embed_dims=64, img_size=32, depths=1), samples[0][0])


def _corrupt(tmp_path, how):
    capture, _ = tiny_capture()
    trace = write(tmp_path / "t", [capture])
    npz = trace / "sample_00000.npz"
    data = bytearray(npz.read_bytes())
    if how == "truncated":
        npz.write_bytes(data[:len(data) // 2])
    elif how == "bitflip":
        i = data.index(b"in:block.0.mlp.fc2_conv") + 400  # inside that member's data
        data[i] ^= 0xFF
        npz.write_bytes(bytes(data))
    elif how == "missing":
        with np.load(npz) as z:
            arrays = {k: z[k] for k in z.files if k != "in:patch_embed.rpe_conv"}
        np.savez(npz, **arrays)
    elif how == "meta":
        (trace / "meta.json").write_text((trace / "meta.json").read_text()[:100])
    elif how == "binary meta":  # overwritten by a sample file, say
        (trace / "meta.json").write_bytes(npz.read_bytes())
    return trace, npz


@pytest.mark.parametrize("how,where,what", [
    ("truncated", "sample_00000.npz", "truncated or corrupt"),
    ("bitflip", "sample_00000.npz", "CRC-32"),
    ("missing", "sample_00000.npz", "in:patch_embed.rpe_conv"),
    ("meta", "meta.json", "not valid JSON"),
    ("binary meta", "meta.json", "not valid JSON"),
])
def test_bad_files_raise_one_clear_error(tmp_path, how, where, what):
    trace, npz = _corrupt(tmp_path, how)
    with pytest.raises(TraceFormatError, match=what) as info:
        TraceReader(trace).load(0)
    assert where in str(info.value)


def test_sample_file_copied_over_another_is_detected(tmp_path):
    """sample_00001.npz copied over sample_00002.npz: the stored sample id no longer matches meta.json."""
    capture, _ = tiny_capture()
    trace = write(tmp_path / "t", [capture] * 3)
    (trace / "sample_00002.npz").write_bytes((trace / "sample_00001.npz").read_bytes())
    reader = TraceReader(trace)
    reader.load_raw(1)
    with pytest.raises(TraceFormatError, match="holds sample 1, but meta.json lists it as sample 2") as info:
        reader.load_raw(2)
    assert "sample_00002.npz" in str(info.value)


def test_missing_folder(tmp_path):
    with pytest.raises(TraceFormatError, match="meta.json"):
        TraceReader(tmp_path / "nope")


def test_resized_event_frames_are_stored_as_fixed_point_or_warned(tmp_path, caplog):
    """Counts halved bilinearly (CIFAR10-DVS 128 -> 64) are multiples of 1/4: uint8 with 2 fraction bits, read back
    exactly; a 34 -> 32 resize (N-MNIST's demo) gives arbitrary fractions: float32, with a warning."""
    import torch.nn.functional as F

    net = firing_model(T=2, embed_dims=32, depths=1, img_size=32)
    halved = F.interpolate(dvs_events(2, 64, seed=4)[0], size=32, mode="bilinear")[None]
    shrunk = F.interpolate(dvs_events(2, 34, seed=4)[0], size=32, mode="bilinear")[None]
    for name, x, encoding, bits in (("halved", halved, "uint8", 2), ("shrunk", shrunk, "float32", 0)):
        caplog.clear()
        capture = capture_sample(net, x)
        reader = TraceReader(write(tmp_path / name, [capture]))
        first = reader.meta.layers()[0].tensor
        entry = reader.load_raw(0).index[first]
        assert (entry["encoding"], entry.get("fraction_bits", 0)) == (encoding, bits), name
        assert torch.equal(reader.load(0).tensors[first], capture.tensors[first]), name
        assert ("not event counts" in caplog.text) == (name == "shrunk"), name


def _edit_npz(npz, **members):
    with np.load(npz) as z:
        arrays = {k: z[k] for k in z.files}
    np.savez(npz, **{**arrays, **members})


@pytest.mark.parametrize("member,change,what", [
    ("in:block.0.attn.q_conv", lambda a: a.astype(np.float32), "stored as float32, but its encoding 'bits'"),
    ("in:patch_embed.proj_conv", lambda a: a.astype(np.float64), "stored as float64, but its encoding 'uint8'"),
    ("lif_nnz", lambda a: a.astype(np.float32), "non-negative integer spike counts"),
    ("lif_nnz", lambda a: -a, "non-negative integer spike counts"),
    ("logits", lambda a: a.astype(np.int64), "member 'logits' is stored as int64"),
    ("logits", lambda a: a[:, 0], r"logits \(4,\)"),
])
def test_stored_dtypes_must_match_their_encoding(tmp_path, member, change, what):
    """A member of the right shape but the wrong dtype would give wrong energies (bits read as floats) or a
    TypeError deep in hw/: one TraceFormatError naming the file and the member."""
    capture, _ = tiny_capture()
    trace = write(tmp_path / "t", [capture])
    npz = trace / "sample_00000.npz"
    with np.load(npz) as z:
        value = change(z[member])
    _edit_npz(npz, **{member: value})
    with pytest.raises(TraceFormatError, match=what) as info:
        TraceReader(trace).load_raw(0)
    assert "sample_00000.npz" in str(info.value) and member.split(":")[-1].split(".")[0] in str(info.value)


def test_sample_file_from_another_trace_is_detected(tmp_path):
    """Two traces of the same model and shapes: a sample file copied across fails the trace id check; a trace
    written before trace ids (format 2: none in meta.json nor in the files) still reads."""
    capture, _ = tiny_capture()
    one, two = write(tmp_path / "one", [capture] * 2), write(tmp_path / "two", [capture] * 2)
    meta_one, meta_two = (json.loads((t / "meta.json").read_text()) for t in (one, two))
    assert meta_one["trace_id"] != meta_two["trace_id"]
    (one / "sample_00001.npz").write_bytes((two / "sample_00001.npz").read_bytes())
    reader = TraceReader(one)
    reader.load_raw(0)
    with pytest.raises(TraceFormatError, match="belongs to trace .*copied from another trace folder") as info:
        reader.load_raw(1)
    assert "one/sample_00001.npz" in str(info.value)
    old = {k: v for k, v in meta_two.items() if k != "trace_id"} | {"format_version": 2}
    (two / "meta.json").write_text(json.dumps(old))
    _edit_npz(two / "sample_00000.npz", __index__=np.array(json.dumps(
        {k: v for k, v in json.loads(str(np.load(two / "sample_00000.npz")["__index__"])).items() if k != "trace_id"})))
    assert TraceReader(two).load_raw(0).id == 0


def test_writer_compares_input_kind_and_op_attrs(tmp_path):
    """Same shapes but another attention chunk size, or static instead of event input: not one trace.  The
    data-dependent pool attribute binary_input may differ."""
    net = firing_model(T=4, embed_dims=64, img_size=32, attention_mode="STAtten", chunk_size=2)
    other = firing_model(T=4, embed_dims=64, img_size=32, attention_mode="STAtten", chunk_size=4)
    events = dvs_events(4, 32, seed=1)
    writer = TraceWriter(tmp_path / "t", "test")
    first = capture_sample(net, events)
    writer.write(first)
    with pytest.raises(ValueError, match="structure.*chunk_size"):
        writer.write(capture_sample(other, events))
    with pytest.raises(ValueError, match="structure.*input_kind"):
        writer.write(capture_sample(net, events[0, 0]))  # a [2, 32, 32] image: the same shapes, static input
    pools = [op if op.kind != "pool" else dataclasses.replace(op, attrs={**op.attrs, "binary_input": False})
             for op in first.ops]
    writer.write(dataclasses.replace(first, ops=pools))
    assert len(writer.meta.samples) == 2


def test_event_counts_above_255_are_stored_losslessly(tmp_path, caplog):
    """Counts up to 65535 (a long integration window) are uint16, read back exactly; interpolated frames warn
    once, on whichever sample first has them, without advising an input size the model may refuse."""
    net = firing_model(T=2, embed_dims=32, depths=1, img_size=32)
    dense = dvs_events(2, 32, seed=2, rate=400.0)
    assert dense.max() > 255
    shrunk = torch.nn.functional.interpolate(dvs_events(2, 34, seed=4)[0], size=32, mode="bilinear")[None]
    captures = [capture_sample(net, x) for x in (dense, shrunk, shrunk)]
    with caplog.at_level("WARNING", logger="engine.traces"):
        reader = TraceReader(write(tmp_path / "t", captures))
    first = reader.meta.layers()[0].tensor
    raw = reader.load_raw(0)
    assert raw.index[first]["encoding"] == "uint16" and raw.arrays[first].dtype == np.uint16
    assert torch.equal(reader.load(0).tensors[first], captures[0].tensors[first])
    assert reader.load_raw(1).index[first]["encoding"] == "float32"
    warnings = [r.getMessage() for r in caplog.records if "not event counts" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("Trace sample 1:")
    assert "--img-size" not in warnings[0] and "pooling_stat" in warnings[0]


def _meta_edit(trace, edit):
    meta = json.loads((trace / "meta.json").read_text())
    edit(meta)
    (trace / "meta.json").write_text(json.dumps(meta))


def _op(meta, kind):
    return next(op for op in meta["ops"] if op["kind"] == kind)


@pytest.mark.parametrize("edit,what", [
    (lambda m: m.update(T=4.7), "field 'T' is 4.7; expected an integer"),
    (lambda m: m.update(input_kind="video"), "field 'input_kind' is 'video'"),
    (lambda m: m["ops"][0]["attrs"].pop("groups"), "missing field 'ops[0].attrs.groups'"),
    (lambda m: m["ops"][0].update(kind="deconv"), "field 'ops[0].kind' is 'deconv'"),
    (lambda m: _op(m, "pool")["attrs"].pop("binary_input"), ".attrs.binary_input'"),
    (lambda m: _op(m, "attention")["attrs"].pop("heads"), ".attrs.heads'"),
    (lambda m: m["ops"][0].update(in_shape="2,32,32"), "field 'ops[0].in_shape' is '2,32,32'"),
    (lambda m: m["tensors"].pop("attn:0:k"), "names tensor 'attn:0:k', which field 'tensors' does not list"),
    (lambda m: m.update(ops=[op for op in m["ops"] if op["kind"] not in ("conv", "linear")]), "no conv or linear"),
    (lambda m: m["samples"][0].update(pred_per_step=[1]), "field 'samples[0].pred_per_step' is [1]"),
    (lambda m: m["samples"][0].update(label="cat"), "field 'samples[0].label' is 'cat'"),
    (lambda m: m["ops"][0].update(out_shape=[16, 16, 16]), "do not match its attrs"),
])
def test_malformed_meta_fields_raise_one_clear_error(tmp_path, edit, what):
    capture, _ = tiny_capture()
    trace = write(tmp_path / "t", [capture])
    _meta_edit(trace, edit)
    with pytest.raises(TraceFormatError) as info:
        TraceReader(trace)
    assert what in str(info.value) and "meta.json" in str(info.value)
