"""Measuring points inside the model: timers and sparsity probes, off by default and free when off.

The forward code marks what the instrumented STAtten fork measured with two calls::

    with timer("Matmul"):
        out = q @ (k.transpose(-2, -1) @ v)
    sparsity("Attention out", out)

While no :class:`Recorder` is active (the default), ``timer`` returns one shared do-nothing context manager and
``sparsity`` returns at once: no synchronisation, no copy, no allocation, only a check of a module global
(``benchmarks/bench_probes.py`` measures it against the same model with the calls removed from the source).
:func:`recording` activates a recorder; ``profiler.session`` drives one for whole runs.

When active:

* timers use CUDA events on a CUDA device (read after the forward, behind one synchronisation) and
  ``time.perf_counter_ns`` on the CPU; every value is in nanoseconds;
* a sparsity probe is one ``count_nonzero`` reduction per tensor on the tensor's device (over all axes but time
  for per-time-step probes); the counts stay on the device until :meth:`Recorder.collect` copies them all to the
  host at once.  Sparsity is the fraction of exact zeros, ``1 - nonzero / numel``, as in the fork.

Labels are the fork's (``docs/profiler.md`` lists them); ``Recorder.block`` is set from outside (forward hooks).
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch

__all__ = ["Measurement", "Recorder", "is_enabled", "recording", "sparsity", "timer"]


@dataclass(frozen=True)
class Measurement:
    """One value: a time in nanoseconds (``kind="time"``) or a fraction of zeros (``kind="sparsity"``).

    ``t`` is the time step of a per-time-step probe (else None); ``shape`` is the measured tensor's shape (for a
    per-time-step probe, the shape of the whole ``[T, ...]`` tensor); ``block`` is the encoder block, None outside.
    """

    block: int | None
    label: str
    kind: str
    value: float
    t: int | None = None
    shape: tuple[int, ...] | None = None


# The context manager that ``timer`` returns while timing is off (reusable, and understood by torch.compile).
_NULL_TIMER = nullcontext()
# The active recorder for each kind of measurement, or None.  Read on every measuring point, so kept as globals.
_timing: Recorder | None = None
_counting: Recorder | None = None


def timer(label: str):
    """Context manager timing its body under ``label``; does nothing unless a recorder with timers is active."""
    if _timing is None:
        return _NULL_TIMER
    return _timing.timer(label)


def sparsity(labels: str | tuple[str, ...], *tensors: torch.Tensor, per_step: bool = False) -> None:
    """Record the sparsity of ``tensors`` under ``labels`` (one label, or a tuple with one label per tensor).

    With ``per_step`` the tensors are ``[T, ...]`` and one value per time step is recorded.  Does nothing unless a
    recorder with sparsity probes is active.
    """
    if _counting is not None:
        _counting.count(labels, tensors, per_step)


def is_enabled() -> bool:
    """True while a recorder is active."""
    return _timing is not None or _counting is not None


@contextmanager
def recording(recorder: Recorder) -> Iterator[Recorder]:
    """Activate ``recorder`` for the measuring points (one recorder at a time)."""
    global _timing, _counting
    if is_enabled():
        raise RuntimeError("another Recorder is already active")
    _timing = recorder if recorder.timers else None
    _counting = recorder if recorder.probes else None
    try:
        yield recorder
    finally:
        _timing = _counting = None


class _Timer:
    """One timed interval: CUDA events or ``perf_counter_ns`` stamps, queued on the recorder when it ends."""

    __slots__ = ("_recorder", "_label", "_block", "_start")

    def __init__(self, recorder: Recorder, label: str):
        self._recorder, self._label, self._block = recorder, label, recorder.block

    def __enter__(self) -> None:
        self._start = self._recorder.stamp()

    def __exit__(self, *exc) -> None:
        self._recorder.add_interval(self._block, self._label, self._start, self._recorder.stamp())


class Recorder:
    """Collects the measurements of the active measuring points until :meth:`collect`.

    Args:
        device: where the model runs; timers use CUDA events on a CUDA device, ``perf_counter_ns`` otherwise.
        timers: record the timers.
        probes: record the sparsity probes.
    """

    def __init__(self, device: torch.device | str = "cpu", timers: bool = True, probes: bool = True):
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.timers, self.probes = timers, probes
        self.block: int | None = None
        # (block, label, kind, payload, per_step, shape); payload: (start, end) stamps or (nonzero counts, numel).
        self._pending: list[tuple] = []

    def stamp(self) -> torch.cuda.Event | int:
        """Now: a recorded CUDA event on the device's current stream (``cuda:1`` too, whatever the current device
        is), or ``perf_counter_ns()``."""
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter_ns()

    def add_interval(self, block: int | None, label: str, start, end) -> None:
        """Queue a timer measurement between two :meth:`stamp` values."""
        self._pending.append((block, label, "time", (start, end), False, None))

    def timer(self, label: str) -> _Timer:
        """A context manager that times its body (``__enter__``/``__exit__`` also work from forward hooks)."""
        return _Timer(self, label)

    def count(self, labels: str | tuple[str, ...], tensors: tuple[torch.Tensor, ...], per_step: bool) -> None:
        """Queue one ``count_nonzero`` reduction per tensor (see :func:`sparsity`)."""
        if isinstance(labels, str):
            labels = (labels,)
        if len(labels) != len(tensors):
            raise ValueError(f"{len(labels)} labels {labels} for {len(tensors)} tensors")
        for label, tensor in zip(labels, tensors):
            if per_step:
                counts = torch.count_nonzero(tensor, dim=tuple(range(1, tensor.dim())))
                numel = tensor.numel() // tensor.shape[0]
            else:
                counts, numel = torch.count_nonzero(tensor), tensor.numel()
            self._pending.append((self.block, label, "sparsity", (counts, numel), per_step, tuple(tensor.shape)))

    def collect(self) -> list[Measurement]:
        """Resolve and return everything queued since the last call, in the order the measurements ended.

        Synchronises once: CUDA events are read after ``torch.cuda.synchronize()``, and all the nonzero counts
        come to the host in one copy.
        """
        pending, self._pending = self._pending, []
        if self.cuda:
            torch.cuda.synchronize(self.device)
        count_tensors = [payload[0].reshape(-1) for _, _, kind, payload, _, _ in pending if kind == "sparsity"]
        counts = iter(torch.cat(count_tensors).tolist() if count_tensors else [])
        out = []
        for block, label, kind, payload, per_step, shape in pending:
            if kind == "time":
                start, end = payload
                ns = round(start.elapsed_time(end) * 1e6) if self.cuda else end - start
                out.append(Measurement(block, label, kind, ns))
                continue
            numel = payload[1]
            steps = range(payload[0].numel()) if per_step else (None,)
            out.extend(Measurement(block, label, kind, 1 - next(counts) / numel, t, shape) for t in steps)
        return out
