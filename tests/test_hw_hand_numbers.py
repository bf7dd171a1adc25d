"""Hand-computed numbers of the hardware model (docs/hw.md, "Cycles and dataflows" and "LIF units, residual
stream, ..."): crossbar read time with its column mux, bandwidth stalls, the pipelined latency's fill, residual
state writes, AER address bits, leakage at a clock that is not 1 GHz, TOPS/W with MACs, timesteps.csv cycles."""
from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest
import torch

from hw.activity import Activity, exact_activity
from hw.config import load_config, with_features
from hw.counts import ALL_COUNTS, _addr_bits
from hw.energy import COMPONENTS
from hw.pipeline import make_variant
from hw.run import main
from hw.timing import _pipelined
from hw.workload import Workload
from hw_helpers import edited, tiny_capture, write

C = {name: i for i, name in enumerate(ALL_COUNTS)}


def _evaluate(config, workload):
    """``(variant, counts [R, T, A], timing, energy [R, T, C])`` of sample 0 without exits."""
    variant = make_variant("v", config, workload)
    act = Activity.stack([exact_activity(workload.reader.load_raw(0), variant.mapping, variant.config)])
    counts, timing, energy = variant.evaluate(act, workload.meta.input_kind, None)
    return variant, counts[0], timing, energy[0]


def _row(variant, name: str) -> int:
    return next(i for i, r in enumerate(variant.mapping.rows) if r.name == name)


def _stage(variant, name: str) -> int:
    """Index of the stage headed by the crossbar row ``name``."""
    return int(np.flatnonzero(variant.plan.heads == _row(variant, name))[0])


@pytest.fixture(scope="module")
def zero_dvs(tmp_path_factory):
    """The tiny SDT DVS model (width 64, 8x8 tokens) with every spike set to 0: only fixed work remains."""
    capture, config = tiny_capture("SDT", True)
    return Workload.open(write(tmp_path_factory.mktemp("zero") / "t", [edited(capture, 0.0)], config))


def test_crossbar_read_time_includes_the_mux_serialised_conversions(tmp_path):
    """q_conv (64 inputs: one row block) with spikes at 3 tokens at t = 0 reads its crossbars 3 times in series;
    each read costs read_ns + mux * conversion_ns = 10 + 8 * 0.833 = 16.664 ns at 1 GHz (the 8:1 mux serialises
    8 conversions per sense amplifier), so the row takes 3 * 16.664 = 49.992 cycles (replication 1)."""
    capture, config = tiny_capture("SDT", True)
    capture = edited(capture, 0.0)
    q_in = torch.zeros_like(capture.tensors["in:block.0.attn.q_conv"])
    q_in[0, 0:5, 0, 0] = 1  # token 0: 5 channels, token 9: 1 channel, token 63: 2 channels
    q_in[0, 7, 1, 1] = 1
    q_in[0, [3, 60], 7, 7] = 1
    capture.tensors["in:block.0.attn.q_conv"] = q_in
    workload = Workload.open(write(tmp_path / "t", [capture], config))
    preset = load_config("aster_default")
    assert (preset.crossbar.mux, preset.timing.read_ns, preset.timing.conversion_ns) == (8, 10.0, 0.833)
    assert preset.chip.clock_ghz == 1.0 and preset.crossbar.replication == 1
    variant, counts, timing, _ = _evaluate(preset, workload)
    q = _row(variant, "block.0.attn.q_conv")
    assert counts[q, 0, C["serial_reads"]] == 3
    assert timing.row_cycles[0, q, 0] == pytest.approx(3 * (10.0 + 8 * 0.833))
    assert timing.row_cycles[0, q, 1:].tolist() == [0.0] * 3


