"""Stage 2: mapping.  Layers onto crossbars and tiles, stages, NoC distances, memory needed vs provided.

Every later stage works on a *row table*: one row per traced operation (layers, LIFs, pools, residual adds,
attention cores) plus ``input`` (frames into the chip), ``head.token_mean``, ``controller`` and ``chip``
(leakage).  :class:`Mapping` holds the rows and, for vectorised stages, per-row NumPy vectors.

Crossbar mapping (weight-stationary, one set of crossbars per layer): the im2col matrix of a conv has
``k_h * k_w * C_in`` rows ordered kernel-position-major, channel-minor (HWC im2col: row ``(ky * k_w + kx) * C_in +
c``), cut into row blocks of ``crossbar.rows``; each weight takes ``ceil(b_w / b_c) * sign_columns`` adjacent
columns, and the ``C_out * slices`` columns are cut into column blocks of ``crossbar.cols``.  A row block is thus a
set of :class:`Segment` s (kernel position, channel range), which lets ``hw.activity`` count active rows by
shifting per-pixel channel popcounts instead of building im2col matrices.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from engine.traces import CROSSBAR_KINDS, OpMeta, TraceMeta

from .config import HwConfig, HwInputError

__all__ = ["Segment", "CrossbarGeometry", "Row", "Mapping", "crossbar_geometry", "build_mapping"]

PORT = -1  # "row" of the input port / global buffer, at tile (0, 0): the first layer's input comes from it


@dataclass(frozen=True)
class Segment:
    """Rows of row block ``block`` fed by kernel position ``(ky, kx)``, input channels ``[c0, c1)``."""

    block: int
    ky: int
    kx: int
    c0: int
    c1: int


@dataclass(frozen=True)
class CrossbarGeometry:
    """A conv/linear layer on crossbars; linear layers are 1x1 convs over ``(tokens, 1)`` positions."""

    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    rows_total: int
    row_blocks: int
    slices: int
    cols_total: int
    col_blocks: int
    segments: tuple[Segment, ...]

    @property
    def positions(self) -> int:
        return self.out_hw[0] * self.out_hw[1]

    @property
    def block_rows(self) -> np.ndarray:
        """Wordlines of each row block (the last one may be partly filled); they sum to ``rows_total``."""
        return np.bincount([s.block for s in self.segments], weights=[s.c1 - s.c0 for s in self.segments],
                           minlength=self.row_blocks)

    @property
    def crossbars(self) -> int:
        return self.row_blocks * self.col_blocks

    @property
    def flops(self) -> int:
        """ANN MACs of one time step: ``k_h k_w H_out W_out C_in C_out``."""
        return self.kernel[0] * self.kernel[1] * self.positions * self.cin * self.cout


def crossbar_geometry(op: OpMeta, config: HwConfig, meta_path: str = "meta.json") -> CrossbarGeometry:
    """Map one conv/linear operation; unsupported geometry raises :class:`HwInputError` naming the layer."""
    a, xb = op.attrs, config.crossbar
    if a["groups"] != 1 or a["dilation"] != [1, 1]:
        raise HwInputError(f"{meta_path}: layer {op.name}: groups={a['groups']}, dilation={a['dilation']} cannot be "
                           f"mapped (the crossbar mapping needs groups=1, dilation=1; preset {config.source})")
    if op.kind == "conv":
        cin, h, w = op.in_shape
        cout, ho, wo = op.out_shape
    else:
        cin, h, w = op.in_shape[-1], (op.in_shape[0] if len(op.in_shape) == 2 else 1), 1
        cout, ho, wo = op.out_shape[-1], h, 1
    kh, kw = a["kernel"]
    rows_total = kh * kw * cin
    row_blocks = -(-rows_total // xb.rows)
    slices = -(-xb.weight_bits // xb.cell_bits) * xb.sign_columns
    segments = []
    for p in range(kh * kw):
        start = p * cin
        for block in range(start // xb.rows, (start + cin - 1) // xb.rows + 1):
            lo, hi = max(start, block * xb.rows), min(start + cin, (block + 1) * xb.rows)
            segments.append(Segment(block, p // kw, p % kw, lo - start, hi - start))
    return CrossbarGeometry(in_hw=(h, w), out_hw=(ho, wo), cin=cin, cout=cout, kernel=(kh, kw),
                            stride=tuple(a["stride"]), padding=tuple(a["padding"]), rows_total=rows_total,
                            row_blocks=row_blocks, slices=slices, cols_total=cout * slices,
                            col_blocks=-(-cout * slices // xb.cols), segments=tuple(segments))


@dataclass(frozen=True)
class Row:
    """One row of the table.  ``stage`` is the index of the crossbar row whose tiles run it."""

    name: str
    kind: str
    block: int | None
    sdsa: bool
    skipped: bool
    stage: int
    op: OpMeta | None = None
    geom: CrossbarGeometry | None = None


@dataclass
class Mapping:
    """Rows, per-row vectors, placement and the memory check for one preset, dataflow and skip set."""

    rows: list[Row]
    T: int
    chunk: int  # time steps per layer pass (layer_major) or 1 (timestep_major): exit granularity
    tiles_used: int
    crossbars_used: int
    memory: dict
    vec: dict[str, np.ndarray] = field(default_factory=dict)

    def index(self, name: str) -> int:
        return next(i for i, r in enumerate(self.rows) if r.name == name)


def _ops_with_extras(meta: TraceMeta) -> list[OpMeta]:
    """Traced operations plus ``input`` first, ``head.token_mean`` before ``head_lif``, ``controller``, ``chip``."""
    first = meta.layers()[0]
    ops = [OpMeta("input", "input", None, False, first.in_shape, first.in_shape)]
    residuals = [op for op in meta.ops if op.kind == "residual"]
    for op in meta.ops:
        if op.name == "head_lif" and residuals:
            ops.append(OpMeta("head.token_mean", "residual", None, False, residuals[-1].out_shape, op.in_shape))
        ops.append(op)
    return ops + [OpMeta("controller", "control", None, False, (), ()), OpMeta("chip", "chip", None, False, (), ())]


def _snake(k: int, width: int) -> tuple[int, int]:
    r, c = divmod(k, width)
    return r, (c if r % 2 == 0 else width - 1 - c)


def build_mapping(meta: TraceMeta, config: HwConfig, skip: set[int] = frozenset(),
                  meta_path: str = "meta.json") -> Mapping:
    """Rows, crossbar geometry, tiles, stages, hops and memory for ``config`` (its dataflow) and skipped blocks."""
    rows: list[Row] = []
    stage = -1  # rows before the first crossbar layer join its stage
    for op in _ops_with_extras(meta):
        skipped = op.sdsa and op.block in skip
        geom = crossbar_geometry(op, config, meta_path) if op.kind in CROSSBAR_KINDS else None
        if geom is not None and not skipped:
            stage = len(rows)
        rows.append(Row(op.name, op.kind, op.block, op.sdsa, skipped, stage, op, geom))
    first = next(i for i, r in enumerate(rows) if r.geom is not None and not r.skipped)
    rows = [dataclasses.replace(r, stage=first) if r.stage < 0 else r for r in rows]

    # Every layer keeps its crossbars (a skip list can change without reprogramming); skipped ones are
    # power-gated, so only the others count as used (leakage, buffers).
    xb, chip = config.crossbar, config.chip
    tiles_of = np.zeros(len(rows), dtype=np.int64)
    starts = np.zeros(len(rows), dtype=np.int64)
    next_tile = 0
    for i, r in enumerate(rows):
        if r.geom is not None:
            tiles_of[i] = -(-r.geom.crossbars * xb.replication // chip.subarrays_per_tile)
            starts[i], next_tile = next_tile, next_tile + tiles_of[i]
    if next_tile > chip.max_tiles:
        needed = sum(r.geom.crossbars * xb.replication for r in rows if r.geom is not None)
        raise HwInputError(f"{config.source}: field 'chip.max_tiles' is {chip.max_tiles}, but the model in "
                           f"{meta_path} needs {next_tile} tiles ({needed} crossbars of {xb.rows}x{xb.cols}, "
                           f"{chip.subarrays_per_tile} per tile)")
    used = np.array([r.geom is not None and not r.skipped for r in rows])
    crossbars_used = int(sum(r.geom.crossbars * xb.replication for r, u in zip(rows, used) if u))
    tiles_used = int(tiles_of[used].sum())
    width = max(1, math.ceil(math.sqrt(max(next_tile, 1))))
    centroid = np.zeros((len(rows), 2))
    intra = np.zeros(len(rows))
    for i in np.flatnonzero(tiles_of):  # the placement holds every layer: none moves when a block is skipped
        coords = np.array([_snake(k, width) for k in range(starts[i], starts[i] + tiles_of[i])], dtype=float)
        centroid[i] = coords.mean(0)
        intra[i] = np.abs(coords - coords[0]).sum(1).mean()
    stage_tiles = np.array([max(tiles_of[r.stage], 1) for r in rows], dtype=float)
    chunk = 1 if config.dataflow.order == "timestep_major" else (config.dataflow.layer_major_chunk or meta.T)
    if chunk > meta.T or meta.T % chunk:
        raise HwInputError(f"{config.source}: field 'dataflow.layer_major_chunk' is {chunk}; it must divide "
                           f"T={meta.T} of {meta_path}")
    mapping = Mapping(rows=rows, T=meta.T, chunk=chunk, tiles_used=tiles_used, crossbars_used=crossbars_used,
                      memory={})
    mapping.vec = _vectors(rows, config, intra, stage_tiles) | _distances(rows, centroid)
    mapping.memory = _memory(mapping, config)
    return mapping


def _input_source(rows: list[Row], index: dict[str, int], i: int) -> int:
    """Row whose output crossbar row ``i`` reads: the row before it, except for the q, k and v convs of an
    attention block, which all read the shortcut LIF's spikes; ``PORT`` for the first layer."""
    prefix, _, leaf = rows[i].name.rpartition(".")
    if rows[i].sdsa and leaf in ("q_conv", "k_conv", "v_conv"):
        return index[f"{prefix}.shortcut_lif"]
    return PORT if rows[i - 1].kind == "input" else i - 1


