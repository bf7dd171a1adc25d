"""Observation points inside the model, read from outside with forward hooks (as spikingjelly's monitors do).

A :class:`Probe` is an identity module placed where the reference code wrote an intermediate tensor into its
``hook`` dict and no submodule produces that tensor (for example ``k * v`` before the column sum).  Neuron
outputs need no probe: their modules are hooked directly.  :class:`TensorRecorder` attaches to any set of named
modules and records their outputs, so the blocks stay free of bookkeeping.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["Probe", "TensorRecorder"]


class Probe(nn.Identity):
    """Identity module that marks a tensor worth observing; it has no parameters and no state."""


class TensorRecorder:
    """Records the outputs of chosen modules under chosen keys, in execution order.

    Args:
        points: ``(key, module)`` pairs; each forward of ``module`` stores its (detached) output as ``records[key]``.
        records: dict to fill (a fresh one by default).

    Use as a context manager, or call :meth:`remove` when done.
    """

    def __init__(self, points: Iterable[tuple[str, nn.Module]], records: dict | None = None):
        self.records = {} if records is None else records
        self._handles = [module.register_forward_hook(self._hook_for(key)) for key, module in points]

    def _hook_for(self, key: str):
        def hook(_module, _inputs, output):
            self.records[key] = output.detach() if isinstance(output, torch.Tensor) else output

        return hook

    def remove(self) -> None:
        """Detach every hook."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> "TensorRecorder":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
