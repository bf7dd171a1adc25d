"""Hand-computed numbers of the hardware model, second round (docs/hw.md): weight slices, intra-layer hops, the
partial-sum NoC fraction, the memory check of both dataflows, the statistical read model's wordlines and positions,
exit weights, rates of fixed-point and silent tensors, and the GPU baselines (dense ops, bytes, measured energy)."""
from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from engine.traces import OpMeta
from hw.activity import _expected_crossbar, _segment_validity, exact_activity, statistical_activity
from hw.baselines import gpu_measured, gpu_modelled
from hw.config import load_config
from hw.mapping import Mapping, Row, build_mapping, crossbar_geometry
from hw.workload import Workload, exit_weights, plane_densities, rates_from_traces, silent_fraction
from hw_helpers import edited, tiny_capture, write


def _conv(cin: int, cout: int, h: int, k: int = 1, pad: int = 0, name: str = "conv") -> OpMeta:
    """A stride-1 conv ``cin x h x h -> cout`` with a ``k x k`` kernel."""
    ho = h + 2 * pad - k + 1
    return OpMeta(name, "conv", None, False, (cin, h, h), (cout, ho, ho), "x",
                  {"kernel": [k, k], "stride": [1, 1], "padding": [pad, pad], "dilation": [1, 1], "groups": 1})


@pytest.fixture(scope="module")
def tiny_mapping(tmp_path_factory):
    """The tiny SDT DVS model (width 64, 32x32 input, T = 4) and ``aster_default``: ``(workload, config, mapping)``."""
    capture, config = tiny_capture("SDT", True)
    workload = Workload.open(write(tmp_path_factory.mktemp("m") / "t", [capture], config))
    preset = load_config("aster_default")
    return workload, preset, build_mapping(workload.meta, preset)


# ------------------------------------------------------------------------------------------------------ mapping
def test_weight_slices_round_up():
    """A 7-bit weight in 2-bit cells needs ceil(7 / 2) = 4 cells (3 would hold only 6 bits); with 2 sign columns 8
    columns per weight, so 16 outputs take 128 columns = 1 column block."""
    preset = load_config("aster_default")
    xb = dataclasses.replace(preset.crossbar, weight_bits=7, cell_bits=2)
    g = crossbar_geometry(_conv(4, 16, 2), dataclasses.replace(preset, crossbar=xb))
    assert (g.slices, g.cols_total, g.col_blocks) == (4, 64, 1)
    signed = dataclasses.replace(preset, crossbar=dataclasses.replace(xb, sign_columns=2))
    g = crossbar_geometry(_conv(4, 16, 2), signed)
    assert (g.slices, g.cols_total, g.col_blocks) == (8, 128, 1)


def test_intra_layer_hops_are_the_mean_distance_to_the_first_tile(tiny_mapping):
    """23 used tiles on a snake of width ceil(sqrt(23)) = 5.  proj_conv3 (6 crossbars, 2 tiles) sits on tiles 3, 4
    = (0, 3), (0, 4): mean distance to the first (0 + 1) / 2 = 0.5; rpe_conv (10 crossbars, 3 tiles) on tiles 5, 6,
    7 = (1, 4), (1, 3), (1, 2) (row 1 runs backwards): (0 + 1 + 2) / 3 = 1; one-tile layers 0."""
    _, _, m = tiny_mapping
    assert m.tiles_used == 23
    hops = {r.name: m.vec["intra_hops"][i] for i, r in enumerate(m.rows) if r.geom is not None}
    assert hops["patch_embed.proj_conv3"] == pytest.approx(0.5)
    assert hops["patch_embed.rpe_conv"] == pytest.approx(1.0)
    assert hops["block.0.mlp.fc1_conv"] == pytest.approx(0.5) and hops["block.0.attn.q_conv"] == 0


def test_partial_sums_cross_the_noc_only_beyond_the_first_tile(tiny_mapping):
    """A column block's row blocks fill tiles of 4 subarrays in turn: only the sums of row blocks beyond the first
    tile cross the NoC, a fraction max(0, 1 - 4 / row blocks): rpe_conv (3x3x64 = 576 rows, 5 blocks) 1 - 4/5 =
    0.2; fc2_conv (256 rows, 2 blocks) and proj_conv3 (288 rows, 3 blocks) 0."""
    _, preset, m = tiny_mapping
    assert preset.chip.subarrays_per_tile == 4
    frac = {r.name: (r.geom.row_blocks, m.vec["psum_noc_fraction"][i]) for i, r in enumerate(m.rows) if r.geom}
    assert frac["patch_embed.rpe_conv"] == (5, pytest.approx(0.2))
    assert frac["block.0.mlp.fc2_conv"] == (2, 0.0) and frac["patch_embed.proj_conv3"] == (3, 0.0)


