"""The profiler's record (one measurement of one run) and its JSON-lines stream.

One JSON object per line, with these keys:

======  ================  ==========================================================================
run     int               run number, from 1
block   int or null       encoder block (= layer) index within the run, from 0; null outside the blocks
label   str               the fork's label (``profiler.fork_format.LABELS``)
kind    str               ``"time"`` or ``"sparsity"``
value   number            nanoseconds (time) or fraction of exact zeros in [0, 1] (sparsity)
unit    str               ``"ns"`` or ``"fraction"``
t       int or null       time step of a per-time-step probe, else null
shape   list[int] / null  shape of the measured tensor (the whole ``[T, ...]`` tensor for per-step probes)
======  ================  ==========================================================================
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from module.instrument import Measurement

__all__ = ["UNITS", "JsonlWriter", "Record", "Skipped", "read_jsonl"]

UNITS = {"time": "ns", "sparsity": "fraction"}


@dataclass(frozen=True)
class Record:
    """One measurement of one run (see the module docstring for the fields)."""

    run: int
    block: int | None
    label: str
    kind: str
    value: float
    unit: str
    t: int | None = None
    shape: tuple[int, ...] | None = None

    def __post_init__(self):
        if UNITS.get(self.kind) != self.unit:
            raise ValueError(f"kind={self.kind!r} with unit={self.unit!r}; expected one of {UNITS}")
        if not math.isfinite(self.value) or self.value < 0 or (self.kind == "sparsity" and self.value > 1):
            raise ValueError(f"{self.kind} value {self.value!r} out of range")

    @classmethod
    def from_measurement(cls, run: int, m: Measurement) -> Record:
        return cls(run, m.block, m.label, m.kind, m.value, UNITS[m.kind], m.t, m.shape)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Record:
        """Parse one JSON line; raises ``ValueError`` (or ``TypeError``/``KeyError``) on a malformed one."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        shape = data.get("shape")
        return cls(run=int(data["run"]), block=None if data["block"] is None else int(data["block"]),
                   label=str(data["label"]), kind=data["kind"], value=float(data["value"]), unit=data["unit"],
                   t=None if data.get("t") is None else int(data["t"]),
                   shape=None if shape is None else tuple(int(n) for n in shape))


@dataclass(frozen=True)
class Skipped:
    """An input line that was not used, with its 1-based number and the reason."""

    line: int
    reason: str
    text: str


class JsonlWriter:
    """Writes records to a text stream, one JSON object per line."""

    def __init__(self, stream: TextIO):
        self.stream = stream

    def write(self, records: Iterable[Record]) -> None:
        self.stream.writelines(record.to_json() + "\n" for record in records)


def read_jsonl(path: Path, encoding: str = "utf-8") -> tuple[list[tuple[int, Record]], list[Skipped]]:
    """``(line number, record)`` pairs of a JSON-lines file, and the lines that are not valid records."""
    records, skipped = [], []
    with open(path, encoding=encoding, errors="replace") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append((number, Record.from_json(line)))
            except (ValueError, TypeError, KeyError) as exc:
                skipped.append(Skipped(number, f"bad record: {exc}", line.rstrip("\n")))
    return records, skipped
