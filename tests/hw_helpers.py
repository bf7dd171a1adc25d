"""Shared builders for the trace and hardware-model tests: tiny firing models, captures and edited traces."""
from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from engine.traces import Capture, TraceWriter, capture_sample, model_summary
from hw.synthetic import dvs_events, firing_model


@functools.lru_cache(maxsize=None)
def tiny_capture(attention_mode: str = "SDT", dvs: bool = True, T: int = 4, skip: tuple[int, ...] = (),
                 seed: int = 0) -> tuple[Capture, dict]:
    """A capture of a 2-block, width-64, 32x32 firing model (cached: tests must not edit it in place)."""
    net = firing_model(T=T, embed_dims=64, img_size=32, in_channels=2 if dvs else 3, dvs=dvs,
                       attention_mode=attention_mode, chunk_size=2, skip_blocks=skip)
    x = dvs_events(T, 32, seed=seed) if dvs else torch.randn(1, 3, 32, 32,
                                                             generator=torch.Generator().manual_seed(seed))
    return capture_sample(net, x), model_summary(net)


def write(path: Path, captures: list[Capture], config: dict | None = None, labels: list[int] | None = None) -> Path:
    writer = TraceWriter(path, "test", config or {})
    for i, capture in enumerate(captures):
        writer.write(capture, None if labels is None else labels[i])
    return path


def edited(capture: Capture, fill: float) -> Capture:
    """The capture with every layer input, attention tensor and LIF output set to ``fill`` (0 or 1)."""
    numel = torch.tensor([float(torch.tensor(op.out_shape).prod()) for op in capture.ops if op.kind == "lif"])
    return dataclasses.replace(
        capture, tensors={k: torch.full_like(v, fill) for k, v in capture.tensors.items()},
        lif_nnz=(numel[:, None] * fill).expand(-1, capture.T).long())