def _stream_sources(rows: list[Row], inputs: dict[int, int]) -> dict[int, int]:
    """Row whose output each residual row adds to (the 16-bit residual stream): the previous active residual row;
    for the first (the stem's ``x_feat``), the row feeding its stage's layer, on the stage that computed it."""
    sources, last = {}, None
    for i, r in enumerate(rows):
        if r.kind == "residual" and not r.skipped:
            sources[i] = inputs[r.stage] if last is None else last
            last = i
    return sources


def _core_sources(rows: list[Row], index: dict[str, int], i: int) -> list[int]:
    """LIF rows whose spikes an attention core reads from other stages: q and k (v is computed on the core's
    stage), and for STAtten with DVS input the shortcut LIF's ``x`` (``out * x_pool + x_pool``)."""
    prefix, attrs = rows[i].name.removesuffix(".core"), rows[i].op.attrs
    names = ("q_lif", "k_lif") + (("shortcut_lif",) if attrs["mode"] == "STAtten" and attrs["dvs"] else ())
    return [index[f"{prefix}.{name}"] for name in names]


def _distances(rows: list[Row], centroid: np.ndarray) -> dict[str, np.ndarray]:
    """NoC hops of every move between stages, measured from the stage of the row that produced the data.

    ``hops``: a crossbar layer's input; ``stream_hops``: the residual-stream tensor a residual add reads;
    ``spike_src`` / ``spike_hops`` ``[R, 3]``: the LIF rows whose spikes an attention core reads, and their hops.
    A move is at least 1 hop; data produced on the consumer's own stage does not cross the NoC (0).
    """
    n = len(rows)
    index = {r.name: i for i, r in enumerate(rows)}

    def hops(stage: int, source: int) -> float:
        if source != PORT and rows[source].stage == stage:
            return 0.0
        origin = np.zeros(2) if source == PORT else centroid[rows[source].stage]  # the port is at tile (0, 0)
        return max(1.0, float(np.abs(centroid[stage] - origin).sum()))

    out = {"hops": np.zeros(n), "stream_hops": np.zeros(n), "spike_src": np.zeros((n, 3), dtype=np.int64),
           "spike_hops": np.zeros((n, 3))}
    inputs = {i: _input_source(rows, index, i) for i, r in enumerate(rows) if r.geom is not None}
    for i, source in inputs.items():
        out["hops"][i] = hops(i, source)
    for i, source in _stream_sources(rows, inputs).items():
        out["stream_hops"][i] = hops(rows[i].stage, source)
    for i in (i for i, r in enumerate(rows) if r.kind == "attention"):
        for k, source in enumerate(_core_sources(rows, index, i)):
            out["spike_src"][i, k], out["spike_hops"][i, k] = source, hops(rows[i].stage, source)
    return out


