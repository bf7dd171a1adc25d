"""A BatchNorm followed by a LIF as one op (``fuse_bn_lif``): the LIF normalises its input on the fly.

SDT and STAtten put a BatchNorm right in front of a LIF in q/k/v (conv, BN, LIF), in the MLP (fc1 conv, BN,
fc2 LIF) and in the stem.  Unfused, the BN writes its output, the LIF reads it back, and autograd keeps both the BN
input and the BN output for the backward.  Fused, the forward is one statistics pass and one LIF pass that applies
the norm per element (the LIF kernels of :mod:`module.lif_triton` with their batch-norm prologue); only the BN
input is saved.  The backward recomputes the normalised input inside the LIF backward kernel.  On CUDA, where the
LIF backward keeps the membrane in registers (recomputed for T <= 5 in fp32 and T <= 9 in half precision, a
register history up to T = 32), it makes two passes over the input and the spike gradient: the first reduces the
norm's output gradient per channel, the second writes the input gradient
(:func:`module.lif_triton.batch_norm_backward`); otherwise the LIF backward writes the norm's output gradient and
SyncBatchNorm's two backward kernels run on it.

The maths is the BatchNorm's: batch statistics in training (with the same running-statistics update), running
statistics in eval; the normalised value ``weight * (x - mean) * invstd + bias`` (the order of ATen's CUDA kernel)
is computed in fp32 (float64 for float64 input) and rounded to the activation dtype before the LIF reads it, as the
unfused BN output is.  The unfused BN reduces its statistics in another order and on the CPU folds the norm into
``x * alpha + beta``, so a LIF input can differ from the unfused one by rounding (in fp32 on the CPU about half of
them do, by up to about 2e-6 on outputs of a few units; more in channels-last training, whose statistics the CPU BN
reduces less accurately), which flips a spike only where the membrane is within that rounding of the threshold.

A pair is fused only where nothing needs the BN output or the modules' own calls: the BN is a plain affine
``BatchNorm2d`` and the LIF a :class:`~module.fused_lif.MultiStepLIF`, neither has hooks (the hook dict, firing
rates, energy and trace recorders attach hooks, and get the unfused pair), and no profiler recorder is active.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import instrument
from .fused_lif import MultiStepLIF, compute_dtype, empty_steps, lif_backward_reference, lif_reference, runs_triton
from .library import define_op, register_autograd, register_fake

__all__ = ["batch_norm_lif", "batch_statistics", "bn_lif", "can_fuse", "update_running_stats"]


def update_running_stats(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    """Move ``bn``'s running statistics towards a batch's ``mean`` and biased ``var`` over ``count`` elements per
    channel, as ``BatchNorm2d`` does in training (unbiased variance, ``momentum`` or a cumulative average)."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        momentum = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
        bn.running_mean.mul_(1 - momentum).add_(mean.to(bn.running_mean.dtype), alpha=momentum)
        bn.running_var.mul_(1 - momentum).add_(var.to(bn.running_var.dtype),
                                               alpha=momentum * count / max(count - 1, 1))


def _channel_view(t: Tensor, x: Tensor) -> Tensor:
    """A per-channel ``[C]`` tensor shaped to broadcast over ``x`` (``[T, B, C, *spatial]``)."""
    return t.view(1, 1, -1, *([1] * (x.dim() - 3)))


