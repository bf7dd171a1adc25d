"""Read a capture (the fork's text format, or our JSON-lines stream) into runs of records, by layer.

How the text is cut into runs and blocks (the fork prints no block or run numbers apart from the notebook's
"Run i" line):

* every line gets a position: stem timers, then blocks, then the model total and the "Run i" total
  (``profiler.fork_format.LABELS`` gives each label its order within the run or the block);
* a block line whose position within the block is not after the previous block line starts the next block;
  a run line that is not after the previous one, or a block line after the model total, starts the next run;
  a "Run i" line closes its run and numbers it (runs without one are numbered on from the previous run);
* a run is **complete** when it has ``num_layers`` blocks, each with the capture's last block label (the closing
  probe: ``MLP``, or ``MLP x after identity final`` without timers), and, if the capture has the model's total
  time or "Run i" lines, ends with them; the block index within a complete run is its **layer**.  Without
  ``--layers`` the layer count is that of most runs known to be whole (with timers, those that reach a total line,
  or in a capture without one, those followed by another run), else ``DEFAULT_LAYERS``.  Incomplete runs (a
  truncated capture, a run with a missing, extra or cut-off block) are kept apart with their line range and left
  out of every table;
* a stretch of blocks without any run line (the old cap8 layout: sparsity only) is cut into runs of
  ``num_layers`` consecutive blocks; blocks left over when the count is not a multiple are an incomplete run.

The reference profiler script instead grouped *consecutive* block executions in tens (executions 1-10 =
"Encoder 1"), which mixes layers; grouping the k-th block of every run is what "by layer" means.

Lines that are not measurements, and a last line without a line end (cut off), are skipped and reported with
their line numbers, never fatal.  UTF-16 files (with a byte-order mark) are decoded; a capture in which nothing is
found is logged as a warning with what its first bytes suggest (empty, gzip, binary).
"""
from __future__ import annotations

import codecs
import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from .fork_format import LABELS, RUN_TOTAL, TOTAL, LineError, ParsedLine, parse_line
from .records import UNITS, Record, Skipped, read_jsonl

__all__ = ["DEFAULT_LAYERS", "Capture", "Run", "capture_from_records", "load_capture"]

_logger = logging.getLogger(__name__)

DEFAULT_LAYERS = 8  # the fork's model; used when a capture has no run lines to infer the layer count from
_CUT_BEFORE_TOTAL = f"no {TOTAL!r} line after its blocks (cut off?)"
_NOT_A_CAPTURE = ("is it the fork's output or a capture of 'python -m profiler run' (capture.txt, records.jsonl)? "
                  "UTF-16 files need a byte-order mark or a conversion to UTF-8")


@dataclass
class Run:
    """The records of one forward pass and the source line of each.

    ``blocks`` counts its encoder blocks; ``problem`` says why an incomplete run is incomplete (None if complete).
    """

    number: int | None
    records: list[Record]
    lines: list[int]
    problem: str | None = None

    @property
    def blocks(self) -> int:
        return 1 + max((record.block for record in self.records if record.block is not None), default=-1)

    @property
    def first_line(self) -> int:
        return self.lines[0]

    @property
    def last_line(self) -> int:
        return self.lines[-1]

    @property
    def has_run_lines(self) -> bool:
        return any(record.block is None for record in self.records)


@dataclass
class Capture:
    """A parsed capture: complete runs (the tables use only these), incomplete runs and skipped lines.

    ``note`` says what the file looks like when that explains finding nothing in it (empty, gzip, binary).
    """

    source: str
    num_layers: int
    runs: list[Run]
    incomplete: list[Run] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    note: str = ""
    digest: str = ""  # sha256 of the file's bytes (load_capture): tells two captures of one name apart

    def records(self) -> list[Record]:
        """The records of the complete runs."""
        return [record for run in self.runs for record in run.records]

    def unusable(self) -> str | None:
        """Why no run of the capture can enter the tables (None if one can)."""
        if self.runs:
            return None
        if not self.incomplete:
            return f"no capture lines found: {self.note or _NOT_A_CAPTURE}"
        blocks = Counter(run.blocks for run in self.incomplete)
        if self.num_layers not in blocks and not any(run.problem == _CUT_BEFORE_TOTAL for run in self.incomplete):
            found = "/".join(map(str, sorted(blocks)))
            if len(self.incomplete) == 1:  # as likely a capture cut off inside its first run
                return (f"no run is complete: the only one found has {found} blocks where {self.num_layers} layers "
                        f"are expected: the capture is cut off, or give --layers {found} if the model has {found}")
            return (f"no run is complete: the {len(self.incomplete)} found have {found} blocks where "
                    f"{self.num_layers} layers are expected (give --layers {blocks.most_common(1)[0][0]})")
        first = self.incomplete[0]
        return (f"no run is complete ({len(self.incomplete)} found; the first, lines {first.first_line}-"
                f"{first.last_line}: {first.problem})")

    def log_summary(self) -> None:
        """Log the run count (a warning if nothing was found), every incomplete run and the skipped line numbers."""
        if not self.runs and not self.incomplete:
            _logger.warning("%s: %s", self.source, self.unusable())
        else:
            blocks = sorted({run.blocks for run in self.runs})
            _logger.info("%s: %d complete runs of %s blocks (%d layers)", self.source, len(self.runs),
                         "/".join(map(str, blocks)) or "-", self.num_layers)
        for run in self.incomplete:
            _logger.warning("%s: lines %d-%d: incomplete run left out (%s)", self.source, run.first_line,
                            run.last_line, run.problem)
        if self.skipped:
            lines = ", ".join(str(s.line) for s in self.skipped[:20])
            more = f" and {len(self.skipped) - 20} more" if len(self.skipped) > 20 else ""
            _logger.warning("%s: skipped %d lines: %s%s (first reason: %s)", self.source, len(self.skipped),
                            lines, more, self.skipped[0].reason)


