"""Hardware-model numbers that the earlier rounds left unchecked (third mutation round, docs/hw.md): the tile
limit and crossbar replication, weight cells, what a skipped block frees, state and global-buffer spills, the exit
check per class, the attention unit's counts by hand (event-driven, dense and on rewritten crossbars), pool kinds,
full 256-row blocks, higher bit planes and padding in both read models, attention barriers of the pipeline, the
cycles of replicated crossbars, crossbar writes and lanes, the skip-list range and the mean rates' bit planes.

The tiny model (tests/hw_helpers.py: 2 blocks of width 64, 4 heads x 16, 8 x 8 = 64 tokens, 10 classes, T = 4)
on ``aster_default`` (128 x 128 crossbars, 8-bit weights in 2-bit cells: 4 columns per weight, 4 per tile) maps to
61 crossbars on 23 tiles: stem convs 1, 1, 2, 6 and rpe_conv 10 (tiles 1, 1, 1, 2, 3), per block q, k, v, proj 2
each (1 tile each), fc1 8 (2 tiles), fc2 4 (1 tile), and the head 1 (1 tile): 18 crossbar layers."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from engine.traces import OpMeta
from hw.activity import Activity, _expected_crossbar, crossbar_maps, exact_activity, statistical_activity
from hw.config import HwInputError, load_config, with_features
from hw.counts import ALL_COUNTS
from hw.energy import COMPONENTS
from hw.mapping import build_mapping, crossbar_geometry
from hw.pipeline import make_variant
from hw.workload import Workload, load_skip_json, nnz_per_t, rates_from_traces
from hw_helpers import edited, tiny_capture, write

C = {name: i for i, name in enumerate(ALL_COUNTS)}
T = 4
N_D = 64 * 64  # tokens x channels of an attention core (4 heads x 16)


def _replace(config, section: str, **values):
    """``config`` with fields of one section (``chip``, ``crossbar``, ``memory``, ``dataflow``) replaced."""
    return dataclasses.replace(config, **{section: dataclasses.replace(getattr(config, section), **values)})


def _evaluate(config, workload, exit_step: int | None = None):
    """``(variant, counts [R, T, A], timing, energy [R, T, C])`` of sample 0 (exits after ``exit_step``)."""
    variant = make_variant("v", config, workload)
    act = Activity.stack([exact_activity(workload.reader.load_raw(0), variant.mapping, variant.config)])
    w = None if exit_step is None else (np.arange(T) < exit_step)[None].astype(float)
    counts, timing, energy = variant.evaluate(act, workload.meta.input_kind, w)
    return variant, counts[0], timing, energy[0]


def _conv(cin: int, h: int, k: int, pad: int) -> OpMeta:
    """A stride-1 conv ``cin x h x h -> 8`` channels with a ``k x k`` kernel."""
    ho = h + 2 * pad - k + 1
    return OpMeta("conv", "conv", None, False, (cin, h, h), (8, ho, ho), "x",
                  {"kernel": [k, k], "stride": [1, 1], "padding": [pad, pad], "dilation": [1, 1], "groups": 1})


def _nnz(capture, tensor: str) -> np.ndarray:
    """Non-zeros per step of a captured tensor, counted with torch (independent of hw.workload)."""
    return (capture.tensors[tensor] != 0).flatten(1).sum(1).numpy().astype(float)


@pytest.fixture(scope="module")
def sdt(tmp_path_factory):
    capture, config = tiny_capture("SDT", True)
    return Workload.open(write(tmp_path_factory.mktemp("sdt") / "t", [capture], config))


@pytest.fixture(scope="module")
def statten(tmp_path_factory):
    capture, config = tiny_capture("STAtten", True)
    return Workload.open(write(tmp_path_factory.mktemp("statten") / "t", [capture], config))


@pytest.fixture(scope="module")
def sdt_skip1(tmp_path_factory, sdt):
    """The SDT workload with block 1's attention skipped (--skip-json)."""
    path = tmp_path_factory.mktemp("skip") / "skip.json"
    path.write_text('{"skipped_blocks": [1]}')
    return Workload.open(sdt.reader.dir, skip_json=path)


