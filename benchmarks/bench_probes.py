"""Cost of the measuring points: forward time with the probes compiled out, disabled (the default) and enabled.

    python benchmarks/bench_probes.py                       # CPU: a tiny model and the fork's 8-768 model
    python benchmarks/bench_probes.py --device cuda --repeats 50

"compiled out" is the same model built from a copy of module/sps.py and module/ms_conv.py whose ``timer`` and
``sparsity`` calls were removed from the source (``profiler.compile_out``); "disabled" is the normal model with no
recorder active.  Forward passes of the variants are interleaved (the order rotates every repeat) so that drift
in machine load hits all of them alike; the table gives the fastest forward (the least disturbed one on a busy
machine), the median and the interquartile range, and both relative to "compiled out".  A second table
counts the measuring points one forward passes through and what a disabled one costs (``timeit``), which bounds
the disabled overhead independently of timing noise.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
import timeit
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import model  # noqa: E402,F401  (registers "sdt")
from engine.errors import ConfigError  # noqa: E402
from engine.validate import check_device  # noqa: E402
from module import instrument  # noqa: E402
from profiler.compile_out import probes_compiled_out  # noqa: E402
from profiler.session import ProfileSession  # noqa: E402

_logger = logging.getLogger("bench_probes")

CONFIGS = {
    "tiny": dict(embed_dims=64, num_heads=4, depths=2, num_classes=10),
    "fork-8-768": dict(embed_dims=768, num_heads=8, depths=8, num_classes=1000),
}
_COMMON = dict(img_size_h=32, img_size_w=32, in_channels=3, mlp_ratios=4, T=4, pooling_stat="1111",
               attention_mode="STAtten", chunk_size=2)


def _build(config: dict, device: torch.device, compiled_out: bool) -> torch.nn.Module:
    torch.manual_seed(0)
    with probes_compiled_out() if compiled_out else nullcontext():
        net = timm.create_model("sdt", **_COMMON, **config)
    return net.to(device).eval()


def _forward_ms(net: torch.nn.Module, x: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter_ns()
    net(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter_ns() - start) / 1e6


class _CallCounter:
    """Stands in for a recorder to count the measuring points a forward passes through."""

    def __init__(self):
        self.timers = self.probes = 0

    def timer(self, label):
        self.timers += 1
        return instrument._NULL_TIMER

    def count(self, labels, tensors, per_step):
        self.probes += 1


def _count_points(net: torch.nn.Module, x: torch.Tensor) -> _CallCounter:
    counter = _CallCounter()
    instrument._timing = instrument._counting = counter
    try:
        net(x)
    finally:
        instrument._timing = instrument._counting = None
    return counter


def bench_config(name: str, config: dict, device: torch.device, repeats: int, warmup: int) -> list[dict]:
    """Interleaved forward timings of the four variants of one model configuration."""
    nets = {"compiled out": _build(config, device, True), "disabled": _build(config, device, False)}
    x = torch.randn(1, 3, 32, 32, device=device)
    sessions = {"timers on": dict(timers=True, probes=False), "timers + sparsity on": dict(timers=True, probes=True)}
    variants = list(nets) + list(sessions)
    times: dict[str, list[float]] = {v: [] for v in variants}

    def one(variant: str) -> float:
        if variant in nets:
            return _forward_ms(nets[variant], x, device)
        with ProfileSession(nets["disabled"], device, **sessions[variant]) as session:
            ms = _forward_ms(nets["disabled"], x, device)
            session.recorder.collect()
        return ms

    with torch.inference_mode():
        for i in range(warmup + repeats):
            for variant in variants[i % len(variants):] + variants[:i % len(variants)]:
                ms = one(variant)
                if i >= warmup:
                    times[variant].append(ms)
    base_min, base_median = min(times["compiled out"]), float(np.median(times["compiled out"]))
    rows = []
    for variant in variants:
        q1, median, q3 = np.percentile(times[variant], [25, 50, 75])
        fastest = min(times[variant])
        rows.append({"config": name, "variant": variant, "min_ms": fastest, "median_ms": median, "iqr_ms": q3 - q1,
                     "min_vs": 100 * (fastest / base_min - 1), "median_vs": 100 * (median / base_median - 1)})
    return rows


def point_counts(config: dict, device: torch.device) -> _CallCounter:
    """The measuring points one forward of the model passes through."""
    net = _build(config, device, False)
    with torch.inference_mode():
        return _count_points(net, torch.randn(1, 3, 32, 32, device=device))


def disabled_costs(number: int = 200_000) -> tuple[float, float]:
    """Nanoseconds per disabled ``with timer(...): pass`` and per disabled ``sparsity(...)`` (best of 5)."""
    names = {"timer": instrument.timer, "sparsity": instrument.sparsity, "t": torch.zeros(1)}
    with_timer = min(timeit.repeat("with timer('Matmul'): pass", globals=names, number=number, repeat=5))
    probe = min(timeit.repeat("sparsity('q', t)", globals=names, number=number, repeat=5))
    return with_timer / number * 1e9, probe / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=30, help="timed forwards per variant")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.repeats < 1 or args.warmup < 0 or (args.threads is not None and args.threads < 1):
        parser.error(f"--repeats {args.repeats} --warmup {args.warmup} --threads {args.threads}: give at least 1 timed "
                     f"forward and 1 thread, no negative warm-up")
    try:
        check_device(args.device)
    except ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    _logger.info("device %s, torch %s, %d CPU threads, %d repeats", device, torch.__version__,
                 torch.get_num_threads(), args.repeats)
    _logger.info("%-12s %-22s %10s %12s %10s %9s %11s", "config", "variant", "min (ms)", "median (ms)", "IQR (ms)",
                 "min vs", "median vs")
    for name in args.configs:
        for row in bench_config(name, CONFIGS[name], device, args.repeats, args.warmup):
            _logger.info("%-12s %-22s %10.3f %12.3f %10.3f %+8.2f%% %+10.2f%%", row["config"], row["variant"],
                         row["min_ms"], row["median_ms"], row["iqr_ms"], row["min_vs"], row["median_vs"])
    timer_ns, probe_ns = disabled_costs()
    _logger.info("")
    _logger.info("disabled measuring point: %.0f ns per 'with timer(...)', %.0f ns per 'sparsity(...)'", timer_ns,
                 probe_ns)
    _logger.info("%-12s %8s %8s %24s", "config", "timers", "probes", "disabled cost / forward")
    for name in args.configs:
        counts = point_counts(CONFIGS[name], device)
        bound_us = (counts.timers * timer_ns + counts.probes * probe_ns) / 1e3
        _logger.info("%-12s %8d %8d %21.1f us", name, counts.timers, counts.probes, bound_us)

if __name__ == "__main__":
    main()