def test_residual_add_reads_and_writes_its_state(zero_dvs):
    """block.0.attn's residual add over 64 channels x 64 tokens = 4096 elements: it reads the identity and the
    branch (2 x 4096 x 16 bits) and writes the sum (4096 x 16 bits) in the state buffer, every step."""
    variant, counts, _, _ = _evaluate(load_config("aster_default"), zero_dvs)
    res = _row(variant, "block.0.attn")
    assert variant.mapping.rows[res].kind == "residual" and variant.mapping.memory["state_spill_fraction"] == 0
    assert counts[res, :, C["res_adds"]].tolist() == [4096] * 4
    assert counts[res, :, C["state_rd_bits"]].tolist() == [2 * 4096 * 16] * 4
    assert counts[res, :, C["state_wr_bits"]].tolist() == [4096 * 16] * 4


def test_buffer_bandwidth_stalls_bound_the_stage(zero_dvs):
    """proj_conv's stage (1 tile: proj_conv, the residual add, fc1_lif) on an all-zero trace moves 5 x 4096 x 16 =
    327680 state bits (residual: 2 reads + 1 write, fc1_lif membrane: 1 read + 1 write; no spikes to move); its
    compute is 4096 adds over 32 digital lanes = 128 cycles (> 4096 LIF updates / 128 lanes = 32; no crossbar read).
    At 256 bits per cycle the stage takes 327680 / 256 = 1280 cycles, a stall of 1152; at 32 bits per cycle 10240,
    and the latency rises by the difference."""
    preset = load_config("aster_default")
    assert preset.chip.buffer_bits_per_cycle_per_tile == 256
    narrow = dataclasses.replace(preset, chip=dataclasses.replace(preset.chip, buffer_bits_per_cycle_per_tile=32))
    variant, _, wide_timing, _ = _evaluate(preset, zero_dvs)
    s = _stage(variant, "block.0.attn.proj_conv")
    assert variant.mapping.vec["stage_tiles"][_row(variant, "block.0.attn.proj_conv")] == 1
    assert wide_timing.stage_cycles[0, s].tolist() == pytest.approx([1280.0] * 4)
    assert wide_timing.stall[0, s].tolist() == pytest.approx([1280.0 - 128.0] * 4)
    _, _, narrow_timing, _ = _evaluate(narrow, zero_dvs)
    assert narrow_timing.stage_cycles[0, s].tolist() == pytest.approx([10240.0] * 4)
    rise = narrow_timing.latency_serial[0] - wide_timing.latency_serial[0]
    assert np.all(rise >= 10240.0 - 1280.0 - 1e-9)


def test_pipelined_latency_of_a_segment_is_its_slowest_stage_plus_the_other_fills():
    """docs/hw.md: per segment, the slowest stage plus a one-token fill through every other stage.  Two stages of
    4 and 2 cycles over 4 tokens (fills 1 and 0.5): 4 + 0.5 = 4.5, not 4 + 1 + 0.5 (the slowest stage's own fill
    is inside its time).  With a barrier before a third stage of 3 cycles (fill 1): 4.5 + 3 = 7.5."""
    stage = np.array([[4.0], [2.0]])
    assert _pipelined(stage, stage / 4, np.array([0])).tolist() == [4.5]
    stage3 = np.array([[4.0, 2.0], [2.0, 4.0], [3.0, 3.0]])  # at t = 1 the second stage is the slowest
    fill = stage3 / np.array([[4.0], [4.0], [3.0]])
    assert _pipelined(stage3, fill, np.array([0, 2])).tolist() == [7.5, 7.5]
    assert _pipelined(stage3[None], fill[None], np.array([0])).tolist() == [[4.0 + 0.5 + 1.0, 4.0 + 0.5 + 1.0]]


def test_aer_address_bits_round_up(tmp_path):
    """An AER event in a tensor of n elements needs ceil(log2 n) address bits: 3 -> 2, 5 -> 3, 1000 -> 10.  The
    static 3x32x32 image (3072 pixels, all non-zero) sent as AER costs 3072 x (12 address + 8 value bits) from
    the global buffer at t = 0 (log2 3072 = 11.58)."""
    assert _addr_bits(np.array([3, 5, 1000, 1024, 1])).tolist() == [2, 3, 10, 10, 1]
    capture, config = tiny_capture("SDT", False, T=2)
    workload = Workload.open(write(tmp_path / "t", [capture], config))
    preset = with_features(load_config("aster_default"), spike_encoding="aer")
    variant, counts, _, _ = _evaluate(preset, workload)
    first = _row(variant, "patch_embed.proj_conv")
    assert counts[first, 0, C["in_nnz"]] == counts[first, 0, C["in_numel"]] == 3 * 32 * 32
    assert counts[first, 0, C["gb_rd_bits"]] == 3072 * (12 + 8)


