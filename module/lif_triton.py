"""Triton kernels of :mod:`module.fused_lif`: one program per block of neurons loops over the T time steps.

The membrane stays in fp32 registers; spikes are written in the input dtype.  The backward kernel recomputes the
membrane from the saved input (first pass, forward in time, keeping ``h`` in an fp32 scratch buffer) and then runs
the surrogate-gradient recurrence backwards in time.  A repeated input (``[1, ...]`` over T steps: a static
image's encoding) is read once; its backward recomputes the membrane in registers, without scratch, and writes
the gradient summed over time.  Run with ``TRITON_INTERPRET=1`` to execute them on the CPU.
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
                         STORE_MEMBRANE: tl.constexpr, REPEATED_INPUT: tl.constexpr):
    """The LIF recurrence from v = 0; stores the spikes, or the membrane ``h`` (fp32) before the reset.  Returns
    ``offs + T * N`` (int64: advanced by N per step so that it cannot overflow)."""
    v = tl.zeros(offs.shape, dtype=tl.float32)
    idx = offs
    for _ in range(T):
        if REPEATED_INPUT:
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        else:
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
                        REPEATED_INPUT: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    k = tl.load(decay_ptr).to(tl.float32)
    _run_forward_in_time(x_ptr, spike_ptr, offs, offs < N, k, N, T, v_threshold, False, REPEATED_INPUT)


@triton.jit
def _lif_backward_kernel(grad_spike_ptr, x_ptr, decay_ptr, h_ptr, grad_x_ptr, grad_decay_ptr, N, T: tl.constexpr,
                         v_threshold: tl.constexpr, alpha: tl.constexpr, NEED_DECAY_GRAD: tl.constexpr,
                         BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    k = tl.load(decay_ptr).to(tl.float32)
    idx = _run_forward_in_time(x_ptr, h_ptr, offs, mask, k, N, T, v_threshold, True, False)
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


@triton.jit
def _lif_repeated_backward_kernel(grad_spike_ptr, x_ptr, decay_ptr, grad_x_ptr, grad_decay_ptr, N,
                                  T: tl.constexpr, v_threshold: tl.constexpr, alpha: tl.constexpr,
                                  NEED_DECAY_GRAD: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    k = tl.load(decay_ptr).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    idx = offs + N.to(tl.int64) * T
    grad_v = tl.zeros([BLOCK], dtype=tl.float32)
    grad_x = tl.zeros([BLOCK], dtype=tl.float32)
    grad_decay = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(T):
        idx -= N
        v = tl.zeros([BLOCK], dtype=tl.float32)
        h = x * k
        for _ in range(T - 1 - i):  # the membrane at step T-1-i, recomputed in registers
            v = tl.where(h >= v_threshold, 0.0, h)
            h = v + (x - v) * k
        sg = tl.sigmoid(alpha * (h - v_threshold))
        grad_s = tl.load(grad_spike_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        grad_h = grad_s * (alpha * sg * (1.0 - sg)) + tl.where(h >= v_threshold, 0.0, grad_v)
        grad_x += grad_h * k
        if NEED_DECAY_GRAD:
            grad_decay += grad_h * (x - v)
        grad_v = grad_h * (1.0 - k)
    tl.store(grad_x_ptr + offs, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)
    if NEED_DECAY_GRAD:
        tl.store(grad_decay_ptr + offs, grad_decay, mask=mask)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def forward(x: Tensor, decay: Tensor, v_threshold: float, steps: int) -> Tensor:
    """Spikes of a stateless multi-step LIF over ``x`` (``[steps, ...]``, or ``[1, ...]`` repeated)."""
    x = x.contiguous()
    spikes = x.new_empty((steps, *x.shape[1:]))
    n = x[0].numel()
    if n:
        _lif_forward_kernel[_grid(n)](x, decay.contiguous(), spikes, n, steps, v_threshold=v_threshold,
                                      REPEATED_INPUT=x.shape[0] != steps, BLOCK=BLOCK)
    return spikes


def backward(grad_spikes: Tensor, x: Tensor, decay: Tensor, v_threshold: float,
             need_decay_grad: bool) -> tuple[Tensor, Tensor]:
    """``(grad_x, grad_decay)`` of :func:`forward`, with spikingjelly's sigmoid surrogate (alpha 4); for a
    repeated ``[1, ...]`` input, ``grad_x`` is summed over the time steps of ``grad_spikes``."""
    from .fused_lif import SURROGATE_ALPHA

    x, grad_spikes = x.contiguous(), grad_spikes.contiguous()
    n, steps = x[0].numel(), grad_spikes.shape[0]
    grad_x = torch.empty_like(x)
    grad_decay = torch.zeros(n if need_decay_grad else 1, dtype=torch.float32, device=x.device)
    if not n:
        return grad_x, grad_decay.sum()
    options = dict(v_threshold=v_threshold, alpha=SURROGATE_ALPHA, NEED_DECAY_GRAD=need_decay_grad, BLOCK=BLOCK)
    if x.shape[0] != steps:
        _lif_repeated_backward_kernel[_grid(n)](grad_spikes, x, decay.contiguous(), grad_x, grad_decay, n, steps,
                                                **options)
    else:
        h_scratch = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        _lif_backward_kernel[_grid(n)](grad_spikes, x, decay.contiguous(), h_scratch, grad_x, grad_decay, n,
                                       steps, **options)
    return grad_x, grad_decay.sum()
