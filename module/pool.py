"""Max-pooling that keeps only the argmax, one byte per output, for the backward; the stem's pools and the DVS
pooling.

``max_pool2d``'s backward routes each output gradient to the input position its argmax names; it needs the input
only for its shape.  PyTorch's autograd still keeps the whole input alive until the backward, and in SDT the inputs
of the stem's max-pools are the largest tensors of the model (the first stage's spikes at full resolution: 1.5 GiB
in fp32 for SDT-8-512 on ImageNet at batch 32, T=4), with an int64 index per output besides.  :func:`max_pool2d`
keeps, per output, the argmax's position in its window (``r * kernel_w + s``, int8) and the input's shape.  On
CUDA the Triton kernels of :mod:`module.pool_triton` write and read these offsets directly (7 bytes of index
traffic less per output and direction than int64 indices, and a conversion pass less than narrowed ones), for
fp32, bf16 and fp16 input (:func:`~module.fused_lif.runs_triton`: they compare and sum in fp32; float64 runs ATen's
kernels, through offsets converted from their indices); on the CPU, ATen's kernels run and keep their int64
indices, which need no conversion pass.  The values and the gradients
are ATen's, bit for bit: the same argmax (the first maximum of the window in row-major order; NaN wins) and, in the
backward, the same sums in the same order.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

from .fused_lif import runs_triton
from .library import define_op, register_autograd, register_fake

__all__ = ["max_pool2d", "MaxPool2d", "SpatialMaxPool"]

_MAX_WINDOW = 127  # window positions an int8 offset can name


def _channels_last(x: Tensor) -> bool:
    """Whether the pool's outputs (and its input gradient) are laid out channels-last: iff a 4-D ``x`` is."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def _empty(shape, like: Tensor, channels_last: bool, dtype: torch.dtype | None = None) -> Tensor:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format)


def _output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _window_starts(out_h: int, out_w: int, stride, padding, device) -> tuple[Tensor, Tensor]:
    """First input row of each output row (``[OH, 1]``) and first input column of each output column (``[OW]``)."""
    rows = torch.arange(out_h, device=device).unsqueeze(1) * stride[0] - padding[0]
    return rows, torch.arange(out_w, device=device) * stride[1] - padding[1]


def _argmax_dtype(x: Tensor) -> torch.dtype:
    """How the argmax is kept: on the CPU as ATen's int64 flat indices (no conversion passes: CPU time matters more
    there than memory), elsewhere (CUDA, and the meta device that models it) and wherever the Triton kernels run as
    int8 window offsets."""
    return torch.int64 if x.device.type == "cpu" and not runs_triton(x) else torch.int8


