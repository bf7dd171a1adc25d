"""Firing rates per hook key and time step, averaged exactly over every evaluated sample.

The reference (SDT ``firing_num.py``, STAtten ``test.py``) adds ``v[t].mean() / (len(loader) - 1)`` per batch: it
only knows ``t0``..``t3`` (KeyError for T > 4), inflates every rate by N/(N-1) and weights a short last batch like
a full one.  :class:`FiringRateMeter` sums on the device and divides by the true element count at the end.

Artefacts: ``firing.json`` (schema below), ``firing.csv`` (long format: key, t, firing_rate, non_zero), the
reference log block (``non_zero: `` / ``firing_rate: `` followed by ``{"t0": {key: value}}`` JSON, which ASTER's
skip parser reads out of ``sdt.log``), and a PNG of the rate per layer, one line per time step.

``firing.json``::

    {"format": "firing-rates/1", "T": 4, "samples": 10000, "keys": [...forward order...],
     "firing_rate": {"t0": {key: rate}, ...}, "non_zero": {"t0": {key: ratio}, ...}}
"""
from __future__ import annotations

import csv
import json
import logging
import math
import reprlib
from pathlib import Path

import torch

from .atomic import atomic_open, write_text_atomic

__all__ = ["FiringRateMeter", "load_firing_rates", "parse_firing_log"]

_logger = logging.getLogger(__name__)
FORMAT = "firing-rates/1"


