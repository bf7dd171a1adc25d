"""The text format of the instrumented STAtten fork: its labels, and one line per measurement.

Line shapes (``../shared/reference/reference_code.md`` section 10.3)::

    [Time] - {label}: {seconds:.4f} seconds         SPS.PSM, SPS.RPE, Projection and BN, SSA Encoder, MLP,
                                                     Spikeformer Time time
    [Time] - {label}: {ns:.4f} nanoseconds           Reshape, Matmul, Reshape Time-Space, Transpose and LIF,
                                                     and our SDT-mode sub-timers
    sparsity {label}: {fraction}                     ("MLP sparsity {rest}" for the labels "MLP {rest}")
    sparsity {prefix} - {t} {suffix}: {fraction}     per-time-step probes; the label is "{prefix} {suffix}"
    {name}: torch.Size([...])                        shapes (written after some measurements, ignored when read)
    Run {i} - Tempo totale del modello: {seconds:.4f} secondi      the driver's wall-clock total of run i

Older captures print every timer in seconds, and ``cap8.txt`` has 20 sparsity lines per block with the whole-tensor
labels "Attention postReshape output" / "Attention postReshape x"; the reader accepts both.  With
``units="ns"`` the writer prints every timer in nanoseconds (and the run total with 9 decimals), so nothing is
lost to the fork's 4 decimals of a second; the reader does not care which.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TextIO

import torch

from .records import Record

__all__ = ["LABELS", "RUN_TOTAL", "TOTAL", "ForkTextWriter", "Label", "LineError", "ParsedLine", "parse_line",
           "render_record", "render_run"]

RUN_TOTAL = "Run total"
TOTAL = "Spikeformer Time time"
_SECONDS, _NS = "seconds", "nanoseconds"
_PER_STEP = "per step"  # in the unit column of a sparsity probe: one value per time step


@dataclass(frozen=True)
class Label:
    """A measurement the fork (or our SDT-mode extension) makes.

    ``scope`` is "run" (once per forward) or "block" (once per encoder block); ``order`` is the position within
    the run or block, which the reader uses to find block and run boundaries; ``unit`` is the fork's print unit
    of a timer.
    """

    name: str
    kind: str
    scope: str
    order: int
    unit: str = ""
    per_step: bool = False

    @property
    def before_blocks(self) -> bool:
        """For run-scope labels: printed before the first block (the stem timers)."""
        return self.scope == "run" and self.order < _RUN_ORDER.index(TOTAL)


_RUN_ORDER = ["SPS.PSM", "SPS.RPE", TOTAL, RUN_TOTAL]
# (name, kind, timer unit or _PER_STEP), in the order of a block; one order covers STAtten mode, SDT mode (our
# sub-timers, marked SDT) and the old cap8 layout (marked cap8).
_BLOCK_ORDER = [
    ("x_for_qkv", "sparsity", ""),
    ("Heads Reshape", "time", _NS),  # SDT
    ("q", "sparsity", ""), ("k", "sparsity", ""), ("v", "sparsity", ""),
    ("Attention q_chunks", "sparsity", ""), ("Attention k_chunks", "sparsity", ""),
    ("Attention v_chunks", "sparsity", ""),
    ("Reshape", "time", _NS),
    ("Attention postReshape q_chunks", "sparsity", ""), ("Attention postReshape k_chunks", "sparsity", ""),
    ("Attention postReshape v_chunks", "sparsity", ""),
    ("Matmul", "time", _NS),
    ("KV Hadamard and Sum", "time", _NS), ("KV LIF", "time", _NS), ("Attention kv", "sparsity", ""),  # SDT
    ("Q Hadamard", "time", _NS),  # SDT
    ("Attention out", "sparsity", ""),
    ("Reshape Time-Space", "time", _NS),
    ("Attention postReshape chunk output", "sparsity", _PER_STEP),
    ("Transpose and LIF", "time", _NS),
    ("Attention postReshape chunk x", "sparsity", _PER_STEP),
    ("Heads Transpose", "time", _NS),  # SDT
    ("Attention postReshape output", "sparsity", ""), ("Attention postReshape x", "sparsity", ""),  # cap8
    ("Projection and BN", "time", _SECONDS),
    ("x", "sparsity", ""),
    ("SSA Encoder", "time", _SECONDS),
    ("MLP x", "sparsity", ""), ("MLP postLIF x after lif", "sparsity", ""), ("MLP postBN x after fc1", "sparsity", ""),
    ("MLP postLIF x after fc2", "sparsity", ""), ("MLP postBN x after fc2ConvBn", "sparsity", ""),
    ("MLP x after identity final", "sparsity", ""),
    ("MLP", "time", _SECONDS),
]

LABELS: dict[str, Label] = {
    **{name: Label(name, "time", "run", i, _SECONDS) for i, name in enumerate(_RUN_ORDER)},
    **{name: Label(name, kind, "block", i, unit if kind == "time" else "", unit == _PER_STEP)
       for i, (name, kind, unit) in enumerate(_BLOCK_ORDER)},
}

# Shape lines the fork prints after a measurement: (line name, label of the record whose shape it shows, taken
# from the same block).  After a per-time-step probe they follow its last time step.
_SHAPE_LINES = {
    "x_for_qkv": (("shape x_for_qkv", "x_for_qkv"),),
    "q": (("q shape", "q"),),
    "k": (("k shape", "k"),),
    "v": (("v shape", "v"),),
    "Attention postReshape v_chunks": tuple((f"{n}_chunks shape", f"Attention postReshape {n}_chunks") for n in "qkv"),
    "Reshape Time-Space": (("shape ", "Attention postReshape chunk output"),),
    "Attention postReshape chunk x": (("x shape", "Attention postReshape chunk x"),),
    "Projection and BN": (("x shape after proj", "x"),),
}


def render_record(record: Record, units: str = "fork") -> str:
    """The fork's line for one record; ``units="ns"`` prints every timer in nanoseconds."""
    if record.kind == "time":
        if record.label == RUN_TOTAL:
            decimals = 4 if units == "fork" else 9
            return f"Run {record.run} - Tempo totale del modello: {record.value / 1e9:.{decimals}f} secondi"
        label = LABELS.get(record.label)
        unit = label.unit if units == "fork" and label is not None else _NS
        value = record.value / 1e9 if unit == _SECONDS else record.value
        return f"[Time] - {record.label}: {value:.4f} {unit}"
    name = record.label
    if record.t is not None:
        prefix, suffix = name.rsplit(" ", 1)
        name = f"{prefix} - {record.t} {suffix}"
    if name.startswith("MLP "):
        return f"MLP sparsity {name[4:]}: {record.value}"
    return f"sparsity {name}: {record.value}"