class _Segment:
    """Consecutive measurement lines of one run (or, without run lines, of several), in reading order."""

    def __init__(self):
        self.records: list[Record] = []
        self.lines: list[int] = []
        self.run: int | None = None  # from the closing "Run i" line
        self.run_key = (-1, -1)  # (phase: 0 stem / 1 blocks / 2 totals, order) of the last line
        self.block_key = (-1, -1)  # (order, t) of the last block line
        self.block = -1

    def add(self, line: int, parsed: ParsedLine) -> bool:
        """Append the line if it belongs to this run; False if it starts the next one."""
        label = parsed.label
        if label.scope == "block":
            if self.run_key[0] == 2:
                return False
            key = (label.order, parsed.t or 0)
            if self.run_key[0] < 1 or key <= self.block_key:
                self.block += 1
            self.run_key, self.block_key = (1, -1), key
            block = self.block
        else:
            key = (0 if label.before_blocks else 2, label.order)
            if key <= self.run_key:
                return False
            self.run_key, block = key, None
            if label.name == RUN_TOTAL:
                self.run = parsed.run
        self.records.append(Record(0, block, label.name, label.kind, parsed.value, UNITS[label.kind], parsed.t))
        self.lines.append(line)
        return True

    def to_run(self) -> Run:
        return Run(self.run, self.records, self.lines)


def _text_runs(path: Path, encoding: str) -> tuple[list[Run], list[Skipped]]:
    """Cut a text capture into runs (numbered only where a "Run i" line closes them) and skipped lines."""
    runs, skipped, current = [], [], _Segment()
    with open(path, encoding=encoding, errors="replace") as f:
        for number, text in enumerate(f, 1):
            if not text.endswith("\n") and text.strip():  # the writer was stopped in the middle of this line
                skipped.append(Skipped(number, "cut off: the last line has no line end", text))
                continue
            try:
                parsed = parse_line(text)
            except LineError as exc:
                skipped.append(Skipped(number, str(exc), text.rstrip("\n")))
                continue
            if parsed is None:
                continue
            if not current.add(number, parsed):
                runs.append(current.to_run())
                current = _Segment()
                current.add(number, parsed)
            if current.run is not None:
                runs.append(current.to_run())
                current = _Segment()
    if current.records:
        runs.append(current.to_run())
    return runs, skipped


def _split(run: Run, num_layers: int) -> list[Run]:
    """Cut a run without run lines (the cap8 layout) into runs of ``num_layers`` consecutive blocks."""
    if run.has_run_lines or run.blocks <= num_layers:
        return [run]
    out = []
    for start in range(0, run.blocks, num_layers):
        kept = [(r, n) for r, n in zip(run.records, run.lines) if start <= r.block < start + num_layers]
        out.append(Run(None, [replace(r, block=r.block - start) for r, _ in kept], [n for _, n in kept]))
        if out[-1].blocks < num_layers:
            out[-1].problem = (f"{out[-1].blocks} blocks left over: {run.blocks} blocks without run lines is not a "
                               f"multiple of {num_layers} layers")
    return out


def _unclosed_block(run: Run, closing: str | None) -> int | None:
    """The first block of ``run`` without the ``closing`` label (a block cut off), or None."""
    closed = {record.block for record in run.records if record.label == closing}
    return next((block for block in range(run.blocks) if block not in closed), None)


def _ends_with_total(run: Run) -> bool:
    return any(record.label in (TOTAL, RUN_TOTAL) for record in run.records)


def _timed(runs: list[Run]) -> bool:
    """Whether the capture has timers."""
    return any(record.kind == "time" for run in runs for record in run.records)


