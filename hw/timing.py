"""Stage 4: cycles.  Per-row work -> per-stage cycles (with buffer-bandwidth stalls) -> latency per time step.

A *stage* is a crossbar layer and the operations that follow it up to the next layer (its LIF, pool, residual
add, an attention core): they run on that layer's tiles.  Within a stage the crossbars, LIF lanes and digital
lanes work in parallel, so its compute time is the slowest of them; local-buffer and global-buffer traffic needs
``bits / bandwidth`` cycles, and what exceeds the compute time is a stall (SCALE-Sim/Prosperity style); the
attention core is a barrier (all tokens of K and V before any output) and adds its cycles.

Latency per step, reported both ways:

* serial: ``sum over stages``;
* pipelined (``timestep_major``): stages overlap at token granularity between attention barriers; each segment
  costs its slowest stage plus a fill of one token through every stage;
* pipelined (``layer_major``): every stage streams the T steps in order (a flow shop): stage s starts step t once
  it has finished step t - 1 and stage s - 1 has finished step t; a step's latency is the time between the last
  stage's outputs of steps t - 1 and t, so the first k steps cost exactly what a k-step run costs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import HwConfig
from .counts import ALL_COUNTS
from .mapping import Mapping

__all__ = ["Timing", "StagePlan", "compute_timing", "flow_shop_latency"]

_A = {name: i for i, name in enumerate(ALL_COUNTS)}


@dataclass(frozen=True)
class StagePlan:
    """Row -> stage one-hot ``[S, R]``, each stage's head row and output positions, and segment starts."""

    onehot: np.ndarray
    heads: np.ndarray
    positions: np.ndarray
    segment_starts: np.ndarray

    @classmethod
    def build(cls, mapping: Mapping) -> "StagePlan":
        heads = np.array(sorted({r.stage for r in mapping.rows}))
        onehot = (np.array([r.stage for r in mapping.rows])[None, :] == heads[:, None]).astype(float)
        has_attention = onehot @ (mapping.vec["attention"] & mapping.vec["active"]).astype(float) > 0
        starts = np.flatnonzero(np.concatenate([[True], has_attention[:-1]]))
        return cls(onehot, heads, np.maximum(mapping.vec["positions"][heads], 1), starts)


@dataclass
class Timing:
    """Cycles: per row ``[B, R, T]`` (its own work), per stage ``[B, S, T]`` and stall, latency ``[B, T]``."""

    row_cycles: np.ndarray
    stage_cycles: np.ndarray
    stall: np.ndarray
    latency_serial: np.ndarray
    latency_pipelined: np.ndarray
    latency: np.ndarray  # the one the preset chose (dataflow.pipelining); leakage and throughput use it


def _pipelined(stage: np.ndarray, fill: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per segment between attention barriers: the slowest stage, plus the one-token fill of every other stage
    (the slowest stage's own fill is inside its time).  ``stage``, ``fill``: ``[..., S, T]``; returns ``[..., T]``."""
    total = np.zeros(stage.shape[:-2] + stage.shape[-1:])
    for a, b in zip(starts, [*starts[1:], stage.shape[-2]]):
        seg, seg_fill = stage[..., a:b, :], fill[..., a:b, :]
        slowest = seg.argmax(-2)[..., None, :]
        total += seg.max(-2) + seg_fill.sum(-2) - np.take_along_axis(seg_fill, slowest, -2)[..., 0, :]
    return total


def flow_shop_latency(stage: np.ndarray) -> np.ndarray:
    """Per-step latency of stages streaming the steps in order: finish ``F[s, t] = max(F[s-1, t], F[s, t-1]) +
    stage[s, t]``, returned as the last stage's increments ``F[S, t] - F[S, t-1]``.  ``stage``: ``[..., S, T]``.

    For one step the recurrence over s is a max-plus scan: ``F[s, t] = P[s] + max_{j<=s} (F[j, t-1] - P[j-1])``
    with ``P`` the prefix sums of ``stage[:, t]``.
    """
    finish = np.zeros(stage.shape[:-1])
    last = np.zeros(stage.shape[:-2] + stage.shape[-1:])
    for t in range(stage.shape[-1]):
        prefix = np.cumsum(stage[..., t], axis=-1)
        finish = prefix + np.maximum.accumulate(finish - (prefix - stage[..., t]), axis=-1)
        last[..., t] = finish[..., -1]
    return np.diff(last, axis=-1, prepend=0.0)


def compute_timing(counts: np.ndarray, mapping: Mapping, config: HwConfig, plan: StagePlan) -> Timing:
    """Cycle model for a batch of counts ``[B, R, T, A]``."""
    v, chip, tm = mapping.vec, config.chip, config.timing
    get = lambda name: counts[..., _A[name]]  # noqa: E731
    tiles = v["stage_tiles"][:, None]
    t_read = (tm.read_ns + config.crossbar.mux * tm.conversion_ns) * chip.clock_ghz
    xbar = np.where(v["xbar"][:, None], get("serial_reads") * t_read / config.crossbar.replication, 0.0)
    attention = ((get("attn_gates") + get("attn_incs") + get("attn_adds")) / chip.attention_lanes
                 + np.where(v["attention"][:, None], get("serial_reads") * t_read, 0.0)
                 + get("write_rows") * tm.cell_write_ns * chip.clock_ghz)
    lif = get("lif_updates") / (chip.lif_lanes_per_tile * tiles)
    digital = (get("pool_or") + get("pool_cmp") + get("res_adds")) / (chip.digital_lanes_per_tile * tiles)
    memory = ((get("spike_rd_bits") + get("spike_wr_bits") + get("state_rd_bits") + get("state_wr_bits"))
              / (chip.buffer_bits_per_cycle_per_tile * tiles)
              + (get("gb_rd_bits") + get("gb_wr_bits")) / chip.global_buffer_bits_per_cycle)
    group = lambda x: plan.onehot @ x  # noqa: E731  sum over the rows of each stage
    compute = np.maximum(np.maximum(group(xbar), group(lif)), group(digital))
    mem = group(memory)
    stage = np.maximum(compute, mem) + group(attention)
    serial = stage.sum(-2)
    if config.dataflow.order == "timestep_major":
        pipelined = _pipelined(stage, stage / plan.positions[:, None], plan.segment_starts)
    else:
        pipelined = flow_shop_latency(stage)
    return Timing(row_cycles=xbar + attention + lif + digital, stage_cycles=stage, stall=np.maximum(mem - compute, 0),
                  latency_serial=serial, latency_pipelined=pipelined,
                  latency=pipelined if config.dataflow.pipelining else serial)