# LIF outputs of the tiny model: stem 8, 16, 32 channels at 32x32 and 64 at 8x8; per block shortcut, q, k, v and
# fc1 LIFs of 64 x 64, talking heads 4 x 16, fc2 LIF 256 x 64; head LIF 64.
LIF_NUMEL = [8192, 16384, 32768, 4096] + 2 * [4096] * 5 + 2 * [64, 16384] + [64]


def test_timestep_major_memory_holds_all_membranes_and_two_stream_tensors(tiny_mapping):
    """timestep_major keeps every membrane (135360 neurons x 16 bits) plus the residual stream: identity and sum of
    the largest residual tensor, 2 x 4096 x 16 = 131072 bits: 2296832 bits.  Provided: 32 KiB per used tile =
    32 x 1024 x 8 bits x 23 tiles = 6029312; spike SRAM 8 KiB x 23 = 1507328; global buffer 2048 KiB = 16777216."""
    _, _, m = tiny_mapping
    assert sum(LIF_NUMEL) == 135360
    assert sorted(LIF_NUMEL) == sorted(m.vec["out_numel"][m.vec["lif"]].tolist())
    mem = m.memory
    assert mem["state_bits_required"] == 135360 * 16 + 2 * 4096 * 16 == 2296832
    assert mem["state_bits_provided"] == 32 * 1024 * 8 * 23 == 6029312
    assert mem["spike_bits_provided"] == 8 * 1024 * 8 * 23
    assert mem["global_buffer_bits_provided"] == 2048 * 1024 * 8
    assert mem["state_spill_fraction"] == 0


def test_layer_major_memory_holds_one_layer_and_a_chunk_of_stream(tiny_mapping):
    """layer_major over all T = 4 steps: the largest LIF's membranes (32768 x 16 = 524288 bits) plus the residual
    stream for 4 steps (4 x 131072): 1048576 bits.  In chunks of 2 steps every layer's membranes wait for its next
    chunk: all 135360 x 16 plus the stream for 2 steps, 2427904 bits (one layer's were counted, 786432: chunk 1 was
    then the timestep_major schedule at a third of its state).  The global buffer stages twice the largest layer
    input (16384 spikes, proj_conv2 / fc2_conv) for a chunk: 65536 bits at 2 steps."""
    workload, preset, _ = tiny_mapping
    for chunk, state in ((0, 32768 * 16 + 4 * (2 * 4096 * 16)), (1, 2296832),  # chunk 1: the timestep_major state
                         (2, 135360 * 16 + 2 * (2 * 4096 * 16))):
        layer_major = dataclasses.replace(preset, dataflow=dataclasses.replace(preset.dataflow, order="layer_major",
                                                                               layer_major_chunk=chunk))
        mem = build_mapping(workload.meta, layer_major).memory
        assert mem["chunk"] == (chunk or 4) and mem["state_bits_required"] == state
    assert state == 2427904 and mem["global_buffer_bits_required"] == 2 * 16384 * 2


def test_memory_spills_what_the_kib_do_not_hold(tiny_mapping):
    """With 8 KiB of state SRAM per tile, 23 tiles give 8 x 1024 x 8 x 23 = 1507328 bits of the 2296832 needed
    (1 KiB = 1024 bytes): the spill fraction is 1 - 1507328 / 2296832."""
    workload, preset, _ = tiny_mapping
    small = dataclasses.replace(preset, memory=dataclasses.replace(preset.memory, state_kib_per_tile=8))
    mem = build_mapping(workload.meta, small).memory
    assert mem["state_spill_fraction"] == pytest.approx(1 - 1507328 / 2296832, rel=1e-12)


# ------------------------------------------------------------------------------------------ statistical activity
def _padded_geometry(cin: int = 2):
    """A 3x3 conv with padding 1 on a 4x4 input: per axis the outputs see 2, 3, 3, 2 valid kernel offsets, so
    10 x 10 = 100 valid (kernel position, output) pairs of the 9 x 16 = 144."""
    return crossbar_geometry(_conv(cin, 8, 4, k=3, pad=1), load_config("aster_default"))


