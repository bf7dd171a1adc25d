"""``MS_SPS``: the spiking patch-splitting stem of SDT (module/sps.py of the reference)."""
from __future__ import annotations

import torch
from torch import nn

from .instrument import timer
from .neuron import create_lif

__all__ = ["MS_SPS"]


def _tb_apply(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2-D layer to a ``[T, B, C, H, W]`` tensor by flattening time into the batch."""
    return layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])


class MS_SPS(nn.Module):
    """Four 3x3 conv + BN stages (channels D/8, D/4, D/2, D) with LIF and optional 3x3/2 max-pools, then a
    spiking relative position embedding (``rpe``) added to the real-valued last stage ("membrane shortcut").

    ``pooling_stat`` is a 4-character string of "0"/"1": stage i is followed by a max-pool iff its char is "1".
    Stages 0-2 pool the spikes; stage 3 pools the BN output before any spike.  ``rpe_lif`` is built (it owns a
    ``w`` in PLIF checkpoints) but, as in the reference, never used.

    Input and output are ``[T, B, C, H, W]``; the output is real-valued.
    """

    def __init__(self, in_channels: int = 2, embed_dims: int = 256, pooling_stat: str = "1111",
                 spike_mode: str = "lif"):
        super().__init__()
        self.pooling_stat = pooling_stat
        widths = [in_channels, embed_dims // 8, embed_dims // 4, embed_dims // 2, embed_dims]
        suffixes = ["", "1", "2", "3"]
        for i, suffix in enumerate(suffixes):
            self.add_module(f"proj_conv{suffix}", nn.Conv2d(widths[i], widths[i + 1], 3, 1, 1, bias=False))
            self.add_module(f"proj_bn{suffix}", nn.BatchNorm2d(widths[i + 1]))
            self.add_module(f"proj_lif{suffix}", create_lif(spike_mode))
            self.add_module(f"maxpool{suffix}", nn.MaxPool2d(kernel_size=3, stride=2, padding=1, dilation=1,
                                                              ceil_mode=False))
        self.rpe_conv = nn.Conv2d(embed_dims, embed_dims, 3, 1, 1, bias=False)
        self.rpe_bn = nn.BatchNorm2d(embed_dims)
        self.rpe_lif = create_lif(spike_mode)
        self._stages = [
            (getattr(self, f"proj_conv{s}"), getattr(self, f"proj_bn{s}"), getattr(self, f"proj_lif{s}"),
             getattr(self, f"maxpool{s}") if flag == "1" else None)
            for s, flag in zip(suffixes, pooling_stat)
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with timer("SPS.PSM"):
            for conv, bn, lif, pool in self._stages[:3]:
                x = lif(_tb_apply(lambda t: bn(conv(t)), x))
                if pool is not None:
                    x = _tb_apply(pool, x)
            conv, bn, lif, pool = self._stages[3]
            x_feat = _tb_apply(lambda t: bn(conv(t)), x)
            if pool is not None:
                x_feat = _tb_apply(pool, x_feat)
        with timer("SPS.RPE"):
            x = _tb_apply(lambda t: self.rpe_bn(self.rpe_conv(t)), lif(x_feat)) + x_feat
        return x