def _layer_count(runs: list[Run]) -> int:
    """The most common block count of the runs with run lines that are known to be whole: with timers, those that
    reach a total line, or where the capture has none, those followed by another run (a run cut off, say in a
    capture cut inside its first run, has not printed all its blocks)."""
    if not _timed(runs):
        whole = runs
    elif any(_ends_with_total(run) for run in runs):
        whole = [run for run in runs if _ends_with_total(run)]
    else:
        whole = runs[:-1]
    counts = Counter(run.blocks for run in whole if run.has_run_lines and run.blocks)
    if counts:
        return counts.most_common(1)[0][0]
    _logger.info("no run lines to infer the layer count from; assuming %d (use --layers)", DEFAULT_LAYERS)
    return DEFAULT_LAYERS


def _finish(source: str, runs: list[Run], skipped: list[Skipped], num_layers: int | None) -> Capture:
    """Split, number and check the runs (see the module docstring)."""
    layers = _layer_count(runs) if num_layers is None else num_layers
    runs = [part for run in runs for part in _split(run, layers)]
    needs_total = any(record.label == RUN_TOTAL for run in runs for record in run.records)
    needs_model_total = any(record.label == TOTAL for run in runs for record in run.records)
    # every whole block ends with the last block label (in print order) that the capture has
    closing = max({r.label for run in runs for r in run.records if r.block is not None},
                  key=lambda label: LABELS[label].order, default=None)
    numbers, last = [], 0
    for run in runs:
        numbers.append(last := run.number if run.number is not None else last + 1)
    restart = next((i for i in range(1, len(numbers)) if numbers[i] <= numbers[i - 1]), None)
    if restart is not None:
        _logger.warning("%s: the run numbers start again at line %d (captures joined into one file?); its %d runs "
                        "are numbered 1..%d in file order", source, runs[restart].lines[0], len(runs), len(runs))
        numbers = list(range(1, len(runs) + 1))
    complete, incomplete = [], []
    for run, number in zip(runs, numbers):
        run.number = number
        run.records = [replace(record, run=run.number) for record in run.records]
        if run.problem is None and needs_model_total and run.has_run_lines and not _ends_with_total(run):
            run.problem = _CUT_BEFORE_TOTAL
        elif run.problem is None and run.blocks != layers:
            run.problem = f"{run.blocks} blocks, expected {layers}"
        elif run.problem is None and (cut := _unclosed_block(run, closing)) is not None:
            run.problem = f"block {cut} has no closing {closing!r} line (cut off?)"
        elif run.problem is None and needs_total and not any(r.label == RUN_TOTAL for r in run.records):
            run.problem = "no closing 'Run i - Tempo totale' line (truncated?)"
        (complete if run.problem is None else incomplete).append(run)
    return Capture(source, layers, complete, incomplete, sorted(skipped, key=lambda s: s.line))


def capture_from_records(source: str, records: list[Record], num_layers: int | None = None,
                         lines: list[int] | None = None) -> Capture:
    """A capture from records (a JSON-lines stream or a live run), cut into runs where the run number changes or
    a measurement comes again (a run's records are consecutive and each measures one (block, label, step) once;
    streams joined into one file start again at run 1, so two joined single-run streams are two runs)."""
    runs: list[Run] = []
    seen: set[tuple] = set()
    for i, record in enumerate(records):
        key = (record.block, record.label, record.t)
        if not runs or runs[-1].number != record.run or key in seen:
            runs.append(Run(record.run, [], []))
            seen = set()
        seen.add(key)
        runs[-1].records.append(record)
        runs[-1].lines.append(lines[i] if lines else i + 1)
    return _finish(source, runs, [], num_layers)


def _sniff(path: Path) -> tuple[str | None, str]:
    """The text encoding of a capture (None: not text), and what its first bytes say if nothing is found in it."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"\x1f\x8b"):
        return None, "the file is gzip-compressed: decompress it first (gunzip)"
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16", ""
    if b"\0" in head:
        return "utf-8-sig", "the file holds NUL bytes: binary, or UTF-16 without a byte-order mark (convert to UTF-8)"
    return "utf-8-sig", "" if head.strip() else "the file is empty"


def load_capture(path: Path, num_layers: int | None = None, source: str | None = None) -> Capture:
    """Parse a capture file: ``*.jsonl`` as our JSON-lines stream, anything else as the fork's text.

    Args:
        path: the file.
        num_layers: encoder blocks per run (default: inferred from the runs, else ``DEFAULT_LAYERS``).
        source: the name of the capture in tables and logs (default: the file name).
    """
    path = Path(path)
    source = source or path.name
    encoding, note = _sniff(path)
    if encoding is None:
        capture = _finish(source, [], [], num_layers)
    elif path.suffix != ".jsonl":
        capture = _finish(source, *_text_runs(path, encoding), num_layers)
    else:
        numbered, skipped = read_jsonl(path, encoding)
        skipped += [Skipped(n, f"unknown label {r.label!r}", r.to_json()) for n, r in numbered
                    if r.label not in LABELS]
        known = [(n, r) for n, r in numbered if r.label in LABELS]
        capture = capture_from_records(source, [r for _, r in known], num_layers, [n for n, _ in known])
        capture.skipped = sorted(skipped, key=lambda s: s.line)
    capture.note = note
    capture.digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return capture
