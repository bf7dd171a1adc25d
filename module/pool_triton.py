"""Triton kernels of :mod:`module.pool`: 2-D max-pooling that records the argmax as its offset in the window.

The forward scans each window in row-major order and keeps the first maximum (a NaN wins and a later NaN replaces
it), like ATen's kernels, and writes the output and, per output, the argmax's position in the window (``r * KW +
s``) as one int8.  The backward gathers: each input element sums, in ascending output order and in fp32, the
gradients of the outputs whose window contains it and whose offset points at it, as ATen's CUDA backward does with
int64 input indices.  Each program takes a tile of neighbouring rows and columns (and channels) of the tensor it
writes, contiguous along the axis memory runs along (channels in channels-last, columns in NCHW), so that the
overlapping windows' reads come mostly from the cache rather than once more from L2 per window position
(:func:`tile_shape`); they read any strides.  They take fp32, bf16 and fp16 tensors (compared and summed in
fp32); :mod:`module.pool` runs float64 through ATen's kernels.  Run with ``TRITON_INTERPRET=1`` to execute them on
the CPU.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .fused_lif import on_tensor_device

__all__ = ["forward", "backward"]

BLOCK = 512  # elements per program, about


@triton.jit
def _tile(C, OH, OW, TH: tl.constexpr, TW: tl.constexpr, BC: tl.constexpr):
    """``(sample, rows [TH, 1, 1], columns [1, TW, 1], channels [1, 1, BC], mask)`` of this program's tile of an
    ``[N, C, OH, OW]`` tensor.  The one grid axis walks the ``TH x TW`` spatial tiles of a channel block, then the
    channel blocks, then the samples (one axis: CUDA allows 2**31 - 1 programs there, 65535 on the others).  A tile
    covers neighbouring rows and columns so that the windows' overlapping reads hit the cache."""
    tiles_w = tl.cdiv(OW, TW)
    tiles_h = tl.cdiv(OH, TH)
    tile = tl.program_id(0)
    rows = (tile // tiles_w) % tiles_h * TH + tl.arange(0, TH)[:, None, None]
    cols = tile % tiles_w * TW + tl.arange(0, TW)[None, :, None]
    block = tile // (tiles_w * tiles_h)
    blocks = tl.cdiv(C, BC)
    channels = block % blocks * BC + tl.arange(0, BC)[None, None, :]
    return block // blocks, rows, cols, channels, (rows < OH) & (cols < OW) & (channels < C)


@triton.jit
def _address(ptr, sample, channels, rows, cols, sn, sc, sh, sw, WIDE: tl.constexpr):
    """``ptr`` at ``[sample, channels, rows, cols]`` with strides ``(sn, sc, sh, sw)``: the sample's offset in
    int64, the offsets within a sample in int32 unless ``WIDE`` (a sample spanning 2**31 elements or more)."""
    if WIDE:
        channels, rows, cols = channels.to(tl.int64), rows.to(tl.int64), cols.to(tl.int64)
    return ptr + sample.to(tl.int64) * sn + (channels * sc + rows * sh + cols * sw)


@triton.jit
def _max_pool_forward_kernel(x_ptr, out_ptr, offset_ptr, C, H, W, OH, OW, sxn, sxc, sxh, sxw, son, soc, soh, sow,
                             KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr, SW: tl.constexpr,
                             PH: tl.constexpr, PW: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
                             BC: tl.constexpr, WIDE: tl.constexpr):
    n, oh, ow, c, mask = _tile(C, OH, OW, TH, TW, BC)
    h0, w0 = oh * SH - PH, ow * SW - PW
    best = tl.full((TH, TW, BC), float("-inf"), tl.float32)
    best_offset = ((tl.maximum(h0, 0) - h0) * KW + tl.maximum(w0, 0) - w0) + tl.zeros((TH, TW, BC), tl.int32)
    for r in tl.static_range(KH):
        for s in tl.static_range(KW):
            h, w = h0 + r, w0 + s
            inside = mask & (h >= 0) & (h < H) & (w >= 0) & (w < W)
            value = tl.load(_address(x_ptr, n, c, h, w, sxn, sxc, sxh, sxw, WIDE), mask=inside,
                            other=float("-inf")).to(tl.float32)
            take = inside & ((value > best) | (value != value))
            best = tl.where(take, value, best)
            best_offset = tl.where(take, r * KW + s, best_offset)
    tl.store(_address(out_ptr, n, c, oh, ow, son, soc, soh, sow, WIDE), best.to(out_ptr.dtype.element_ty),
             mask=mask)
    tl.store(_address(offset_ptr, n, c, oh, ow, son, soc, soh, sow, WIDE), best_offset.to(tl.int8), mask=mask)


@triton.jit
def _max_pool_backward_kernel(grad_out_ptr, offset_ptr, grad_x_ptr, C, H, W, OH, OW, sgn, sgc, sgh, sgw, son, soc,
                              soh, sow, sxn, sxc, sxh, sxw, KH: tl.constexpr, KW: tl.constexpr, SH: tl.constexpr,
                              SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr, TH: tl.constexpr,
                              TW: tl.constexpr, BC: tl.constexpr, WIDE: tl.constexpr):
    n, h, w, c, mask = _tile(C, H, W, TH, TW, BC)
    oh_first = (h + PH) // SH - (KH + SH - 1) // SH + 1  # the earliest window that can contain h
    ow_first = (w + PW) // SW - (KW + SW - 1) // SW + 1
    acc = tl.zeros((TH, TW, BC), tl.float32)
    for i in tl.static_range((KH + SH - 1) // SH):
        oh = oh_first + i
        r = h + PH - oh * SH
        for j in tl.static_range((KW + SW - 1) // SW):
            ow = ow_first + j
            s = w + PW - ow * SW
            covers = mask & (oh >= 0) & (oh < OH) & (r < KH) & (ow >= 0) & (ow < OW) & (s < KW)
            offset = tl.load(_address(offset_ptr, n, c, oh, ow, son, soc, soh, sow, WIDE), mask=covers, other=-1)
            # every covering gradient is read (one vector load in channels-last, not one load per element under
            # the argmax test) and selected: the cache holds it for the tile's other inputs anyway
            grad = tl.load(_address(grad_out_ptr, n, c, oh, ow, sgn, sgc, sgh, sgw, WIDE), mask=covers, other=0.0)
            acc += tl.where(offset.to(tl.int32) == r * KW + s, grad.to(tl.float32), 0.0)
    tl.store(_address(grad_x_ptr, n, c, h, w, sxn, sxc, sxh, sxw, WIDE), acc.to(grad_x_ptr.dtype.element_ty),
             mask=mask)


def tile_shape(rows: int, cols: int, channels: int, channels_last: bool) -> tuple[int, int, int]:
    """``(TH, TW, BC)``: about :data:`BLOCK` elements per program, contiguous along the axis memory runs along
    (channels in channels-last, 16 of them: 64 bytes in fp32; columns otherwise) and spread over neighbouring rows
    and columns, so that a 3x3 window's nine reads of a tile come mostly from the cache."""
    if channels_last:
        bc = min(triton.next_power_of_2(channels), 16)
        tw = min(triton.next_power_of_2(cols), 8)
        th = min(triton.next_power_of_2(rows), max(1, BLOCK // (bc * tw)))
        return th, tw, bc
    tw = min(triton.next_power_of_2(cols), 32)
    th = min(triton.next_power_of_2(rows), max(1, BLOCK // tw))
    return th, tw, min(triton.next_power_of_2(channels), max(1, BLOCK // (th * tw)))


def _spans_int32(*tensors: Tensor) -> bool:
    """Whether every offset within a sample of each ``[N, C, H, W]`` tensor fits in int32."""
    return all(sum((size - 1) * abs(stride) for size, stride in zip(t.shape[1:], t.stride()[1:])) < 2**31
               for t in tensors)


def _launch(kernel, tensors: tuple[Tensor, ...], strided: tuple[Tensor, ...], tiled: Tensor, sizes: tuple[int, ...],
            kernel_size, stride, padding) -> None:
    """Launch ``kernel`` on ``tensors`` with the strides of ``strided``, one program per tile (:func:`tile_shape`)
    of ``tiled``'s positions and channels."""
    if tiled.numel() == 0:
        return
    rows, cols = tiled.shape[2:]
    th, tw, bc = tile_shape(rows, cols, tiled.shape[1], _channels_last(tiled))
    grid = (tiled.shape[0] * triton.cdiv(tiled.shape[1], bc) * triton.cdiv(rows, th) * triton.cdiv(cols, tw),)
    kernel[grid](*tensors, *sizes, *(s for t in strided for s in t.stride()), KH=kernel_size[0], KW=kernel_size[1],
                 SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1], TH=th, TW=tw, BC=bc,
                 WIDE=not _spans_int32(*tensors))


@on_tensor_device
def forward(x: Tensor, out: Tensor, offsets: Tensor, kernel_size, stride, padding) -> None:
    """Fill ``out`` and ``offsets`` (``[N, C, OH, OW]``, same strides, NCHW or channels-last) from ``x``."""
    _launch(_max_pool_forward_kernel, (x, out, offsets), (x, out), out, (x.shape[1], *x.shape[2:], *out.shape[2:]),
            kernel_size, stride, padding)


@on_tensor_device
def backward(grad_out: Tensor, offsets: Tensor, grad_x: Tensor, kernel_size, stride, padding) -> None:
    """Fill ``grad_x`` (``[N, C, H, W]``, NCHW or channels-last) from the output gradient and the offsets."""
    _launch(_max_pool_backward_kernel, (grad_out, offsets, grad_x), (grad_out, offsets, grad_x), grad_x,
            (grad_x.shape[1], *grad_x.shape[2:], *offsets.shape[2:]), kernel_size, stride, padding)


def _channels_last(t: Tensor) -> bool:
    return not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)