def test_expected_wordlines_count_only_kernel_positions_inside_the_input():
    """Density 0.5 on the 100 valid kernel positions x 2 channels of the padded 3x3 conv: 0.5 x 200 = 100 expected
    wordlines per step (padding drives none), in both read models; exact mode agrees on an all-ones input (200)."""
    g = _padded_geometry()
    for bernoulli in (True, False):
        wl, _, _ = _expected_crossbar(g, np.array([[0.5], [1.0]]), np.zeros(2), bernoulli)
        assert wl.tolist() == [100.0, 200.0]


def test_expected_reads_skip_padding_rows():
    """Every bit set (density 1, nothing silent) in the 1-channel padded conv: 100 wordlines (the valid kernel
    positions), and each of the 16 outputs reads its single row block (9 rows) once: 16 reads, 16 positions."""
    g = _padded_geometry(cin=1)
    wl, reads, pos = _expected_crossbar(g, np.array([[1.0]]), np.zeros(1), True)
    assert wl.tolist() == [100.0] and reads.tolist() == [[16.0]] and pos.tolist() == [16.0]


def test_segment_validity_of_the_last_row_and_column():
    """The padded 3x3 conv's bottom output row (input rows 2..4) sees rows 2 and 3 only: its kernel row 2 reads
    row 4 = padding.  So kernel position (2, 1) is valid at 3 x 4 outputs, (1, 2) at 4 x 3; 100 in all."""
    valid = _segment_validity(_padded_geometry(cin=1)).reshape(3, 3, 4, 4)
    assert valid[2, 1].sum() == 3 * 4 and not valid[2, 1, 3].any()  # kernel (2, 1): output row 3 invalid
    assert valid[1, 2].sum() == 4 * 3 and not valid[1, 2, :, 3].any()
    assert int(valid.sum()) == 100


def test_linear_model_reads_a_position_at_most_once():
    """Linear model, two bit planes of densities 0.8 and 0.7 (sum 1.5): a position is read with probability
    min(1.5, 1) = 1, so 16 positions of the padded conv (each has a valid kernel position), not 24."""
    _, _, pos = _expected_crossbar(_padded_geometry(), np.array([[0.8, 0.7]]), np.zeros(1), False)
    assert pos.tolist() == [16.0]


def test_bernoulli_positions_need_one_spike_among_all_channels():
    """1x1 conv, 2 channels at density 0.5, nothing silent: a pixel is idle with probability 0.5 ** 2 = 0.25, so 0.75
    x 4 positions = 3 are read; at density 0.5 in 1 channel 0.5 x 4 = 2."""
    preset = load_config("aster_default")
    for cin, expected in ((2, 3.0), (1, 2.0)):
        g = crossbar_geometry(_conv(cin, 8, 2), preset)
        _, reads, pos = _expected_crossbar(g, np.array([[0.5]]), np.zeros(1), True)
        assert pos.tolist() == [pytest.approx(expected)] and reads.tolist() == [[pytest.approx(expected)]]


def test_statistical_input_sum_is_the_mean_value_not_the_non_zeros(tmp_path):
    """DVS counts of 3 at every pixel of the first layer's 2 x 32 x 32 input: per step 2048 non-zeros summing to
    6144, in exact and statistical mode (the crossbar row and the ``input`` row)."""
    capture, config = tiny_capture("SDT", True)
    capture = edited(capture, 0.0)
    capture.tensors["in:patch_embed.proj_conv"] = torch.full_like(capture.tensors["in:patch_embed.proj_conv"], 3.0)
    workload = Workload.open(write(tmp_path / "t", [capture], config))
    preset = load_config("aster_default")
    mapping = build_mapping(workload.meta, preset)
    first, inp = mapping.index("patch_embed.proj_conv"), mapping.index("input")
    stat = statistical_activity(rates_from_traces(workload.reader), mapping, preset)
    exact = exact_activity(workload.reader.load_raw(0), mapping, preset)
    for act in (stat, exact):
        for row in (first, inp):
            assert act.in_sum[row].tolist() == pytest.approx([3 * 2048] * 4)
            assert act.in_nnz[row].tolist() == pytest.approx([2048] * 4)


