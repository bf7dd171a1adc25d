"""Stage 1: workload.  What runs: a trace (exact mode) or firing rates (statistical mode), skip list, exit steps.

JSON inputs (docs/hw.md):

* skip list: ``{"skipped_blocks": [int, ...]}`` (``engine.skip.SkipDecision.as_dict()`` writes this; an optional
  ``depths``, which ``main.py`` adds, must be the trace's block count; other keys are ignored);
* exit steps: ``{"exit_steps": [t in 1..T per sample], "sample_ids": [trace sample id, ...]}`` (``sample_ids``
  defaults to 0..n-1; an optional ``T`` must match the trace; ``engine.early_exit``'s ``exit_record()`` writes
  this), or ``{"portion": [fraction exiting at t = 1..T]}`` for statistical mode only;
* rates: ``{"format": "hw-rates/1", "T": T, "samples": n, "planes": {tensor: [[density per bit plane] per t]},
  "means": {tensor: [mean value per t]}, "nonzero": {tensor: [...]}, "kv": {attention op: [density of SDT's
  counter increments, K AND V (max-pooled with DVS input)]},
  "lif": [[output density per t] per LIF], "analog": [tensors of analog values], "silent": {tensor: [fraction of
  positions with no spike per t]}}`` (written by ``python -m hw.run --mode statistical``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.traces import INTEGER_ENCODINGS, OpMeta, RawSample, TraceMeta, TraceReader, fixed_point_scale

from .config import HwInputError, read_mapping

_logger = logging.getLogger(__name__)

__all__ = ["Workload", "Rates", "load_skip_json", "load_exit_json", "check_exit_matches_trace", "exit_weights",
           "rates_from_traces", "nnz_per_t", "and_nnz_per_t", "pooled_and_nnz_per_t", "kv_increments_per_t",
           "plane_densities", "silent_fraction"]


def load_skip_json(path: str | Path, depths: int) -> set[int]:
    """Blocks whose attention branch is skipped; out-of-range or non-integer entries, or a recorded ``depths``
    (``main.py`` writes it) other than the traced model's, name the file and field."""
    d = read_mapping(path, "JSON", "the skip file")
    if "depths" in d and not (_is_int(d["depths"]) and d["depths"] == depths):
        raise HwInputError(f"{path}: field 'depths' is {d['depths']!r}, but the traced model has {depths} blocks: "
                           "the skip list is of another model; pass the skip.json of a run of the traced model")
    blocks = d.get("skipped_blocks")
    if not isinstance(blocks, list) or not all(isinstance(b, int) and not isinstance(b, bool) for b in blocks):
        raise HwInputError(f"{path}: field 'skipped_blocks' must be a list of block indices, got {blocks!r}")
    bad = [b for b in blocks if not 0 <= b < depths]
    if bad:
        raise HwInputError(f"{path}: field 'skipped_blocks' has {bad}; the traced model has blocks 0..{depths - 1}")
    return set(blocks)


def load_exit_json(path: str | Path, T: int) -> tuple[dict[int, int], np.ndarray | None]:
    """``(exit step per trace sample id, portion [T] or None)`` from an exit JSON."""
    return _exit_steps(read_mapping(path, "JSON", "the exit file"), path, T)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _by_sample_id(d: dict, values: list) -> dict:
    """``values`` (one per entry of ``exit_steps``) keyed by the exit file's ``sample_ids`` (default 0, 1, ...)."""
    return dict(zip(d.get("sample_ids", range(len(values))), values))


