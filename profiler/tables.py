"""Tables from parsed captures (complete runs only), written as CSV; times in milliseconds.

=====================  ==========================================================================================
model_times.csv        per run, the mean of each timer over its occurrences in the run (for block timers: over
                       the blocks): source, run, label, count, mean_ms.  The reference's ModelTimes table.
encoder_means.csv      per layer, each block timer over the runs: source, layer, label, runs, mean_ms, std_ms.
                       The reference's EncoderMeans (SSA/MLP), with the sub-timers too.
attention_chunks.csv   per run, layer and time step, the sparsity of the attention output before (``output``)
                       and after (``x``) ``attn_lif``: source, run, layer, t, output, x.  AttentionOutTensorChunks.
layer_sparsity.csv     per layer, each sparsity probe (and time step) over the runs: source, layer, label, t, runs,
                       mean, std.  EncoderVariablesSparsity, grouped by layer (``profiler.capture``).
spread.csv             the spread across runs of every measurement: source, kind, label, layer, t, unit, runs,
                       mean, std, min, max, cv (std / mean).  Times in ms.  The variance analysis.
runs.csv               every run found: source, run, first_line, last_line, blocks, complete, problem.
skipped.csv            every line not used: source, line, reason, text.
=====================  ==========================================================================================

``std`` is the sample standard deviation (n - 1), empty for fewer than two runs.  Layers count from 0.
"""
from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from engine.atomic import atomic_open, numbered_paths, write_text_atomic
from .capture import Capture
from .fork_format import LABELS
from .records import Record

__all__ = ["TABLES", "free_folder", "overall_means", "read_csv", "record_inputs", "same_inputs", "summary_lines",
           "table_sources", "write_csv", "write_tables"]

_logger = logging.getLogger(__name__)

_NS_PER_MS = 1e6
_STEP_OUTPUT, _STEP_X = "Attention postReshape chunk output", "Attention postReshape chunk x"


def _ms(record: Record) -> float:
    return record.value / _NS_PER_MS if record.kind == "time" else record.value


def _label_order(label: str) -> tuple[int, int]:
    """Print order: stem timers, block measurements, model totals, unknown labels."""
    info = LABELS.get(label)
    if info is None:
        return 3, 0
    return (0 if info.before_blocks else 1 if info.scope == "block" else 2), info.order


def _std(values: np.ndarray) -> float | str:
    return float(values.std(ddof=1)) if len(values) > 1 else ""


def model_times(capture: Capture) -> list[dict]:
    """Rows of ``model_times.csv``: per run, the mean of each timer over its occurrences."""
    rows = []
    for run in capture.runs:
        values: dict[str, list[float]] = {}
        for record in run.records:
            if record.kind == "time":
                values.setdefault(record.label, []).append(_ms(record))
        rows += [{"source": capture.source, "run": run.number, "label": label, "count": len(v),
                  "mean_ms": float(np.mean(v))} for label, v in values.items()]
    return rows


def _over_runs(capture: Capture, keep: Callable[[Record], bool]) -> dict[tuple, np.ndarray]:
    """Values of each (kind, label, layer, t) across the runs, in label order."""
    groups: dict[tuple, list[float]] = {}
    for record in capture.records():
        if keep(record):
            groups.setdefault((record.kind, record.label, record.block, record.t), []).append(_ms(record))
    order = sorted(groups, key=lambda k: (_label_order(k[1])[0], k[2] or 0, _label_order(k[1])[1], k[3] or 0))
    return {key: np.asarray(groups[key]) for key in order}


def encoder_means(capture: Capture) -> list[dict]:
    """Rows of ``encoder_means.csv``: per layer, each block timer over the runs."""
    groups = _over_runs(capture, lambda r: r.kind == "time" and r.block is not None)
    rows = [{"source": capture.source, "layer": layer, "label": label, "runs": len(v), "mean_ms": float(v.mean()),
             "std_ms": _std(v)} for (_, label, layer, _), v in groups.items()]
    return sorted(rows, key=lambda row: row["layer"])


def layer_sparsity(capture: Capture) -> list[dict]:
    """Rows of ``layer_sparsity.csv``: per layer, each sparsity probe (and time step) over the runs."""
    groups = _over_runs(capture, lambda r: r.kind == "sparsity")
    rows = [{"source": capture.source, "layer": layer, "label": label, "t": "" if t is None else t, "runs": len(v),
             "mean": float(v.mean()), "std": _std(v)} for (_, label, layer, t), v in groups.items()]
    return sorted(rows, key=lambda row: row["layer"])


def spread(capture: Capture) -> list[dict]:
    """Rows of ``spread.csv``: the spread of every measurement across the runs."""
    rows = []
    for (kind, label, layer, t), v in _over_runs(capture, lambda r: True).items():
        mean = float(v.mean())
        std = _std(v)
        rows.append({"source": capture.source, "kind": kind, "label": label, "layer": "" if layer is None else layer,
                     "t": "" if t is None else t, "unit": "ms" if kind == "time" else "fraction", "runs": len(v),
                     "mean": mean, "std": std, "min": float(v.min()), "max": float(v.max()),
                     "cv": std / mean if std != "" and mean else ""})
    return rows


