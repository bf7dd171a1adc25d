"""Triton kernels of :mod:`module.fused_lif`: one program per block of neurons loops over the T time steps.

The membrane stays in fp32 registers; spikes are written in the input dtype.  The backward runs the
surrogate-gradient recurrence backwards in time on the membrane recomputed from the saved input: in registers
from step 0 at every step for short sequences (:func:`recomputes_membrane`), otherwise in a first pass forward in
time that keeps ``h`` in an fp32 scratch buffer.  A repeated input (``[1, ...]`` over T steps: a static image's
encoding) is read once and its gradient written summed over time.  Optionally the LIF input is the batch norm of
the given tensor, applied on the fly (:mod:`module.bn_lif`).  Run with ``TRITON_INTERPRET=1`` to execute them on
the CPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .fused_lif import SURROGATE_ALPHA, empty_steps, is_time_major

__all__ = ["forward", "backward", "recomputes_membrane"]

BLOCK = 1024


@triton.jit
def _channel_params(bn_ptr, offs, mask, C, S, HAS_BN: tl.constexpr):
    """``(mean, invstd, weight, bias)`` of each neuron's channel for a batch norm in front of the LIF (``bn_ptr``:
    fp32 ``[4, C]``; ``S``: the channel's stride in memory, ``H * W`` in NCHW order, 1 in channels-last); unused
    zeros without one."""
    if HAS_BN:
        channel = (offs // S) % C
        mean = tl.load(bn_ptr + channel, mask=mask, other=0.0)
        invstd = tl.load(bn_ptr + C + channel, mask=mask, other=0.0)
        weight = tl.load(bn_ptr + 2 * C + channel, mask=mask, other=0.0)
        bias = tl.load(bn_ptr + 3 * C + channel, mask=mask, other=0.0)
    else:
        mean = tl.zeros(offs.shape, dtype=tl.float32)
        invstd, weight, bias = mean, mean, mean
    return mean, invstd, weight, bias


@triton.jit
def _load_input(x_ptr, idx, mask, mean, invstd, weight, bias, HAS_BN: tl.constexpr):
    """The LIF input at ``idx`` in fp32: ``x``, or the batch norm of ``x`` (ATen's order of operations, rounded to
    ``x``'s dtype as a BatchNorm's output would be)."""
    x = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    if HAS_BN:
        x = (weight * (x - mean) * invstd + bias).to(x_ptr.dtype.element_ty).to(tl.float32)
    return x


@triton.jit
def _run_forward_in_time(x_ptr, out_ptr, offs, mask, k, N, T: tl.constexpr, v_threshold: tl.constexpr,
                         STORE_MEMBRANE: tl.constexpr, REPEATED_INPUT: tl.constexpr, mean, invstd, weight, bias,
                         HAS_BN: tl.constexpr):
    """The LIF recurrence from v = 0; stores the spikes, or the membrane ``h`` (fp32) before the reset.  Returns
    ``offs + T * N`` (int64: advanced by N per step so that it cannot overflow)."""
    v = tl.zeros(offs.shape, dtype=tl.float32)
    idx = offs
    for _ in range(T):
        if REPEATED_INPUT:
            x = _load_input(x_ptr, offs, mask, mean, invstd, weight, bias, HAS_BN)
        else:
            x = _load_input(x_ptr, idx, mask, mean, invstd, weight, bias, HAS_BN)
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
def _lif_forward_kernel(x_ptr, decay_ptr, spike_ptr, bn_ptr, N, C, S, T: tl.constexpr, v_threshold: tl.constexpr,
                        REPEATED_INPUT: tl.constexpr, HAS_BN: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    k = tl.load(decay_ptr).to(tl.float32)
    mean, invstd, weight, bias = _channel_params(bn_ptr, offs, mask, C, S, HAS_BN)
    _run_forward_in_time(x_ptr, spike_ptr, offs, mask, k, N, T, v_threshold, False, REPEATED_INPUT, mean, invstd,
                         weight, bias, HAS_BN)


@triton.jit
def _grad_membrane(h, grad_s, grad_v, v_threshold: tl.constexpr, alpha: tl.constexpr):
    """Gradient w.r.t. the membrane ``h`` before the reset, from the spike's surrogate and the next step's ``v``."""
    sg = tl.sigmoid(alpha * (h - v_threshold))
    return grad_s * (alpha * sg * (1.0 - sg)) + tl.where(h >= v_threshold, 0.0, grad_v)


@triton.jit
def _lif_backward_kernel(grad_spike_ptr, x_ptr, decay_ptr, bn_ptr, h_ptr, grad_x_ptr, grad_decay_ptr, N, C, S,
                         T: tl.constexpr, v_threshold: tl.constexpr, alpha: tl.constexpr,
                         NEED_DECAY_GRAD: tl.constexpr, HAS_BN: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    k = tl.load(decay_ptr).to(tl.float32)
    mean, invstd, weight, bias = _channel_params(bn_ptr, offs, mask, C, S, HAS_BN)
    idx = _run_forward_in_time(x_ptr, h_ptr, offs, mask, k, N, T, v_threshold, True, False, mean, invstd, weight,
                               bias, HAS_BN)
    grad_v = tl.zeros([BLOCK], dtype=tl.float32)
    grad_decay = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(T):
        t = T - 1 - i
        idx -= N
        h = tl.load(h_ptr + idx, mask=mask, other=0.0)
        grad_s = tl.load(grad_spike_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        grad_h = _grad_membrane(h, grad_s, grad_v, v_threshold, alpha)
        tl.store(grad_x_ptr + idx, (grad_h * k).to(grad_x_ptr.dtype.element_ty), mask=mask)
        if NEED_DECAY_GRAD:
            x = _load_input(x_ptr, idx, mask, mean, invstd, weight, bias, HAS_BN)
            h_prev = tl.load(h_ptr + idx - N, mask=mask & (t > 0), other=0.0)
            v_prev = tl.where(h_prev >= v_threshold, 0.0, h_prev)
            grad_decay += grad_h * (x - v_prev)
        grad_v = grad_h * (1.0 - k)
    if NEED_DECAY_GRAD:
        tl.store(grad_decay_ptr + offs, grad_decay, mask=mask)


@triton.jit
def _lif_backward_recompute_kernel(grad_spike_ptr, x_ptr, decay_ptr, bn_ptr, grad_x_ptr, grad_decay_ptr, N, C, S,
                                   T: tl.constexpr, v_threshold: tl.constexpr, alpha: tl.constexpr,
                                   NEED_DECAY_GRAD: tl.constexpr, REPEATED_INPUT: tl.constexpr,
                                   HAS_BN: tl.constexpr, BLOCK: tl.constexpr):
    """The backward without scratch: at each step (backwards in time) the membrane is recomputed in registers from
    step 0.  A repeated input is read once and its gradient summed over time."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    k = tl.load(decay_ptr).to(tl.float32)
    mean, invstd, weight, bias = _channel_params(bn_ptr, offs, mask, C, S, HAS_BN)
    grad_v = tl.zeros([BLOCK], dtype=tl.float32)
    grad_x_sum = tl.zeros([BLOCK], dtype=tl.float32)
    grad_decay = tl.zeros([BLOCK], dtype=tl.float32)
    for i in range(T):
        idx = offs
        x = _load_input(x_ptr, offs, mask, mean, invstd, weight, bias, HAS_BN)
        v = tl.zeros([BLOCK], dtype=tl.float32)
        h = v + (x - v) * k
        for _ in range(T - 1 - i):  # forward to step T-1-i: h is its membrane, v the one it started from
            v = tl.where(h >= v_threshold, 0.0, h)
            idx += N
            if not REPEATED_INPUT:
                x = _load_input(x_ptr, idx, mask, mean, invstd, weight, bias, HAS_BN)
            h = v + (x - v) * k
        grad_s = tl.load(grad_spike_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        grad_h = _grad_membrane(h, grad_s, grad_v, v_threshold, alpha)
        if REPEATED_INPUT:
            grad_x_sum += grad_h * k
        else:
            tl.store(grad_x_ptr + idx, (grad_h * k).to(grad_x_ptr.dtype.element_ty), mask=mask)
        if NEED_DECAY_GRAD:
            grad_decay += grad_h * (x - v)
        grad_v = grad_h * (1.0 - k)
    if REPEATED_INPUT:
        tl.store(grad_x_ptr + offs, grad_x_sum.to(grad_x_ptr.dtype.element_ty), mask=mask)
    if NEED_DECAY_GRAD:
        tl.store(grad_decay_ptr + offs, grad_decay, mask=mask)


def recomputes_membrane(steps: int, itemsize: int) -> bool:
    """Whether the backward recomputes the membrane instead of keeping it in an fp32 scratch buffer.

    Recomputing re-reads ``x[0..t]`` at backward step t: ``T (T + 1) / 2`` reads of ``itemsize`` bytes per neuron,
    against ``T`` reads plus an fp32 write and read (8 bytes) per step through the scratch.  The re-reads are recent
    and mostly hit the cache, but even when none does recomputing moves no more bytes while
    ``(T + 1) / 2 * itemsize <= itemsize + 8``: up to T = 5 in fp32 and T = 9 in bf16/fp16.
    """
    return (steps + 1) * itemsize <= 2 * (itemsize + 8)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


def _time_major(x: Tensor) -> Tensor:
    """``x`` itself when it is :func:`~module.fused_lif.is_time_major` (channels-last conv outputs included), else
    a contiguous copy.  The kernels index neurons in memory order."""
    return x if is_time_major(x) else x.contiguous()


def _step_strides(x: Tensor) -> tuple[int, ...]:
    """Strides of a ``[steps, ...]`` tensor laid out as :func:`_time_major` ``x``."""
    return x[0].numel(), *x.stride()[1:]


def _batch_norm_args(x: Tensor, batch_norm: Tensor | None, decay: Tensor) -> tuple[Tensor, int, int]:
    """Kernel arguments ``(bn_ptr, C, channel stride)`` for input ``[T, B, C, *spatial]``; a dummy pointer
    without a norm."""
    if batch_norm is None:
        return decay, 1, 1
    return batch_norm.contiguous(), x.shape[2], x.stride(2)


def forward(x: Tensor, decay: Tensor, v_threshold: float, steps: int, batch_norm: Tensor | None = None) -> Tensor:
    """Spikes of a stateless multi-step LIF over ``x`` (``[steps, ...]``, or ``[1, ...]`` repeated), in ``x``'s
    layout.

    With ``batch_norm`` (fp32 ``[4, C]``: mean, invstd, weight, bias), the LIF input is the batch norm of ``x``
    (``[T, B, C, *spatial]``), computed on the fly.
    """
    x = _time_major(x)
    spikes = empty_steps(x, steps)
    n = x[0].numel()
    if n:
        bn_ptr, channels, channel_stride = _batch_norm_args(x, batch_norm, decay)
        _lif_forward_kernel[_grid(n)](x, decay.contiguous(), spikes, bn_ptr, n, channels, channel_stride, steps,
                                      v_threshold=v_threshold, REPEATED_INPUT=x.shape[0] != steps,
                                      HAS_BN=batch_norm is not None, BLOCK=BLOCK)
    return spikes


def backward(grad_spikes: Tensor, x: Tensor, decay: Tensor, v_threshold: float, need_decay_grad: bool,
             batch_norm: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(grad_x, grad_decay)`` of :func:`forward`, with spikingjelly's sigmoid surrogate (alpha 4); for a
    repeated ``[1, ...]`` input, ``grad_x`` is summed over the time steps of ``grad_spikes``.  With
    ``batch_norm``, ``grad_x`` is the gradient w.r.t. the LIF input (the batch norm's output)."""
    x = _time_major(x)
    n, steps = x[0].numel(), grad_spikes.shape[0]
    if grad_spikes.stride() != _step_strides(x):
        grad_spikes = empty_steps(x, steps, grad_spikes.dtype).copy_(grad_spikes)
    grad_x = empty_steps(x, x.shape[0])
    grad_decay = torch.zeros(n if need_decay_grad else 1, dtype=torch.float32, device=x.device)
    if not n:
        return grad_x, grad_decay.sum()
    bn_ptr, channels, channel_stride = _batch_norm_args(x, batch_norm, decay)
    options = dict(v_threshold=v_threshold, alpha=SURROGATE_ALPHA, NEED_DECAY_GRAD=need_decay_grad,
                   HAS_BN=batch_norm is not None, BLOCK=BLOCK)
    repeated = x.shape[0] != steps
    if repeated or recomputes_membrane(steps, x.element_size()):
        _lif_backward_recompute_kernel[_grid(n)](grad_spikes, x, decay.contiguous(), bn_ptr, grad_x, grad_decay, n,
                                                 channels, channel_stride, steps, REPEATED_INPUT=repeated,
                                                 **options)
    else:
        h_scratch = empty_steps(x, steps, torch.float32)
        _lif_backward_kernel[_grid(n)](grad_spikes, x, decay.contiguous(), bn_ptr, h_scratch, grad_x, grad_decay,
                                       n, channels, channel_stride, steps, **options)
    return grad_x, grad_decay.sum()