def _exit_steps(d: dict, path: str | Path, T: int) -> tuple[dict[int, int], np.ndarray | None]:
    if "T" in d and not (_is_int(d["T"]) and d["T"] == T):
        raise HwInputError(f"{path}: field 'T' is {d['T']!r}; it must be the trace's time steps, the integer {T} "
                           "(use an exit file of a run at that T)")
    steps, portion = d.get("exit_steps"), d.get("portion")
    if steps is None and portion is None:
        raise HwInputError(f"{path}: needs field 'exit_steps' (per sample) or 'portion' (per time step)")
    skipped = d.get("skipped_blocks", [])
    if not isinstance(skipped, list) or not all(_is_int(b) for b in skipped):
        raise HwInputError(f"{path}: field 'skipped_blocks' must be a list of block indices, got {skipped!r}")
    per_sample = {}
    if steps is not None:
        ids = d.get("sample_ids", list(range(len(steps))) if isinstance(steps, list) else None)
        if not isinstance(steps, list) or not steps or not isinstance(ids, list) or len(ids) != len(steps):
            raise HwInputError(f"{path}: fields 'exit_steps' and 'sample_ids' must be non-empty lists of equal "
                               "length")
        bad = [s for s in steps if not (_is_int(s) and 1 <= s <= T)]
        if bad:
            raise HwInputError(f"{path}: field 'exit_steps' has {bad[:5]}; exit steps are integers in 1..{T}")
        bad = [i for i in ids if not (_is_int(i) and i >= 0)]
        if bad:
            raise HwInputError(f"{path}: field 'sample_ids' has {bad[:5]}; sample ids are the trace's, integers >= 0")
        repeated = sorted({i for i in ids if ids.count(i) > 1})
        if repeated:
            raise HwInputError(f"{path}: field 'sample_ids' repeats {repeated[:5]}; each sample has one exit step "
                               f"(files of several runs joined?)")
        per_sample = _by_sample_id(d, steps)
        if portion is None:
            portion = np.bincount(np.asarray(steps) - 1, minlength=T) / len(steps)
    try:
        portion = np.asarray(portion, dtype=float)
    except (TypeError, ValueError):
        portion = None
    if (portion is None or portion.shape != (T,) or not (portion >= 0).all()
            or not math.isclose(portion.sum(), 1.0, rel_tol=1e-6)):
        raise HwInputError(f"{path}: field 'portion' must be {T} non-negative fractions summing to 1")
    return per_sample, portion


def _exit_predictions(d: dict, path: str | Path) -> dict[int, tuple[int, int]] | None:
    """``(prediction, label)`` per sample id at its exit step, from an exit file that records both (``main.py``'s
    ``exit_steps.json``: the predictions of the model that made the exits); None when it lacks either.

    Raises:
        HwInputError: a ``predictions`` or ``labels`` field that is not one integer class per exit step.
    """
    steps = d.get("exit_steps")
    if "predictions" not in d or "labels" not in d or not isinstance(steps, list):
        return None
    for key in ("predictions", "labels"):
        values = d[key]
        if not isinstance(values, list) or len(values) != len(steps) or not all(_is_int(v) for v in values):
            raise HwInputError(f"{path}: field '{key}' must list one integer class per entry of 'exit_steps' "
                               f"({len(steps)}); write the file with main.py --early-exit or drop the field")
    return _by_sample_id(d, list(zip(d["predictions"], d["labels"])))


def check_exit_matches_trace(d: dict, path: str | Path, reader: TraceReader, skip: set[int],
                             predictions: dict[int, tuple[int, int]] | None = None) -> None:
    """An exit file's content ``d`` must come from the traced samples and model: the labels it records for the
    trace's sample ids must be the trace's, the blocks it records as skipped (``main.py`` writes
    ``skipped_blocks``) those the trace and the skip list skip, and, unless the skip list skips blocks the trace
    ran (a what-if, whose exits come from another model than the trace's), the prediction it records for each
    traced sample the trace's at that sample's exit step (``predictions``: the file's, as ``Workload.open`` parsed
    them; None: not compared).

    Raises:
        HwInputError: naming the first sample, the blocks or the number of predictions that differ, and what to
            pass instead.
    """
    labels = d.get("labels")
    if isinstance(labels, list) and isinstance(d.get("exit_steps"), list) and len(labels) == len(d["exit_steps"]):
        recorded = _by_sample_id(d, labels)
        for sample in reader.meta.samples:
            if sample.label is not None and sample.id in recorded and recorded[sample.id] != sample.label:
                raise HwInputError(f"{path}: sample {sample.id} has label {recorded[sample.id]}, but the trace's "
                                   f"sample {sample.id} has label {sample.label}: the exit file numbers other "
                                   f"samples than {reader.dir} (another dataset, split or order)")
    skipped = d.get("skipped_blocks")
    if isinstance(skipped, list) and set(skipped) != skip:
        raise HwInputError(f"{path}: its model skipped the attention of blocks {sorted(skipped)}, but the trace and "
                           f"--skip-json skip {sorted(skip)}: pass that run's skip.json with --skip-json (or a trace "
                           f"of the model that wrote the exit file)")
    if skip == set(reader.meta.skipped_blocks) and predictions is not None:
        _check_exit_predictions(d, path, reader, predictions)


