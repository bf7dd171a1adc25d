"""The model's own kernels (LIF forward and backward, max-pool forward and backward) alone, at the anchor configs'
shapes: median time, the bytes each must move at least, and the bandwidth that makes (a table; optionally JSON).

    python benchmarks/bench_kernels.py [--device cuda] [--repeats 50] [--json PATH]

Next to each pool, ATen's ``max_pool2d_with_indices`` on the same tensor.  A kernel far below the GPU's bandwidth
(``benchmarks/peaks.py``) is not bound by memory and has room to go; ``benchmarks/kernel_report.py`` shows what the
compiler made of it.  On the CPU (``--tiny``, the CI smoke test) the same ops run their PyTorch paths on small
shapes, and the times mean little.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.peaks import peaks_of  # noqa: E402
from engine.atomic import unwritable_reason, write_text_atomic  # noqa: E402
from engine.errors import ConfigError  # noqa: E402
from engine.validate import check_device  # noqa: E402
from module.fused_lif import multistep_lif  # noqa: E402
from module.pool import max_pool2d  # noqa: E402

_logger = logging.getLogger("bench_kernels")


@dataclass(frozen=True)
class LifCase:
    """A LIF over ``[T, B, C, H, W]`` input of ``dtype``, in channels-last (the CUDA default) or contiguous."""
    shape: tuple[int, ...]
    dtype: torch.dtype = torch.float32
    channels_last: bool = True


@dataclass(frozen=True)
class PoolCase:
    """A max-pool of ``kernel``/``stride`` (padding 1) over ``[N, C, H, W]`` input of ``dtype``."""
    shape: tuple[int, ...]
    kernel: int
    stride: int
    dtype: torch.dtype = torch.float32
    channels_last: bool = True


# LIFs and pools of the anchor families (T * B samples for the pools): the CIFAR and DVS blocks' LIFs, the DVS
# stem's first LIF and the DVS attention pool are the anchors' own shapes; the others are stand-ins of the stems'
# (smaller, or between two of their layers), named as such
CASES = {
    "LIF CIFAR blocks T=4 B=64, 512 x 8 x 8, fp32": LifCase((4, 64, 512, 8, 8)),
    "LIF DVS stem's first T=16 B=16, 32 x 64 x 64, fp32": LifCase((16, 16, 32, 64, 64)),
    "LIF DVS blocks T=16 B=16, 256 x 16 x 16, fp32": LifCase((16, 16, 256, 16, 16)),
    "LIF 64 x 112 x 112 T=4 B=32 (ImageNet stem's are 64 x 224^2, 128 x 112^2), bf16":
        LifCase((4, 32, 64, 112, 112), torch.bfloat16),
    "pool DVS attention 3x3/1, 256 x 256 x 16 x 16, fp32": PoolCase((256, 256, 16, 16), 3, 1),
    "pool 3x3/2, 256 x 128 x 32 x 32 (DVS stem's are 128 x 64^2, 256 x 32^2), fp32": PoolCase((256, 128, 32, 32), 3, 2),
    "pool ImageNet stem 3x3/2, 128 x 64 x 224 x 224, bf16": PoolCase((128, 64, 224, 224), 3, 2, torch.bfloat16),
}
TINY_CASES = {
    "LIF tiny T=4": LifCase((4, 2, 8, 6, 6)),
    "LIF tiny T=16": LifCase((16, 2, 8, 6, 6)),
    "pool tiny 3x3/1": PoolCase((4, 8, 6, 6), 3, 1),
    "pool tiny 3x3/2": PoolCase((4, 8, 6, 6), 3, 2),
}


def _layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """``x`` (``[..., C, H, W]``) in channels-last memory order over its leading axes flattened, or as it is."""
    if not channels_last:
        return x
    flat = x.flatten(0, x.dim() - 4) if x.dim() > 4 else x
    return flat.contiguous(memory_format=torch.channels_last).view(x.shape)


def _median_ms(fn: Callable[[], object], device: torch.device, repeats: int, warmup: int) -> float:
    """Median milliseconds of ``fn`` over ``repeats`` calls (CUDA events on a GPU, the wall clock elsewhere)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            fn()
            times.append((time.perf_counter() - begin) * 1e3)
    return statistics.median(times)


