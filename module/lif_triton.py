"""Triton kernels of :mod:`module.fused_lif`: one program per block of neurons loops over the T time steps.

The membrane stays in fp32 registers; spikes are written in the input dtype.  The backward kernel recomputes the
membrane from the saved input (first pass, forward in time, keeping ``h`` in an fp32 scratch buffer) and then runs
the surrogate-gradient recurrence backwards in time.  Run with ``TRITON_INTERPRET=1`` to execute them on the CPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["forward", "backward"]

BLOCK = 1024


@triton.jit
def _run_forward_in_time(x_ptr, out_ptr, offs, mask, k, N, T: tl.constexpr, v_threshold: tl.constexpr,
                         STORE_MEMBRANE: tl.constexpr):
    """The LIF recurrence from v = 0; stores the spikes, or the membrane ``h`` (fp32) before the reset.  Returns
    ``offs + T * N`` (int64: advanced by N per step so that it cannot overflow)."""
    v = tl.zeros(offs.shape, dtype=tl.float32)
    idx = offs
    for _ in range(T):
        x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        h = v + (x - v) * k
        fired = h >= v_threshold
        if STORE_MEMBRANE:
            tl.store(out_ptr + idx, h, mask=mask)
        else:
            tl.store(out_ptr + idx, tl.where(fired, 1.0, 0.0).to(out_ptr.dtype.element_ty), mask=mask)
        v = tl.where(fired, 0.0, h)
        idx += N
    return idx


@triton.jit
def _lif_forward_kernel(x_ptr, decay_ptr, spike_ptr, N, T: tl.constexpr, v_threshold: tl.constexpr,
                        BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    k = tl.load(decay_ptr).to(tl.float32)
    _run_forward_in_time(x_ptr, spike_ptr, offs, offs < N, k, N, T, v_threshold, False)


@triton.jit
def _lif_backward_kernel(grad_spike_ptr, x_ptr, decay_ptr, h_ptr, grad_x_ptr, grad_decay_ptr, N, T: tl.constexpr,
                         v_threshold: tl.constexpr, alpha: tl.constexpr, NEED_DECAY_GRAD: tl.constexpr,
                         BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    k = tl.load(decay_ptr).to(tl.float32)
    idx = _run_forward_in_time(x_ptr, h_ptr, offs, mask, k, N, T, v_threshold, True)
    grad_v = tl.zeros([BLOCK], dtype=tl.float32)
    grad_decay = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(T):
        t = T - 1 - i
        idx -= N
        h = tl.load(h_ptr + idx, mask=mask, other=0.0)
        sg = tl.sigmoid(alpha * (h - v_threshold))
        grad_s = tl.load(grad_spike_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        grad_h = grad_s * (alpha * sg * (1.0 - sg)) + tl.where(h >= v_threshold, 0.0, grad_v)
        tl.store(grad_x_ptr + idx, (grad_h * k).to(grad_x_ptr.dtype.element_ty), mask=mask)
        if NEED_DECAY_GRAD:
            x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
            h_prev = tl.load(h_ptr + idx - N, mask=mask & (t > 0), other=0.0)
            v_prev = tl.where(h_prev >= v_threshold, 0.0, h_prev)
            grad_decay += grad_h * (x - v_prev)
        grad_v = grad_h * (1.0 - k)
    if NEED_DECAY_GRAD:
        tl.store(grad_decay_ptr + offs, grad_decay, mask=mask)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def forward(x: Tensor, decay: Tensor, v_threshold: float) -> Tensor:
    """Spikes of a stateless multi-step LIF over ``x`` (``[T, ...]``)."""
    x = x.contiguous()
    spikes = torch.empty_like(x)
    n = x[0].numel()
    if n:
        _lif_forward_kernel[_grid(n)](x, decay.contiguous(), spikes, n, x.shape[0], v_threshold=v_threshold,
                                      BLOCK=BLOCK)
    return spikes


def backward(grad_spikes: Tensor, x: Tensor, decay: Tensor, v_threshold: float,
             need_decay_grad: bool) -> tuple[Tensor, Tensor]:
    """``(grad_x, grad_decay)`` of :func:`forward`, with spikingjelly's sigmoid surrogate (alpha 4)."""
    from .fused_lif import SURROGATE_ALPHA

    x, grad_spikes = x.contiguous(), grad_spikes.contiguous()
    n = x[0].numel()
    grad_x = torch.empty_like(x)
    h_scratch = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    grad_decay = torch.zeros(n if need_decay_grad else 1, dtype=torch.float32, device=x.device)
    if n:
        _lif_backward_kernel[_grid(n)](grad_spikes, x, decay.contiguous(), h_scratch, grad_x, grad_decay, n,
                                       x.shape[0], v_threshold=v_threshold, alpha=SURROGATE_ALPHA,
                                       NEED_DECAY_GRAD=need_decay_grad, BLOCK=BLOCK)
    return grad_x, grad_decay.sum()
