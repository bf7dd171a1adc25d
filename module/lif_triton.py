"""Triton kernels of :mod:`module.fused_lif`: one program per block of neurons loops over the T time steps.

The membrane stays in fp32 registers; spikes are written in the input dtype (fp32, bf16 or fp16: float64 runs the
PyTorch loop of :mod:`module.fused_lif`, :func:`~module.fused_lif.runs_triton`).  The backward runs the
surrogate-gradient recurrence backwards in time on the membrane recomputed from the saved input: in registers
from step 0 at every step for short sequences (:func:`recomputes_membrane`); up to :data:`HISTORY_STEPS` steps in
a first pass forward in time that keeps every step's ``h`` in registers; beyond that in a first pass that keeps
``h`` in an fp32 scratch buffer.  A repeated input (``[1, ...]`` over T steps: a static image's
encoding) is read once and its gradient written summed over time.  Optionally the LIF input is the batch norm of
the given tensor, applied on the fly (:mod:`module.bn_lif`).  Run with ``TRITON_INTERPRET=1`` to execute them on
the CPU.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch import Tensor

from .fused_lif import (HISTORY_STEPS, SURROGATE_ALPHA, empty_steps, is_time_major, keeps_membrane_in_memory,
                        on_tensor_device, recomputes_membrane, runs_triton)

__all__ = ["forward", "backward", "batch_norm_backward", "fuses_batch_norm_backward", "recomputes_membrane",
           "HISTORY_STEPS"]

BLOCK = 1024
HISTORY_BLOCK = 256  # neurons per program when the membranes are kept in registers: 64 a thread at 32 steps


@triton.jit
def _params_of_channel(bn_ptr, channel, mask, C):
    """``(mean, invstd, weight, bias)`` of ``channel`` from the fp32 ``[4, C]`` table at ``bn_ptr``."""
    mean = tl.load(bn_ptr + channel, mask=mask, other=0.0)
    invstd = tl.load(bn_ptr + C + channel, mask=mask, other=0.0)
    weight = tl.load(bn_ptr + 2 * C + channel, mask=mask, other=0.0)
    bias = tl.load(bn_ptr + 3 * C + channel, mask=mask, other=0.0)
    return mean, invstd, weight, bias


@triton.jit
def _channel_params(bn_ptr, offs, mask, C, S, HAS_BN: tl.constexpr):
    """``(mean, invstd, weight, bias)`` of each neuron's channel for a batch norm in front of the LIF (``bn_ptr``:
    fp32 ``[4, C]``; ``S``: the channel's stride in memory, ``H * W`` in NCHW order, 1 in channels-last); unused
    zeros without one."""
    if HAS_BN:
        mean, invstd, weight, bias = _params_of_channel(bn_ptr, (offs // S) % C, mask, C)
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
def _fill_history(x_ptr, offs, mask, k, N, T: tl.constexpr, T_POW2: tl.constexpr, v_threshold: tl.constexpr, mean,
                  invstd, weight, bias, HAS_BN: tl.constexpr):
    """Every step's membrane ``h`` before the reset, from v = 0, as fp32 registers: ``offs`` (shape ``[1, ...]``)
    broadcast to ``[T_POW2, ...]``.  Broadcasting along the leading axis keeps the layout of the loads, so each
    thread holds every step of its own neurons and, the steps unrolled, picking one (:func:`_history_at`) is a
    register move (a new axis would get Triton's default layout and a shared-memory shuffle at every step)."""
    v = tl.zeros(offs.shape, dtype=tl.float32)
    history = tl.where(_steps_like(v, T_POW2) < 0, v, 0.0)  # zeros, [T_POW2, ...]
    idx = offs
    for t in tl.static_range(T):
        x = _load_input(x_ptr, idx, mask, mean, invstd, weight, bias, HAS_BN)
        h = v + (x - v) * k
        history = tl.where(_steps_like(v, T_POW2) == t, h, history)
        v = tl.where(h >= v_threshold, 0.0, h)
        idx += N
    return history


@triton.jit
def _history_at(history, t, T_POW2: tl.constexpr):
    """The membrane of step ``t`` from :func:`_fill_history` (zero for t = -1), shaped ``[1, ...]``."""
    return tl.sum(tl.where(_steps_like(history, T_POW2) == t, history, 0.0), axis=0, keep_dims=True)


@triton.jit
def _steps_like(v, T_POW2: tl.constexpr):
    """The step numbers ``0 .. T_POW2 - 1`` along the leading axis, broadcastable against ``v`` (2-D or 3-D)."""
    if len(v.shape) == 2:
        steps = tl.arange(0, T_POW2)[:, None]
    else:
        steps = tl.arange(0, T_POW2)[:, None, None]
    return steps


@triton.jit
def _recompute_membrane(x_ptr, offs, mask, k, N, step, v_threshold: tl.constexpr, REPEATED_INPUT: tl.constexpr,
                        mean, invstd, weight, bias, HAS_BN: tl.constexpr):
    """``(h, v, x)`` at time step ``step``, recomputed from v = 0: the membrane before the reset, the one it started
    from and the step's input.  Each address is computed from the step number, not carried through the loop, so
    that the compiler sees it as contiguous and aligned as ``offs`` (a carried one costs a layout conversion)."""
    x = _load_input(x_ptr, offs, mask, mean, invstd, weight, bias, HAS_BN)
    v = tl.zeros(offs.shape, dtype=tl.float32)
    h = v + (x - v) * k
    for s in range(1, step + 1):
        v = tl.where(h >= v_threshold, 0.0, h)
        if not REPEATED_INPUT:
            x = _load_input(x_ptr, offs + tl.cast(s, tl.int64) * N, mask, mean, invstd, weight, bias, HAS_BN)
        h = v + (x - v) * k
    return h, v, x


@triton.jit
def _membrane_at(history, h_ptr, x_ptr, offs, mask, k, N, t, T_POW2: tl.constexpr, v_threshold: tl.constexpr,
                 REPEATED_INPUT: tl.constexpr, mean, invstd, weight, bias, HAS_BN: tl.constexpr,
                 MEMBRANE: tl.constexpr):
    """``(h, v, x, idx)`` of step ``t`` (see :func:`_recompute_membrane`), ``MEMBRANE`` saying where ``h`` comes
    from: ``"registers"`` (the history of :func:`_fill_history`), ``"memory"`` (the fp32 scratch at ``h_ptr``) or
    ``"recompute"`` (from step 0)."""
    idx = offs + tl.cast(t, tl.int64) * N  # int64 before the product: T * N may pass 2**31
    if MEMBRANE == "recompute":
        h, v, x = _recompute_membrane(x_ptr, offs, mask, k, N, t, v_threshold, REPEATED_INPUT, mean, invstd, weight,
                                      bias, HAS_BN)
    else:
        x = _load_input(x_ptr, idx, mask, mean, invstd, weight, bias, HAS_BN)
        if MEMBRANE == "registers":
            h = _history_at(history, t, T_POW2)
            h_prev = _history_at(history, t - 1, T_POW2)
        else:
            h = tl.load(h_ptr + idx, mask=mask, other=0.0)
            h_prev = tl.load(h_ptr + idx - N, mask=mask & (t > 0), other=0.0)
        v = tl.where(h_prev >= v_threshold, 0.0, h_prev)
    return h, v, x, idx


@triton.jit
def _backward_step(t, grad_v, grad_x_sum, grad_decay, grad_spike_ptr, x_ptr, history, h_ptr, grad_x_ptr, offs, mask,
                   k, N, T_POW2: tl.constexpr, v_threshold: tl.constexpr, alpha: tl.constexpr,
                   NEED_DECAY_GRAD: tl.constexpr, REPEATED_INPUT: tl.constexpr, mean, invstd, weight, bias,
                   HAS_BN: tl.constexpr, BN_GRAD: tl.constexpr, mean_dy, proj_scale, grad_scale,
                   MEMBRANE: tl.constexpr):
    """Step ``t`` of :func:`_lif_backward_kernel`: writes (or sums) the input gradient of step ``t``; returns the
    gradient flowing to step ``t - 1``'s ``v`` and the updated sums ``(grad_v, grad_x_sum, grad_decay)``."""
    h, v, x, idx = _membrane_at(history, h_ptr, x_ptr, offs, mask, k, N, t, T_POW2, v_threshold, REPEATED_INPUT,
                                mean, invstd, weight, bias, HAS_BN, MEMBRANE)
    grad_s = tl.load(grad_spike_ptr + idx, mask=mask, other=0.0).to(tl.float32)
    grad_h = _grad_membrane(h, grad_s, grad_v, v_threshold, alpha)
    if BN_GRAD:  # the LIF input's gradient, rounded as the unfused pair writes it, through the norm
        grad_y = (grad_h * k).to(grad_x_ptr.dtype.element_ty).to(tl.float32)
        x_raw = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        grad_in = (grad_y - mean_dy - (x_raw - mean) * proj_scale) * grad_scale
        tl.store(grad_x_ptr + idx, grad_in.to(grad_x_ptr.dtype.element_ty), mask=mask)
    elif REPEATED_INPUT:
        grad_x_sum += grad_h * k
    else:
        tl.store(grad_x_ptr + idx, (grad_h * k).to(grad_x_ptr.dtype.element_ty), mask=mask)
    if NEED_DECAY_GRAD:
        grad_decay += grad_h * (x - v)
    return grad_h * (1.0 - k), grad_x_sum, grad_decay


@triton.jit
def _lif_backward_kernel(grad_spike_ptr, x_ptr, decay_ptr, bn_ptr, bn_grad_ptr, h_ptr, grad_x_ptr, grad_decay_ptr,
                         N, C, S, T: tl.constexpr, T_POW2: tl.constexpr, v_threshold: tl.constexpr,
                         alpha: tl.constexpr, NEED_DECAY_GRAD: tl.constexpr, REPEATED_INPUT: tl.constexpr,
                         HAS_BN: tl.constexpr, BN_GRAD: tl.constexpr, MEMBRANE: tl.constexpr, BLOCK: tl.constexpr):
    """The backward, backwards in time, each step's membrane from :func:`_membrane_at`: recomputed in registers
    from step 0 (short sequences), from a register history filled by a forward pass (up to
    :data:`HISTORY_STEPS`), or from an fp32 scratch at ``h_ptr`` written by a forward pass.  A repeated input
    (recomputed only) is read once and its gradient summed over time.  With ``BN_GRAD`` the gradient written is
    the batch norm's input gradient, from the per-channel ``[3, C]`` table at ``bn_grad_ptr`` (mean of the output
    gradient, projection scale, gradient scale; the terms of ATen's ``batch_norm_backward_elemt``)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)[None, :]  # [1, BLOCK]: see _fill_history
    mask = offs < N
    k = tl.load(decay_ptr).to(tl.float32)
    mean, invstd, weight, bias = _channel_params(bn_ptr, offs, mask, C, S, HAS_BN)
    mean_dy, proj_scale, grad_scale = mean, mean, mean  # unused without BN_GRAD
    if BN_GRAD:
        channel = (offs // S) % C
        mean_dy = tl.load(bn_grad_ptr + channel, mask=mask, other=0.0)
        proj_scale = tl.load(bn_grad_ptr + C + channel, mask=mask, other=0.0)
        grad_scale = tl.load(bn_grad_ptr + 2 * C + channel, mask=mask, other=0.0)
    history = mean  # unused unless the membranes are kept in registers
    if MEMBRANE == "registers":
        history = _fill_history(x_ptr, offs, mask, k, N, T, T_POW2, v_threshold, mean, invstd, weight, bias, HAS_BN)
    if MEMBRANE == "memory":
        _run_forward_in_time(x_ptr, h_ptr, offs, mask, k, N, T, v_threshold, True, False, mean, invstd, weight, bias,
                             HAS_BN)
        # the backward's loads may take another thread layout than these stores (wider vectors of a half-precision
        # gradient): another thread of this program then reads what one wrote, visible only past a barrier
        tl.debug_barrier()
    grad_v = tl.zeros([1, BLOCK], dtype=tl.float32)
    grad_x_sum = tl.zeros([1, BLOCK], dtype=tl.float32)
    grad_decay = tl.zeros([1, BLOCK], dtype=tl.float32)
    # unrolled with the register history: each step's membrane is then a fixed register of it
    for i in tl.range(T, loop_unroll_factor=T if MEMBRANE == "registers" else 1):
        grad_v, grad_x_sum, grad_decay = _backward_step(
            T - 1 - i, grad_v, grad_x_sum, grad_decay, grad_spike_ptr, x_ptr, history, h_ptr, grad_x_ptr, offs,
            mask, k, N, T_POW2, v_threshold, alpha, NEED_DECAY_GRAD, REPEATED_INPUT, mean, invstd, weight, bias,
            HAS_BN, BN_GRAD, mean_dy, proj_scale, grad_scale, MEMBRANE)
    if REPEATED_INPUT:
        tl.store(grad_x_ptr + offs, grad_x_sum.to(grad_x_ptr.dtype.element_ty), mask=mask)
    if NEED_DECAY_GRAD:
        tl.store(grad_decay_ptr + offs, grad_decay, mask=mask)


@triton.jit
def _bn_lif_grad_sums_kernel(grad_spike_ptr, x_ptr, decay_ptr, bn_ptr, partial_ptr, N, C, J, HW, sB, sS, sC,
                             T: tl.constexpr, T_POW2: tl.constexpr, v_threshold: tl.constexpr, alpha: tl.constexpr,
                             MEMBRANE: tl.constexpr, BJ: tl.constexpr, BC: tl.constexpr):
    """Per-channel partial sums of the batch norm's output gradient ``dy`` (the LIF backward, its membrane from a
    register history or recomputed: ``MEMBRANE``) and of ``dy * (x - mean)`` over a ``[BJ, BC]`` tile of (batch x
    position, channel), all time steps: the reduction of ATen's ``batch_norm_backward_reduce``, written to
    ``partial_ptr`` (fp32 ``[2, J blocks, C]``) per tile."""
    pid_j, pid_c = tl.program_id(0), tl.program_id(1)
    j = pid_j.to(tl.int64) * BJ + tl.arange(0, BJ)[None, :, None]  # [1, BJ, BC] tiles: see _fill_history
    channel = pid_c * BC + tl.arange(0, BC)[None, None, :]
    mask = (j < J) & (channel < C)
    offs = (j // HW) * sB + (j % HW) * sS + channel * sC
    k = tl.load(decay_ptr).to(tl.float32)
    mean, invstd, weight, bias = _params_of_channel(bn_ptr, channel, channel < C, C)
    history = mean  # unused unless the membranes are kept in registers
    if MEMBRANE == "registers":
        history = _fill_history(x_ptr, offs, mask, k, N, T, T_POW2, v_threshold, mean, invstd, weight, bias, True)
    grad_v = tl.zeros([1, BJ, BC], dtype=tl.float32)
    sum_dy = tl.zeros([1, BJ, BC], dtype=tl.float32)
    sum_dy_xmu = tl.zeros([1, BJ, BC], dtype=tl.float32)
    for i in tl.static_range(T):  # at most HISTORY_STEPS: each step's membrane a fixed register of the history
        h, v, x, idx = _membrane_at(history, decay_ptr, x_ptr, offs, mask, k, N, T - 1 - i, T_POW2, v_threshold,
                                    False, mean, invstd, weight, bias, True, MEMBRANE)
        grad_s = tl.load(grad_spike_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        grad_h = _grad_membrane(h, grad_s, grad_v, v_threshold, alpha)
        grad_y = tl.where(mask, (grad_h * k).to(x_ptr.dtype.element_ty).to(tl.float32), 0.0)
        x_raw = tl.load(x_ptr + idx, mask=mask, other=0.0).to(tl.float32)
        sum_dy += grad_y
        sum_dy_xmu += grad_y * (x_raw - mean)
        grad_v = grad_h * (1.0 - k)
    column = pid_j * C + pid_c * BC + tl.arange(0, BC)
    column_mask = pid_c * BC + tl.arange(0, BC) < C
    tl.store(partial_ptr + column, tl.sum(sum_dy, axis=1).reshape(BC), mask=column_mask)
    tl.store(partial_ptr + tl.num_programs(0) * C + column, tl.sum(sum_dy_xmu, axis=1).reshape(BC), mask=column_mask)


@triton.jit
def _bn_grad_finalize_kernel(sums_ptr, bn_ptr, grad_table_ptr, grad_weight_ptr, grad_bias_ptr, C, inv_count,
                             BLOCK_C: tl.constexpr):
    """From the per-channel sums ``[2, C]`` of dy and ``dy * (x - mean)``, writes the per-channel terms of the input
    gradient (``[3, C]``: mean of dy, projection scale, gradient scale, as in ATen's ``batch_norm_backward_elemt``)
    and the weight and bias gradients (ATen's ``batch_norm_backward_reduce``)."""
    channel = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = channel < C
    sum_dy = tl.load(sums_ptr + channel, mask=mask, other=0.0)
    sum_dy_xmu = tl.load(sums_ptr + C + channel, mask=mask, other=0.0)
    invstd = tl.load(bn_ptr + C + channel, mask=mask, other=0.0)
    weight = tl.load(bn_ptr + 2 * C + channel, mask=mask, other=0.0)
    tl.store(grad_table_ptr + channel, sum_dy * inv_count, mask=mask)
    tl.store(grad_table_ptr + C + channel, sum_dy_xmu * inv_count * invstd * invstd, mask=mask)
    tl.store(grad_table_ptr + 2 * C + channel, invstd * weight, mask=mask)
    tl.store(grad_weight_ptr + channel, sum_dy_xmu * invstd, mask=mask)
    tl.store(grad_bias_ptr + channel, sum_dy, mask=mask)


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


@on_tensor_device
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


def _membrane_source(steps: int, itemsize: int, repeated: bool = False) -> str:
    """Where the backward kernels get each step's membrane (``MEMBRANE``): recomputed for short sequences and for
    a repeated input, a register history up to :data:`HISTORY_STEPS`, else an fp32 scratch in memory."""
    if repeated or recomputes_membrane(steps, itemsize):
        return "recompute"
    return "memory" if keeps_membrane_in_memory(steps, itemsize) else "registers"


def _grad_in_layout_of(grad_spikes: Tensor, x: Tensor) -> Tensor:
    """The spike gradient laid out as :func:`_time_major` ``x`` (the kernels index both alike)."""
    if grad_spikes.stride() == _step_strides(x):
        return grad_spikes
    return empty_steps(x, grad_spikes.shape[0], grad_spikes.dtype).copy_(grad_spikes)


@on_tensor_device
def backward(grad_spikes: Tensor, x: Tensor, decay: Tensor, v_threshold: float, need_decay_grad: bool,
             batch_norm: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(grad_x, grad_decay)`` of :func:`forward`, with spikingjelly's sigmoid surrogate (alpha 4); for a
    repeated ``[1, ...]`` input, ``grad_x`` is summed over the time steps of ``grad_spikes``.  With
    ``batch_norm``, ``grad_x`` is the gradient w.r.t. the LIF input (the batch norm's output)."""
    x = _time_major(x)
    n, steps = x[0].numel(), grad_spikes.shape[0]
    grad_spikes = _grad_in_layout_of(grad_spikes, x)
    grad_x = empty_steps(x, x.shape[0])
    grad_decay = torch.zeros(n if need_decay_grad else 1, dtype=torch.float32, device=x.device)
    if not n:
        return grad_x, grad_decay.sum()
    bn_ptr, channels, channel_stride = _batch_norm_args(x, batch_norm, decay)
    repeated = x.shape[0] != steps
    membrane = _membrane_source(steps, x.element_size(), repeated)
    h_scratch = empty_steps(x, steps, torch.float32) if membrane == "memory" else decay
    block = HISTORY_BLOCK if membrane == "registers" else BLOCK
    _lif_backward_kernel[(triton.cdiv(n, block),)](
        grad_spikes, x, decay.contiguous(), bn_ptr, bn_ptr, h_scratch, grad_x, grad_decay, n, channels,
        channel_stride, steps, T_POW2=triton.next_power_of_2(steps), v_threshold=v_threshold, alpha=SURROGATE_ALPHA,
        NEED_DECAY_GRAD=need_decay_grad, REPEATED_INPUT=repeated, HAS_BN=batch_norm is not None, BN_GRAD=False,
        MEMBRANE=membrane, BLOCK=block)
    return grad_x, grad_decay.sum()


def _positions(x: Tensor) -> tuple[int, int] | None:
    """``(positions per channel and sample, stride between positions)`` when the spatial axes of ``[T, B, C,
    *spatial]`` ``x`` merge into one strided axis (NCHW and channels-last do), else None."""
    spatial = range(3, x.dim())
    if any(x.stride(i) != x.stride(i + 1) * x.shape[i + 1] for i in spatial[:-1]):
        return None
    return math.prod(x.shape[3:]), x.stride(-1) if x.dim() > 3 else 1


def fuses_batch_norm_backward(x: Tensor, steps: int) -> bool:
    """Whether :func:`batch_norm_backward` applies: the Triton kernels run on ``x`` (:func:`runs_triton`), a
    time-major ``[T, B, C, *spatial]`` input with mergeable spatial axes, and a sequence short enough for the
    backward to keep the membrane in registers."""
    return (runs_triton(x) and x.dim() >= 4 and is_time_major(x) and _positions(x) is not None
            and not keeps_membrane_in_memory(steps, x.element_size()))


@on_tensor_device
def batch_norm_backward(grad_spikes: Tensor, x: Tensor, decay: Tensor, v_threshold: float, need_decay_grad: bool,
                        batch_norm: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(grad_x, grad_weight, grad_bias, grad_decay)`` of ``lif(batch_norm(x))`` with batch statistics, in two
    passes over ``x`` and the spike gradient instead of four: the first runs the LIF backward (the membrane in
    registers) and reduces the norm's output gradient per channel (ATen's ``batch_norm_backward_reduce``), the
    second runs it again and writes the input gradient (``batch_norm_backward_elemt``).  The output gradient is
    rounded to ``x``'s dtype in both, as the unfused pair stores it.  ``batch_norm``: fp32 ``[4, C]`` (mean, invstd,
    weight, bias)."""
    steps, channels = x.shape[0], x.shape[2]
    grad_spikes = _grad_in_layout_of(grad_spikes, x)
    positions, position_stride = _positions(x)
    n, samples = x[0].numel(), x.shape[1]
    per_sample = samples * positions
    membrane = _membrane_source(steps, x.element_size())
    tile = HISTORY_BLOCK if membrane == "registers" else BLOCK  # neurons per program, as in the LIF backward
    tile_j, tile_c = (tile // 64, 64) if x.stride(2) == 1 else (tile // 4, 4)
    grid = (triton.cdiv(per_sample, tile_j), triton.cdiv(channels, tile_c))
    partials = torch.empty(2, grid[0], channels, dtype=torch.float32, device=x.device)
    table, decay = batch_norm.contiguous(), decay.contiguous()
    options = dict(T_POW2=triton.next_power_of_2(steps), v_threshold=v_threshold, alpha=SURROGATE_ALPHA,
                   MEMBRANE=membrane)
    _bn_lif_grad_sums_kernel[grid](grad_spikes, x, decay, table, partials, n, channels, per_sample, positions,
                                   x.stride(1), position_stride, x.stride(2), steps, BJ=tile_j, BC=tile_c, **options)
    grad_table = torch.empty(3, channels, dtype=torch.float32, device=x.device)
    grad_weight, grad_bias = torch.empty_like(grad_table[0]), torch.empty_like(grad_table[0])
    # ATen's reduction over the tiles: parallel and deterministic (one program walking 16k tiles in order, as the
    # DVS stem's first stage has, waited on each load in turn)
    sums = partials.sum(dim=1)
    _bn_grad_finalize_kernel[(triton.cdiv(channels, 128),)](sums, table, grad_table, grad_weight, grad_bias,
                                                            channels, 1.0 / (steps * per_sample), BLOCK_C=128)
    grad_x = empty_steps(x, steps)
    grad_decay = torch.zeros(n if need_decay_grad else 1, dtype=torch.float32, device=x.device)
    _lif_backward_kernel[(triton.cdiv(n, tile),)](
        grad_spikes, x, decay, table, grad_table, decay, grad_x, grad_decay, n, channels, x.stride(2), steps,
        NEED_DECAY_GRAD=need_decay_grad, REPEATED_INPUT=False, HAS_BN=True, BN_GRAD=True, BLOCK=tile, **options)
    return grad_x, grad_weight, grad_bias, grad_decay.sum()