def _aten_forward(x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int],
                  argmax_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Output and argmax (int64 indices, or int8 window offsets converted from them) through ATen's kernel."""
    out, indices = torch.ops.aten.max_pool2d_with_indices(x, kernel_size, stride, padding, [1, 1], False)
    if argmax_dtype != torch.int64:
        rows, cols = _window_starts(out.shape[2], out.shape[3], stride, padding, x.device)
        indices = ((indices // x.shape[3] - rows) * kernel_size[1] + indices % x.shape[3] - cols).to(argmax_dtype)
    memory_format = torch.channels_last if _channels_last(x) else torch.contiguous_format
    return out.contiguous(memory_format=memory_format), indices.contiguous(memory_format=memory_format)


def _empty_outputs(x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int]) -> tuple[Tensor, Tensor]:
    """Uninitialised output and argmax, laid out as every implementation writes them."""
    shape = (*x.shape[:2], *(_output_size(x.shape[i + 2], kernel_size[i], stride[i], padding[i]) for i in (0, 1)))
    channels_last = _channels_last(x)
    return _empty(shape, x, channels_last), _empty(shape, x, channels_last, _argmax_dtype(x))


@define_op("max_pool2d")
def _max_pool_forward(x: Tensor, kernel_size: list[int], stride: list[int], padding: list[int]) -> tuple[Tensor,
                                                                                                       Tensor]:
    if not runs_triton(x):
        return _aten_forward(x, kernel_size, stride, padding, _argmax_dtype(x))
    from . import pool_triton

    out, offsets = _empty_outputs(x, kernel_size, stride, padding)
    pool_triton.forward(x, out, offsets, kernel_size, stride, padding)
    return out, offsets


register_fake(_max_pool_forward)(_empty_outputs)


def _aten_backward(grad_out: Tensor, offsets: Tensor, input_size: list[int], kernel_size: list[int],
                   stride: list[int], padding: list[int], channels_last: bool) -> Tensor:
    """The input gradient through ATen's kernel, from int64 indices or int8 offsets converted back to them."""
    indices = offsets
    if offsets.dtype != torch.int64:
        rows, cols = _window_starts(offsets.shape[2], offsets.shape[3], stride, padding, offsets.device)
        offsets = offsets.long()
        indices = (rows + offsets // kernel_size[1]) * input_size[3] + cols + offsets % kernel_size[1]
    shape_only = _empty(input_size, grad_out, channels_last)
    return torch.ops.aten.max_pool2d_with_indices_backward(grad_out, shape_only, kernel_size, stride, padding,
                                                           [1, 1], False, indices)


@define_op("max_pool2d_backward")
def _max_pool_backward(grad_out: Tensor, offsets: Tensor, input_size: list[int], kernel_size: list[int],
                       stride: list[int], padding: list[int], channels_last: bool) -> Tensor:
    if offsets.dtype != torch.int8 or not runs_triton(grad_out):
        return _aten_backward(grad_out, offsets, input_size, kernel_size, stride, padding, channels_last)
    from . import pool_triton

    grad_x = _empty(input_size, grad_out, channels_last)
    pool_triton.backward(grad_out, offsets, grad_x, kernel_size, stride, padding)
    return grad_x


@register_fake(_max_pool_backward)
def _(grad_out: Tensor, offsets: Tensor, input_size: list[int], kernel_size: list[int], stride: list[int],
      padding: list[int], channels_last: bool) -> Tensor:
    return _empty(input_size, grad_out, channels_last)


def _setup_context(ctx, inputs, output) -> None:
    x, kernel_size, stride, padding = inputs
    ctx.save_for_backward(output[1])
    ctx.input_size, ctx.channels_last = list(x.shape), _channels_last(x)
    ctx.options = kernel_size, stride, padding
    ctx.set_materialize_grads(False)  # no zeros for the offsets' gradient


def _backward(ctx, grad_out: Tensor | None, grad_offsets: None):
    if grad_out is None:
        return None, None, None, None
    grad_x = _max_pool_backward(grad_out, ctx.saved_tensors[0], ctx.input_size, *ctx.options, ctx.channels_last)
    return grad_x, None, None, None


register_autograd(_max_pool_forward, _backward, setup_context=_setup_context)


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """``torch.nn.functional.max_pool2d`` (same values and gradients) that keeps one byte of argmax per output for
    the backward instead of ``x`` and int64 indices; with ``dilation`` or ``ceil_mode``, a window of more than 127
    positions, or an empty channel or spatial axis (ATen's error), it is ``F.max_pool2d`` itself."""
    kernel_size = _pair(kernel_size)
    stride, padding, dilation = _pair(kernel_size if stride is None else stride), _pair(padding), _pair(dilation)
    plain = dilation != (1, 1) or ceil_mode or kernel_size[0] * kernel_size[1] > _MAX_WINDOW or 0 in x.shape[1:]
    if plain or not (torch.is_grad_enabled() and x.requires_grad):
        return F.max_pool2d(x, kernel_size, stride, padding, dilation, ceil_mode)
    return _max_pool_forward(x, list(kernel_size), list(stride), list(padding))[0]


class MaxPool2d(nn.MaxPool2d):
    """``nn.MaxPool2d`` computed by :func:`max_pool2d` (``return_indices`` is not supported)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.return_indices:
            raise ValueError("MaxPool2d(return_indices=True) is not supported; use torch.nn.MaxPool2d")

    def forward(self, x: Tensor) -> Tensor:
        return max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


class SpatialMaxPool(nn.MaxPool3d):
    """The reference's ``MaxPool3d(kernel_size=(1, 3, 3), stride=1, padding=(0, 1, 1))``, computed in 2-D.

    On a 5-D tensor MaxPool3d treats axis 0 as batch and axis 1 as channel, so this is a 3x3 max over the last two
    axes, keeping the shape: on ``[T, B, C, H, W]`` a spatial max, on ``[T, B, heads, N, d]`` a max over (token,
    channel within the head).  A 2-D max-pool over the first two axes flattened takes the same windows, so the
    values, the argmax (the first maximum of the window in ties) and the gradients are the same (through
    :func:`max_pool2d`, which does not keep the input for the backward).  On CUDA the 2-D
    backward gathers each input's gradient, where the 3-D one scatters with atomic adds (contended here: the
    windows overlap and spikes tie) and is therefore nondeterministic (it raises under
    ``torch.use_deterministic_algorithms``).
    """

    def __init__(self):
        super().__init__(kernel_size=(1, 3, 3), stride=(1, 1, 1), padding=(0, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5:
            raise ValueError(f"SpatialMaxPool expects a 5-D tensor; got shape {tuple(x.shape)}")
        return max_pool2d(x.flatten(0, 1), kernel_size=3, stride=1, padding=1).unflatten(0, x.shape[:2])