# ------------------------------------------------------------------------------------------------------ mapping
def test_a_model_that_fills_every_tile_is_mapped(sdt):
    """The tiny model needs 23 tiles: a chip of exactly 23 holds it (a model larger than max_tiles is refused, not
    one equal to it); at 22 the error names the 23 tiles and 61 crossbars.  The chip provides max_tiles x 4
    crossbars (2048 x 4 = 8192 in aster_default)."""
    preset = load_config("aster_default")
    assert build_mapping(sdt.meta, preset).memory["crossbars_provided"] == 2048 * 4
    mapping = build_mapping(sdt.meta, _replace(preset, "chip", max_tiles=23))
    assert (mapping.tiles_used, mapping.crossbars_used) == (23, 61)
    assert mapping.memory["crossbars_provided"] == 23 * 4
    with pytest.raises(HwInputError, match=r"'chip.max_tiles' is 22, .* needs 23 tiles \(61 crossbars of 128x128, "
                                           r"4 per tile\)"):
        build_mapping(sdt.meta, _replace(preset, "chip", max_tiles=22))


def test_replicated_crossbars_are_counted_in_tiles_and_in_the_error(sdt):
    """Replication 2 copies every layer's crossbars: 122 crossbars on ceil(2 x crossbars / 4) tiles per layer =
    1 + 1 + 1 + 3 + 5 (stem) + 2 x (4 x 1 + 4 + 2) (blocks) + 1 (head) = 32 tiles; a 31-tile chip names both."""
    preset = _replace(load_config("aster_default"), "crossbar", replication=2)
    mapping = build_mapping(sdt.meta, preset)
    assert (mapping.tiles_used, mapping.crossbars_used) == (32, 122)
    with pytest.raises(HwInputError, match=r"needs 32 tiles \(122 crossbars of 128x128"):
        build_mapping(sdt.meta, _replace(preset, "chip", max_tiles=31))


def test_weight_cells_are_the_rows_times_columns_of_every_layer(sdt):
    """Weight programming writes k*k*C_in rows x 4 C_out columns per layer: stem 18 x 32 + 72 x 64 + 144 x 128 +
    288 x 256 + 576 x 256, per block 4 x (64 x 256) + 64 x 1024 + 256 x 256, head 64 x 40: 640576 cells."""
    stem = 18 * 32 + 72 * 64 + 144 * 128 + 288 * 256 + 576 * 256
    block = 4 * 64 * 256 + 64 * 1024 + 256 * 256
    assert stem + 2 * block + 64 * 40 == 640576
    assert build_mapping(sdt.meta, load_config("aster_default")).memory["weight_cells"] == 640576


def test_a_skipped_block_frees_its_tiles_state_and_control_words(sdt_skip1):
    """Skipping block 1's attention power-gates its q, k, v and proj crossbars (4 tiles, 8 crossbars: 19 tiles and
    53 crossbars used), drops its shortcut, q, k, v LIFs (4 x 4096) and talking-heads LIF (64) from the resident
    membranes: (135360 - 16448) x 16 + 2 x 4096 x 16 bits, and leaves 14 control words per step (18 - 4 layers)."""
    preset = load_config("aster_default")
    variant, counts, _, _ = _evaluate(preset, sdt_skip1)
    mapping = variant.mapping
    assert (mapping.tiles_used, mapping.crossbars_used) == (19, 53)
    assert mapping.memory["state_bits_required"] == (135360 - 16448) * 16 + 2 * 4096 * 16
    assert counts[mapping.index("controller"), :, C["ctrl_steps"]].tolist() == [14] * T


# ------------------------------------------------------------------------------------------- spills and the GB
def test_a_layer_major_global_buffer_that_fits_spills_nothing(sdt):
    """layer_major stages 2 x 16384 spikes x 4 steps = 131072 bits, far below the 2048 KiB global buffer: the
    spill fraction is 0 (not negative) and no staged spike goes to DRAM."""
    preset = _replace(load_config("aster_default"), "dataflow", order="layer_major")
    variant, counts, _, _ = _evaluate(preset, sdt)
    assert variant.mapping.memory["global_buffer_bits_required"] == 131072
    assert variant.mapping.memory["global_buffer_spill_fraction"] == 0.0
    not_input = [i for i, r in enumerate(variant.mapping.rows) if r.kind != "input"]
    assert not counts[not_input, :, C["dram_bits"]].any()