def _check_exit_predictions(d: dict, path: str | Path, reader: TraceReader,
                            predictions: dict[int, tuple[int, int]]) -> None:
    """Each traced sample's prediction in the exit file should be the trace's at its exit step (same model): more
    than half differing is an error, a few a warning (batched evaluation, per-sample tracing or another device may
    round a membrane to the other side of the threshold)."""
    steps = _by_sample_id(d, d["exit_steps"])
    shared = [s for s in reader.meta.samples if s.id in predictions]
    differ = [s.id for s in shared if predictions[s.id][0] != s.pred_per_step[steps[s.id] - 1]]
    if not differ:
        return
    what = (f"{path}: the predictions of {len(differ)} of the {len(shared)} traced samples (first: sample "
            f"{differ[0]}) differ from the trace's at their exit steps")
    if 2 * len(differ) > len(shared):
        raise HwInputError(f"{what}: the exit file comes from another model than {reader.dir} (another checkpoint); "
                           "pass the exit file of the run that exported the trace")
    _logger.warning("%s: rounding can flip a few, more would mean the exit file comes from another model than %s",
                    what, reader.dir)


def exit_weights(portion: np.ndarray) -> np.ndarray:
    """Fraction of samples still running at each step: ``P(exit step >= t)`` for t = 1..T."""
    return np.clip(1.0 - np.concatenate([[0.0], np.cumsum(portion)[:-1]]), 0.0, 1.0)


@dataclass
class Workload:
    """The trace, the skip set (from the trace and a skip JSON), the per-sample exit steps and, when the exit file
    records them, each sample's prediction and label at its exit (``exit_predictions``)."""

    reader: TraceReader
    skip: set[int] = field(default_factory=set)
    exit_steps: dict[int, int] = field(default_factory=dict)
    exit_portion: np.ndarray | None = None
    exit_predictions: dict[int, tuple[int, int]] | None = None

    @property
    def meta(self) -> TraceMeta:
        return self.reader.meta

    @property
    def meta_path(self) -> str:
        return str(self.reader.dir / "meta.json")

    @classmethod
    def open(cls, trace_dir: str | Path, skip_json: str | Path | None = None,
             exit_json: str | Path | None = None, check_crc: bool = False) -> "Workload":
        reader = TraceReader(trace_dir, check_crc=check_crc)
        if not reader.sample_ids:
            raise HwInputError(f"{reader.dir / 'meta.json'}: the trace has no samples (field 'samples' is empty); "
                               "export at least one sample")
        depths = 1 + max((op.block for op in reader.meta.ops if op.block is not None), default=-1)
        skip = load_skip_json(skip_json, depths) if skip_json else set()
        steps, portion, predictions = {}, None, None
        if exit_json:
            content = read_mapping(exit_json, "JSON", "the exit file")
            steps, portion = _exit_steps(content, exit_json, reader.meta.T)
            predictions = _exit_predictions(content, exit_json)
            check_exit_matches_trace(content, exit_json, reader, skip | set(reader.meta.skipped_blocks), predictions)
        missing = sorted(set(reader.sample_ids) - set(steps)) if steps else []
        if missing:
            raise HwInputError(f"{exit_json}: field 'sample_ids' lacks trace samples {missing[:5]} of {trace_dir}")
        return cls(reader, skip, steps, portion, predictions)


# ------------------------------------------------------------------------------------------------- spike statistics
def _per_t(values: np.ndarray, entry: dict, T: int) -> np.ndarray:
    """Broadcast a per-stored-step vector to T steps (tensors identical at every step are stored once)."""
    return np.broadcast_to(values, (T,)).astype(float) if entry["repeat_t"] else values.astype(float)


def _words(flat: np.ndarray) -> np.ndarray:
    """Packed bytes ``[T', n]`` viewed as 64-bit words when n allows (8x fewer popcounts)."""
    return flat.view(np.uint64) if flat.shape[1] % 8 == 0 and flat.flags.c_contiguous else flat


def nnz_per_t(arr: np.ndarray, entry: dict, T: int) -> np.ndarray:
    """Non-zero elements per time step of a stored tensor."""
    flat = arr.reshape(arr.shape[0], -1)
    counts = np.add.reduce(np.bitwise_count(_words(flat)) if entry["encoding"] == "bits"
                           else (flat != 0).view(np.uint8), axis=1, dtype=np.uint32)
    return _per_t(counts, entry, T)


