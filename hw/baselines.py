"""GPU baseline: measured (a JSON of latency and power) or modelled from dense work (labelled an estimate).

Modelled: ``time = max(ops / (efficiency * peak), bytes / bandwidth) + kernels * launch`` and
``energy = power * time``.  A GPU gains nothing from spike sparsity, so ``ops`` are the dense ANN-equivalent
operations of every traced layer over all T steps (a MAC is 2 ops) plus the dense attention element operations;
``bytes`` are the weights once plus every layer's input and output at every step; ``kernels`` is
``kernels_per_op`` times the traced operations (multi-step kernels cover all T steps).
"""
from __future__ import annotations

import math
from pathlib import Path

from engine.traces import TraceMeta

from .config import GpuConfig, HwInputError, read_mapping
from .mapping import Mapping

__all__ = ["gpu_modelled", "gpu_measured"]


def gpu_modelled(meta: TraceMeta, mapping: Mapping, gpu: GpuConfig) -> dict:
    """Energy and latency per inference of the modelled GPU (an estimate)."""
    T = meta.T
    layers = [r for r in mapping.rows if r.geom is not None]
    macs = sum(r.geom.flops for r in layers) * T
    attention = sum((3 if r.op.attrs["mode"] == "SDT" else 2 * r.op.attrs["head_dim"])
                    * math.prod(r.op.out_shape) for r in mapping.rows if r.kind == "attention") * T
    ops = 2 * macs + attention
    weights = sum(r.geom.rows_total * r.geom.cout for r in layers)
    activations = sum(math.prod(r.op.in_shape) + r.geom.positions * r.geom.cout for r in layers) * T
    data_bytes = (weights + activations) * gpu.bytes_per_value
    kernels = gpu.kernels_per_op * len(meta.ops)
    seconds = (max(ops / (gpu.efficiency * gpu.peak_tops * 1e12), data_bytes / (gpu.bandwidth_gbps * 1e9))
               + kernels * gpu.launch_us * 1e-6)
    return {"mode": "modelled (estimate)", "device": gpu.name, "energy_uj": gpu.power_w * seconds * 1e6,
            "latency_ms": seconds * 1e3, "power_w": gpu.power_w, "dense_ops": ops, "bytes": data_bytes,
            "kernels": kernels}


def gpu_measured(path: str | Path) -> dict:
    """A measured GPU run: ``{"latency_ms", "avg_power_W", "batch" (default 1), ...}``; energy per sample."""
    d = read_mapping(path, "JSON", "the GPU measurement")
    for key in ("latency_ms", "avg_power_W"):
        value = d.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise HwInputError(f"{path}: field '{key}' must be a positive finite number, got {value!r}")
    batch = d.get("batch", 1)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise HwInputError(f"{path}: field 'batch' must be a positive integer, got {batch!r}")
    return {**d, "mode": "measured", "energy_uj": d["avg_power_W"] * d["latency_ms"] * 1e3 / batch}
