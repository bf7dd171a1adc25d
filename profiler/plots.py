"""The six figures of the reference profiler notebook (graphsCifar.ipynb), in English and milliseconds.

Read from the CSV tables that ``python -m profiler parse`` writes, one set of PNGs per source capture:

1. ``times_breakdown``: stacked bars of the mean whole-model time; stem + encoder (sum of the per-layer SSA + MLP
   means) + the rest; stem + each layer + the rest; SSA + MLP of one block;
2. ``layer_times``: SSA and MLP mean time per layer;
3. ``attention_breakdown``: SSA + MLP of a block, and the same with the SSA split into its sub-timers;
4. ``stem_times``: SPS.PSM and SPS.RPE stacked, next to their sum;
5. ``layer_sparsity``: sparsity of the main variables per layer (mean over runs);
6. ``step_sparsity``: per-time-step sparsity of the attention output before and after ``attn_lif``, per layer,
   in the last run.

A figure whose data the capture lacks (no timers in cap8-style captures, say) is left out, with a log line.
"""
from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure

from engine.atomic import atomic_open
from .fork_format import LABELS, RUN_TOTAL, TOTAL
from .tables import free_folder, overall_means, read_csv, record_inputs, same_inputs

__all__ = ["FIGURES", "plot_tables"]

_logger = logging.getLogger(__name__)

_SSA, _MLP, _PSM, _RPE = "SSA Encoder", "MLP", "SPS.PSM", "SPS.RPE"
_TIME_AXIS = "time (ms)"
# Variables of the sparsity-per-layer figure (the reference's EncoderVariablesSparsity columns), with the
# per-time-step probe that stands for a whole-tensor one in the current format.
_SPARSITY_VARIABLES = [("x_for_qkv", None), ("q", None), ("k", None), ("v", None), ("Attention out", None),
                       ("Attention postReshape x", "Attention postReshape chunk x"),
                       ("MLP postLIF x after lif", None), ("MLP postLIF x after fc2", None)]


class _Missing(Exception):
    """The tables lack what a figure needs."""


def _rows(tables: dict[str, list[dict]], name: str, source: str) -> list[dict]:
    return [row for row in tables[name] if row["source"] == source]


def _need(means: dict[str, float], *labels: str) -> None:
    missing = [label for label in labels if label not in means]
    if missing:
        raise _Missing(f"no {', '.join(missing)} times")


def _per_layer(rows: list[dict]) -> list[tuple[int, float, float]]:
    """``(layer, SSA ms, MLP ms)`` for every layer with either time; a skipped block's attention has none (0)."""
    times = {(row["layer"], row["label"]): row["mean_ms"] for row in rows if row["label"] in (_SSA, _MLP)}
    layers = sorted({layer for layer, _ in times})
    return [(layer, times.get((layer, _SSA), 0.0), times.get((layer, _MLP), 0.0)) for layer in layers]


def _stacked(ax, bars: list[tuple[str, list[tuple[str, float]]]], ylabel: str = _TIME_AXIS) -> None:
    """Stacked bars; segments with the same name share a colour and one legend entry."""
    cmap = matplotlib.colormaps["tab20"]
    colours: dict[str, tuple] = {}
    for x, (_, segments) in enumerate(bars):
        bottom = 0.0
        for name, value in segments:
            first = name not in colours
            colour = colours.setdefault(name, cmap(len(colours) % cmap.N))
            ax.bar(x, value, bottom=bottom, color=colour, label=name if first else None, edgecolor="white",
                   linewidth=0.5)
            bottom += value
    ax.set_xticks(range(len(bars)), [name for name, _ in bars])
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _times_breakdown(ax, tables: dict, source: str) -> None:
    means = overall_means(tables["model_times"], source)
    total_label = TOTAL if TOTAL in means else RUN_TOTAL
    _need(means, total_label, _PSM, _RPE, _SSA, _MLP)
    layers = [(layer, ssa + mlp) for layer, ssa, mlp in _per_layer(_rows(tables, "encoder_means", source))]
    encoder = sum(time for _, time in layers)
    total, stem = means[total_label], means[_PSM] + means[_RPE]
    rest = max(total - stem - encoder, 0.0)
    _stacked(ax, [
        ("whole model", [(total_label, total)]),
        ("stem + encoder", [("SPS (PSM + RPE)", stem), ("encoder (SSA + MLP)", encoder), ("rest", rest)]),
        ("per layer", [("SPS (PSM + RPE)", stem)] + [(f"layer {layer}", time) for layer, time in layers]
         + [("rest", rest)]),
        ("one block", [(_SSA, means[_SSA]), (_MLP, means[_MLP])]),
    ])
    ax.set_title("Execution time breakdown (means over runs)")