def attention_chunks(capture: Capture) -> list[dict]:
    """Rows of ``attention_chunks.csv``: per run, layer and time step, attention sparsity before/after attn_lif."""
    rows: dict[tuple, dict] = {}
    for record in capture.records():
        if record.label in (_STEP_OUTPUT, _STEP_X):
            row = rows.setdefault((record.run, record.block, record.t), {
                "source": capture.source, "run": record.run, "layer": record.block, "t": record.t, "output": "",
                "x": ""})
            row["output" if record.label == _STEP_OUTPUT else "x"] = record.value
    return list(rows.values())


def runs(capture: Capture) -> list[dict]:
    """Rows of ``runs.csv``: every run found, complete or not, with its line range."""
    every = sorted(capture.runs + capture.incomplete, key=lambda run: run.first_line)
    return [{"source": capture.source, "run": run.number, "first_line": run.first_line, "last_line": run.last_line,
             "blocks": run.blocks, "complete": run.problem is None, "problem": run.problem or ""} for run in every]


def skipped(capture: Capture) -> list[dict]:
    """Rows of ``skipped.csv``: every line not used, and why."""
    return [{"source": capture.source, "line": s.line, "reason": s.reason, "text": s.text} for s in capture.skipped]


# table name -> (rows of one capture, columns)
TABLES: dict[str, tuple[Callable[[Capture], list[dict]], list[str]]] = {
    "model_times": (model_times, ["source", "run", "label", "count", "mean_ms"]),
    "encoder_means": (encoder_means, ["source", "layer", "label", "runs", "mean_ms", "std_ms"]),
    "attention_chunks": (attention_chunks, ["source", "run", "layer", "t", "output", "x"]),
    "layer_sparsity": (layer_sparsity, ["source", "layer", "label", "t", "runs", "mean", "std"]),
    "spread": (spread, ["source", "kind", "label", "layer", "t", "unit", "runs", "mean", "std", "min", "max", "cv"]),
    "runs": (runs, ["source", "run", "first_line", "last_line", "blocks", "complete", "problem"]),
    "skipped": (skipped, ["source", "line", "reason", "text"]),
}


# The numeric columns of the tables (the same name has the same type in every table), and the columns each table
# leaves empty where there is no value (one run: no std; a probe without time steps: no t; ...).
_INTEGER_COLUMNS = frozenset({"run", "count", "layer", "t", "runs", "first_line", "last_line", "blocks", "line"})
_DECIMAL_COLUMNS = frozenset({"mean_ms", "std_ms", "output", "x", "mean", "std", "min", "max", "cv"})
_MAY_BE_EMPTY = {"encoder_means": {"std_ms"}, "attention_chunks": {"output", "x"}, "layer_sparsity": {"t", "std"},
                 "spread": {"layer", "t", "std", "cv"}}


