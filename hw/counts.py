"""Stage 3b: action counts per row, time step and action, from the activity and the preset's feature switches.

All arithmetic is vectorised over rows and steps (``[R, T]`` arrays); docs/hw.md gives every formula.  Counts
of a skipped row are zero, and so are all counts after a sample's (effective) exit step.
"""
from __future__ import annotations

import math

import numpy as np

from .activity import Activity
from .config import HwConfig
from .mapping import Mapping

__all__ = ["ACTIONS", "INFO_COUNTS", "ALL_COUNTS", "count_actions", "exit_granularity", "effective_exit",
           "effective_portion"]

# Actions with an energy (hw.energy maps each to components), then counts used only by the cycle model and reports.
ACTIONS = ("wl_rows", "cell_reads", "xbar_reads", "adc_conv", "shift_adds", "psum_adds", "lif_updates", "res_adds",
           "attn_gates", "attn_incs", "attn_adds", "pool_or", "pool_cmp", "spike_rd_bits", "spike_wr_bits",
           "state_rd_bits", "state_wr_bits", "gb_rd_bits", "gb_wr_bits", "noc_bit_hops", "bus_bits", "dram_bits",
           "cell_writes", "ctrl_steps", "exit_checks", "sops", "macs")
INFO_COUNTS = ("serial_reads", "write_rows", "in_nnz", "in_numel", "row_block_reads")
ALL_COUNTS = ACTIONS + INFO_COUNTS


def _addr_bits(n: np.ndarray) -> np.ndarray:
    """Address bits of an AER event in a tensor of ``n`` elements per step."""
    return np.ceil(np.log2(np.maximum(n, 2)))


def _transfer_bits(bitmap: np.ndarray, aer: np.ndarray, encoding: str) -> np.ndarray:
    """Bits to move a spike tensor: its bitmap, its AER events, or the cheaper of the two (``auto``)."""
    if encoding == "bitmap":
        return bitmap
    return aer if encoding == "aer" else np.minimum(bitmap, aer)


def exit_granularity(mapping: Mapping) -> int:
    """Steps between possible exits: the layer_major chunk, and STAtten's attention chunk while it runs."""
    g, v = mapping.chunk, mapping.vec
    for size in v["chunk_size"][v["attention"] & v["statten"] & v["active"]]:
        g = g * int(size) // math.gcd(g, int(size))
    return min(g, mapping.T)


