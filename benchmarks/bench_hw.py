"""Throughput of the hardware model (exact mode, samples/s) and the energy it reports, as tables (no assertions).

    python benchmarks/bench_hw.py [--samples 256] [--workers 2]

Workloads (synthetic firing models, hw.synthetic; traces are cached under output/bench_hw/):

* ``dvs_2_256``: CIFAR10-DVS-shaped SDT-2-256, 64x64 event frames, T=16 (the throughput goal: >= 200 samples/s in
  exact mode on 2 CPU cores; on a shared machine the last column, from CPU time, is the fairer figure);
* ``digits_1_64``: the digits demo's shape (conf/digits/sdt_digits.yml: 1 block, width 64, T=2, 32x32 static
  images of scikit-learn digits).

Few distinct captures are written many times (a T=16 capture takes seconds on a CPU); the model's cost does
not depend on which spikes it sees, only on how many samples.
"""
from __future__ import annotations

import argparse
import logging
import os
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.traces import TraceFormatError, TraceReader  # noqa: E402
from hw.config import load_config  # noqa: E402
from hw.pipeline import simulate  # noqa: E402
from hw.report import summarize  # noqa: E402
from hw.synthetic import dvs_events, firing_model, write_trace  # noqa: E402
from hw.workload import Workload  # noqa: E402

_logger = logging.getLogger("bench_hw")
OUT = Path(__file__).resolve().parents[1] / "output" / "bench_hw"


def _digits_inputs(n: int) -> tuple[list[torch.Tensor], list[int]]:
    """scikit-learn's 8x8 digits upsampled to 32x32 RGB, normalised as the demo config."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.tensor(digits.images[:n], dtype=torch.float32)[:, None] / 16.0
    x = torch.nn.functional.interpolate(x, size=32, mode="bicubic").repeat(1, 3, 1, 1)
    return [((img - 0.31) / 0.35).unsqueeze(0) for img in x], digits.target[:n].tolist()


WORKLOADS = {
    "dvs_2_256": dict(model=dict(T=16, embed_dims=256, img_size=64, num_heads=8, chunk_size=4),
                      inputs=lambda n: ([dvs_events(16, 64, seed=s) for s in range(n)], None)),
    "digits_1_64": dict(model=dict(T=2, embed_dims=64, depths=1, img_size=32, in_channels=3, dvs=False, num_heads=8,
                                   pooling_stat="0111"),
                        inputs=_digits_inputs),
}


def build_trace(name: str, samples: int, distinct: int, rebuild: bool) -> Path:
    """The cached trace of a workload, (re)written when missing, different in size, or asked for."""
    path = OUT / f"trace_{name}"
    try:
        if not rebuild and len(TraceReader(path)) == samples:
            return path
    except TraceFormatError:
        pass
    spec = WORKLOADS[name]
    net = firing_model(**spec["model"])
    inputs, labels = spec["inputs"](distinct)
    start = time.perf_counter()
    write_trace(path, net, inputs, copies=samples // distinct, dataset=name, labels=labels)
    _logger.info("wrote %s: %d samples (%d distinct) in %.1f s", path, samples, distinct, time.perf_counter() - start)
    return path


def _timed(fn):
    """``(result, wall seconds, CPU seconds of this process and its children)``."""
    before, children = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = time.process_time()
    result = fn()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = time.process_time() - cpu0 + (after.ru_utime + after.ru_stime) - (children.ru_utime + children.ru_stime)
    return result, time.perf_counter() - before, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--distinct", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hw-config", default="aster_default")
    parser.add_argument("--rebuild", action="store_true", help="re-capture the traces")
    args = parser.parse_args()
    if not 1 <= args.distinct <= args.samples or args.samples % args.distinct or args.workers < 1:
        parser.error(f"--samples {args.samples} --distinct {args.distinct} --workers {args.workers}: the trace repeats "
                     f"the distinct samples, so --samples must be a multiple of --distinct (at least 1), with at "
                     f"least 1 worker")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    config = load_config(args.hw_config)
    _logger.info("CPU cores: %d, workers: %d, preset: %s", os.cpu_count(), args.workers, config.name)
    _logger.info("%-12s | %-11s | %7s | %8s | %9s | %13s | %s", "workload", "mode", "samples", "wall s", "samples/s",
                 "CPU-ms/sample", "samples/s if each worker had a core")
    summaries = {}
    for name in WORKLOADS:
        workload = Workload.open(build_trace(name, args.samples, args.distinct, args.rebuild))
        simulate(workload, config, workers=1, progress=False)  # warm-up (page cache, imports)
        for mode, workers in (("exact", args.workers), ("statistical", 1)):
            res, wall, cpu = _timed(lambda: simulate(workload, config, mode, workers=workers, progress=False))
            n = len(workload.reader) if mode == "exact" else 1
            _logger.info("%-12s | %-11s | %7d | %8.2f | %9.1f | %13.2f | %.0f", name, mode, n, wall, n / wall,
                         1e3 * cpu / n, workers * n / cpu)
            summaries[(name, mode)] = summarize(res)
    for (name, mode), s in summaries.items():
        e = s["energy_per_inference_uj"]
        _logger.info("\n%s, %s mode, %s (%g nm): %.3f uJ/inference (p5 %.3f, p95 %.3f), latency %.1f us serial / "
                     "%.1f us pipelined, %.3g SOPs, %.3f pJ/SOP, %.2f TOPS/W", name, mode, s["preset"],
                     s["technology_nm"], e["mean"], e["p5"], e["p95"], s["latency"]["serial_us"],
                     s["latency"]["pipelined_us"], s["sops_per_inference"], s["pj_per_sop"] or 0, s["tops_per_w"] or 0)
        total = sum(s["components_uj"].values())
        for component, uj in sorted(s["components_uj"].items(), key=lambda kv: -kv[1]):
            if uj:
                _logger.info("  %-16s %10.4f uJ %6.1f %%", component, uj, 100 * uj / total)
        _logger.info("  ratios (baseline energy / this): " + ", ".join(f"{k} x{v:.2f}" for k, v in s["ratios"].items()))
        _logger.info("  GPU model: %.1f uJ, %.2f ms (%s)", s["baselines"]["gpu_modelled"]["energy_uj"],
                     s["baselines"]["gpu_modelled"]["latency_ms"], s["baselines"]["gpu_modelled"]["mode"])
        for row in s["ablations"]:
            _logger.info("  without %-24s %10.4f uJ (x%.3f)", row["feature"], row["energy_uj_without"],
                         row["saving_ratio"])


if __name__ == "__main__":
    main()
