"""Stateless multi-step LIF / PLIF as one opaque op: a Triton kernel per direction on CUDA (:func:`runs_triton`),
a PyTorch loop elsewhere.

Same maths as the reference neurons (spikingjelly ``MultiStepLIFNode`` / ``MultiStepParametricLIFNode``: decay
input, hard reset to 0, detached reset, sigmoid surrogate with alpha 4), with two differences that make it fast:

* the neuron keeps no state between calls: every call starts from v = 0.  In SDT/STAtten each neuron runs once per
  forward and is reset after it, so this is the same computation, and it is what CUDA graphs and ``torch.compile``
  need (no Python-side state, no reset pass);
* the op is an opaque ``sdt::`` op (:mod:`module.library`): one kernel launch per direction whatever T is, the
  membrane kept in fp32 registers, spikes written in the input dtype (so bf16/fp16 autocast stays on the fast
  path), and the backward saves only the input and recomputes the membrane.

The membrane is fp32 for fp32, bf16 and fp16 input and float64 for float64 input (:func:`compute_dtype`); float64
runs the PyTorch loop on every device, the Triton kernels computing in fp32 only.
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .library import define_op, register_autograd, register_fake

__all__ = ["SURROGATE_ALPHA", "MultiStepLIF", "multistep_lif", "lif_reference", "lif_backward_reference",
           "is_time_major", "empty_steps", "HISTORY_STEPS", "keeps_membrane_in_memory", "recomputes_membrane",
           "compute_dtype", "runs_triton", "triton_available"]

# spikingjelly's default surrogate gradient: surrogate.Sigmoid(alpha=4).
SURROGATE_ALPHA = 4.0
# input dtypes the Triton kernels take: they compute in fp32
_TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype the membrane (and a fused batch norm) of input ``x`` is computed in: fp32 for fp32, bf16 and fp16
    input (under autocast too), float64 for float64."""
    return torch.promote_types(x.dtype, torch.float32)


