"""Time and probe a model run by run: what the fork's notebook did, with correct timing.

Inside ``with ProfileSession(model, device) as session:`` forward hooks (removed on exit, so nothing stays on the
model) give every encoder block its index and time the whole model ("Spikeformer Time time"), each attention
branch ("SSA Encoder") and each MLP ("MLP"); the measuring points in the modules (``module.instrument``) add
the stem, sub-timers and sparsity probes.  ``session.run(number, fn)`` calls ``fn`` once (one forward pass)
and returns that run's records, ending with the wall-clock "Run total" taken between two synchronisations.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import ExitStack

import torch
from torch import nn

from module.instrument import Recorder, recording
from module.ms_conv import MS_Block_Conv, MS_MLP_Conv, MS_SSA_Conv

from .fork_format import RUN_TOTAL, TOTAL
from .records import Record

__all__ = ["ProfileSession"]

# module type -> timer label of its whole forward
_MODULE_TIMERS = {MS_SSA_Conv: "SSA Encoder", MS_MLP_Conv: "MLP"}


class ProfileSession:
    """Attach timers and probes to ``model`` for the duration of a ``with`` block.

    Args:
        model: a ``SpikeDrivenTransformer`` (any module whose encoder blocks are ``MS_Block_Conv``).
        device: where it runs (CUDA events for the timers on a CUDA device).
        timers: record the timers.
        probes: record the sparsity probes.
    """

    def __init__(self, model: nn.Module, device: torch.device | str, timers: bool = True, probes: bool = True):
        self.model = model
        self.device = torch.device(device)
        self.recorder = Recorder(self.device, timers=timers, probes=probes)
        self._stack = ExitStack()

    def __enter__(self) -> ProfileSession:
        stack = self._stack
        stack.enter_context(recording(self.recorder))
        blocks = [m for m in self.model.modules() if isinstance(m, MS_Block_Conv)]
        for index, block in enumerate(blocks):
            stack.callback(block.register_forward_pre_hook(self._enter_block(index)).remove)
            stack.callback(block.register_forward_hook(self._enter_block(None)).remove)
        if self.recorder.timers:
            self._time(self.model, TOTAL)
            for module in self.model.modules():
                label = _MODULE_TIMERS.get(type(module))
                if label is not None:
                    self._time(module, label)
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()

    def _enter_block(self, index: int | None) -> Callable:
        def hook(*_):
            self.recorder.block = index

        return hook

    def _time(self, module: nn.Module, label: str) -> None:
        """Time every forward of ``module`` with a pre-hook/hook pair."""
        running = []

        def start(*_):
            running.append(self.recorder.timer(label))
            running[-1].__enter__()

        def stop(*_):
            running.pop().__exit__(None, None, None)

        self._stack.callback(module.register_forward_pre_hook(start).remove)
        self._stack.callback(module.register_forward_hook(stop).remove)

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run(self, number: int, fn: Callable[[], object]) -> list[Record]:
        """Call ``fn`` (one forward pass) and return its records as run ``number``."""
        self._synchronize()
        start = time.perf_counter_ns()
        fn()
        self._synchronize()
        total = time.perf_counter_ns() - start
        records = [Record.from_measurement(number, m) for m in self.recorder.collect()]
        records.append(Record(number, None, RUN_TOTAL, "time", total, "ns"))
        return records