def _layer_times(ax, tables: dict, source: str) -> None:
    layers = _per_layer(_rows(tables, "encoder_means", source))
    if not layers:
        raise _Missing("no per-layer SSA/MLP times")
    _stacked(ax, [(f"layer {layer}", [(_SSA, ssa), (_MLP, mlp)]) for layer, ssa, mlp in layers])
    ax.set_title("SSA and MLP time per layer (means over runs)")


def _attention_breakdown(ax, tables: dict, source: str) -> None:
    means = overall_means(tables["model_times"], source)
    _need(means, _SSA, _MLP)
    subs = [(label, means[label]) for label in means
            if LABELS.get(label) and LABELS[label].scope == "block" and label not in (_SSA, _MLP)]
    if not subs:
        raise _Missing("no attention sub-timers")
    rest = means[_SSA] - sum(value for _, value in subs)
    _stacked(ax, [("SSA + MLP", [(_SSA, means[_SSA]), (_MLP, means[_MLP])]),
                  ("SSA split", [("SSA rest (untimed steps)", max(rest, 0.0))] + subs + [(_MLP, means[_MLP])])])
    ax.set_title("SSA encoder and its sub-timers (mean per block)")


def _stem_times(ax, tables: dict, source: str) -> None:
    means = overall_means(tables["model_times"], source)
    _need(means, _PSM, _RPE)
    _stacked(ax, [("PSM + RPE", [(_PSM, means[_PSM]), (_RPE, means[_RPE])]),
                  ("SPS total", [("SPS total", means[_PSM] + means[_RPE])])])
    ax.set_title("Stem (SPS) times (means over runs)")


def _layer_sparsity(ax, tables: dict, source: str) -> None:
    values: dict[tuple[str, int], list[float]] = {}
    for row in _rows(tables, "layer_sparsity", source):
        values.setdefault((row["label"], row["layer"]), []).append(row["mean"])
    layers = sorted({layer for _, layer in values})
    variables = [(name, alias) for name, alias in _SPARSITY_VARIABLES
                 if any((label, layer) in values for label in (name, alias) for layer in layers)]
    if not variables:
        raise _Missing("no sparsity probes")
    def mean(name: str, alias: str | None, layer: int) -> float:
        found = values.get((name, layer)) or values.get((alias, layer))  # per-step rows: the mean over t
        return sum(found) / len(found) if found else float("nan")

    width = 0.8 / len(variables)
    cmap = matplotlib.colormaps["tab10"]
    for i, (name, alias) in enumerate(variables):
        heights = [mean(name, alias, layer) for layer in layers]
        ax.bar([layer + (i - (len(variables) - 1) / 2) * width for layer in layers], heights, width,
               label=name, color=cmap(i % cmap.N))
    ax.set_xticks(layers, [f"layer {layer}" for layer in layers])
    ax.set_ylabel("sparsity (fraction of zeros)")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title("Sparsity per layer (means over runs)")


def _step_sparsity(fig: Figure, tables: dict, source: str) -> None:
    rows = _rows(tables, "attention_chunks", source)
    if not rows:
        raise _Missing("no per-time-step attention sparsity")
    last = max(row["run"] for row in rows)
    rows = [row for row in rows if row["run"] == last]
    layers = sorted({row["layer"] for row in rows})
    steps = sorted({row["t"] for row in rows})
    width = 0.8 / len(steps)
    cmap = matplotlib.colormaps["viridis"]
    axes = fig.subplots(1, 2, sharey=True)
    for ax, column, title in zip(axes, ("output", "x"), ("attention output (before attn_lif)",
                                                          "attention spikes (after attn_lif)")):
        for i, t in enumerate(steps):
            by_layer = {r["layer"]: float("nan") if r[column] is None else r[column] for r in rows if r["t"] == t}
            ax.bar([layer + (i - (len(steps) - 1) / 2) * width for layer in layers],
                   [by_layer.get(layer, float("nan")) for layer in layers], width, label=f"t = {t}",
                   color=cmap(i / max(len(steps) - 1, 1)))
        ax.set_xticks(layers, [str(layer) for layer in layers])
        ax.set_xlabel("layer")
        ax.set_title(title)
    axes[0].set_ylabel("sparsity (fraction of zeros)")
    axes[1].legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"Per-time-step attention sparsity, run {last}")