def effective_exit(step: int, mapping: Mapping) -> int:
    """A sample's exit step rounded up to the exit granularity (at most T)."""
    g = exit_granularity(mapping)
    return min(mapping.T, -(-step // g) * g)


def effective_portion(portion: np.ndarray, mapping: Mapping) -> np.ndarray:
    """Exit-step distribution after rounding every step up to the exit granularity."""
    out = np.zeros_like(portion)
    for t, p in enumerate(portion, start=1):
        out[effective_exit(t, mapping) - 1] += p
    return out


def count_actions(act: Activity, mapping: Mapping, config: HwConfig, input_kind: str,
                  step_weights: np.ndarray | None = None) -> np.ndarray:
    """Counts ``[B, R, T, len(ALL_COUNTS)]`` for a batch of activities (``[B, R, T]`` fields).

    Args:
        act: activity of one sample (exact) or its expectation (statistical).
        mapping: the mapping for this preset, dataflow and skip set.
        config: preset (its ``features`` decide gating, skipping, encodings, attention unit).
        input_kind: ``static`` or ``events`` (from the trace).
        step_weights: ``[B, T]`` multiplier per step: 1 up to the exit step and 0 after (exact mode), or the
            fraction of samples still running (statistical mode); None = every step runs.
    """
    v, f, mem, T = mapping.vec, config.features, config.memory, mapping.T
    batch = act.in_sum.shape[:-2]
    col = lambda name: v[name][:, None]  # noqa: E731  per-row constant as an [R, 1] column
    out = np.zeros((*batch, len(mapping.rows), T, len(ALL_COUNTS)))
    c = {name: out[..., k] for k, name in enumerate(ALL_COUNTS)}  # views: every assignment writes into out
    t0 = (np.arange(T) == 0)[None, :]
    xbar, planes = col("xbar"), act.planes[..., None]
    positions, blocks, cout = col("positions"), col("row_blocks"), col("cout")
    static_first = col("first") & (input_kind == "static")
    once = static_first & f.reuse_static_encoding & (T > 1)  # computed at t = 0 only, replayed after (T > 1)
    run = np.where(once, t0, True) & xbar

    # ---- crossbar layers
    reads = act.reads if f.read_skipping else positions * blocks * planes
    pos = act.pos if f.read_skipping else positions
    wl = act.wl if f.wordline_gating else act.full_wl if f.read_skipping else positions * planes * col("rows_total")
    c["wl_rows"][:] = run * wl * col("col_blocks")
    c["cell_reads"][:] = run * wl * col("cols_total")
    c["xbar_reads"][:] = run * reads * col("col_blocks")
    c["adc_conv"][:] = run * reads * col("cols_total")
    c["shift_adds"][:] = run * reads * cout * (col("slices") - 1)
    c["psum_adds"][:] = run * cout * np.maximum(reads - pos, 0)
    psum_bits = run * reads * cout * mem.psum_bits
    c["bus_bits"][:] = psum_bits
    c["serial_reads"][:] = run * (act.serial if f.read_skipping else positions * planes)
    c["row_block_reads"][:] = run * reads
    in_numel = col("in_numel")
    c["in_nnz"][:] = run * act.in_nnz
    c["in_numel"][:] = run * in_numel  # inputs presented (a reused static encoding: at t = 0 only)
    value_bits = np.where(planes > 1, planes, 0)
    in_bits = run * _transfer_bits(in_numel * planes, act.in_nnz * (_addr_bits(in_numel) + value_bits),
                                   f.spike_encoding)
    staged = config.dataflow.order == "layer_major"
    from_gb = xbar & (col("first") | staged)
    c["gb_rd_bits"][:] = np.where(from_gb, in_bits, 0) + (xbar & once & ~t0) * positions * cout * mem.psum_bits
    c["spike_rd_bits"][:] = np.where(from_gb, 0, in_bits)
    c["noc_bit_hops"][:] = in_bits * col("hops") + psum_bits * col("psum_noc_fraction") * col("intra_hops")
    charged_as_mac = static_first
    c["sops"][:] = np.where(charged_as_mac, 0, xbar * act.in_sum * col("fanout"))
    c["macs"][:] = np.where(charged_as_mac, run * col("flops"), 0)

    # ---- LIFs, pools, residual adds
    lif, res = col("lif"), col("residual")
    out_numel = col("out_numel")
    c["lif_updates"][:] = lif * out_numel
    out_bits = lif * _transfer_bits(out_numel, act.out_nnz * _addr_bits(out_numel), f.spike_encoding)
    c["gb_wr_bits" if staged else "spike_wr_bits"][:] = out_bits
    # moves between stages: the 16-bit residual stream to the stage of each add, q/k spikes to the attention core
    c["noc_bit_hops"] += res * in_numel * mem.residual_bits * col("stream_hops")
    c["noc_bit_hops"] += (out_bits[..., v["spike_src"], :] * v["spike_hops"][..., None]).sum(-2)
    c["gb_wr_bits"] += (xbar & once & t0) * positions * cout * mem.psum_bits  # the reused encoding, stored once
    spill = mapping.memory["state_spill_fraction"]
    state_rd = lif * out_numel * mem.membrane_bits + res * (in_numel + out_numel) * mem.residual_bits
    state_wr = lif * out_numel * mem.membrane_bits + res * out_numel * mem.residual_bits
    c["state_rd_bits"][:], c["state_wr_bits"][:] = state_rd * (1 - spill), state_wr * (1 - spill)
    c["dram_bits"][:] = (state_rd + state_wr) * spill
    c["pool_or"][:], c["pool_cmp"][:] = col("pool_or") * out_numel, col("pool_cmp") * out_numel
    c["res_adds"][:] = res * in_numel

    # ---- attention cores
    _attention(c, act, mapping, config, staged)

    # ---- frames into the chip, controller
    inp = col("input")
    # bits per value: count_bits (events) or analog_input_bits (a static image), more when the stored values need
    # more bit planes (event counts above 255, a fixed-point image stored as uint16: docs/hw.md)
    first = np.flatnonzero(v["first"])[:1]
    value = mem.count_bits if input_kind == "events" else config.crossbar.analog_input_bits
    value_bits = np.maximum(value, act.planes[..., first, None]) if first.size else value
    frame = np.where(input_kind == "static", t0 * in_numel * value_bits,
                     _transfer_bits(in_numel * value_bits,
                                    act.in_nnz * (_addr_bits(in_numel) + value_bits), f.spike_encoding))
    c["dram_bits"] += inp * frame
    c["gb_wr_bits"] += inp * frame
    ctrl = col("control")
    c["ctrl_steps"][:] = ctrl * (v["xbar"] & v["active"]).sum()
    exits = f.early_exit and step_weights is not None  # a run with exit steps checks the logits where it can exit
    steps = np.arange(1, T + 1)
    checked = (steps % exit_granularity(mapping) == 0) | (steps == T)
    c["exit_checks"][:] = ctrl * checked[None, :] * (v["cout"][v["xbar"]][-1] if exits else 0)
    if staged:
        gb_spill = mapping.memory["global_buffer_spill_fraction"]
        moved = (c["gb_wr_bits"] + c["gb_rd_bits"]) * ~inp * gb_spill
        c["dram_bits"] += moved
        c["gb_wr_bits"] *= np.where(inp, 1, 1 - gb_spill)
        c["gb_rd_bits"] *= 1 - gb_spill

    out *= v["active"][:, None, None]
    if step_weights is not None:
        out *= step_weights[..., None, :, None]
    return out


def _attention(c: dict, act: Activity, mapping: Mapping, config: HwConfig, staged: bool) -> None:
    """Attention-core counts (digital event-driven, dense digital, or crossbars rewritten every step); q, k, v and
    the output move through the global buffer in the layer-major dataflow (``staged``), as the LIF spikes do."""
    v, f = mapping.vec, config.features
    a = v["attention"][:, None]
    if not a.any():
        return
    nd, d = v["out_numel"][:, None], v["head_dim"][:, None]
    statten, dvs = v["statten"][:, None], v["dvs"][:, None]
    if f.attention_unit == "digital":
        if f.event_driven_attention:
            gates = np.where(statten, 0, act.k + act.q)
            incs = np.where(statten, act.k * d, act.kv)
            adds = np.where(statten, act.q * d, 0)
        else:
            gates = np.where(statten, 0, 2 * nd)
            incs, adds = np.where(statten, nd * d, nd), np.where(statten, nd * d, 0)
    else:  # V written into crossbars every step (a token per row), read with one K channel on the wordlines
        _crossbar_attention(c, act, mapping, config)
        gates, incs, adds = np.where(statten, 0, nd), 0 * nd, 0 * nd
    extra = statten & dvs  # STAtten DVS: out * x_pool + x_pool
    c["attn_gates"] += a * (gates + extra * nd)
    c["attn_incs"] += a * (incs + extra * nd)
    c["attn_adds"] += a * adds
    addr = _addr_bits(nd)
    c["gb_rd_bits" if staged else "spike_rd_bits"] += a * _transfer_bits(3 * nd, (act.q + act.k + act.v) * addr,
                                                                          f.spike_encoding)
    c["gb_wr_bits" if staged else "spike_wr_bits"] += a * _transfer_bits(nd, act.out_nnz * addr, f.spike_encoding)


def _crossbar_attention(c: dict, act: Activity, mapping: Mapping, config: HwConfig) -> None:
    """Attention on crossbars rewritten every step (``prior_pim``), per head: V ``[N tokens x d]`` is written a
    token per row, into ``ceil(N / rows)`` row blocks written and read in parallel; each K channel is one read per
    row block.  SDT needs ``sum_n K V`` per channel: one converted column per read (its own); STAtten needs
    ``K^T V``: all d columns, whose result is written as weights (per chunk) and read with Q on the wordlines.
    Row blocks after the first add their partial sums.  SDT's ``Q * mask`` stays a dense digital AND."""
    v, f, xb = mapping.vec, config.features, config.crossbar
    a = v["attention"][:, None]
    nd, d, heads, tokens = v["out_numel"][:, None], v["head_dim"][:, None], v["heads"][:, None], v["tokens"][:, None]
    statten = v["statten"][:, None]
    slices = -(-xb.weight_bits // xb.cell_bits) * xb.sign_columns
    blocks = np.maximum(np.ceil(tokens / xb.rows), 1)
    wl_kv = act.k if f.wordline_gating else nd
    wl_qa = np.where(statten, act.q if f.wordline_gating else nd, 0)
    kv_cells = heads * d * d * slices / np.maximum(v["chunk_size"][:, None], 1)  # STAtten's K^T V, per step
    c["cell_writes"] += a * (nd + np.where(statten, kv_cells, 0))
    c["write_rows"] += a * np.ceil(tokens / blocks)
    c["wl_rows"] += a * (wl_kv + wl_qa)
    c["cell_reads"] += a * (wl_kv * d + wl_qa * d * slices)
    columns = np.where(statten, d, 1)  # converted per K-channel read
    q_reads = np.where(statten, tokens * heads, 0)
    c["xbar_reads"] += a * (heads * d * blocks + q_reads)
    c["adc_conv"] += a * (heads * d * blocks * columns + q_reads * d * slices)
    c["psum_adds"] += a * heads * d * (blocks - 1) * columns
    c["shift_adds"] += a * q_reads * d * (slices - 1)
    c["serial_reads"] += a * (d + np.where(statten, tokens, 0))  # per crossbar: heads and row blocks in parallel
