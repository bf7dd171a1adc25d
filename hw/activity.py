"""Stage 3a: activity.  The data-dependent statistics per row and time step, exact or expected.

For a crossbar layer, ``a(t, n, i)`` is the number of active input rows of row block ``i`` at output position
``n`` and step ``t`` (bit plane by bit plane for multi-bit inputs).  Exact mode computes it for whole traces with
NumPy and no Python loop over spikes: per-pixel popcounts of the packed channel bytes (one ``np.bitwise_count``
per 64 channels), summed over each row block's channel range and shifted by each kernel position of the block
(:class:`hw.mapping.Segment`).  From ``a`` it keeps, per step: wordlines driven ``sum a``, crossbar reads
(``a > 0``, per row block), positions with any read, and the input's non-zeros and sum.  Statistical mode gives
their expectation from per-step rates: a position is silent with its measured probability, otherwise its bits
are independent draws (``read_model: bernoulli``); or the proposal's linear model (``linear``: a row block is read
with the probability of one spike).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from engine.traces import INTEGER_ENCODINGS, RawSample, fixed_point_scale

from .config import HwConfig
from .mapping import CrossbarGeometry, Mapping
from .workload import Rates, kv_increments_per_t, nnz_per_t

__all__ = ["Activity", "exact_activity", "statistical_activity", "crossbar_maps"]

CROSSBAR_FIELDS = ("in_sum", "in_nnz", "wl", "full_wl", "reads", "serial", "pos")
FIELDS = (*CROSSBAR_FIELDS, "out_nnz", "q", "k", "v", "kv")


@dataclass
class Activity:
    """Per row and time step ``[R, T]`` (0 where a field does not apply), plus input bit planes per row ``[R]``.

    Crossbar rows: ``in_sum`` (sum of input values), ``in_nnz``, ``wl`` (sum of a), ``full_wl`` (the rows of
    every block read: the wordlines without gating), ``reads`` (sum of [a > 0]), ``serial`` (reads of the busiest
    row block), ``pos`` (positions with a read).  LIF rows: ``out_nnz``.
    Attention rows: ``q``, ``k``, ``v`` non-zeros, ``kv`` (SDT's counter increments: K AND V, max-pooled with DVS
    input, :func:`hw.workload.kv_increments_per_t`) and ``out_nnz``.  The ``input`` row:
    ``in_sum``, ``in_nnz`` of the first layer's input.
    """

    in_sum: np.ndarray
    in_nnz: np.ndarray
    wl: np.ndarray
    full_wl: np.ndarray
    reads: np.ndarray
    serial: np.ndarray
    pos: np.ndarray
    out_nnz: np.ndarray
    q: np.ndarray
    k: np.ndarray
    v: np.ndarray
    kv: np.ndarray
    planes: np.ndarray

    @classmethod
    def zeros(cls, rows: int, T: int) -> "Activity":
        return cls(**{f: np.zeros((rows, T)) for f in FIELDS}, planes=np.ones(rows))

    @classmethod
    def stack(cls, items: list["Activity"]) -> "Activity":
        """A batch: every field gains a leading sample axis."""
        return cls(**{f: np.stack([getattr(a, f) for a in items]) for f in (*FIELDS, "planes")})


def _units(plane: np.ndarray, packed: bool, geom: CrossbarGeometry) -> tuple[np.ndarray, int]:
    """``(counts [units, T', H, W], w)``: popcounts of w-bit words of packed channels, or the 0/1 plane (w = 1)."""
    if packed:
        bounds = {s.c0 for s in geom.segments} | {s.c1 for s in geom.segments}
        for w in (64, 32, 16, 8):
            if geom.cin % w == 0 and all(b % w == 0 for b in bounds):
                return np.ascontiguousarray(np.moveaxis(np.bitwise_count(plane.view(f"<u{w // 8}")), -1, 0)), w
        plane = np.unpackbits(plane, axis=-1, count=geom.cin)
    return np.ascontiguousarray(np.moveaxis(plane, -1, 0)), 1


def _row_sums(x: np.ndarray) -> np.ndarray:
    """Sum over all but the first axis of a small-integer array (a uint32 reduce over the contiguous axis)."""
    return np.add.reduce(x.reshape(x.shape[0], -1), axis=1, dtype=np.uint32).astype(float)


def _value_sums(x: np.ndarray) -> np.ndarray:
    """Sum of each ``x[t]`` of a uint8/uint16 array (64-bit: uint16 counts over a frame can pass 2**32)."""
    return x.reshape(x.shape[0], -1).sum(1, dtype=np.int64 if x.dtype.itemsize > 1 else np.uint32).astype(float)


def _count_rows(x: np.ndarray) -> np.ndarray:
    """Non-zeros of each ``x[t]``."""
    return _row_sums((x != 0).view(np.uint8))


def _block_maps(units: np.ndarray, w: int, geom: CrossbarGeometry, rows: int) -> np.ndarray:
    """``a [row blocks, T', H_out, W_out]`` from unit counts ``[units, T', H, W]`` of one binary plane.

    ``a`` fits in uint8 when a row block has at most 255 rows (``rows`` = crossbar rows).
    """
    dtype = np.uint8 if rows <= 255 else np.int32
    tp, (h, wd), (ph, pw), (sh, sw) = units.shape[1], geom.in_hw, geom.padding, geom.stride
    ho, wo = geom.out_hw
    padded = {}
    a = np.empty((geom.row_blocks, tp, ho, wo), dtype=dtype)
    started = set()
    for seg in geom.segments:
        key = (seg.c0, seg.c1)
        if key not in padded:
            s = units[seg.c0 // w:seg.c1 // w].sum(0, dtype=dtype)
            if ph or pw:
                full = np.zeros((tp, h + 2 * ph, wd + 2 * pw), dtype=dtype)
                full[:, ph:ph + h, pw:pw + wd] = s
                s = full
            padded[key] = s
        view = padded[key][:, seg.ky:seg.ky + sh * (ho - 1) + 1:sh, seg.kx:seg.kx + sw * (wo - 1) + 1:sw]
        if seg.block in started:
            np.add(a[seg.block], view, out=a[seg.block])
        else:
            a[seg.block] = view
            started.add(seg.block)
    return a


def crossbar_maps(arr: np.ndarray, entry: dict, geom: CrossbarGeometry, config: HwConfig) -> dict:
    """Exact crossbar statistics of one stored input ``[T', H, W, C(/8)]``; vectors over the stored steps T'."""
    tp = arr.shape[0]
    x = arr.reshape(tp, *geom.in_hw, -1)
    enc, weight, n_planes = entry["encoding"], 1, 1
    if enc == "bits":
        plane = x
    elif enc in INTEGER_ENCODINGS:  # bit planes stacked along time: plane b of step t is row b * T' + t
        n_planes = max(1, int(x.max(initial=0)).bit_length())
        plane = np.concatenate([((x >> b) & 1).astype(np.uint8) for b in range(n_planes)]) if n_planes > 1 else \
            x.astype(np.uint8, copy=False)
        total = _value_sums(x) * fixed_point_scale(entry)  # sum of the values (fixed point: units of 2**-f)
    else:  # analog: every non-zero pixel drives its row in each of the analog_input_bits bit-serial passes
        plane = (x != 0).view(np.uint8)
        weight = config.crossbar.analog_input_bits
    units, w = _units(plane, enc == "bits", geom)
    a = _block_maps(units, w, geom, config.crossbar.rows)  # [blocks, planes * T', H_out, W_out]
    blocks = a.shape[0]
    per_plane = lambda v: v.reshape(*v.shape[:-1], n_planes, tp).sum(-2)  # noqa: E731
    flat = a.reshape(blocks * a.shape[1], -1)
    wl = per_plane(_row_sums(flat).reshape(blocks, -1).sum(0))
    reads = per_plane(_count_rows(flat).reshape(blocks, -1))  # [blocks, T']
    pos = _count_rows(a.max(0).reshape(n_planes, tp, -1).max(0))
    if enc == "bits":
        nnz = total = _row_sums(np.moveaxis(units, 0, 1))
    else:
        nnz = _count_rows(x)
        total = nnz if enc == "float32" else total
    return {"in_sum": total, "in_nnz": nnz, "wl": wl * weight, "full_wl": geom.block_rows @ reads * weight,
            "reads": reads.sum(0) * weight, "serial": reads.max(0) * weight, "pos": pos, "planes": n_planes * weight}


def exact_activity(raw: RawSample, mapping: Mapping, config: HwConfig) -> Activity:
    """Activity of one trace sample."""
    T = mapping.T
    act = Activity.zeros(len(mapping.rows), T)
    lif_rows = iter(range(raw.lif_nnz.shape[0]))
    seen = {}  # q, k and v convs read the same stored array
    for i, row in enumerate(mapping.rows):
        if row.geom is not None:
            name = row.op.tensor
            g = row.geom
            key = (id(raw.arrays[name]), g.kernel, g.stride, g.padding, g.row_blocks)
            if key not in seen:
                seen[key] = crossbar_maps(raw.arrays[name], raw.index[name], row.geom, config)
            stats = seen[key]
            for key in CROSSBAR_FIELDS:
                getattr(act, key)[i] = stats[key]  # broadcasts a stored-once tensor over T
            act.planes[i] = stats["planes"]
        elif row.kind == "lif":
            act.out_nnz[i] = raw.lif_nnz[next(lif_rows)]
        elif row.kind == "attention":
            t = row.op.attrs["tensors"]
            for key in ("q", "k", "v"):
                getattr(act, key)[i] = nnz_per_t(raw.arrays[t[key]], raw.index[t[key]], T)
            act.kv[i] = kv_increments_per_t(raw, row.op, T)
            act.out_nnz[i] = nnz_per_t(raw.arrays[t["out"]], raw.index[t["out"]], T)
        elif row.kind == "input":
            first = next(r for r in mapping.rows if r.geom is not None).op.tensor
            act.in_nnz[i] = nnz_per_t(raw.arrays[first], raw.index[first], T)
            act.in_sum[i] = act.in_nnz[i] if raw.index[first]["encoding"] == "float32" else \
                _per_t_sum(raw.arrays[first], raw.index[first], T)
    return act


def _per_t_sum(arr: np.ndarray, entry: dict, T: int) -> np.ndarray:
    sums = arr.reshape(arr.shape[0], -1).sum(1, dtype=np.int64) * fixed_point_scale(entry)
    return np.broadcast_to(sums, (T,)) if entry["repeat_t"] else sums


def _segment_validity(geom: CrossbarGeometry) -> np.ndarray:
    """``[segments, positions]``: does the segment's kernel position fall inside the input (not padding)?"""
    (h, w), (ph, pw), (sh, sw) = geom.in_hw, geom.padding, geom.stride
    oy, ox = np.arange(geom.out_hw[0]) * sh - ph, np.arange(geom.out_hw[1]) * sw - pw
    return np.stack([np.outer((oy + s.ky >= 0) & (oy + s.ky < h), (ox + s.kx >= 0) & (ox + s.kx < w)).ravel()
                     for s in geom.segments])


def _expected_crossbar(g: CrossbarGeometry, rho: np.ndarray, silent: np.ndarray, bernoulli: bool) -> tuple:
    """Expected ``(wl, reads per block [T, I], positions read [T])`` for one binary plane set.

    ``rho [T, P]``: density of each bit plane; ``silent [T]``: fraction of positions whose channels are all 0.
    Bernoulli model: a position is silent with probability ``silent``, otherwise its bits are independent with
    density ``rho / (1 - silent)``; a row block is idle iff all its (valid) segments are, so the expectation is a
    product over segments, grouped by the patterns of valid segments (interior, edges, corners).  Linear model:
    a row block is read with the probability of one spike, ``rho``.
    """
    valid = _segment_validity(g)
    widths = np.array([s.c1 - s.c0 for s in g.segments], dtype=float)
    blocks = np.array([s.block for s in g.segments])
    wl = rho.sum(1) * (valid.sum(1) * widths).sum()
    s = silent[:, None, None]
    dens = np.where(s < 1, rho[:, :, None] / np.maximum(1 - s, 1e-12), 0.0).clip(0, 1)  # [T, P, 1]
    idle_seg = s + (1 - s) * (1 - dens) ** widths[None, None, :]  # [T, P, segments]
    reads = np.zeros((rho.shape[0], g.row_blocks))
    for i in range(g.row_blocks):
        patterns, counts = np.unique(valid[blocks == i], axis=1, return_counts=True)
        if bernoulli:
            idle = np.where(patterns[None, None], idle_seg[:, :, blocks == i, None], 1.0).prod(2)  # [T, P, U]
            reads[:, i] = ((1 - idle) * counts).sum((1, 2))
        else:
            reads[:, i] = rho.sum(1) * counts[patterns.any(0)].sum()
    kernel_valid = np.unique(valid[[k for k, seg in enumerate(g.segments) if seg.c0 == 0]].sum(0),
                             return_counts=True)  # valid kernel positions per output position
    if bernoulli:
        idle_pixel = silent[:, None] + (1 - silent[:, None]) * np.prod((1 - dens[:, :, 0]) ** g.cin, axis=1)[:, None]
        pos = ((1 - idle_pixel ** kernel_valid[0][None, :]) * kernel_valid[1]).sum(1)
    else:
        pos = np.minimum(rho.sum(1), 1.0) * kernel_valid[1][kernel_valid[0] > 0].sum()
    return wl, reads, pos


def statistical_activity(rates: Rates, mapping: Mapping, config: HwConfig) -> Activity:
    """Expected activity from per-step rates (bit-plane densities, silent-position fractions)."""
    T, bernoulli = mapping.T, config.statistical.read_model == "bernoulli"
    act = Activity.zeros(len(mapping.rows), T)
    lif_rows = iter(range(rates.lif.shape[0]))
    for i, row in enumerate(mapping.rows):
        if row.geom is not None:
            name = row.op.tensor
            rho = rates.planes[name]  # [T, P]
            weight = config.crossbar.analog_input_bits if name in rates.analog else 1
            numel = math.prod(row.op.in_shape)
            wl, reads, pos = _expected_crossbar(row.geom, rho, rates.silent.get(name, np.zeros(T)), bernoulli)
            act.wl[i], act.reads[i], act.serial[i] = wl * weight, reads.sum(1) * weight, reads.max(1) * weight
            act.full_wl[i] = reads @ row.geom.block_rows * weight
            act.pos[i] = pos
            act.in_sum[i], act.in_nnz[i] = rates.means[name] * numel, rates.nonzero[name] * numel
            act.planes[i] = rho.shape[1] * weight
        elif row.kind == "lif":
            act.out_nnz[i] = rates.lif[next(lif_rows)] * math.prod(row.op.out_shape)
        elif row.kind == "attention":
            t, numel = row.op.attrs["tensors"], mapping.vec["out_numel"][i]
            for key in ("q", "k", "v"):
                getattr(act, key)[i] = rates.nonzero[t[key]] * numel
            act.kv[i] = rates.kv[row.op.name] * numel
            act.out_nnz[i] = rates.nonzero[t["out"]] * numel
        elif row.kind == "input":
            first = next(r for r in mapping.rows if r.geom is not None).op
            numel = math.prod(first.in_shape)
            act.in_nnz[i], act.in_sum[i] = rates.nonzero[first.tensor] * numel, rates.means[first.tensor] * numel
    return act