def test_spilled_state_moves_its_reads_and_writes_to_dram(sdt):
    """8 KiB of state SRAM per tile spills f = 1 - 1507328 / 2296832 of the state traffic: block.0.attn's residual
    add reads 2 x 4096 x 16 and writes 4096 x 16 bits per step, so DRAM gets 3 x 4096 x 16 x f and the state
    buffer keeps 1 - f of each; the fc1_lif membrane (4096 x 16, read and written) sends 2 x 4096 x 16 x f."""
    preset = _replace(load_config("aster_default"), "memory", state_kib_per_tile=8)
    variant, counts, _, _ = _evaluate(preset, sdt)
    f = 1 - 1507328 / 2296832
    res, lif = variant.mapping.index("block.0.attn"), variant.mapping.index("block.0.mlp.fc1_lif")
    np.testing.assert_allclose(counts[res, :, C["dram_bits"]], [3 * 4096 * 16 * f] * T, rtol=1e-12)
    np.testing.assert_allclose(counts[res, :, C["state_rd_bits"]], [2 * 4096 * 16 * (1 - f)] * T, rtol=1e-12)
    np.testing.assert_allclose(counts[res, :, C["state_wr_bits"]], [4096 * 16 * (1 - f)] * T, rtol=1e-12)
    np.testing.assert_allclose(counts[lif, :, C["dram_bits"]], [2 * 4096 * 16 * f] * T, rtol=1e-12)


def test_a_spilling_global_buffer_still_takes_the_input_frames_whole(sdt):
    """layer_major with a 4 KiB global buffer (32768 of the 131072 bits staged): 3/4 of the staged spike traffic
    goes to DRAM instead, but the frames from DRAM are written into the buffer whole, as with a large buffer."""
    big = _replace(load_config("aster_default"), "dataflow", order="layer_major")
    small = _replace(big, "memory", global_buffer_kib=4)
    variant, spilled, _, _ = _evaluate(small, sdt)
    _, whole, _, _ = _evaluate(big, sdt)
    assert variant.mapping.memory["global_buffer_spill_fraction"] == 0.75
    inp, q = variant.mapping.index("input"), variant.mapping.index("block.0.attn.q_conv")
    for count in ("gb_wr_bits", "dram_bits"):
        assert spilled[inp, :, C[count]].tolist() == whole[inp, :, C[count]].tolist() and whole[inp, 0, C[count]] > 0
    staged = whole[q, :, C["gb_rd_bits"]]
    assert staged.min() > 0 and not whole[q, :, C["dram_bits"]].any()
    np.testing.assert_allclose(spilled[q, :, C["gb_rd_bits"]], staged / 4, rtol=1e-12)
    np.testing.assert_allclose(spilled[q, :, C["dram_bits"]], staged * 3 / 4, rtol=1e-12)


# ----------------------------------------------------------------------------------------------- controller
def test_the_exit_check_accumulates_and_compares_each_class(sdt):
    """With exit steps, every step ends with an exit check over the head's 10 classes (not the first layer's 8
    channels): 10 checks per step, each 0.1195 pJ, next to 18 control words of 0.288 pJ."""
    preset = load_config("aster_default")
    assert (preset.energy.ctrl_step, preset.energy.exit_check_class) == (0.288, 0.1195)
    variant, counts, _, energy = _evaluate(preset, sdt, exit_step=T)
    ctrl = variant.mapping.index("controller")
    assert counts[ctrl, :, C["exit_checks"]].tolist() == [10] * T
    assert counts[ctrl, :, C["ctrl_steps"]].tolist() == [18] * T
    np.testing.assert_allclose(energy[ctrl, :, COMPONENTS.index("controller")], [18 * 0.288 + 10 * 0.1195] * T,
                               rtol=1e-12)


