"""Hand-checked numbers of small helpers: STAtten's attention scale, the DVS split counts and Gesture windows, the
roofline and memory benchmarks' per-parameter bytes and peaks, and the profiler figures' bar heights."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import benchmarks.roofline as roofline_mod
import benchmarks.saved_memory as saved_memory_mod
from benchmarks.bench_train import TINY
from benchmarks.peaks import H100
from benchmarks.roofline import ADAMW_BYTES_PER_PARAM, OpTraffic
from benchmarks.saved_memory import MetaStep, build_on_meta
from data.dvs_build import load_events
from data.dvs_raw import Job, _cut_gesture_trial
from data.splits import n_train
from module.ms_conv import MS_SSA_Conv
from profiler import plots
from test_data_dvs_formats import write_aedat31

# --------------------------------------------------------------------------------------------- STAtten scale


class _Recorder(torch.nn.Module):
    """Stands in for ``attn_lif``: keeps the attention output it is given and passes it on."""

    def forward(self, x):
        self.seen = x
        return x


@pytest.mark.parametrize("dvs, expected", [(False, 4 * 2 * 4), (True, 4 * 4 / 4)])
def test_statten_scale_uses_the_token_grid_height(dvs, expected):
    """reference_code.md: STAtten scales K^T V by 1/H (non-DVS) and 1/(H * H * chunk_size) (DVS), H the token grid's
    height.  With q = k = v = 1 every entry of Q (K^T V) before attn_lif is d * cs * N * scale (N = H * W tokens per
    step, d channels per head): d * cs * W = 4 * 2 * 4 without DVS, d * W / H = 4 * 4 / 4 with it.  A grid that is
    not square, where H and W would give different scales, is refused (the model's forward ran it with 1/H)."""
    T, B, C, H, W, heads, cs = 2, 1, 8, 4, 4, 2, 2
    attn = MS_SSA_Conv(C, num_heads=heads, dvs=dvs, attention_mode="STAtten", chunk_size=cs, reference="statten")
    attn.attn_lif = _Recorder()
    ones = torch.ones(T, B, C, H, W)
    attn._statten_attention(ones, ones, ones, ones)
    torch.testing.assert_close(attn.attn_lif.seen, torch.full_like(attn.attn_lif.seen, float(expected)))
    wide = torch.ones(T, B, C, 2, 4)
    with pytest.raises(ValueError, match="needs a square token grid; this input gives a 2x4 grid"):
        attn._statten_attention(wide, wide, wide, wide)


# --------------------------------------------------------------------------------------------- DVS splits


def test_n_train_is_exact_where_the_product_rounds_off_an_integer():
    """0.07 * 100 is 7.000000000000001 and 0.29 * 100 is 28.999999999999996 in floating point: the training count
    is still 7 (ceil of exactly 7) and 29 (floor of exactly 29), not 8 and 28."""
    assert 0.07 * 100 > 7 and 0.29 * 100 < 29
    assert n_train(100, 0.07, "ceil") == 7
    assert n_train(100, 0.29, "floor") == 29
    assert n_train(10, 0.65, "ceil") == 7 and n_train(10, 0.65, "floor") == 6  # a real fraction still rounds


@pytest.mark.parametrize("rounding", ["ceil", "floor"])
def test_ratio_one_puts_every_sample_in_training(rounding):
    """The ratio's range is (0, 1]: 1.0 is allowed and trains on all n samples."""
    assert n_train(7, 1.0, rounding) == 7


# --------------------------------------------------------------------------------------------- Gesture windows


def test_gesture_window_keeps_its_start_and_drops_its_end(tmp_path):
    """spikingjelly cuts each Gesture sample with ``start <= t < end`` (datasets_offline.md: the CSV windows are
    ``[start, end)``; dvs128_gesture.py uses ``t >= t_start`` and ``t < t_end``): with the window [1000, 2000) the
    events at 999 and 2000 are left out, the one at 1000 kept."""
    t = np.array([999, 1000, 1500, 1999, 2000, 2001], dtype=np.int64)
    events = {"t": t, "x": np.arange(6, dtype=np.int64), "y": np.arange(6, dtype=np.int64) + 10,
              "p": np.array([0, 1, 0, 1, 0, 1], dtype=np.int64)}
    write_aedat31(tmp_path / "user01_led.aedat", events)
    (tmp_path / "user01_led_labels.csv").write_text("class,startTime_usec,endTime_usec\n3,1000,2000\n4,2000,2002\n")
    _cut_gesture_trial(Job("aedat3", tmp_path / "user01_led.aedat", "train", tmp_path / "user01_led_labels.csv"),
                       tmp_path / "out")
    first = load_events(tmp_path / "out" / "train" / "2" / "user01_led_0.npz")
    second = load_events(tmp_path / "out" / "train" / "3" / "user01_led_0.npz")
    np.testing.assert_array_equal(first["t"], [1000, 1500, 1999])
    np.testing.assert_array_equal(first["x"], [1, 2, 3])
    np.testing.assert_array_equal(second["t"], [2000, 2001])  # the event at 2000 opens the next window only


# --------------------------------------------------------------------------------------------- roofline


def _tiny_step() -> MetaStep:
    """Linear(3, 2) (6 weights + 2 biases = 8 trainable parameters) and a frozen [5] buffer-like parameter."""
    with torch.device("meta"):
        model = torch.nn.Linear(3, 2)
        model.frozen = torch.nn.Parameter(torch.empty(5), requires_grad=False)
        x = torch.empty(4, 3)
    return MetaStep(model, lambda: model(x).sum(), torch.float32, 4, 4 * 13)


def test_adamw_step_moves_28_bytes_per_trainable_parameter(monkeypatch):
    """docs/speed.md: the fused AdamW step moves 28 bytes per parameter: fp32 weight read + write (4 + 4), gradient
    read (4), two moments read + write (8 + 8); 16 read and 12 written.  On Linear(3, 2) (8 trainable parameters)
    that is 224 bytes, and its roofline time is those bytes over the bandwidth (no FLOPs counted)."""
    assert ADAMW_BYTES_PER_PARAM == 4 + 4 + 4 + 8 + 8
    monkeypatch.setattr(roofline_mod, "build_on_meta", lambda case, flags: _tiny_step())
    result = roofline_mod.measure(TINY["tiny-sdt-fp32"], ())
    assert result["params"] == 8
    adamw = next(op for op in result["top"] if op["op"] == "optimizer.adamw_fused")
    assert adamw["gb"] == pytest.approx(224 / 1e9)
    assert adamw["ms"] == pytest.approx(1e3 * 224 / H100.bandwidth)
    # every op here is memory bound, so the roofline equals the bytes over the bandwidth
    assert result["roofline_ms"] == pytest.approx(result["memory_bound_ms"])


def test_fp32_matmul_uses_the_non_tensor_core_peak():
    """fp32 matmuls run without TF32 by default (67 TFLOP/s), convolutions on cuDNN's TF32 (494.7): a 256^3
    matmul (33.6 MFLOP over 786 KB, 42.7 FLOP/byte) is compute bound at 67 TFLOP/s, memory bound at 494.7."""
    with torch.device("meta"):
        a, b = torch.empty(256, 256), torch.empty(256, 256)
        with OpTraffic(fp32_peaks=True) as traffic:
            a @ b
    mm = traffic.ops["aten.mm"]
    assert mm["flops"] == 2 * 256 ** 3 and mm["read"] + mm["written"] == 3 * 256 * 256 * 4
    assert mm["seconds"] == pytest.approx(2 * 256 ** 3 / H100.fp32)


def test_eval_batch_norm_reads_its_input_once():
    """With running statistics (eval) BatchNorm needs no statistics pass: input once, weight, bias and the two
    running stats; output written.  Only training BatchNorm pays the second pass."""
    with torch.device("meta"):
        x, bn = torch.empty(4, 3, 8, 8), torch.nn.BatchNorm2d(3).eval()
        with OpTraffic(fp32_peaks=True) as traffic:
            bn(x)
    x_bytes, channel_bytes = 4 * 3 * 64 * 4, 3 * 4
    assert traffic.ops["aten.native_batch_norm"]["read"] == x_bytes + 4 * channel_bytes


# --------------------------------------------------------------------------------------------- saved_memory


def test_state_is_four_fp32_copies_of_the_parameters(monkeypatch):
    """docs/speed.md: ``state`` is the fp32 parameters, their gradients and AdamW's two moments: 4 x 4 bytes per
    parameter; Linear(3, 2) plus a frozen [5] parameter counted at 4 * 13 bytes -> 208 bytes."""
    monkeypatch.setattr(saved_memory_mod, "build_on_meta", lambda case, flags: _tiny_step())
    result = saved_memory_mod.measure(TINY["tiny-sdt-fp32"], ())
    assert result["state_gib"] * 2 ** 30 == pytest.approx(4 * 4 * 13)


def test_parameter_bytes_are_fp32_even_for_a_half_precision_config():
    """An AMP config's model runs in bf16 on the meta device, but its master weights are fp32: 4 bytes a parameter
    (counted before the cast)."""
    step = build_on_meta(TINY["tiny-sdt-bf16"], ())
    numel = sum(p.numel() for p in step.model.parameters())
    assert step.dtype == torch.bfloat16 and next(step.model.parameters()).dtype == torch.bfloat16
    assert step.fp32_parameter_bytes == 4 * numel > 0


# --------------------------------------------------------------------------------------------- profiler figures

_SRC = "cap.txt"


def _heights(ax) -> list[float]:
    return [round(p.get_height(), 9) for p in ax.patches]


def test_times_breakdown_rest_is_total_minus_stem_and_layers():
    """Whole model 10 ms, PSM 1 + RPE 2, two layers of SSA 1 + MLP 2: the rest is 10 - 3 - 6 = 1 ms, and the stem
    + encoder + rest bar reaches the whole-model time."""
    model_times = [dict(source=_SRC, label=label, mean_ms=value) for label, value in
                   (("Run total", 10.0), ("SPS.PSM", 1.0), ("SPS.RPE", 2.0), ("SSA Encoder", 1.0), ("MLP", 2.0))]
    encoder = [dict(source=_SRC, layer=layer, label=label, mean_ms=value) for layer in (0, 1)
               for label, value in (("SSA Encoder", 1.0), ("MLP", 2.0))]
    ax = Figure().add_subplot()
    plots._times_breakdown(ax, {"model_times": model_times, "encoder_means": encoder}, _SRC)
    # whole model | stem, encoder, rest | stem, layer 0, layer 1, rest | SSA, MLP
    assert _heights(ax) == [10.0, 3.0, 6.0, 1.0, 3.0, 3.0, 3.0, 1.0, 1.0, 2.0]


def test_per_layer_bars_keep_their_layers_when_a_block_is_skipped():
    """--skip-blocks 0: layer 0 has an MLP time and no SSA time.  The values were zipped by position, so "layer 0"
    showed layer 1's SSA over layer 0's MLP and the last layer vanished."""
    model_times = [dict(source=_SRC, label=label, mean_ms=value) for label, value in
                   (("Run total", 20.0), ("SPS.PSM", 1.0), ("SPS.RPE", 2.0), ("SSA Encoder", 1.2), ("MLP", 0.5))]
    encoder = [dict(source=_SRC, layer=0, label="MLP", mean_ms=0.6)] + [
        dict(source=_SRC, layer=layer, label=label, mean_ms=value) for layer, ssa, mlp in ((1, 1.2, 0.5), (2, 1.3, 0.4))
        for label, value in (("SSA Encoder", ssa), ("MLP", mlp))]
    ax = Figure().add_subplot()
    plots._layer_times(ax, {"encoder_means": encoder}, _SRC)
    assert _heights(ax) == [0.0, 0.6, 1.2, 0.5, 1.3, 0.4]  # per layer: SSA, MLP
    assert [label.get_text() for label in ax.get_xticklabels()] == ["layer 0", "layer 1", "layer 2"]
    ax = Figure().add_subplot()
    plots._times_breakdown(ax, {"model_times": model_times, "encoder_means": encoder}, _SRC)
    # whole model | stem, encoder 4.0, rest 13.0 | stem, layers 0.6, 1.7, 1.7, rest | SSA, MLP
    assert _heights(ax) == [20.0, 3.0, 4.0, 13.0, 3.0, 0.6, 1.7, 1.7, 13.0, 1.2, 0.5]


def test_layer_sparsity_bar_is_the_mean_of_its_rows():
    """Two rows of one variable and layer (two runs, or per-step probes) with 0.2 and 0.4: the bar is 0.3."""
    rows = [dict(source=_SRC, label="q", layer=0, mean=0.2), dict(source=_SRC, label="q", layer=0, mean=0.4)]
    ax = Figure().add_subplot()
    plots._layer_sparsity(ax, {"layer_sparsity": rows}, _SRC)
    assert _heights(ax) == [0.3]


def test_step_sparsity_draws_the_last_run():
    """Runs 2 and 1 (in that order in the table): the figure shows run 2, the last one."""
    rows = [dict(source=_SRC, run=run, layer=0, t=0, output=value, x=value / 2) for run, value in ((2, 0.8), (1, 0.4))]
    fig = Figure()
    plots._step_sparsity(fig, {"attention_chunks": rows}, _SRC)
    assert fig.get_suptitle() == "Per-time-step attention sparsity, run 2"
    assert [_heights(ax) for ax in fig.axes] == [[0.8], [0.4]]
    assert not math.isnan(fig.axes[0].patches[0].get_height())
