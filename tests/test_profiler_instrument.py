"""module.instrument and profiler.session: off by default, exact when on, and the model unchanged either way."""
import importlib
import re
import types
from contextlib import nullcontext
from unittest import mock

import pytest
import timm
import torch

import model  # noqa: F401  (registers "sdt")
from module import TensorRecorder, instrument
from module.instrument import Recorder, recording
from profiler.capture import load_capture
from profiler.compile_out import INSTRUMENTED_MODULES, probes_compiled_out, stripped_module
from profiler.fork_format import LABELS, RUN_TOTAL, TOTAL, render_run
from profiler.session import ProfileSession
from profiler_helpers import CAPTURE_DIR, needs_captures

TINY = dict(img_size_h=32, img_size_w=32, in_channels=3, num_classes=10, embed_dims=32, num_heads=4, depths=2, T=4,
            pooling_stat="1111", chunk_size=2)
SDT_SUB_TIMERS = {"Heads Reshape", "KV Hadamard and Sum", "KV LIF", "Q Hadamard", "Heads Transpose"}
STATTEN_SUB_TIMERS = {"Reshape", "Matmul", "Reshape Time-Space", "Transpose and LIF"}


def _build(mode: str, compiled_out: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    with probes_compiled_out() if compiled_out else nullcontext():
        return timm.create_model("sdt", attention_mode=mode, **TINY).eval()


def _profile(net: torch.nn.Module, x: torch.Tensor, **flags) -> list:
    with torch.no_grad(), ProfileSession(net, x.device, **flags) as session:
        return session.run(1, lambda: net(x))


def _names(module: types.ModuleType) -> set[str]:
    """Global names used by the functions of the classes in ``module``."""
    found = set()

    def walk(code):
        found.update(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                walk(const)

    for cls in (v for v in vars(module).values() if isinstance(v, type) and v.__module__ == module.__name__):
        for fn in (f for f in vars(cls).values() if isinstance(f, types.FunctionType)):
            walk(fn.__code__)
    return found


def test_off_by_default_and_free():
    assert not instrument.is_enabled()
    assert instrument.timer("Matmul") is instrument._NULL_TIMER
    net = _build("STAtten")
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())
    with mock.patch.object(Recorder, "count") as count, mock.patch.object(Recorder, "timer") as timer, \
            mock.patch.object(Recorder, "add_interval") as interval, torch.no_grad():
        net(torch.randn(1, 3, 32, 32))
    assert not (count.called or timer.called or interval.called)  # no recorder receives a value


@pytest.mark.parametrize("mode", ["STAtten", "SDT"])
def test_compiled_out_forward_calls_no_measuring_point(mode):
    x = torch.randn(1, 3, 32, 32)
    for compiled_out in (False, True):
        with mock.patch.object(instrument, "timer", wraps=instrument.timer) as timer, \
                mock.patch.object(instrument, "sparsity", wraps=instrument.sparsity) as probe, torch.no_grad():
            _build(mode, compiled_out)(x)
        calls = timer.call_count + probe.call_count
        assert calls == 0 if compiled_out else calls > 0  # the instrumented model shows that calls are seen


def test_compiled_out_source_has_no_measuring_points():
    for name in INSTRUMENTED_MODULES:
        assert {"timer", "sparsity"} & _names(importlib.import_module(name))
        assert not {"timer", "sparsity"} & _names(stripped_module(name))


@pytest.mark.parametrize("mode", ["STAtten", "SDT"])
def test_measuring_points_do_not_change_the_model(mode):
    """In training mode (batch statistics), where the neurons fire: in eval mode a fresh model's LIFs stay silent and
    its output is the head's bias whatever the input, so a probe that wiped its tensor went unnoticed."""
    x, other = torch.randn(2, 2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = _build(mode, compiled_out=True).train()(x)
        net = _build(mode).train()
        assert torch.equal(net(x), expected)
        assert not torch.allclose(net(other), expected)  # the output depends on the input
    with ProfileSession(net, "cpu") as session, torch.no_grad():
        assert torch.equal(net(x), expected)
        assert session.recorder.collect()
    assert not instrument.is_enabled()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in net.modules())


@pytest.mark.parametrize("mode, sub_timers", [("STAtten", STATTEN_SUB_TIMERS), ("SDT", SDT_SUB_TIMERS)])
def test_labels_blocks_and_nesting(mode, sub_timers):
    records = _profile(_build(mode), torch.randn(1, 3, 32, 32))
    assert all(LABELS[r.label].kind == r.kind for r in records)
    assert [r.label for r in records[:2]] == ["SPS.PSM", "SPS.RPE"]
    assert [r.label for r in records[-2:]] == [TOTAL, RUN_TOTAL]
    assert {r.block for r in records} == {None, 0, 1}
    times = {(r.block, r.label): r.value for r in records if r.kind == "time"}
    for block in (0, 1):
        labels = [(LABELS[r.label].order, r.t or 0) for r in records if r.block == block]
        assert labels == sorted(labels)  # the reader's block order
        subs = {label for b, label in times if b == block} - {"SSA Encoder", "MLP", "Projection and BN"}
        assert subs == sub_timers
        assert sum(times[(block, s)] for s in subs | {"Projection and BN"}) <= times[(block, "SSA Encoder")]
    blocks = sum(v for (b, label), v in times.items() if b is not None and label in ("SSA Encoder", "MLP"))
    assert times[(None, "SPS.PSM")] + times[(None, "SPS.RPE")] + blocks <= times[(None, TOTAL)]
    assert times[(None, TOTAL)] <= times[(None, RUN_TOTAL)]


def _skeleton(line: str) -> str:
    """A line with its numbers blanked: what must match between the fork's capture and ours."""
    line = re.sub(r"[0-9.]+ (seconds|nanoseconds|secondi)$", r"N \1", line)
    line = re.sub(r": [0-9.e-]+$", ": V", line)
    return re.sub(r"^Run \d+ ", "Run I ", re.sub(r"torch\.Size\(\[.*\]\)", "S", line))


@needs_captures
def test_our_text_has_the_forks_layout_line_for_line():
    fork = (CAPTURE_DIR / "capcifar3.txt").read_text().splitlines()[:348]  # run 1
    torch.manual_seed(0)
    net = timm.create_model("sdt", attention_mode="STAtten", **{**TINY, "depths": 8}).eval()
    ours = list(render_run(_profile(net, torch.randn(1, 3, 32, 32))))
    assert [_skeleton(line) for line in ours] == [_skeleton(line) for line in fork]
    assert load_capture(CAPTURE_DIR / "capcifar3.txt").runs[0].blocks == 8


def test_sparsity_equals_a_direct_count():
    net = _build("STAtten")
    attn, mlp = net.block[1].attn, net.block[1].mlp
    points = [("x_for_qkv", attn.shortcut_lif), ("q", attn.q_spikes), ("v", attn.v_spikes),
              ("MLP postLIF x after lif", mlp.fc1_lif), ("MLP postLIF x after fc2", mlp.fc2_lif),
              ("Attention postReshape chunk x", attn.after_qkv)]
    with TensorRecorder(points) as tensors:
        records = _profile(net, torch.randn(1, 3, 32, 32))
    got = {(r.label, r.t): r.value for r in records if r.block == 1 and r.kind == "sparsity"}
    for label, _ in points:
        tensor = tensors.records[label]
        if LABELS[label].per_step:
            for t in range(tensor.shape[0]):
                assert got[(label, t)] == 1 - torch.count_nonzero(tensor[t]).item() / tensor[t].numel()
        else:
            assert got[(label, None)] == 1 - torch.count_nonzero(tensor).item() / tensor.numel()
    assert got[("Attention q_chunks", None)] == got[("Attention postReshape q_chunks", None)] == got[("q", None)]


def test_flags_select_what_is_measured():
    net, x = _build("STAtten"), torch.randn(1, 3, 32, 32)
    assert {r.kind for r in _profile(net, x, timers=False)} == {"sparsity", "time"}  # only the run total is a time
    assert [r.label for r in _profile(net, x, timers=False) if r.kind == "time"] == [RUN_TOTAL]
    assert {r.kind for r in _profile(net, x, probes=False)} == {"time"}


def test_one_recorder_at_a_time():
    with recording(Recorder()):
        with pytest.raises(RuntimeError, match="already active"), recording(Recorder()):
            pass
    assert not instrument.is_enabled()
    with pytest.raises(ValueError, match="labels"):
        Recorder().count(("q", "k"), (torch.ones(1),), per_step=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_timers_use_events():
    net = _build("STAtten").cuda()
    records = _profile(net, torch.randn(1, 3, 32, 32, device="cuda"))
    times = {(r.block, r.label): r.value for r in records if r.kind == "time"}
    session = ProfileSession(net, "cuda")
    assert session.recorder.cuda and isinstance(session.recorder.stamp(), torch.cuda.Event)
    assert 0 < times[(0, "Matmul")] < times[(0, "SSA Encoder")] < times[(None, TOTAL)] <= times[(None, RUN_TOTAL)]