def write_csv(path: Path, rows: Iterable[dict], fieldnames: list[str]) -> None:
    """Write rows with ``csv.DictWriter``, atomically."""
    with atomic_open(path) as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def _number(path: Path, line: int, column: str, text: str, empty_allowed: bool) -> int | float | None:
    """The value of a numeric cell (None for an empty one where the column allows it)."""
    if text == "" and empty_allowed:
        return None
    kind = int if column in _INTEGER_COLUMNS else float
    try:
        return kind(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ValueError(f"{path}: line {line}, column {column!r}: {text!r} is not {what} (edited? write the tables "
                         f"again with 'parse')") from None


def read_csv(path: Path) -> list[dict]:
    """Rows of a table of ``TABLES`` (named by the file name) as dicts, with the numeric columns converted (an empty
    cell where the table leaves one empty is None); a row with missing or extra fields is skipped with a warning.

    Raises:
        ValueError: the file is not one of ``TABLES``, its header lacks a column, or a numeric cell is not a number.
    """
    path = Path(path)
    if path.stem not in TABLES:
        raise ValueError(f"{path}: not a table of 'parse' (their files are {', '.join(f'{n}.csv' for n in TABLES)})")
    columns = TABLES[path.stem][1]
    may_be_empty = _MAY_BE_EMPTY.get(path.stem, set())
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [column for column in columns if column not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: the header {','.join(reader.fieldnames or ())!r} lacks the columns "
                             f"{', '.join(missing)} (a table of 'parse' has {','.join(columns)}, separated by "
                             f"commas): write the tables again with 'parse'")
        for row in reader:
            if None in row or None in row.values():  # DictReader's fill for extra and missing fields
                fields = len(reader.fieldnames) - list(row.values()).count(None) + len(row.get(None, ()))
                _logger.warning("%s: line %d skipped: %d fields, the header has %d (cut off or edited? write the "
                                "tables again with 'parse')", path, reader.line_num, fields, len(reader.fieldnames))
                continue
            for column in columns:
                if column in _INTEGER_COLUMNS or column in _DECIMAL_COLUMNS:
                    row[column] = _number(path, reader.line_num, column, row[column], column in may_be_empty)
            rows.append(row)
    return rows


def free_folder(out_dir: Path, names: Iterable[str], what: str,
                rerun: Callable[[Path], bool] = lambda path: False) -> Path:
    """``out_dir``, or ``<out_dir>-1``, ``-2``, ... (the first free one, logged) if it already holds files matching
    one of the glob patterns ``names`` (``what`` an earlier command wrote) for which ``rerun(folder)`` is false: as
    ``run``, ``hw.run`` and the evaluation scripts, a new output never replaces another one, while a command run
    again on the same inputs replaces its own output (so ``parse ... --out T`` then ``plot T`` stay a pair).

    Raises:
        ValueError: ``out_dir`` is a file.
    """
    out_dir, names = Path(out_dir), list(names)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file: give a folder")
    path = next(path for path in numbered_paths(out_dir) if not path.exists() or path.is_dir() and (
        not any(next(path.glob(name), None) for name in names) or rerun(path)))
    if path != out_dir:
        _logger.warning("%s already holds %s; writing to %s", out_dir, what, path)
    return path


def table_sources(tables_dir: Path) -> set[str]:
    """The captures (``source`` column) whose tables ``tables_dir/runs.csv`` holds; empty if it has none."""
    try:
        return {row["source"] for row in read_csv(Path(tables_dir) / "runs.csv")}
    except (OSError, ValueError):
        return set()


INPUTS_FILE = "inputs.json"


def _stored_inputs(folder: Path):
    """The content of ``folder/inputs.json``, or None where it is missing or unreadable."""
    try:
        return json.loads((Path(folder) / INPUTS_FILE).read_text())
    except (OSError, ValueError):
        return None


def same_inputs(folder: Path, inputs: dict[str, str]) -> bool:
    """Whether ``folder/inputs.json`` (written by :func:`record_inputs`) gives each source of ``inputs`` the same
    digest; a folder without the file (written before it existed) is judged by its sources' names alone."""
    stored = _stored_inputs(folder)
    return stored is None or isinstance(stored, dict) and all(stored.get(source, digest) == digest
                                                              for source, digest in inputs.items())


def record_inputs(folder: Path, inputs: dict[str, str]) -> None:
    """Add ``{source: digest}`` of what was just written into ``folder`` to its ``inputs.json``."""
    stored = _stored_inputs(folder)
    stored = {**(stored if isinstance(stored, dict) else {}), **inputs}
    write_text_atomic(Path(folder) / INPUTS_FILE, json.dumps(stored, indent=1, sort_keys=True) + "\n")


def write_tables(captures: Iterable[Capture], out_dir: Path) -> dict[str, Path]:
    """Write every table of ``TABLES`` for the captures (one ``source`` each) into ``out_dir`` (replacing the tables
    of the same captures), or into the first free ``<out_dir>-N`` if it holds those of other captures
    (:func:`free_folder`).

    Raises:
        ValueError: no capture has a complete run (nothing is written: tables already in ``out_dir`` stay), or
            ``out_dir`` is a file.
    """
    captures = list(captures)
    out_dir = Path(out_dir)
    if not any(capture.runs for capture in captures):
        reasons = "; ".join(f"{capture.source}: {capture.unusable()}" for capture in captures)
        raise ValueError(f"no complete run to tabulate, nothing written to {out_dir}: {reasons}")
    inputs = {capture.source: capture.digest for capture in captures}
    out_dir = free_folder(out_dir, (f"{name}.csv" for name in TABLES), "the tables of other captures",
                          rerun=lambda folder: table_sources(folder) == set(inputs) and same_inputs(folder, inputs))
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (make_rows, columns) in TABLES.items():
        paths[name] = out_dir / f"{name}.csv"
        write_csv(paths[name], (row for capture in captures for row in make_rows(capture)), columns)
    record_inputs(out_dir, inputs)
    _logger.info("wrote %d tables to %s", len(paths), out_dir)
    return paths


def overall_means(rows: Iterable[dict], source: str | None = None) -> dict[str, float]:
    """Mean over runs of each label's per-run mean, from ``model_times`` rows (dicts as written or as read)."""
    values: dict[str, list[float]] = {}
    for row in rows:
        if source is None or row["source"] == source:
            values.setdefault(row["label"], []).append(float(row["mean_ms"]))
    return {label: float(np.mean(v)) for label, v in values.items()}


def summary_lines(capture: Capture) -> list[str]:
    """Mean over the runs (ms) of the stem, per-block and whole-model timers, for a log."""
    means = overall_means(model_times(capture))
    order = sorted(means, key=_label_order)
    return [f"{label:<24s} {means[label]:10.4f} ms" + (" (mean per block)" if LABELS[label].scope == "block" else "")
            for label in order if label in LABELS]