def _vectors(rows: list[Row], config: HwConfig, intra, stage_tiles) -> dict[str, np.ndarray]:
    """Per-row constants for the vectorised stages (0 where a quantity does not apply)."""
    n = len(rows)
    v = {k: np.zeros(n) for k in ("positions", "row_blocks", "col_blocks", "slices", "cout", "cols_total",
                                  "rows_total", "in_numel", "out_numel", "fanout", "flops", "heads", "head_dim",
                                  "tokens", "chunk_size", "psum_noc_fraction")}
    masks = ("input", "xbar", "lif", "pool_or", "pool_cmp", "residual", "attention", "control", "chip", "first",
             "statten", "dvs", "active")
    v |= {k: np.zeros(n, dtype=bool) for k in masks}
    for i, r in enumerate(rows):
        v["active"][i] = not r.skipped
        g, op = r.geom, r.op
        if g is not None:
            v["xbar"][i] = True
            v["first"][i] = op.attrs.get("first", False)
            v["positions"][i], v["row_blocks"][i], v["col_blocks"][i] = g.positions, g.row_blocks, g.col_blocks
            v["slices"][i], v["cout"][i], v["cols_total"][i] = g.slices, g.cout, g.cols_total
            v["rows_total"][i], v["in_numel"][i] = g.rows_total, math.prod(op.in_shape)
            v["fanout"][i] = g.kernel[0] * g.kernel[1] * g.cout * g.positions / (g.in_hw[0] * g.in_hw[1])
            # the row blocks of a column block fill tiles in turn; partial sums of all but the first tile cross
            # the NoC to the accumulating tile, the rest stay on the tile bus
            v["psum_noc_fraction"][i] = max(0.0, 1 - config.chip.subarrays_per_tile / g.row_blocks)
            v["flops"][i] = g.flops
        elif r.kind in ("lif", "residual", "input"):
            v[r.kind][i] = True
            v["in_numel"][i], v["out_numel"][i] = math.prod(op.in_shape), math.prod(op.out_shape)
        elif r.kind == "pool":
            v["pool_or" if op.attrs["binary_input"] else "pool_cmp"][i] = True
            v["out_numel"][i] = math.prod(op.out_shape)
        elif r.kind == "attention":
            a = op.attrs
            v["attention"][i], v["statten"][i], v["dvs"][i] = True, a["mode"] == "STAtten", a["dvs"]
            v["heads"][i], v["head_dim"][i], v["tokens"][i] = a["heads"], a["head_dim"], a["tokens"]
            v["chunk_size"][i] = a["chunk_size"]
            v["out_numel"][i] = a["tokens"] * a["heads"] * a["head_dim"]
        else:
            v[r.kind][i] = True
    v["intra_hops"], v["stage_tiles"] = intra, stage_tiles
    return v