def test_leakage_is_power_times_time_at_250_mhz(zero_dvs):
    """spikesim65 runs at 250 MHz: a cycle is 4 ns, so leakage per step = (0.1 mW x used tiles + 5 mW) x cycles
    x 4 ns (1 mW for 1 ns is 1 pJ), four times the energy the same cycles would leak at 1 GHz."""
    preset = load_config("spikesim65")
    assert preset.chip.clock_ghz == 0.25
    assert (preset.leakage.tile_mw, preset.leakage.global_buffer_mw) == (0.1, 5.0)
    variant, _, timing, energy = _evaluate(preset, zero_dvs)
    power_mw = 0.1 * variant.mapping.tiles_used + 5.0
    chip = _row(variant, "chip")
    leakage = energy[chip, :, COMPONENTS.index("leakage")]
    assert timing.latency[0].min() > 0
    np.testing.assert_allclose(leakage, power_mw * timing.latency[0] * 4.0, rtol=1e-12)
    energy_pj, latency = variant.totals(Activity.stack([exact_activity(zero_dvs.reader.load_raw(0), variant.mapping,
                                                                       variant.config)]), "events", None)
    assert latency[0] == pytest.approx(timing.latency[0].sum())
    assert energy_pj[0] == pytest.approx(energy.sum())


@pytest.fixture(scope="module")
def static_report(tmp_path_factory):
    """hw.run over 2 static-image samples (T = 2): the report folder."""
    root = tmp_path_factory.mktemp("static")
    captures = [tiny_capture("SDT", False, T=2, seed=s)[0] for s in range(2)]
    trace = write(root / "trace", captures, tiny_capture("SDT", False, T=2)[1])
    assert main(["--trace", str(trace), "--workers", "1", "--no-plots", "--out", str(root / "out")]) == 0
    return root / "out"


def test_tops_per_w_counts_a_mac_as_two_operations(static_report):
    """A static image's first conv (3x3, 3 -> 8 channels, 32x32 outputs) is charged as MACs, once per inference
    with the reused encoding: 9 * 3 * 8 * 1024 = 221184.  TOPS/W = (SOPs + 2 MACs) / energy (ops per pJ)."""
    s = json.loads((static_report / "summary.json").read_text())
    macs, sops = s["macs_per_inference"], s["sops_per_inference"]
    assert macs == 9 * 3 * 8 * 1024 and sops > 0
    energy_pj = s["energy_per_inference_uj"]["mean"] * 1e6
    assert s["tops_per_w"] == pytest.approx((sops + 2 * macs) / energy_pj, rel=1e-9)


def test_timesteps_csv_cycles_are_per_inference(static_report):
    """timesteps.csv gives each step's cycles per inference (mean over the 2 samples): they sum to summary.json's
    latency cycles, and each step's microseconds are its cycles at 1 GHz / 1000."""
    s = json.loads((static_report / "summary.json").read_text())
    assert s["samples"] == 2
    with open(static_report / "timesteps.csv") as f:
        steps = list(csv.DictReader(f))
    assert [r["t"] for r in steps] == ["1", "2"]
    assert sum(float(r["cycles"]) for r in steps) == pytest.approx(s["latency"]["cycles"], rel=1e-9)
    assert sum(float(r["latency_us"]) for r in steps) == pytest.approx(s["latency"]["us"], rel=1e-9)
    assert sum(float(r["energy_pj"]) for r in steps) == pytest.approx(s["energy_per_inference_uj"]["mean"] * 1e6)