# ------------------------------------------------------------------------------------------- attention unit
def test_event_driven_sdt_attention_gates_each_k_and_q_spike(sdt):
    """SDT's Q * SN(sum_N(K * V)), event-driven: one AND (V lookup) per K spike and one per Q spike."""
    capture, _ = tiny_capture("SDT", True)
    variant, counts, _, _ = _evaluate(load_config("aster_default"), sdt)
    core = variant.mapping.index("block.0.attn.core")
    expected = _nnz(capture, "attn:0:k") + _nnz(capture, "attn:0:q")
    assert _nnz(capture, "attn:0:v").tolist() != _nnz(capture, "attn:0:q").tolist()
    assert counts[core, :, C["attn_gates"]].tolist() == expected.tolist()


def test_statten_attention_counts_by_hand(statten):
    """STAtten Q (K^T V) with DVS input, d = 16: event-driven, each K spike adds a V row (nnz(K) x 16 increments),
    each Q spike a row of adds (nnz(Q) x 16), plus out * x_pool + x_pool (4096 ANDs and increments); dense,
    N*D*d = 65536 increments and adds, with the same 4096 ANDs and increments."""
    capture, _ = tiny_capture("STAtten", True)
    nnz_k, nnz_q = _nnz(capture, "attn:0:k"), _nnz(capture, "attn:0:q")
    preset = load_config("aster_default")
    variant, counts, _, _ = _evaluate(preset, statten)
    core = variant.mapping.index("block.0.attn.core")
    assert counts[core, :, C["attn_gates"]].tolist() == [N_D] * T
    assert counts[core, :, C["attn_incs"]].tolist() == (nnz_k * 16 + N_D).tolist()
    assert counts[core, :, C["attn_adds"]].tolist() == (nnz_q * 16).tolist()
    _, dense, _, _ = _evaluate(with_features(preset, event_driven_attention=False), statten)
    assert dense[core, :, C["attn_gates"]].tolist() == [N_D] * T
    assert dense[core, :, C["attn_incs"]].tolist() == [N_D * 16 + N_D] * T
    assert dense[core, :, C["attn_adds"]].tolist() == [N_D * 16] * T


def test_prior_pim_statten_crossbar_attention_by_hand(statten):
    """prior_pim, STAtten, 128-row crossbars (64 tokens: one row block), 4 heads, d = 16, 4 slices, chunk 2:
    per step V (4096 cells) and half of a chunk's K^T V weights (4 x 16 x 16 x 4 / 2 = 2048) are written;
    gated wordlines are K's then Q's spikes, the cells read K's x d plus Q's x d x 4 slices; the 256 Q reads (64
    tokens x 4 heads) shift-add 16 x 3 slices each; the crossbar serialises d K reads and 64 Q reads.  Without
    gating both reads drive all 4096 rows."""
    capture, _ = tiny_capture("STAtten", True)
    nnz_k, nnz_q = _nnz(capture, "attn:0:k"), _nnz(capture, "attn:0:q")
    preset = load_config("prior_pim")
    assert (preset.crossbar.rows, preset.features.wordline_gating) == (128, True)
    variant, counts, _, _ = _evaluate(preset, statten)
    core = variant.mapping.index("block.0.attn.core")
    assert counts[core, :, C["cell_writes"]].tolist() == [4096 + 2048] * T
    assert counts[core, :, C["wl_rows"]].tolist() == (nnz_k + nnz_q).tolist()
    assert counts[core, :, C["cell_reads"]].tolist() == (nnz_k * 16 + nnz_q * 16 * 4).tolist()
    assert counts[core, :, C["shift_adds"]].tolist() == [256 * 16 * 3] * T
    assert counts[core, :, C["serial_reads"]].tolist() == [16 + 64] * T
    _, ungated, _, _ = _evaluate(with_features(preset, wordline_gating=False), statten)
    assert ungated[core, :, C["wl_rows"]].tolist() == [2 * N_D] * T


# ------------------------------------------------------------------------------------- pools, crossbar activity
def test_pools_of_spikes_or_and_pools_of_values_compare(sdt):
    """maxpool2 follows a LIF (binary input): one 9-input OR per output, 32 x 16 x 16 = 8192; maxpool3 follows
    proj_conv3's BN (values): one compare tree per output, 64 x 8 x 8 = 4096."""
    variant, counts, _, _ = _evaluate(load_config("aster_default"), sdt)
    spikes, values = variant.mapping.index("patch_embed.maxpool2"), variant.mapping.index("patch_embed.maxpool3")
    assert counts[spikes, :, C["pool_or"]].tolist() == [8192] * T and not counts[spikes, :, C["pool_cmp"]].any()
    assert counts[values, :, C["pool_cmp"]].tolist() == [4096] * T and not counts[values, :, C["pool_or"]].any()


