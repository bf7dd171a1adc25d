"""``MS_SPS``: the spiking patch-splitting stem of SDT (module/sps.py of the reference)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .bn_lif import batch_statistics, bn_lif, update_running_stats
from .fused_lif import MultiStepLIF
from .instrument import timer
from .neuron import create_lif
from .pool import MaxPool2d

__all__ = ["MS_SPS", "batch_norm_of_copies"]


def _tb_apply(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D layer to a ``[T, B, C, H, W]`` tensor by flattening time into the batch."""
    return layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])


def batch_norm_of_copies(bn: nn.Module, x: torch.Tensor, copies: int) -> torch.Tensor:
    """``bn`` on ``copies`` identical copies of ``x`` (``[B, C, H, W]``), as ``[copies, B, C, H, W]`` or, when
    computed once, as the one copy ``[1, B, C, H, W]`` (broadcastable: every copy is the same).

    For a plain ``BatchNorm2d`` it is computed on one copy: the output, the batch statistics and the gradients of
    its broadcast are those of the stacked batch, and in training the running variance gets the unbiased
    correction of the stacked element count, as on the stacked batch.  Other norms (SyncBatchNorm, split BN) and a
    ``bn`` with forward hooks (e.g. statistics frozen for fine-tuning) run on the stacked copies.
    """
    if type(bn) is not nn.BatchNorm2d or bn._forward_pre_hooks or bn._forward_hooks:
        return bn(x.repeat(copies, 1, 1, 1)).unflatten(0, (copies, -1))
    if bn.training and bn.track_running_stats:
        with torch.no_grad():
            mean, var, _ = batch_statistics(x.detach(), bn.eps)
            update_running_stats(bn, mean, var, x.numel() // x.shape[1] * copies)
        x = F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)
    else:
        x = bn(x)
    return x.unsqueeze(0)


class MS_SPS(nn.Module):
    """Four 3x3 conv + BN stages (channels D/8, D/4, D/2, D) with LIF and optional 3x3/2 max-pools, then a
    spiking relative position embedding (``rpe``) added to the real-valued last stage ("membrane shortcut").

    ``pooling_stat`` is a 4-character string of "0"/"1": stage i is followed by a max-pool iff its char is "1".
    Stages 0-2 pool the spikes; stage 3 pools the BN output before any spike.  ``rpe_lif`` is built (it owns a
    ``w`` in PLIF checkpoints) but, as in the reference, never used.

    Input: ``[T, B, C, H, W]``, or a static ``[B, C, H, W]`` image with ``T``: the first conv + BN then runs once
    and its output is broadcast over the T steps (``encode_once``; the reference convolves T identical copies, which
    gives the same values, batch statistics and gradients).  Output: ``[T, B, D, H', W']``, real-valued.
    """

    def __init__(self, in_channels: int = 2, embed_dims: int = 256, pooling_stat: str = "1111",
                 spike_mode: str = "lif", neuron_backend: str = "fused"):
        super().__init__()
        self.pooling_stat = pooling_stat
        self.fuse_bn_lif = False  # stage BN + LIF as one op (module.bn_lif); set through the model
        widths = [in_channels, embed_dims // 8, embed_dims // 4, embed_dims // 2, embed_dims]
        suffixes = ["", "1", "2", "3"]
        for i, suffix in enumerate(suffixes):
            self.add_module(f"proj_conv{suffix}", nn.Conv2d(widths[i], widths[i + 1], 3, 1, 1, bias=False))
            self.add_module(f"proj_bn{suffix}", nn.BatchNorm2d(widths[i + 1]))
            self.add_module(f"proj_lif{suffix}", create_lif(spike_mode, backend=neuron_backend))
            self.add_module(f"maxpool{suffix}", MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1,
                                                           ceil_mode=False))
        self.rpe_conv = nn.Conv2d(embed_dims, embed_dims, 3, 1, 1, bias=False)
        self.rpe_bn = nn.BatchNorm2d(embed_dims)
        self.rpe_lif = create_lif(spike_mode, backend=neuron_backend)

    def _stage(self, i: int) -> tuple[nn.Module, nn.Module, nn.Module, nn.Module | None]:
        """Conv, BN, LIF and max-pool (or None) of stage ``i``, looked up by name at every call, so that a module
        replaced after construction (``SyncBatchNorm.convert_sync_batchnorm``) is the one that runs."""
        s = ("", "1", "2", "3")[i]
        pool = getattr(self, f"maxpool{s}") if self.pooling_stat[i] == "1" else None
        return getattr(self, f"proj_conv{s}"), getattr(self, f"proj_bn{s}"), getattr(self, f"proj_lif{s}"), pool

    def _encode_static(self, x: torch.Tensor, T: int) -> torch.Tensor:
        """Spikes of the first stage for a static ``[B, C, H, W]`` image repeated over ``T`` steps."""
        conv, bn, lif, pool = self._stage(0)
        x = batch_norm_of_copies(bn, conv(x), T)
        x = lif(x, steps=T) if isinstance(lif, MultiStepLIF) else lif(x.expand(T, *x.shape[1:]))
        return _tb_apply(pool, x) if pool is not None else x

    def forward(self, x: torch.Tensor, T: int | None = None) -> torch.Tensor:
        with timer("SPS.PSM"):
            stages = [self._stage(i) for i in range(3)]
            if x.dim() == 4:
                if T is None:
                    raise ValueError("a static [B, C, H, W] input needs the number of time steps T")
                x, stages = self._encode_static(x, T), stages[1:]
            for conv, bn, lif, pool in stages:
                x = bn_lif(bn, lif, _tb_apply(conv, x), self.fuse_bn_lif)
                if pool is not None:
                    x = _tb_apply(pool, x)
            conv, bn, lif, pool = self._stage(3)
            x_feat = _tb_apply(lambda t: bn(conv(t)), x)
            if pool is not None:
                x_feat = _tb_apply(pool, x_feat)
        with timer("SPS.RPE"):
            x = _tb_apply(lambda t: self.rpe_bn(self.rpe_conv(t)), lif(x_feat)) + x_feat
        return x