# ----------------------------------------------------------------------------------------------------- workload
def test_exit_weights_are_the_fraction_still_running():
    """Exits of 25 % after step 1, 25 % after step 2, 50 % after step 3: all run step 1, 75 % step 2, 50 % step 3."""
    assert exit_weights(np.array([0.25, 0.25, 0.5])).tolist() == [1.0, 0.75, 0.5]
    assert exit_weights(np.array([0.0, 0.0, 1.0])).tolist() == [1.0, 1.0, 1.0]


def test_fixed_point_mean_is_in_value_units():
    """uint8 values 4 and 0 with 2 fraction bits are 1.0 and 0.0: mean 0.5 (not 2 stored units); planes: bit 2
    set in half the elements, bits 0 and 1 never."""
    entry = {"encoding": "uint8", "repeat_t": False, "fraction_bits": 2}
    dens, mean = plane_densities(np.array([[4, 0, 4, 0]], dtype=np.uint8), entry, 1, 4)
    assert mean.tolist() == [0.5] and dens.tolist() == [[0.0, 0.0, 0.5]]


def test_silent_fraction_counts_positions_without_a_spike():
    """4 positions of 2 channels, one with a spike at step 0, three at step 1: silent fractions 0.75 and 0.25."""
    x = np.zeros((2, 2, 2, 2), dtype=np.uint8)
    x[0, 0, 0, 1] = 1
    x[1, 0, 0, 0] = x[1, 0, 1, 1] = x[1, 1, 1, 0] = 1
    assert silent_fraction(x, {"repeat_t": False}, 2).tolist() == [0.75, 0.25]


# ---------------------------------------------------------------------------------------------------- baselines
def _gpu_case(mode: str):
    """A 1x1 conv 4 -> 8 channels at 2x2 and an attention core of 4 heads x 8 dims over 4 tokens, T = 2."""
    preset = load_config("aster_default")
    op = _conv(4, 8, 2)
    core = OpMeta("core", "attention", 0, True, (32, 2, 2), (32, 2, 2), None, {"mode": mode, "head_dim": 8})
    rows = [Row("conv", "conv", None, False, False, 0, op, crossbar_geometry(op, preset)),
            Row("core", "attention", 0, True, False, 0, core)]
    mapping = Mapping(rows=rows, T=2, chunk=1, tiles_used=1, crossbars_used=1, memory={})
    return gpu_modelled(SimpleNamespace(T=2, ops=[op, core]), mapping, preset.gpu), preset.gpu


@pytest.mark.parametrize("mode,attention", [("SDT", 3 * 128 * 2), ("STAtten", 2 * 8 * 128 * 2)])
def test_gpu_dense_ops_and_bytes_by_hand(mode, attention):
    """MACs: 4 positions x 4 x 8 = 128 per step, 256 over T = 2, 2 ops each; attention on the 128-element output
    per step: SDT 3 element ops, STAtten 2 x head_dim = 16.  Bytes (FP16): weights 4 x 8 = 32 once plus per step
    input 16 and output 32 values: (32 + 2 x 48) x 2 = 256.  Time: the larger of ops / (0.3 x 10 TOPS) and
    256 B / 68 GB/s, plus 2 ops x 2 kernels x 10 us; energy 15 W x time."""
    res, gpu = _gpu_case(mode)
    ops = 2 * 256 + attention
    assert res["dense_ops"] == ops and res["bytes"] == 256 and res["kernels"] == 4
    seconds = max(ops / (0.3 * 10e12), 256 / 68e9) + 4 * 10e-6
    assert (gpu.power_w, gpu.peak_tops, gpu.efficiency, gpu.bandwidth_gbps) == (15.0, 10.0, 0.3, 68.0)
    assert res["latency_ms"] == pytest.approx(seconds * 1e3, rel=1e-12)
    assert res["energy_uj"] == pytest.approx(15.0 * seconds * 1e6, rel=1e-12)


def test_gpu_measured_energy_is_per_sample(tmp_path):
    """10 W for 2 ms over a batch of 4: 0.02 J per batch = 20000 uJ, 5000 uJ per sample (batch 1: 20000)."""
    path = tmp_path / "gpu.json"
    path.write_text(json.dumps({"latency_ms": 2.0, "avg_power_W": 10.0, "batch": 4}))
    assert gpu_measured(path)["energy_uj"] == pytest.approx(5000.0)
    path.write_text(json.dumps({"latency_ms": 2.0, "avg_power_W": 10.0}))
    assert gpu_measured(path)["energy_uj"] == pytest.approx(20000.0)
    assert math.isclose(gpu_measured(path)["latency_ms"], 2.0)