def and_nnz_per_t(a: np.ndarray, ea: dict, b: np.ndarray, eb: dict, T: int) -> np.ndarray:
    """Per-step count of positions where both binary tensors are 1 (K AND V); stored forms must match."""
    repeat = {"repeat_t": ea["repeat_t"] and eb["repeat_t"]}
    if ea["encoding"] == eb["encoding"] == "bits":
        both = np.bitwise_and(_words(a.reshape(a.shape[0], -1)), _words(b.reshape(b.shape[0], -1)))
        counts = np.add.reduce(np.bitwise_count(both), axis=1, dtype=np.uint32)
    else:
        counts = np.add.reduce(((a != 0) & (b != 0)).reshape(max(a.shape[0], b.shape[0]), -1).view(np.uint8),
                               axis=1, dtype=np.uint32)
    return _per_t(counts, repeat, T)


def _dilate3(x: np.ndarray, axis: int) -> np.ndarray:
    """3-wide OR along ``axis``, zero beyond the ends (a binary max-pool: kernel 3, stride 1, padding 1)."""
    y = np.moveaxis(x, axis, 0)
    out = y.copy()
    out[1:] |= y[:-1]
    out[:-1] |= y[1:]
    return np.moveaxis(out, 0, axis)


def _head_words(both: np.ndarray, heads: int, head_dim: int) -> np.ndarray:
    """Packed ``[T', N, C/8]`` bits as one integer per (token, head) holding that head's channels in adjacent bits."""
    words = both.reshape(*both.shape[:2], heads, head_dim // 8).view(f">u{head_dim // 8}")[..., 0]
    return words.astype(f"u{head_dim // 8}")


def pooled_and_nnz_per_t(k: np.ndarray, ek: dict, v: np.ndarray, ev: dict, heads: int, head_dim: int,
                         T: int) -> np.ndarray:
    """Per step, the non-zeros of ``maxpool3x3(K AND V)`` over (token, channel within a head), as SDT with DVS input
    computes ``pool(K * V)`` on ``[T, heads, N, d]`` before summing over tokens.

    ``k``, ``v``: stored ``[T', H, W, C(/8)]`` (token ``n = h * W + w``, channel ``c = head * d + j``).  A head of
    8, 16, 32 or 64 packed channels is one machine word: the pool over channels is ``w | w << 1 | w >> 1``.
    """
    tp = max(k.shape[0], v.shape[0])
    packed = ek["encoding"] == ev["encoding"] == "bits"
    if packed and head_dim in (8, 16, 32, 64):
        both = np.bitwise_and(k, v).reshape(tp, -1, k.shape[-1])
        words = _head_words(both, heads, head_dim)  # [T', N, heads]
        pooled = _dilate3(words | (words << 1) | (words >> 1), 1)
        counts = np.add.reduce(np.bitwise_count(pooled).reshape(tp, -1), axis=1, dtype=np.uint32)
    else:
        spikes = [np.unpackbits(a, axis=-1, count=heads * head_dim) if e["encoding"] == "bits" else a != 0
                  for a, e in ((k, ek), (v, ev))]
        both = (spikes[0] & spikes[1]).reshape(tp, -1, heads, head_dim).astype(bool)  # [T', N, heads, d]
        counts = np.count_nonzero(_dilate3(_dilate3(both, 1), 3).reshape(tp, -1), axis=1)
    return _per_t(counts, {"repeat_t": ek["repeat_t"] and ev["repeat_t"]}, T)


def kv_increments_per_t(raw: RawSample, op: OpMeta, T: int) -> np.ndarray:
    """SDT's counter increments per step of an attention op: ``nnz(K AND V)``, or with DVS input the non-zeros of
    the max-pooled ``K AND V`` the model sums (:func:`pooled_and_nnz_per_t`)."""
    a = op.attrs
    k, v = a["tensors"]["k"], a["tensors"]["v"]
    if a["mode"] == "SDT" and a["dvs"]:
        return pooled_and_nnz_per_t(raw.arrays[k], raw.index[k], raw.arrays[v], raw.index[v], a["heads"],
                                    a["head_dim"], T)
    return and_nnz_per_t(raw.arrays[k], raw.index[k], raw.arrays[v], raw.index[v], T)


def plane_densities(arr: np.ndarray, entry: dict, T: int, numel: int) -> tuple[np.ndarray, np.ndarray]:
    """``(density of each bit plane [T, P], mean value [T])`` of a stored tensor of ``numel`` elements per step;
    analog values give one plane of non-zeros."""
    flat = arr.reshape(arr.shape[0], -1)
    if entry["encoding"] == "bits":  # the packing's padding bits (C % 8 != 0) are zero and not elements
        dens = (np.bitwise_count(flat).sum(1, dtype=np.int64) / numel)[:, None]
        mean = dens[:, 0]
    elif entry["encoding"] in INTEGER_ENCODINGS:
        bits = max(1, int(flat.max(initial=0)).bit_length())
        dens = np.stack([((flat >> b) & 1).mean(1) for b in range(bits)], axis=1)
        mean = flat.mean(1) * fixed_point_scale(entry)
    else:
        dens = (flat != 0).mean(1)[:, None]
        mean = dens[:, 0]
    if entry["repeat_t"]:
        dens, mean = np.repeat(dens, T, axis=0), np.repeat(mean, T)
    return dens, mean


def silent_fraction(arr: np.ndarray, entry: dict, T: int) -> np.ndarray:
    """Per step, the fraction of positions (pixels, tokens) whose channels are all zero."""
    x = arr.reshape(arr.shape[0], -1, arr.shape[-1])
    silent = 1.0 - np.add.reduce(x.any(-1), axis=1, dtype=np.uint32) / x.shape[1]
    return _per_t(silent, entry, T)


@dataclass
class Rates:
    """Statistical-mode input: per tensor and time step, bit-plane densities, means and non-zero fractions."""

    T: int
    samples: int
    planes: dict[str, np.ndarray]
    means: dict[str, np.ndarray]
    nonzero: dict[str, np.ndarray]
    kv: dict[str, np.ndarray]
    lif: np.ndarray
    analog: set[str] = field(default_factory=set)  # tensors of analog values (one plane of non-zeros)
    silent: dict[str, np.ndarray] = field(default_factory=dict)  # fraction of positions with all channels 0

    def to_json(self) -> dict:
        lists = lambda d: {k: np.asarray(v).tolist() for k, v in d.items()}  # noqa: E731
        return {"format": "hw-rates/1", "T": self.T, "samples": self.samples, "planes": lists(self.planes),
                "means": lists(self.means), "nonzero": lists(self.nonzero), "kv": lists(self.kv),
                "lif": np.asarray(self.lif).tolist(), "analog": sorted(self.analog), "silent": lists(self.silent)}

    @classmethod
    def load(cls, path: str | Path, meta: TraceMeta) -> "Rates":
        """A rates file (:meth:`to_json`) for the trace of ``meta``; each field's type, shape and range is checked."""
        d = read_mapping(path, "JSON", "the rates")
        T = meta.T
        if d.get("format") != "hw-rates/1" or not _is_int(d.get("T")) or d["T"] != T:
            raise HwInputError(f"{path}: fields 'format'/'T' are {d.get('format')!r}/{d.get('T')!r}; expected "
                               f"'hw-rates/1' and the trace's T={T}")
        samples = d.get("samples")
        if not _is_int(samples) or samples < 1:
            raise HwInputError(f"{path}: field 'samples' must be a positive integer (the trace samples the rates "
                               f"average), got {samples!r}")
        analog = d.get("analog", [])
        if not isinstance(analog, list) or not all(isinstance(name, str) for name in analog):
            raise HwInputError(f"{path}: field 'analog' must be a list of tensor names, got {analog!r}")
        tensors, attention = list(meta.tensors), [op.name for op in meta.ops if op.kind == "attention"]
        per_step = ((T,), f"[{T}] (one value per time step)")
        tables = {key: _rate_table(path, key, d.get(key), names, shape, upper) for key, names, shape, upper in (
            ("planes", tensors, ((T, None), f"[{T} steps, bit planes]"), 1.0), ("means", tensors, per_step, math.inf),
            ("nonzero", tensors, per_step, 1.0), ("kv", attention, per_step, 1.0))}
        silent = d.get("silent", {})  # optional per tensor (0: no silent positions)
        present = [name for name in tensors if isinstance(silent, dict) and name in silent]
        lifs = len(meta.lifs())
        return cls(T, samples, **tables, analog=set(analog),
                   lif=_rate_array(path, "lif", d.get("lif"), ((lifs, T), f"[{lifs} LIFs, {T} steps]"), 1.0),
                   silent=_rate_table(path, "silent", silent, present, per_step, 1.0))


def _rate_table(path: str | Path, key: str, entries, names: list[str], shape: tuple[tuple, str],
                upper: float) -> dict[str, np.ndarray]:
    """Field ``key`` of a rates file: a mapping with an array for each of ``names`` (:func:`_rate_array`)."""
    if not isinstance(entries, dict):
        got = "no such field" if entries is None else f"a {type(entries).__name__}"
        raise HwInputError(f"{path}: field '{key}' must be a mapping of names to per-step values, got {got}")
    missing = [name for name in names if name not in entries]
    if missing:
        raise HwInputError(f"{path}: field '{key}' lacks {missing[:3]}: the rates come from another model than the "
                           "trace's (write them with --mode statistical on a trace of this model)")
    return {name: _rate_array(path, f"{key}.{name}", entries[name], shape, upper) for name in names}


def _rate_array(path: str | Path, where: str, value, shape: tuple[tuple, str], upper: float) -> np.ndarray:
    """``value`` as a float array of ``shape`` (dims and a description; a None dim is any positive length) with
    finite values in ``[0, upper]``."""
    dims, layout = shape
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim != len(dims) or any(m < 1 if n is None else m != n for n, m in zip(dims, arr.shape)):
        got = f"shape {list(arr.shape)}" if arr is not None else repr(value)[:80]
        raise HwInputError(f"{path}: field '{where}' must be an array of shape {layout}, got {got}")
    ok = np.isfinite(arr) & (arr >= 0) & (arr <= upper)
    if not ok.all():
        want = "fractions in 0..1" if upper == 1.0 else "non-negative finite numbers"
        raise HwInputError(f"{path}: field '{where}' has {float(arr[~ok][0])!r}; its values are {want}")
    return arr


def _sample_rates(raw: RawSample, meta: TraceMeta) -> Rates:
    T = meta.T
    planes, means, nonzero, kv, silent = {}, {}, {}, {}, {}
    for name, spec in meta.tensors.items():
        arr, entry = raw.arrays[name], raw.index[name]
        numel = math.prod(spec.shape[1:])
        planes[name], means[name] = plane_densities(arr, entry, T, numel)
        nonzero[name] = nnz_per_t(arr, entry, T) / numel
        silent[name] = silent_fraction(arr, entry, T)
    for op in meta.ops:
        if op.kind == "attention":
            kv[op.name] = kv_increments_per_t(raw, op, T) / math.prod(op.in_shape)
    numel = np.array([math.prod(op.out_shape) for op in meta.lifs()], dtype=float)
    analog = {name for name, entry in raw.index.items() if entry["encoding"] == "float32"}
    return Rates(T, 1, planes, means, nonzero, kv, raw.lif_nnz / numel[:, None], analog, silent)


def _pad_planes(a: np.ndarray, width: int) -> np.ndarray:
    return np.pad(a, ((0, 0), (0, width - a.shape[1])))


def _add(a: Rates, b: Rates) -> Rates:
    """Sum of two rate sets (bit planes padded to the wider one)."""
    planes = {}
    for name, x in a.planes.items():
        width = max(x.shape[1], b.planes[name].shape[1])
        planes[name] = _pad_planes(x, width) + _pad_planes(b.planes[name], width)
    add = lambda d, e: {k: v + e[k] for k, v in d.items()}  # noqa: E731
    return Rates(a.T, a.samples + b.samples, planes, add(a.means, b.means), add(a.nonzero, b.nonzero),
                 add(a.kv, b.kv), a.lif + b.lif, a.analog | b.analog, add(a.silent, b.silent))


def rates_from_traces(reader: TraceReader, sample_ids: list[int] | None = None) -> Rates:
    """Mean per-step rates over the samples of a trace."""
    ids = reader.sample_ids if sample_ids is None else sample_ids
    total = None
    for sid in ids:
        r = _sample_rates(reader.load_raw(sid), reader.meta)
        total = r if total is None else _add(total, r)
    if total is None:
        raise HwInputError(f"{reader.dir}: the trace has no samples")
    scale = lambda d: {k: v / total.samples for k, v in d.items()}  # noqa: E731
    return Rates(total.T, total.samples, scale(total.planes), scale(total.means), scale(total.nonzero),
                 scale(total.kv), total.lif / total.samples, total.analog, scale(total.silent))