def test_a_full_256_row_block_counts_256_wordlines():
    """A 1x1 conv of 256 input channels in 256-row crossbars, every input spike set at 2 x 2 pixels: each position
    drives all 256 rows of its one block (4 x 256 = 1024 wordlines, 4 reads); 256 does not fit a uint8 count."""
    preset = _replace(load_config("aster_default"), "crossbar", rows=256)
    geom = crossbar_geometry(_conv(256, 2, 1, 0), preset)
    assert geom.row_blocks == 1
    packed = np.full((1, 2, 2, 256 // 8), 255, dtype=np.uint8)
    stats = crossbar_maps(packed, {"encoding": "bits", "repeat_t": False}, geom, preset)
    assert (stats["wl"].tolist(), stats["reads"].tolist(), stats["pos"].tolist()) == ([1024.0], [4.0], [4.0])


def test_a_position_read_only_in_a_higher_bit_plane_is_a_position_read():
    """Event counts 1 and 2 at two pixels of a 1x1 conv (2 channels): plane 0 reads one pixel, plane 1 the other,
    so 2 reads at 2 positions (no partial sums across planes of different positions)."""
    g = crossbar_geometry(_conv(2, 2, 1, 0), load_config("aster_default"))
    x = np.zeros((1, 2, 2, 2), dtype=np.uint8)
    x[0, 0, 0, 0], x[0, 1, 1, 1] = 1, 2
    stats = crossbar_maps(x, {"encoding": "uint8", "repeat_t": False}, g, load_config("aster_default"))
    assert (stats["reads"].tolist(), stats["pos"].tolist(), stats["planes"]) == ([2.0], [2.0], 2)


def test_linear_model_reads_a_block_only_where_its_kernel_position_is_inside():
    """3x3 conv, padding 1, 4x4 input, 128 channels in 128-row crossbars: each row block is one kernel position,
    inside the input at 9 (corner), 12 (edge) or 16 (centre) of the 16 outputs, 100 in all; at density 0.5 the
    linear model expects 50 reads (a block over padding only is never read), not 0.5 x 9 x 16 = 72."""
    g = crossbar_geometry(_conv(128, 4, 3, 1), load_config("aster_default"))
    assert g.row_blocks == 9
    _, reads, _ = _expected_crossbar(g, np.array([[0.5]]), np.zeros(1), False)
    assert sorted(reads[0].tolist()) == [4.5] * 4 + [6.0] * 4 + [8.0]
    assert reads.sum() == 50.0


def test_linear_model_never_reads_a_position_over_padding_only():
    """A 1x1 conv with padding 1 on a 2x2 input has 4x4 outputs, of which only the 4 inner ones see the input: at
    density 0.5 the linear model reads 0.5 x 4 = 2 positions, not 8."""
    g = crossbar_geometry(_conv(8, 2, 1, 1), load_config("aster_default"))
    assert g.out_hw == (4, 4)
    _, reads, pos = _expected_crossbar(g, np.array([[0.5]]), np.zeros(1), False)
    assert pos.tolist() == [2.0] and reads.tolist() == [[2.0]]


def test_statistical_mode_reads_an_analog_image_in_its_bit_serial_passes(tmp_path):
    """A normalised static image (negative values: analog float32) is read in analog_input_bits = 8 passes in both
    modes: the first layer's planes are 8 in exact and in statistical mode."""
    capture, config = tiny_capture("SDT", False)
    workload = Workload.open(write(tmp_path / "t", [capture], config))
    preset = load_config("aster_default")
    mapping = build_mapping(workload.meta, preset)
    first = mapping.index("patch_embed.proj_conv")
    assert workload.reader.load_raw(0).index[mapping.rows[first].op.tensor]["encoding"] == "float32"
    assert exact_activity(workload.reader.load_raw(0), mapping, preset).planes[first] == 8
    assert statistical_activity(rates_from_traces(workload.reader), mapping, preset).planes[first] == 8


# ----------------------------------------------------------------------------------------------------- cycles
def test_a_skipped_attention_core_is_no_pipeline_barrier(sdt, sdt_skip1):
    """Pipelined segments start after each stage holding an attention core (v_conv's): stages 0-4 are the stem,
    each block has 6 (q, k, v, proj, fc1, fc2), so barriers fall after stages 7 and 13.  With block 1's attention
    skipped only block 0's core remains (its MLP and the head follow on stages 8-13): segments start at 0 and 8."""
    preset = load_config("aster_default")
    assert make_variant("v", preset, sdt).plan.segment_starts.tolist() == [0, 8, 14]
    assert make_variant("v", preset, sdt_skip1).plan.segment_starts.tolist() == [0, 8]


def test_replicated_crossbars_share_a_layer_s_reads(sdt):
    """Replication 2 splits each layer's reads over two copies: q_conv's row takes half its serial reads x
    (10 + 8 x 0.833) ns at 1 GHz."""
    preset = _replace(load_config("aster_default"), "crossbar", replication=2)
    variant, counts, timing, _ = _evaluate(preset, sdt)
    q = variant.mapping.index("block.0.attn.q_conv")
    serial = counts[q, :, C["serial_reads"]]
    assert serial.min() > 0
    np.testing.assert_allclose(timing.row_cycles[0, q], serial * (10 + 8 * 0.833) / 2, rtol=1e-12)


def test_crossbar_attention_writes_take_their_nanoseconds_at_the_clock(sdt):
    """prior_pim's SDT core at 0.5 GHz: 4096 dense Q ANDs over 128 lanes (32 cycles), 16 serial K-channel reads of
    (10 + 8 x 0.833) ns and 64 rows written at 10 ns, all in cycles of 2 ns: 32 + 16 x 8.332 + 320 = 485.312."""
    preset = _replace(load_config("prior_pim"), "chip", clock_ghz=0.5)
    assert (preset.timing.cell_write_ns, preset.chip.attention_lanes) == (10.0, 128)
    variant, counts, timing, _ = _evaluate(preset, sdt)
    core = variant.mapping.index("block.0.attn.core")
    assert counts[core, :, C["write_rows"]].tolist() == [64] * T
    np.testing.assert_allclose(timing.row_cycles[0, core], [32 + 16 * 8.332 + 320] * T, rtol=1e-12)


def test_lif_updates_spread_over_the_lanes_of_every_tile_of_the_stage(sdt):
    """fc2_lif (256 x 64 = 16384 neurons) runs on fc1_conv's stage, 2 tiles of 128 LIF lanes: 64 cycles per step;
    block 0's fc1_lif (4096) on the one-tile proj_conv stage: 32."""
    variant, _, timing, _ = _evaluate(load_config("aster_default"), sdt)
    m = variant.mapping
    assert m.vec["stage_tiles"][m.index("block.0.mlp.fc2_lif")] == 2
    assert timing.row_cycles[0, m.index("block.0.mlp.fc2_lif")].tolist() == [64.0] * T
    assert timing.row_cycles[0, m.index("block.0.mlp.fc1_lif")].tolist() == [32.0] * T


def test_residual_adds_spread_over_the_digital_lanes_of_the_stage(sdt):
    """block.0.attn's residual add (4096 elements) runs on proj_conv's one-tile stage of 32 digital lanes: its row
    takes 4096 / 32 = 128 cycles per step (layers.csv's cycles), whatever the spikes."""
    variant, _, timing, _ = _evaluate(load_config("aster_default"), sdt)
    assert timing.row_cycles[0, variant.mapping.index("block.0.attn")].tolist() == [128.0] * T


def test_the_attention_unit_s_lanes_do_not_grow_with_the_stage_s_tiles(sdt):
    """attention_lanes (128) is the one attention unit's adder array: with replication 4, v_conv's stage spans 2
    tiles, yet block 0's event-driven SDT core still takes its gates and increments / 128 cycles."""
    preset = _replace(load_config("aster_default"), "crossbar", replication=4)
    variant, counts, timing, _ = _evaluate(preset, sdt)
    m = variant.mapping
    core = m.index("block.0.attn.core")
    assert m.vec["stage_tiles"][core] == 2
    ops = counts[core, :, C["attn_gates"]] + counts[core, :, C["attn_incs"]] + counts[core, :, C["attn_adds"]]
    assert ops.max() > 0
    np.testing.assert_allclose(timing.row_cycles[0, core], ops / 128, rtol=1e-12)


def test_the_global_buffer_bandwidth_is_the_chip_s_not_per_tile(sdt):
    """layer_major, fc1_conv's stage (2 tiles) is bound by global-buffer traffic at 1 bit per cycle; halving that
    bandwidth adds the stage's global-buffer bits / 1 cycles (not / 2 tiles)."""
    base = _replace(load_config("aster_default"), "dataflow", order="layer_major")
    variant, counts, fast, _ = _evaluate(_replace(base, "chip", global_buffer_bits_per_cycle=1.0), sdt)
    _, _, slow, _ = _evaluate(_replace(base, "chip", global_buffer_bits_per_cycle=0.5), sdt)
    m = variant.mapping
    fc1 = m.index("block.0.mlp.fc1_conv")
    s = int(np.flatnonzero(variant.plan.heads == fc1)[0])
    assert m.vec["stage_tiles"][fc1] == 2
    rows = [i for i, r in enumerate(m.rows) if r.stage == fc1]
    gb_bits = (counts[rows, :, C["gb_rd_bits"]] + counts[rows, :, C["gb_wr_bits"]]).sum(0)
    assert gb_bits.min() > 0
    np.testing.assert_allclose(slow.stage_cycles[0, s] - fast.stage_cycles[0, s], gb_bits, rtol=1e-9)


def test_bandwidth_stalls_are_never_negative(sdt):
    """A stall is what memory time exceeds compute time by, 0 where compute is the slower (crossbar-bound stages)."""
    _, _, timing, _ = _evaluate(load_config("aster_default"), sdt)
    assert timing.stall.min() == 0.0
    assert (timing.stall == 0).any() and (timing.stall > 0).any()


# ----------------------------------------------------------------------------------------------------- workload
def test_a_skip_list_naming_the_block_count_is_out_of_range(tmp_path):
    """A 2-block model has blocks 0 and 1: block 1 is accepted, block 2 is refused naming the range."""
    path = tmp_path / "skip.json"
    path.write_text('{"skipped_blocks": [1]}')
    assert load_skip_json(path, 2) == {1}
    path.write_text('{"skipped_blocks": [2]}')
    with pytest.raises(HwInputError, match=r"'skipped_blocks' has \[2\]; the traced model has blocks 0\.\.1"):
        load_skip_json(path, 2)


def test_spikes_are_counted_in_packed_rows_of_any_length():
    """Packed spikes of 9 bytes per step (not a whole number of 64-bit words): 9 x 2 bits, then 8 bits."""
    x = np.zeros((2, 3, 3, 1), dtype=np.uint8)
    x[0] = 0b00000011
    x[1, 2, 2, 0] = 0xFF
    assert nnz_per_t(x, {"encoding": "bits", "repeat_t": False}, 2).tolist() == [18.0, 8.0]


def test_mean_rates_pad_the_bit_planes_of_a_sample_with_fewer(tmp_path):
    """Two samples whose first-layer input (2 x 32 x 32 = 2048 values) holds one event count per step: 1 in the
    first (one bit plane), 3 in the second (two planes).  Their mean plane densities are 1 / 2048 for plane 0 and
    (0 + 1 / 2048) / 2 = 1 / 4096 for plane 1."""
    capture, config = tiny_capture("SDT", True)
    captures = []
    for value in (1.0, 3.0):
        c = edited(capture, 0.0)
        x = torch.zeros_like(c.tensors["in:patch_embed.proj_conv"])
        x[:, 0, 5, 5] = value
        c.tensors["in:patch_embed.proj_conv"] = x
        captures.append(c)
    workload = Workload.open(write(tmp_path / "t", captures, config))
    planes = rates_from_traces(workload.reader).planes["in:patch_embed.proj_conv"]
    assert planes.tolist() == [[1 / 2048, 1 / 4096]] * T
