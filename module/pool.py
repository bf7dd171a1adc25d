"""Max-pooling that keeps only the argmax for the backward, not its input; the stem's pools and the DVS pooling.

``max_pool2d``'s backward routes each output gradient to the input position its index names; it reads the input
only for its shape.  PyTorch's autograd still keeps the whole input alive until the backward, and in SDT the inputs
of the stem's max-pools are the largest tensors of the model (the first stage's spikes at full resolution: 1.5 GiB
in fp32 for SDT-8-512 on ImageNet at batch 32, T=4).  :func:`max_pool2d` keeps the indices, narrowed from int64
to the smallest integer type that holds a position in the input plane (int16 up to 181x181, else int32), and the
input's shape, and hands the backward kernel an uninitialised tensor of that shape: the same forward and backward
kernels, so the same values and gradients, bit for bit.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.utils import _pair

__all__ = ["max_pool2d", "MaxPool2d", "SpatialMaxPool"]


def _index_dtype(plane_size: int) -> torch.dtype:
    """The narrowest integer type that holds a flat index into an input plane of ``plane_size`` elements."""
    return torch.int16 if plane_size <= 2 ** 15 else torch.int32


class _MaxPool2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool) -> Tensor:
        out, indices = torch.ops.aten.max_pool2d_with_indices(x, kernel_size, stride, padding, dilation, ceil_mode)
        ctx.save_for_backward(indices.to(_index_dtype(x.shape[-2] * x.shape[-1])))
        ctx.options = kernel_size, stride, padding, dilation, ceil_mode
        channels_last = x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        ctx.input_shape = x.shape
        ctx.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        indices = ctx.saved_tensors[0].long()
        shape_only = grad_out.new_empty(ctx.input_shape).contiguous(memory_format=ctx.memory_format)
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(grad_out, shape_only, *ctx.options, indices)
        return grad_x, None, None, None, None, None


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """``torch.nn.functional.max_pool2d`` (same values and gradients) without keeping ``x`` for the backward."""
    stride = kernel_size if stride is None else stride
    args = (_pair(kernel_size), _pair(stride), _pair(padding), _pair(dilation), ceil_mode)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return torch.ops.aten.max_pool2d_with_indices(x, *args)[0]
    return _MaxPool2d.apply(x, *args)


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