def _normalize(x: Tensor, stats: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The norm of ``x`` in :func:`~module.fused_lif.compute_dtype` in the order of the kernels, rounded to ``x``'s
    dtype."""
    dtype = compute_dtype(x)
    mean, invstd = (_channel_view(s, x) for s in stats)
    y = _channel_view(weight.to(dtype), x) * (x.to(dtype) - mean) * invstd + _channel_view(bias.to(dtype), x)
    return y.to(x.dtype)


def _packed(stats: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The kernels' ``[4, C]`` fp32 table: mean, invstd, weight, bias."""
    return torch.cat((stats.float(), weight.detach().float()[None], bias.detach().float()[None]))


@define_op("batch_norm_lif")
def _bn_lif_forward(x: Tensor, stats: Tensor, weight: Tensor, bias: Tensor, decay: Tensor, v_threshold: float,
                    batch_stats: bool) -> Tensor:
    if runs_triton(x):
        from . import lif_triton
        return lif_triton.forward(x, decay, v_threshold, x.shape[0], batch_norm=_packed(stats, weight, bias))
    return lif_reference(_normalize(x, stats, weight, bias), decay, v_threshold)


@register_fake(_bn_lif_forward)
def _(x: Tensor, stats: Tensor, weight: Tensor, bias: Tensor, decay: Tensor, v_threshold: float,
      batch_stats: bool) -> Tensor:
    return empty_steps(x, x.shape[0])


def _batch_norm_backward(grad_y: Tensor, x: Tensor, stats: Tensor, weight: Tensor,
                         batch_stats: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_x, grad_weight, grad_bias)`` of the norm for the gradient ``grad_y`` of its output; with
    ``batch_stats`` the statistics are ``x``'s own, so ``grad_x`` includes their dependence on ``x``."""
    mean, invstd = stats
    if x.is_cuda and batch_stats:  # the kernels of SyncBatchNorm's backward: two passes, no temporaries
        x_flat, grad_flat = x.flatten(0, 1), grad_y.flatten(0, 1)
        sum_dy, sum_dy_xmu, grad_weight, grad_bias = torch.batch_norm_backward_reduce(
            grad_flat, x_flat, mean, invstd, weight, True, True, True)
        count = torch.full((1,), x_flat.numel() // x_flat.shape[1], dtype=torch.int32, device=x.device)
        grad_x = torch.batch_norm_backward_elemt(grad_flat, x_flat, mean, invstd, weight, sum_dy, sum_dy_xmu, count)
        return grad_x.view_as(x), grad_weight.to(weight.dtype), grad_bias.to(weight.dtype)
    dims = [d for d in range(x.dim()) if d != 2]
    dtype = compute_dtype(x)
    g = grad_y.to(dtype)
    x_hat = (x.to(dtype) - _channel_view(mean, x)) * _channel_view(invstd, x)
    grad_bias, grad_weight = g.sum(dims), (g * x_hat).sum(dims)
    if batch_stats:
        count = x.numel() // x.shape[2]
        g = g - _channel_view(grad_bias / count, x) - x_hat * _channel_view(grad_weight / count, x)
    grad_x = g * _channel_view(weight.to(dtype) * invstd, x)
    return grad_x.to(x.dtype), grad_weight.to(weight.dtype), grad_bias.to(weight.dtype)


@define_op("batch_norm_lif_backward")
def _bn_lif_backward(grad_spikes: Tensor, x: Tensor, stats: Tensor, weight: Tensor, bias: Tensor, decay: Tensor,
                     v_threshold: float, need_decay_grad: bool,
                     batch_stats: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    if runs_triton(x):
        from . import lif_triton
        table = _packed(stats, weight, bias)
        if batch_stats and lif_triton.fuses_batch_norm_backward(x, x.shape[0]):
            grad_x, grad_weight, grad_bias, grad_decay = lif_triton.batch_norm_backward(
                grad_spikes, x, decay, v_threshold, need_decay_grad, table)
            return grad_x, grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), grad_decay
        grad_y, grad_decay = lif_triton.backward(grad_spikes, x, decay, v_threshold, need_decay_grad,
                                                 batch_norm=table)
    else:
        grad_y, grad_decay = lif_backward_reference(grad_spikes, _normalize(x, stats, weight, bias), decay,
                                                    v_threshold, need_decay_grad)
    return *_batch_norm_backward(grad_y, x, stats, weight, batch_stats), grad_decay


@register_fake(_bn_lif_backward)
def _(grad_spikes: Tensor, x: Tensor, stats: Tensor, weight: Tensor, bias: Tensor, decay: Tensor,
      v_threshold: float, need_decay_grad: bool, batch_stats: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return (torch.empty_like(x), torch.empty_like(weight), torch.empty_like(bias),
            x.new_empty((), dtype=compute_dtype(x)))


def _setup_context(ctx, inputs, output) -> None:
    x, stats, weight, bias, decay, v_threshold, batch_stats = inputs
    ctx.save_for_backward(x, stats, weight, bias, decay)
    ctx.v_threshold, ctx.batch_stats = v_threshold, batch_stats


def _backward(ctx, grad_spikes: Tensor):
    x, stats, weight, bias, decay = ctx.saved_tensors
    need_decay_grad = ctx.needs_input_grad[4]
    grad_x, grad_weight, grad_bias, grad_decay = _bn_lif_backward(grad_spikes, x, stats, weight, bias, decay,
                                                                  ctx.v_threshold, need_decay_grad,
                                                                  ctx.batch_stats)
    return (grad_x, None, grad_weight, grad_bias, grad_decay.to(decay.dtype) if need_decay_grad else None, None,
            None)


register_autograd(_bn_lif_forward, _backward, setup_context=_setup_context)


@define_op("batch_norm_statistics")
def _batch_statistics(x_flat: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    if x_flat.is_cuda:
        mean, invstd = torch.batch_norm_stats(x_flat, eps)
        return mean, invstd.pow(-2) - eps, invstd
    var, mean = torch.var_mean(x_flat.to(compute_dtype(x_flat)), dim=[d for d in range(x_flat.dim()) if d != 1],
                               correction=0)
    return mean, var, torch.rsqrt(var + eps)


@register_fake(_batch_statistics)
def _(x_flat: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    return tuple(x_flat.new_empty(x_flat.shape[1], dtype=compute_dtype(x_flat)) for _ in range(3))


def batch_statistics(x_flat: Tensor, eps: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(mean, biased var, invstd)`` per channel of ``[N, C, ...]`` input, in fp32 (float64 for float64 input).

    An opaque op: on CUDA it is SyncBatchNorm's one-pass statistics kernel, which has no meta implementation for
    ``torch.compile`` to trace through.
    """
    return _batch_statistics(x_flat, eps)


def batch_norm_lif(bn: nn.BatchNorm2d, lif: MultiStepLIF, x: Tensor) -> Tensor:
    """``lif(bn(x))`` for ``x`` of shape ``[T, B, C, H, W]`` (``bn`` on ``[T * B, C, H, W]``) as one fused op."""
    with torch.no_grad():
        if bn.training or not bn.track_running_stats:
            x_flat = x.detach().flatten(0, 1)
            mean, var, invstd = batch_statistics(x_flat, bn.eps)
            if bn.training and bn.track_running_stats:
                update_running_stats(bn, mean, var, x_flat.numel() // x_flat.shape[1])
            batch_stats = True
        else:
            dtype = compute_dtype(x)
            mean, invstd = bn.running_mean.to(dtype), torch.rsqrt(bn.running_var.to(dtype) + bn.eps)
            batch_stats = False
    return _bn_lif_forward(x, torch.stack((mean, invstd)), bn.weight, bn.bias, lif.membrane_decay(),
                           float(lif.v_threshold), batch_stats)


def can_fuse(bn: nn.Module, lif: nn.Module) -> bool:
    """Whether :func:`batch_norm_lif` may replace ``lif(bn(x))`` (see the module docstring)."""
    return (type(bn) is nn.BatchNorm2d and bn.affine and isinstance(lif, MultiStepLIF)
            and not (bn._forward_pre_hooks or bn._forward_hooks or lif._forward_pre_hooks or lif._forward_hooks)
            and not instrument.is_enabled())


def bn_lif(bn: nn.Module, lif: nn.Module, x: Tensor, fuse: bool, probe: str | None = None) -> Tensor:
    """``lif(bn(x))`` for ``x`` of shape ``[T, B, C, H, W]``; fused when ``fuse`` and :func:`can_fuse` allow it.

    ``probe``: the sparsity label of the BN output (the profiler's measuring point between the two), recorded on
    the unfused path, the one taken while a recorder is active.
    """
    if fuse and can_fuse(bn, lif):
        return batch_norm_lif(bn, lif, x)
    y = bn(x.flatten(0, 1)).view_as(x)
    if probe is not None:
        instrument.sparsity(probe, y)
    return lif(y)
