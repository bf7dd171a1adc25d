"""Neuron factory: multi-step LIF / PLIF neurons configured as in the reference code.

The reference builds ``MultiStepLIFNode(tau=2., detach_reset=True, backend="cupy")`` (spikingjelly 0.0.0.0.12)
or ``MultiStepParametricLIFNode(init_tau=2., ...)``.  Two backends compute the same spikes and gradients:

* ``"fused"`` (default): :class:`module.fused_lif.MultiStepLIF`, stateless (each call starts from v = 0), one
  Triton kernel per direction on CUDA, safe under CUDA graphs and ``torch.compile``;
* ``"spikingjelly"``: spikingjelly 2.0's ``LIFNode`` / ``ParametricLIFNode`` (fused CPU kernel, Triton on CUDA),
  which keep their membrane between calls until reset, for runs that carry state across inputs.

Nothing here imports CuPy.
"""
from __future__ import annotations

from spikingjelly.activation_based import neuron
from torch import nn

from .fused_lif import MultiStepLIF

__all__ = ["SPIKE_MODES", "NEURON_BACKENDS", "ATTENTION_THRESHOLD", "create_lif", "is_neuron"]

# spike_mode -> parametric?  "alif" and "blif" are accepted by the reference and build a plain LIF there too.
SPIKE_MODES = {"lif": False, "alif": False, "blif": False, "plif": True}
NEURON_BACKENDS = ("fused", "spikingjelly")
# Threshold of ``attn_lif`` and ``talking_heads_lif``; every other neuron fires at 1.0.
ATTENTION_THRESHOLD = 0.5


def create_lif(spike_mode: str = "lif", v_threshold: float = 1.0, backend: str = "fused") -> nn.Module:
    """A multi-step (``[T, ...]``) LIF or PLIF neuron with tau 2, hard reset to 0 and a detached reset."""
    if spike_mode not in SPIKE_MODES:
        raise ValueError(f"spike_mode={spike_mode!r} is not supported; choose one of {sorted(SPIKE_MODES)}")
    if backend not in NEURON_BACKENDS:
        raise ValueError(f"neuron_backend={backend!r} is not supported; choose one of {NEURON_BACKENDS}")
    if backend == "fused":
        return MultiStepLIF(tau=2.0, v_threshold=v_threshold, parametric=SPIKE_MODES[spike_mode])
    if SPIKE_MODES[spike_mode]:
        return neuron.ParametricLIFNode(init_tau=2.0, v_threshold=v_threshold, detach_reset=True, step_mode="m")
    return neuron.LIFNode(tau=2.0, v_threshold=v_threshold, detach_reset=True, step_mode="m")


def is_neuron(module: nn.Module) -> bool:
    """True for the spiking neurons built by :func:`create_lif`."""
    return isinstance(module, (MultiStepLIF, neuron.LIFNode, neuron.ParametricLIFNode))