class FiringRateMeter:
    """Accumulates, per key and time step, the sum and the non-zero count of hook tensors shaped ``[T, B, ...]``."""

    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}
        self._nonzero: dict[str, torch.Tensor] = {}
        self._elements: dict[str, int] = {}
        self.samples = 0

    def update(self, hook: dict[str, torch.Tensor]) -> None:
        """Add one batch of hook tensors (one reduction per tensor, no host sync)."""
        batch = None
        for key, value in hook.items():
            flat = value.detach().flatten(1)
            sums = flat.sum(dim=1, dtype=torch.float64)
            nonzero = torch.count_nonzero(flat, dim=1)
            if key in self._sums:
                self._sums[key] += sums
                self._nonzero[key] += nonzero
                self._elements[key] += flat.shape[1]
            else:
                self._sums[key], self._nonzero[key], self._elements[key] = sums, nonzero, flat.shape[1]
            batch = value.shape[1]
        self.samples += batch or 0

    def all_reduce(self) -> None:
        """Sum the counts of every process (``torch.distributed``), in place: sums, non-zeros, elements, samples."""
        import torch.distributed as dist

        for tensor in (*self._sums.values(), *self._nonzero.values()):
            dist.all_reduce(tensor)
        device = next(iter(self._sums.values())).device if self._sums else "cpu"
        sizes = torch.tensor([*self._elements.values(), self.samples], dtype=torch.int64, device=device)
        dist.all_reduce(sizes)
        *elements, self.samples = sizes.tolist()
        self._elements = dict(zip(self._elements, elements))

    @property
    def keys(self) -> list[str]:
        return list(self._sums)

    @property
    def time_steps(self) -> int:
        return next(iter(self._sums.values())).numel() if self._sums else 0

    def _per_step(self, totals: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
        table: dict[str, dict[str, float]] = {f"t{t}": {} for t in range(self.time_steps)}
        for key, total in totals.items():
            for t, value in enumerate((total.double() / self._elements[key]).tolist()):
                table[f"t{t}"][key] = value
        return table

    def firing_rate(self) -> dict[str, dict[str, float]]:
        """``{"t0": {key: mean value}, ...}`` (the firing rate for spike tensors)."""
        return self._per_step(self._sums)

    def non_zero(self) -> dict[str, dict[str, float]]:
        """``{"t0": {key: fraction of non-zero elements}, ...}``."""
        return self._per_step(self._nonzero)

    def as_dict(self) -> dict:
        return {"format": FORMAT, "T": self.time_steps, "samples": self.samples, "keys": self.keys,
                "firing_rate": self.firing_rate(), "non_zero": self.non_zero()}

    def log_reference_block(self, logger: logging.Logger) -> None:
        """The reference's two log records: ``non_zero: `` and ``firing_rate: ``, each followed by indented JSON."""
        logger.info("non_zero: ")
        logger.info(json.dumps(self.non_zero(), indent=4))
        logger.info("firing_rate: ")
        logger.info(json.dumps(self.firing_rate(), indent=4))

    def write(self, out_dir: Path, extra: dict | None = None) -> dict:
        """Write ``firing.json``, ``firing.csv`` and ``firing.png`` to ``out_dir``; return the JSON content."""
        out_dir = Path(out_dir)
        content = {**self.as_dict(), **(extra or {})}
        write_text_atomic(out_dir / "firing.json", json.dumps(content, indent=2))
        rates, nonzero = content["firing_rate"], content["non_zero"]
        with atomic_open(out_dir / "firing.csv") as f:
            writer = csv.DictWriter(f, fieldnames=["key", "t", "firing_rate", "non_zero"])
            writer.writeheader()
            for key in self.keys:
                for t in range(self.time_steps):
                    writer.writerow({"key": key, "t": t, "firing_rate": rates[f"t{t}"][key],
                                     "non_zero": nonzero[f"t{t}"][key]})
        plot_firing_rates(rates, self.keys, out_dir / "firing.png")
        return content


def plot_firing_rates(rates: dict[str, dict[str, float]], keys: list[str], path: Path) -> None:
    """Firing rate of every hooked tensor in forward order, one line per time step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(8.0, 0.28 * len(keys)), 4.5), layout="tight")
    ax = fig.add_subplot()
    for t, per_key in rates.items():
        ax.plot(range(len(keys)), [per_key[k] for k in keys], marker="o", markersize=3, label=t)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys, rotation=90, fontsize=7)
    ax.set_ylabel("firing rate (mean value)")
    ax.set_title("Firing rate per layer and time step")
    ax.legend(ncol=min(8, len(rates)), fontsize=7)
    ax.grid(alpha=0.3)
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", dpi=120)


def parse_firing_log(path: Path) -> dict[str, dict[str, float]]:
    """Read the ``firing_rate: `` block of a reference-format log (SDT's ``sdt.log``) as ASTER's parser does.

    The parser finds ``firing_rate: `` followed by a newline, then the next ``INFO: {``, and parses the JSON from
    there up to the next blank line or the end of the file (ASTER's parser needs one of the two, so our evaluation
    writes the block last).  Raises ``ValueError`` naming the file when the block
    is missing or not valid JSON (the reference printed the error and carried on with an empty skip list).
    """
    text = _read_text(Path(path))
    start = text.rfind("firing_rate: \n")
    if start < 0:
        raise ValueError(f"{path}: no 'firing_rate: ' block; expected a log written by firing_num.py or test.py")
    brace = text.find("INFO: {", start)
    if brace < 0:
        raise ValueError(f"{path}: 'firing_rate: ' is not followed by an 'INFO: {{' JSON record")
    body = text[brace + len("INFO: "):]
    end = body.find("\n\n")
    body = body if end < 0 else body[:end]
    try:  # the first JSON object; log records after it (with no blank line between) are ignored
        table, _ = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: the firing_rate JSON block does not parse ({err})") from err
    return _checked_rates(path, table, "the firing_rate block")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not a text file (byte {err.start} is not UTF-8); expected a firing.json or a "
                         f"log written by firing_num.py") from None


def _checked_rates(path: Path, table, what: str) -> dict[str, dict[str, float]]:
    """``table`` if it is shaped ``{"t0": {key: finite number >= 0}, ...}``, else a ``ValueError`` naming the
    file."""
    if not isinstance(table, dict) or not table or not all(isinstance(v, dict) for v in table.values()):
        raise ValueError(f'{path}: {what} is not shaped {{"t0": {{key: rate}}, ...}}; rerun firing_num.py')
    for step, per_key in table.items():
        for key, rate in per_key.items():
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate < 0:
                raise ValueError(f"{path}: the rate of {key[:80]!r} at {step[:20]!r} is {reprlib.repr(rate)}, not a "
                                 f"finite number of at least 0 (a mean of spikes); rerun firing_num.py")
    return table


def load_firing_rates(path: Path) -> dict[str, dict[str, float]]:
    """Firing rates ``{"t0": {key: rate}}`` from our ``firing.json`` or from a reference-format log file.

    Raises:
        FileNotFoundError, IsADirectoryError: no such file.
        ValueError: anything else wrong with the file (naming it).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"firing-rate file {path} is a directory; give the firing.json or sdt.log in it")
    if not path.is_file():
        raise FileNotFoundError(f"firing-rate file {path} does not exist; run firing_num.py (or test.py) first")
    if path.suffix != ".json":
        return parse_firing_log(path)
    try:
        content = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    found = content.get("format") if isinstance(content, dict) else type(content).__name__
    if found != FORMAT:
        raise ValueError(f"{path}: not a firing.json (format {reprlib.repr(found)}, expected {FORMAT!r})")
    rates = _checked_rates(path, content.get("firing_rate"), "its firing_rate")
    if "T" in content and content["T"] != len(rates):
        raise ValueError(f"{path}: T is {reprlib.repr(content['T'])} but firing_rate has {len(rates)} time steps")
    return rates
