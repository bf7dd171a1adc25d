"""Synthetic workloads for tests and benchmarks: a randomly initialised SDT that fires, and DVS-shaped inputs.

A freshly initialised SDT (conv weights with std 0.02) almost never fires.  :func:`firing_model` re-draws the
conv weights with He scaling and the BatchNorm affine parameters so that layers fire at roughly 5-30 %, like
trained models; :func:`dvs_events` makes CIFAR10-DVS-shaped event frames: Poisson event counts that cluster on
the edge of a moving object, over a sparse background.  Traces written from them are realistic in structure
(spatial clustering, silent background tokens), not in accuracy.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from engine.traces import TraceMeta, TraceWriter, capture_sample, model_summary

__all__ = ["firing_model", "dvs_events", "write_trace"]


def firing_model(T: int = 4, embed_dims: int = 64, depths: int = 2, img_size: int = 32, in_channels: int = 2,
                 dvs: bool = True, attention_mode: str = "SDT", num_heads: int = 4, chunk_size: int = 2,
                 pooling_stat: str = "0011", mlp_ratios: int = 4, seed: int = 0, **kwargs) -> nn.Module:
    """An eval-mode ``sdt`` model (10 classes) whose neurons fire at realistic rates."""
    import timm

    import model  # noqa: F401  registers "sdt"

    torch.manual_seed(seed)
    net = timm.create_model("sdt", img_size_h=img_size, img_size_w=img_size, in_channels=in_channels,
                            num_classes=10, embed_dims=embed_dims, num_heads=num_heads, mlp_ratios=mlp_ratios,
                            depths=depths, T=T, pooling_stat=pooling_stat, dvs_mode=dvs,
                            attention_mode=attention_mode, chunk_size=chunk_size, **kwargs)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / (m.in_channels * m.kernel_size[0] * m.kernel_size[1])))
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.3, 0.8)
    return net.eval()


def dvs_events(T: int, size: int = 64, seed: int = 0, rate: float = 2.0, background: float = 0.02) -> torch.Tensor:
    """``[1, T, 2, size, size]`` event counts: a ring moving across the frame plus sparse background noise."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    radius = size * (0.15 + 0.1 * torch.rand(1, generator=g).item())
    start = torch.rand(2, generator=g) * size * 0.5 + size * 0.25
    velocity = (torch.rand(2, generator=g) - 0.5) * size * 0.04
    frames = []
    for t in range(T):
        cy, cx = start + velocity * t
        ring = torch.exp(-((torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) - radius) ** 2) / 4.0)
        lam = torch.stack([rate * ring * (1 + 0.5 * p) + background for p in range(2)])
        frames.append(torch.poisson(lam, generator=g))
    return torch.stack(frames).unsqueeze(0)


def write_trace(out_dir: str | Path, net: nn.Module, inputs: list[torch.Tensor], copies: int = 1,
                dataset: str = "synthetic", labels: list[int] | None = None) -> TraceMeta:
    """Capture every input once and write it ``copies`` times (benchmarks need many samples, captures are slow)."""
    writer = TraceWriter(out_dir, dataset, model_summary(net), overwrite=True)
    for i, x in enumerate(inputs):
        capture = capture_sample(net, x)
        for _ in range(copies):
            writer.write(capture, None if labels is None else labels[i])
    return writer.meta
