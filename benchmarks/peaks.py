"""Dense peak throughput of the GPUs the benchmarks meet: the one table ``bench_train.py`` and ``roofline.py`` use.

The anchors of issue 10 ran on an H100 (SXM, 80 GB); the device tool lends an H200, which has the H100's compute
peaks but 4.8 TB/s of memory bandwidth instead of 3.35: a memory-bound step can run up to 1.43x faster there.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Peaks", "H100", "H200", "ANCHOR_GPU", "peaks_of", "short_gpu_name", "gpu_caveat"]


@dataclass(frozen=True)
class Peaks:
    """Dense (no sparsity) peak FLOP/s per math mode and memory bandwidth (bytes/s) of one GPU."""

    gpu: str
    half: float  # fp16/bf16 on tensor cores
    tf32: float  # fp32 matmuls and convolutions on tensor cores in TF32 (cuDNN's default for convolutions)
    fp32: float  # fp32 without tensor cores
    bandwidth: float


H100 = Peaks("H100 SXM", half=989.4e12, tf32=494.7e12, fp32=67.0e12, bandwidth=3.35e12)
H200 = Peaks("H200 SXM", half=989.4e12, tf32=494.7e12, fp32=67.0e12, bandwidth=4.8e12)
ANCHOR_GPU = H100
_OTHER_FORMS = ("PCIe", "NVL")  # the same chips with other clocks and power: not these peaks


def short_gpu_name(device_name: str) -> str:
    """``torch.cuda.get_device_name`` without the vendor: ``"NVIDIA H200"`` -> ``"H200"``."""
    return device_name.removeprefix("NVIDIA ").strip()


def peaks_of(device_name: str) -> Peaks | None:
    """The peaks of a GPU named as ``torch.cuda.get_device_name`` names it (``"NVIDIA H100 80GB HBM3"``), None for a
    GPU not in the table (a PCIe or NVL form included)."""
    if any(form in device_name for form in _OTHER_FORMS):
        return None
    for peaks in (H100, H200):
        if peaks.gpu.split()[0] in device_name:
            return peaks
    return None


def gpu_caveat(device_name: str) -> str:
    """Empty on the anchors' GPU (an H100 SXM), else what a speed-up against the H100 anchors does not say."""
    name, peaks = short_gpu_name(device_name), peaks_of(device_name)
    if peaks is ANCHOR_GPU:
        return ""
    if peaks is None:
        return f"{name} is not the anchors' {ANCHOR_GPU.gpu}: the speed-ups compare two GPUs"
    ratio = peaks.bandwidth / ANCHOR_GPU.bandwidth
    return (f"{name} vs the anchors' H100: same compute peaks, {ratio:.2f}x the memory bandwidth, so memory-bound "
            f"configs look up to {ratio:.2f}x better than the code alone makes them")