def render_run(records: list[Record], units: str = "fork") -> Iterator[str]:
    """The fork's lines for the records of one run, shape lines included."""
    shapes: dict[tuple[int | None, str], tuple[int, ...]] = {}
    for record in records:
        if record.shape is not None:
            shapes.setdefault((record.block, record.label), record.shape)
    for i, record in enumerate(records):
        yield render_record(record, units)
        following = records[i + 1] if i + 1 < len(records) else None
        if record.t is not None and following is not None and following.label == record.label:
            continue
        for name, source in _SHAPE_LINES.get(record.label, ()):
            shape = shapes.get((record.block, source))
            if shape is not None:
                yield f"{name}: {torch.Size(shape)}"


class ForkTextWriter:
    """Writes the records of each run to a text stream in the fork's format."""

    def __init__(self, stream: TextIO, units: str = "fork"):
        if units not in ("fork", "ns"):
            raise ValueError(f"units={units!r}; choose 'fork' or 'ns'")
        self.stream, self.units = stream, units

    def write(self, records: Iterable[Record]) -> None:
        self.stream.writelines(line + "\n" for line in render_run(list(records), self.units))


class LineError(ValueError):
    """A line that is not a valid measurement; the message says why."""


@dataclass(frozen=True)
class ParsedLine:
    """A measurement line: its label, value (nanoseconds or fraction), time step, and run number (run total)."""

    label: Label
    value: float
    t: int | None = None
    run: int | None = None


_TIMER = re.compile(r"\[Time\] - (?P<label>.+?): (?P<value>\S+) (?P<unit>seconds|nanoseconds)")
_RUN = re.compile(r"Run (?P<run>\d+) - Tempo totale del modello: (?P<value>\S+) secondi")
_SPARSITY = re.compile(r"(?P<mlp>MLP )?sparsity (?P<name>.+?): (?P<value>\S+)")
_STEP = re.compile(r"(?P<prefix>.+) - (?P<t>\d+) (?P<suffix>\S+)")
_SHAPE = re.compile(r"[^:]*: torch\.Size\(\[[\d, ]*\]\)")


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise LineError(f"bad value {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise LineError(f"value {text!r} out of range")
    return value


def _known(name: str, per_step: bool) -> Label:
    label = LABELS.get(name)
    if label is None:
        raise LineError(f"unknown label {name!r}")
    if label.per_step != per_step:
        raise LineError(f"label {name!r} {'needs' if label.per_step else 'takes no'} time step")
    return label


def parse_line(line: str) -> ParsedLine | None:
    """Parse one line of a capture: a measurement, or None for a blank or shape line.

    Raises:
        LineError: the line is none of the fork's line shapes, has an unknown label or a bad value.
    """
    line = line.strip()
    if not line or _SHAPE.fullmatch(line):
        return None
    if m := _RUN.fullmatch(line):
        return ParsedLine(LABELS[RUN_TOTAL], _number(m["value"]) * 1e9, run=int(m["run"]))
    if m := _TIMER.fullmatch(line):
        label = _known(m["label"], per_step=False)
        if label.kind != "time":
            raise LineError(f"label {label.name!r} is not a timer")
        value = _number(m["value"])
        return ParsedLine(label, value * 1e9 if m["unit"] == _SECONDS else value)
    if m := _SPARSITY.fullmatch(line):
        name, t = m["name"], None
        if step := _STEP.fullmatch(name):
            name, t = f"{step['prefix']} {step['suffix']}", int(step["t"])
        label = _known(f"MLP {name}" if m["mlp"] else name, per_step=t is not None)
        if label.kind != "sparsity":
            raise LineError(f"label {label.name!r} is not a sparsity probe")
        value = _number(m["value"])
        if value > 1:
            raise LineError(f"sparsity {value} above 1")
        return ParsedLine(label, value, t)
    raise LineError("not a line of the fork's format")