def _memory(m: Mapping, config: HwConfig) -> dict:
    """On-chip memory needed by the dataflow vs provided by the used tiles, and the spill fractions."""
    mem, v, act = config.memory, m.vec, m.vec["active"]
    lif_numel = v["out_numel"][v["lif"] & act]
    stream = 2 * (v["out_numel"][v["residual"] & act].max(initial=0)) * mem.residual_bits
    if config.dataflow.order == "timestep_major":
        state = lif_numel.sum() * mem.membrane_bits + stream
        staging = 0.0
    else:  # one layer's membranes at a time, unless the layers take turns in chunks: then all wait between them
        membranes = lif_numel.max(initial=0) if m.chunk >= m.T else lif_numel.sum()
        state = membranes * mem.membrane_bits + stream * m.chunk
        staging = 2 * v["in_numel"][v["xbar"] & act].max(initial=0) * m.chunk
    kib = 8 * 1024
    state_provided = mem.state_kib_per_tile * kib * m.tiles_used
    gb_provided = mem.global_buffer_kib * kib
    return {
        "dataflow": config.dataflow.order, "chunk": m.chunk,
        "crossbars_used": m.crossbars_used,
        "crossbars_provided": config.chip.max_tiles * config.chip.subarrays_per_tile,
        "tiles_used": m.tiles_used, "tiles_provided": config.chip.max_tiles,
        "weight_cells": int(sum(r.geom.rows_total * r.geom.cols_total for r in m.rows if r.geom)),
        "state_bits_required": float(state), "state_bits_provided": float(state_provided),
        "state_spill_fraction": float(max(0.0, 1 - state_provided / state)) if state else 0.0,
        "spike_bits_required": float(v["in_numel"][v["xbar"] & act].max(initial=0)),
        "spike_bits_provided": float(mem.spike_kib_per_tile * kib * m.tiles_used),
        "global_buffer_bits_required": float(staging), "global_buffer_bits_provided": float(gb_provided),
        "global_buffer_spill_fraction": float(max(0.0, 1 - gb_provided / staging)) if staging else 0.0,
    }
