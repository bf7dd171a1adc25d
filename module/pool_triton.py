"""Triton kernels of :mod:`module.pool`: 2-D max-pooling that records the argmax as its offset in the window.

The forward scans each window in row-major order and keeps the first maximum (a NaN wins and a later NaN replaces
it), like ATen's kernels, and writes the output and, per output, the argmax's position in the window (``r * KW +
s``) as one int8.  The backward gathers: each input element sums, in ascending output order and in fp32, the
gradients of the outputs whose window contains it and whose offset points at it, as ATen's CUDA backward does with
int64 input indices.  Both run in the memory order of the tensors they write (NCHW or channels-last) and read any
strides.  They take fp32, bf16 and fp16 tensors (compared and summed in fp32); :mod:`module.pool` runs float64 through
ATen's kernels.  Run with ``TRITON_INTERPRET=1`` to execute them on the CPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .fused_lif import on_tensor_device

__all__ = ["forward", "backward"]

BLOCK = 512


@triton.jit
def _decode(idx, C, H, W, CHANNELS_LAST: tl.constexpr):
    """``(n, c, h, w)`` of linear positions in NCHW or NHWC memory order."""
    if CHANNELS_LAST:
        c = idx % C
        rest = idx // C
        w = rest % W
        rest = rest // W
        h = rest % H
        n = rest // H
    else:
        w = idx % W
        rest = idx // W
        h = rest % H
        rest = rest // H
        c = rest % C
        n = rest // C
    return n, c, h, w


@triton.jit
def _max_pool_forward_kernel(x_ptr, out_ptr, offset_ptr, total, C, H, W, OH, OW, sxn, sxc, sxh, sxw, son, soc, soh,
                             sow, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                             PH: tl.constexpr, PW: tl.constexpr, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    n, c, oh, ow = _decode(idx, C, OH, OW, CHANNELS_LAST)
    h0, w0 = oh * SH - PH, ow * SW - PW
    best = tl.full((BLOCK,), float("-inf"), tl.float32)
    best_offset = ((tl.maximum(h0, 0) - h0) * KW + tl.maximum(w0, 0) - w0).to(tl.int32)  # first in-bounds position
    base = n * sxn + c * sxc
    for r in tl.static_range(KH):
        for s in tl.static_range(KW):
            h, w = h0 + r, w0 + s
            inside = mask & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            value = tl.load(x_ptr + base + h * sxh + w * sxw, mask=inside, other=float("-inf")).to(tl.float32)
            take = inside & ((value > best) | (value != value))
            best = tl.where(take, value, best)
            best_offset = tl.where(take, r * KW + s, best_offset)
    out = n * son + c * soc + oh * soh + ow * sow
    tl.store(out_ptr + out, best.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(offset_ptr + out, best_offset.to(tl.int8), mask=mask)


@triton.jit
def _max_pool_backward_kernel(grad_out_ptr, offset_ptr, grad_x_ptr, total, C, H, W, OH, OW, sgn, sgc, sgh, sgw,
                              son, soc, soh, sow, sxn, sxc, sxh, sxw, KH: tl.constexpr, KW: tl.constexpr,
                              SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
                              CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    n, c, h, w = _decode(idx, C, H, W, CHANNELS_LAST)
    oh_first = (h + PH) // SH - (KH + SH - 1) // SH + 1  # the earliest window that can contain h
    ow_first = (w + PW) // SW - (KW + SW - 1) // SW + 1
    acc = tl.zeros((BLOCK,), tl.float32)
    for i in tl.static_range((KH + SH - 1) // SH):
        oh = oh_first + i
        r = h + PH - oh * SH
        for j in tl.static_range((KW + SW - 1) // SW):
            ow = ow_first + j
            s = w + PW - ow * SW
            covers = mask & (oh >= 0) & (oh < OH) & (r < KH) & (ow >= 0) & (ow < OW) & (s < KW)
            offset = tl.load(offset_ptr + n * son + c * soc + oh * soh + ow * sow, mask=covers, other=-1)
            hit = covers & (offset.to(tl.int32) == r * KW + s)
            grad = tl.load(grad_out_ptr + n * sgn + c * sgc + oh * sgh + ow * sgw, mask=hit, other=0.0)
            acc += grad.to(tl.float32)
    tl.store(grad_x_ptr + n * sxn + c * sxc + h * sxh + w * sxw, acc.to(grad_x_ptr.dtype.element_ty), mask=mask)


def _grid(n: int) -> tuple[int]:
    return (triton.cdiv(n, BLOCK),)


@on_tensor_device
def forward(x: Tensor, out: Tensor, offsets: Tensor, kernel_size, stride, padding) -> None:
    """Fill ``out`` and ``offsets`` (``[N, C, OH, OW]``, same strides, NCHW or channels-last) from ``x``."""
    total = out.numel()
    if total:
        _max_pool_forward_kernel[_grid(total)](
            x, out, offsets, total, x.shape[1], x.shape[2], x.shape[3], out.shape[2], out.shape[3], *x.stride(),
            *out.stride(), KH=kernel_size[0], KW=kernel_size[1], SH=stride[0], SW=stride[1], PH=padding[0],
            PW=padding[1], CHANNELS_LAST=_channels_last(out), BLOCK=BLOCK)


@on_tensor_device
def backward(grad_out: Tensor, offsets: Tensor, grad_x: Tensor, kernel_size, stride, padding) -> None:
    """Fill ``grad_x`` (``[N, C, H, W]``, NCHW or channels-last) from the output gradient and the offsets."""
    total = grad_x.numel()
    if total:
        _max_pool_backward_kernel[_grid(total)](
            grad_out, offsets, grad_x, total, grad_x.shape[1], grad_x.shape[2], grad_x.shape[3], offsets.shape[2],
            offsets.shape[3], *grad_out.stride(), *offsets.stride(), *grad_x.stride(), KH=kernel_size[0],
            KW=kernel_size[1], SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1],
            CHANNELS_LAST=_channels_last(grad_x), BLOCK=BLOCK)


def _channels_last(t: Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