def _is_dense(t: Tensor) -> bool:
    """Whether ``t``'s elements fill one block of memory without gaps or overlaps, in any order of the axes."""
    expected = 1
    for stride, size in sorted((st, sz) for st, sz in zip(t.stride(), t.shape) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def is_time_major(x: Tensor) -> bool:
    """Whether each time step of ``x`` (``[T, ...]``) is one dense block, ``N`` elements after the previous one, in
    any layout of the other axes (a channels-last conv output viewed as ``[T, B, C, H, W]`` is one)."""
    if x.is_contiguous():
        return True
    return _is_dense(x[0]) and (x.shape[0] == 1 or x.stride(0) == x[0].numel())


def empty_steps(x: Tensor, steps: int, dtype: torch.dtype | None = None) -> Tensor:
    """An empty ``[steps, ...]`` tensor with the layout of :func:`is_time_major` ``x`` (else contiguous): the layout
    of the LIF ops' outputs and gradients on every device, and of their fake tensors under ``torch.compile``."""
    shape, dtype = (steps, *x.shape[1:]), dtype or x.dtype
    if x.is_contiguous() or not is_time_major(x):
        return x.new_empty(shape, dtype=dtype)
    return torch.empty_strided(shape, (x[0].numel(), *x.stride()[1:]), dtype=dtype, device=x.device)


HISTORY_STEPS = 32  # the longest sequence whose membranes the Triton backward keeps in registers


def keeps_membrane_in_memory(steps: int, itemsize: int) -> bool:
    """Whether the Triton backward keeps the membrane in an fp32 scratch buffer (a write and a read of 4 bytes per
    neuron and step): only when it neither recomputes it (:func:`recomputes_membrane`) nor holds every step's in
    registers (up to :data:`HISTORY_STEPS` steps)."""
    return not recomputes_membrane(steps, itemsize) and steps > HISTORY_STEPS


def recomputes_membrane(steps: int, itemsize: int) -> bool:
    """Whether the Triton backward recomputes the membrane instead of keeping it in an fp32 scratch buffer.

    Recomputing re-reads ``x[0..t]`` at backward step t: ``T (T + 1) / 2`` reads of ``itemsize`` bytes per neuron,
    against ``T`` reads plus an fp32 write and read (8 bytes) per step through the scratch.  The re-reads are recent
    and mostly hit the cache, but even when none does recomputing moves no more bytes while
    ``(T + 1) / 2 * itemsize <= itemsize + 8``: up to T = 5 in fp32 and T = 9 in bf16/fp16.
    """
    return (steps + 1) * itemsize <= 2 * (itemsize + 8)


def _membrane_steps(x: Tensor, k: Tensor, v_threshold: float) -> Iterator[tuple[Tensor, Tensor]]:
    """The LIF recurrence from v = 0 in the dtype of the decay ``k``: per time step, the membrane ``h`` before the
    reset and the ``v`` it started from."""
    v = torch.zeros_like(x[0], dtype=k.dtype)
    for t in range(x.shape[0]):
        h = v + (x[t].to(k.dtype) - v) * k
        yield h, v
        v = torch.where(h >= v_threshold, 0.0, h)


def _over_time(x: Tensor, steps: int) -> Tensor:
    """``x`` (``[T, ...]``, or ``[1, ...]`` repeated) as a ``[steps, ...]`` view."""
    return x.expand(steps, *x.shape[1:])


def lif_reference(x: Tensor, decay: Tensor, v_threshold: float, steps: int | None = None) -> Tensor:
    """Spikes of ``[T, ...]`` input ``x`` (or ``[1, ...]`` repeated over ``steps``): ``h = v + (x - v) * decay``,
    spike if ``h >= v_threshold``, then ``v = h (1 - spike)``, from v = 0."""
    steps = x.shape[0] if steps is None else steps
    spikes = empty_steps(x, steps)
    for t, (h, _) in enumerate(_membrane_steps(_over_time(x, steps), decay.to(compute_dtype(x)), v_threshold)):
        spikes[t] = h >= v_threshold
    return spikes


def lif_backward_reference(grad_spikes: Tensor, x: Tensor, decay: Tensor, v_threshold: float,
                           need_decay_grad: bool) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`lif_reference` w.r.t. ``x`` and ``decay`` (surrogate ``sigmoid(alpha (h - theta))``);
    for a repeated ``[1, ...]`` input the gradient is summed over the time steps of ``grad_spikes``."""
    k = decay.to(compute_dtype(x))
    steps = grad_spikes.shape[0]
    x_steps = _over_time(x, steps)
    h_seq, v_prev_seq = zip(*_membrane_steps(x_steps, k, v_threshold))
    grad_x = empty_steps(x, steps)
    grad_v = torch.zeros_like(h_seq[0])
    grad_decay = torch.zeros((), dtype=k.dtype, device=x.device)
    for t in reversed(range(steps)):
        h = h_seq[t]
        sg = torch.sigmoid(SURROGATE_ALPHA * (h - v_threshold))
        surrogate = SURROGATE_ALPHA * sg * (1.0 - sg)
        grad_h = grad_spikes[t].to(k.dtype) * surrogate + torch.where(h >= v_threshold, 0.0, grad_v)
        grad_x[t] = grad_h * k
        if need_decay_grad:
            grad_decay = grad_decay + (grad_h * (x_steps[t].to(k.dtype) - v_prev_seq[t])).sum()
        grad_v = grad_h * (1.0 - k)
    if x.shape[0] != steps:
        grad_x = empty_steps(x, 1).copy_(grad_x.sum(0, keepdim=True))
    return grad_x, grad_decay


@functools.cache
def triton_available() -> bool:
    """True when Triton can be imported (it ships with the CUDA builds of torch)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def runs_triton(x: Tensor) -> bool:
    """Whether the ops run their Triton kernels on ``x``: on CUDA, and on the CPU under ``TRITON_INTERPRET=1``,
    where Triton's interpreter runs them as Python (the GPU code path without a GPU, slowly: ``TRITON_INTERPRET=1
    python benchmarks/fixture_diffs.py --device cpu``), for fp32, bf16 and fp16 ``x``.  Elsewhere, and for float64
    ``x`` (the kernels compute in fp32), the PyTorch loops and ATen's pools run."""
    if x.dtype not in _TRITON_DTYPES:
        return False
    if x.is_cuda:
        return triton_available()
    return x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1" and triton_available()


def on_tensor_device(launch):
    """Run a Triton launcher (first argument: a tensor) with the tensor's CUDA device current: Triton launches on
    the current device, which is not ``cuda:1``'s unless something made it so."""
    @functools.wraps(launch)
    def wrapper(x: Tensor, *args, **kwargs):
        if not x.is_cuda:
            return launch(x, *args, **kwargs)
        with torch.cuda.device(x.device):
            return launch(x, *args, **kwargs)
    return wrapper


@define_op("multistep_lif")
def _lif_forward(x: Tensor, decay: Tensor, v_threshold: float, steps: int) -> Tensor:
    if runs_triton(x):
        from . import lif_triton
        return lif_triton.forward(x, decay, v_threshold, steps)
    return lif_reference(x, decay, v_threshold, steps)


@register_fake(_lif_forward)
def _(x: Tensor, decay: Tensor, v_threshold: float, steps: int) -> Tensor:
    return empty_steps(x, steps)


@define_op("multistep_lif_backward")
def _lif_backward(grad_spikes: Tensor, x: Tensor, decay: Tensor, v_threshold: float,
                  need_decay_grad: bool) -> tuple[Tensor, Tensor]:
    if runs_triton(x):
        from . import lif_triton
        return lif_triton.backward(grad_spikes, x, decay, v_threshold, need_decay_grad)
    return lif_backward_reference(grad_spikes, x, decay, v_threshold, need_decay_grad)


@register_fake(_lif_backward)
def _(grad_spikes: Tensor, x: Tensor, decay: Tensor, v_threshold: float,
      need_decay_grad: bool) -> tuple[Tensor, Tensor]:
    return empty_steps(x, x.shape[0]), x.new_empty((), dtype=compute_dtype(x))


def _setup_context(ctx, inputs, output) -> None:
    x, decay, v_threshold, _ = inputs
    ctx.save_for_backward(x, decay)
    ctx.v_threshold = v_threshold


def _backward(ctx, grad_spikes: Tensor):
    x, decay = ctx.saved_tensors
    need_decay_grad = ctx.needs_input_grad[1]
    grad_x, grad_decay = _lif_backward(grad_spikes, x, decay, ctx.v_threshold, need_decay_grad)
    return grad_x, (grad_decay.to(decay.dtype) if need_decay_grad else None), None, None


register_autograd(_lif_forward, _backward, setup_context=_setup_context)


def multistep_lif(x: Tensor, decay: Tensor, v_threshold: float, steps: int | None = None) -> Tensor:
    """Spikes (dtype of ``x``) of a stateless LIF over ``[T, ...]`` input; ``decay`` = 1/tau, a 0-dim tensor.

    With ``steps``, ``x`` may be ``[1, ...]``: the same input at every one of the ``steps`` time steps (a static
    image's encoding).  The kernels then read it once and the gradient comes back summed over time, ``[1, ...]``,
    without materialising ``steps`` copies in either direction.
    """
    if x.dim() < 2:
        raise ValueError(f"multistep_lif expects time-major input [T, ...]; got shape {tuple(x.shape)}")
    steps = x.shape[0] if steps is None else steps
    if x.shape[0] not in (1, steps):
        raise ValueError(f"multistep_lif: input with {x.shape[0]} time steps cannot run over steps={steps}; "
                         f"pass [{steps}, ...] or [1, ...]")
    return _lif_forward(x, decay, float(v_threshold), steps)


class MultiStepLIF(nn.Module):
    """Stateless multi-step LIF (``parametric=False``) or PLIF neuron over ``[T, ...]`` input.

    A drop-in for the spikingjelly neurons built by :func:`module.create_lif`: same threshold, tau, reset and
    surrogate, and the same state-dict keys (PLIF: a 0-dim ``w`` with ``1/tau = sigmoid(w)``; LIF: none).
    ``reset()`` exists for API compatibility and does nothing: there is no state.
    """

    def __init__(self, tau: float = 2.0, v_threshold: float = 1.0, parametric: bool = False):
        super().__init__()
        if tau <= 1.0:
            raise ValueError(f"tau={tau} must be greater than 1")
        self.tau, self.v_threshold, self.parametric = tau, v_threshold, parametric
        if parametric:
            self.w = nn.Parameter(torch.tensor(-math.log(tau - 1.0)))
        else:
            self.register_buffer("decay", torch.tensor(1.0 / tau), persistent=False)

    def membrane_decay(self) -> Tensor:
        """``1 / tau`` as a 0-dim tensor (``sigmoid(w)`` for PLIF, differentiable)."""
        return self.w.sigmoid() if self.parametric else self.decay

    def forward(self, x: Tensor, steps: int | None = None) -> Tensor:
        """Spikes of ``x`` (``[T, ...]``), or of ``x`` (``[1, ...]``) repeated over ``steps`` time steps."""
        return multistep_lif(x, self.membrane_decay(), self.v_threshold, steps)

    def reset(self) -> None:
        """Nothing to reset: each call starts from v = 0."""

    def extra_repr(self) -> str:
        kind = "parametric, init_tau" if self.parametric else "tau"
        return f"{kind}={self.tau}, v_threshold={self.v_threshold}, detach_reset=True, stateless"