# name -> (draw(ax or fig, tables, source), draws on the whole figure?)
FIGURES: dict[str, tuple[Callable, bool]] = {
    "times_breakdown": (_times_breakdown, False),
    "layer_times": (_layer_times, False),
    "attention_breakdown": (_attention_breakdown, False),
    "stem_times": (_stem_times, False),
    "layer_sparsity": (_layer_sparsity, False),
    "step_sparsity": (_step_sparsity, True),
}


def _file_prefix(source: str) -> str:
    """``capcifar3.txt`` -> ``capcifar3``; ``gpu/records.jsonl`` -> ``gpu_records``."""
    return re.sub(r"[^\w.-]+", "_", Path(source).with_suffix("").as_posix())


def _file_prefixes(sources: list[str]) -> dict[str, str]:
    """:func:`_file_prefix` of each source, keeping the suffix where two would share a prefix (``cpu.txt`` and
    ``cpu.jsonl`` would write the same files), and numbered where they still would."""
    short = [_file_prefix(src) for src in sources]
    prefixes: dict[str, str] = {}
    for src, prefix in zip(sources, short):
        base = prefix if short.count(prefix) == 1 else re.sub(r"[^\w.-]+", "_", src).replace(".", "_")
        name, n = base, 1
        while name in prefixes.values():  # 'run 1/x' and 'run_1/x' still clash: number the later one
            n += 1
            name = f"{base}_{n}"
        prefixes[src] = name
    return prefixes


def plot_tables(tables_dir: Path, out_dir: Path, source: str | None = None) -> list[Path]:
    """Draw every figure for every source (or only ``source``) of the tables in ``tables_dir`` into ``out_dir``
    (replacing the figures of the same sources), or into the first free ``<out_dir>-N`` if it holds figures of other
    sources (``tables.free_folder``); PNG paths.

    Raises:
        ValueError: a table is not as 'parse' writes it (see ``read_csv``), the tables have no rows, or ``out_dir``
            is a file.
    """
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    names = ("model_times", "encoder_means", "layer_sparsity", "attention_chunks")
    tables = {name: read_csv(tables_dir / f"{name}.csv") for name in names}
    digest = hashlib.sha256(b"".join((tables_dir / f"{name}.csv").read_bytes() for name in names)).hexdigest()
    sources = sorted({row["source"] for rows in tables.values() for row in rows})
    if not sources:
        raise ValueError(f"{tables_dir}: the tables have no rows, so there is nothing to plot: parse captures with "
                         f"complete runs into it first (python -m profiler parse CAPTURE --out {tables_dir})")
    prefixes = _file_prefixes(sources)
    if source is not None:
        if source not in sources:
            raise ValueError(f"source {source!r} not in the tables; they have {sources}")
        sources = [source]
    patterns = [f"*_{name}.png" for name in FIGURES]
    ours = {f"{prefixes[src]}_{name}.png" for src in sources for name in FIGURES}
    inputs = {src: digest for src in sources}
    out_dir = free_folder(out_dir, patterns, "the figures of other tables", rerun=lambda folder: all(
        path.name in ours for pattern in patterns for path in folder.glob(pattern)) and same_inputs(folder, inputs))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for src in sources:
        for name, (draw, whole_figure) in FIGURES.items():
            fig = Figure(figsize=(10, 5), layout="constrained")
            try:
                draw(fig if whole_figure else fig.add_subplot(), tables, src)
            except _Missing as exc:
                _logger.info("%s: no %s figure (%s)", src, name, exc)
                continue
            path = out_dir / f"{prefixes[src]}_{name}.png"
            with atomic_open(path, "wb") as f:
                fig.savefig(f, format="png", dpi=110)
            written.append(path)
    record_inputs(out_dir, inputs)
    _logger.info("wrote %d figures to %s", len(written), out_dir)
    return written