def _lif_rows(case: LifCase, device: torch.device, repeats: int, warmup: int) -> list[dict]:
    x = _layout(torch.randn(case.shape, device=device).mul_(1.5).to(case.dtype), case.channels_last)
    decay = torch.tensor(0.5, device=device)
    grad = torch.randn_like(x)
    x.requires_grad_()
    spikes = multistep_lif(x, decay, 1.0)
    elements, item = x.numel(), x.element_size()
    return [
        {"kernel": "forward", "ms": _median_ms(lambda: multistep_lif(x.detach(), decay, 1.0), device, repeats, warmup),
         "bytes": 2 * elements * item},  # read x, write the spikes
        {"kernel": "backward", "bytes": 3 * elements * item,  # read x and the spike gradient, write x's
         "ms": _median_ms(lambda: torch.autograd.grad(spikes, x, grad, retain_graph=True), device, repeats, warmup)},
    ]


def _pool_rows(case: PoolCase, device: torch.device, repeats: int, warmup: int) -> list[dict]:
    x = _layout(torch.randn(case.shape, device=device).to(case.dtype), case.channels_last).requires_grad_()
    options = dict(kernel_size=case.kernel, stride=case.stride, padding=1)
    out = max_pool2d(x, **options)
    aten_out = F.max_pool2d(x, **options)
    grad = torch.randn_like(out)
    inputs, outputs, item = x.numel(), out.numel(), x.element_size()
    return [
        {"kernel": "forward", "bytes": (inputs + outputs) * item + outputs,  # read x, write out and int8 offsets
         "ms": _median_ms(lambda: max_pool2d(x, **options), device, repeats, warmup)},
        {"kernel": "backward", "bytes": (outputs + inputs) * item + outputs,  # read grad and offsets, write grad_x
         "ms": _median_ms(lambda: torch.autograd.grad(out, x, grad, retain_graph=True), device, repeats, warmup)},
        {"kernel": "ATen forward", "bytes": (inputs + outputs) * item + 8 * outputs,  # int64 indices
         "ms": _median_ms(lambda: F.max_pool2d(x, **options), device, repeats, warmup)},
        {"kernel": "ATen backward", "bytes": (outputs + inputs) * item + 8 * outputs,
         "ms": _median_ms(lambda: torch.autograd.grad(aten_out, x, grad, retain_graph=True), device, repeats,
                          warmup)},
    ]


def bench(cases: dict, device: torch.device, repeats: int, warmup: int,
          after_case: Callable[[list[dict]], None] = lambda rows: None) -> list[dict]:
    """One row per case and kernel: ms, least bytes moved, GB/s and, on a GPU in :mod:`benchmarks.peaks`, the share
    of its memory bandwidth; ``after_case`` gets the rows so far after each case."""
    peaks = peaks_of(torch.cuda.get_device_name(device)) if device.type == "cuda" else None
    rows = []
    for name, case in cases.items():
        measure = _lif_rows if isinstance(case, LifCase) else _pool_rows
        for row in measure(case, device, repeats, warmup):
            row = {"case": name, **row, "GB/s": row["bytes"] / row["ms"] / 1e6}
            row["% of bandwidth"] = 100 * row["GB/s"] * 1e9 / peaks.bandwidth if peaks else None
            rows.append(row)
            _logger.info("%-56s | %-13s | %8.3f ms | %7.1f MB | %7.0f GB/s | %s", name, row["kernel"], row["ms"],
                         row["bytes"] / 1e6, row["GB/s"],
                         "" if row["% of bandwidth"] is None else f"{row['% of bandwidth']:.0f} %")
        after_case(rows)
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="small shapes (the CPU smoke test)")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls per kernel (at least 1)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the rows here (after every case)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.warmup < 0:
        parser.error(f"--repeats {args.repeats} --warmup {args.warmup}: give at least 1 timed call, no negative")
    if args.json and (reason := unwritable_reason(args.json)):
        parser.error(f"--json {args.json}: {reason}")
    try:
        check_device(args.device)
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    device, cases = torch.device(args.device), TINY_CASES if args.tiny else CASES

    def write(rows: list[dict]) -> None:
        if args.json:
            write_text_atomic(args.json, json.dumps({"device": str(device), "cases": {
                name: asdict(case) for name, case in cases.items()}, "rows": rows}, indent=1, default=str))

    _logger.info("%-56s | %-13s | %11s | %10s | %12s | of peak", "case", "kernel", "median", "least bytes", "bandwidth")
    return bench(cases, device, args.repeats, args.warmup, after_case=write)


if __name__ == "__main__":
    main()
