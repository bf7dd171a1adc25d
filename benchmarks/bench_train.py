"""Speed of the engine's training step (:func:`engine.loop.train_step`), next to the anchor of issue 10.

    python benchmarks/bench_train.py --all --device cuda --json out.json      # every anchor config
    python benchmarks/bench_train.py --anchor sdt-2-512-cifar-amp --amp-dtype bfloat16
    python benchmarks/bench_train.py --config conf/sdt/imagenet/8_512_300E_t4.yml -b 32
    python benchmarks/bench_train.py --tiny                                    # CPU smoke configs

Any flag this script does not know is an engine flag (``train.py --help``) and is applied to every benchmarked
config after its own flags, so it wins (``--amp-dtype bfloat16``, ``--channels-last``, ``-b 128``, ...).  The
speed flags compare paths: ``--neuron-backend spikingjelly --no-encode-once`` is the reference computation on
spikingjelly's neurons; ``--torchcompile --torchcompile-mode reduce-overhead`` adds CUDA graphs.

Per config: the model, optimizer, AMP and training loss come from the engine's builders; one random batch lives on
the device (``[B, C, H, W]`` images or ``[B, T, 2, H, W]`` event frames; soft targets when the config has
mixup/CutMix); then one eager step under ``FlopCounterMode`` (dense FLOPs of forward and backward; before any
``torch.compile``, which would skip every frame it met under that mode), ``--warmup`` steps (the first, which
includes any kernel compilation, is reported on its own), ``--steps`` timed steps, each between two device
synchronisations, ``--steps`` more back to back (as the training loop runs them: one synchronisation at the end),
and ``--profile-steps`` steps under the torch profiler.

Reported: median ms/step with p10/p90 (the anchors' measure, and the one the speed-ups divide), back-to-back
ms/step (``b2b``: what training gets, where the host prepares a step while the device still runs the last one),
host ms/step (the time until the step returns, before the synchronisation:
close to ms/step, the step is bound by the host, Python and kernel launches, which CUDA graphs remove; on the CPU
the whole step), images/s, GPU-busy ms/step (union of the CUDA kernel, memcpy and memset intervals, per step) and
kernels per step, peak memory (``torch.cuda.max_memory_allocated`` over the timed steps, ``max_memory_reserved``
with CUDA graphs, whose private pool the allocated count misses, the allocator's cache emptied before one last
untimed step; on the CPU the process's
peak resident memory over the timed steps, runtime included), TFLOP per step and model FLOP utilisation (achieved
FLOP/s over ``--peak-tflops``, by default the GPU's dense peak from ``benchmarks/peaks.py``: fp16/bf16 with AMP,
TF32 in fp32 while ``torch.backends.cudnn.allow_tf32`` is on (PyTorch's default: cuDNN runs these
convolution-bound models in TF32), plain fp32 otherwise; the table and JSON name the peak; on the CPU only when
``--peak-tflops`` is given).  Anchor speed-ups divide the anchor's fastest ms/step by ours (conservative where the
anchor is a range) and the memory ratio is ours over the anchor's, both only on CUDA and only when the step computes
the anchor's workload (model, shapes, batch, precision, optimizer; the speed flags may differ): with only another
batch size the speed-up is per image and there is no memory ratio, otherwise the anchor columns stay empty and the
note says why.  The anchors ran on an H100; on another GPU (the device tool lends an H200: same compute peaks, 1.43x
the memory bandwidth) a caveat follows the table.  Below it, per config, the kernels that take the most GPU time
(on the CPU: the operators with the most self time), which say where a config that falls short spends its step.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import logging
import platform
import re
import resource
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.peaks import ANCHOR_GPU, gpu_caveat, peaks_of, short_gpu_name  # noqa: E402
from data import is_neuromorphic  # noqa: E402
from engine.args import get_args_parser  # noqa: E402
from engine.atomic import unwritable_reason, write_text_atomic  # noqa: E402
from engine.config import parse_args  # noqa: E402
from engine.distributed import init_distributed  # noqa: E402
from engine.errors import SetupError  # noqa: E402
from engine.loaders import mixup_args  # noqa: E402
from engine.losses import build_train_loss  # noqa: E402
from engine.loop import train_step  # noqa: E402
from engine.model import build_model, compile_model, model_kwargs, prepare_model, replays_cuda_graphs, \
    resolve_model_args, uses_channels_last  # noqa: E402
from engine.optim import build_amp, build_optimizer, uses_fused_optimizer  # noqa: E402
from engine.validate import check_run_args  # noqa: E402

__all__ = ["Anchor", "Case", "ANCHORS", "TINY", "engine_args", "workload", "default_peak", "bench_step",
           "busy_time", "top_ops", "compare", "speed_path", "table_rows", "log_table", "log_top_ops", "main"]

_logger = logging.getLogger("bench_train")
_GIB = 2.0 ** 30
# Flags that change how a step is computed, not what: a result with other values still compares with its anchor.
_SPEED_FLAGS = ("neuron_backend", "encode_once", "fuse_bn_lif")
TOP_OPS = 15  # kernels (operators on the CPU) listed per config


@dataclass(frozen=True)
class Anchor:
    """The reference code's figures on one H100 80GB (issue 10): ms/step range, GPU-busy ms/step, peak GiB."""

    ms_per_step: tuple[float, float]
    gpu_busy_ms: float
    peak_gib: float


@dataclass(frozen=True)
class Case:
    """A benchmarked configuration: engine flags, and the anchor it is compared with (if any)."""

    flags: tuple[str, ...]
    anchor: Anchor | None = None


def _conf(path: str) -> tuple[str, str]:
    return "-c", str(REPO / "conf" / path)


# The anchor configs; shapes and precision are spelled out even where the config file already has them.  The anchor
# stepped AdamW everywhere, hence ``--opt adamw`` for ImageNet (whose config trains with LAMB).
ANCHORS = {
    "sdt-2-512-cifar-fp32": Case((*_conf("sdt/cifar10/2_512_300E_t4.yml"), "-b", "64", "--time-steps", "4",
                                  "--no-amp"), Anchor((36, 40), 27.0, 9.0)),
    "sdt-2-512-cifar-amp": Case((*_conf("sdt/cifar10/2_512_300E_t4.yml"), "-b", "64", "--time-steps", "4", "--amp",
                                 "--amp-dtype", "float16"), Anchor((39, 50), 16.5, 3.7)),
    "statten-2-512-c2-cifar-amp": Case((*_conf("statten/cifar10/2_512_200E_t4.yml"), "-b", "64", "--time-steps",
                                        "4", "--chunk-size", "2", "--amp", "--amp-dtype", "float16"),
                                       Anchor((39, 44), 17.0, 3.8)),
    "sdt-2-256-dvs-t16-fp32": Case((*_conf("sdt/cifar10-dvs/2_256_200E_t10_TET.yml"), "-b", "16", "--time-steps",
                                    "16", "--no-amp"), Anchor((54, 55), 51.8, 14.5)),
    "statten-2-256-c4-dvs-t16-fp32": Case((*_conf("statten/cifar10-dvs/2_256_200E_t16_TET.yml"), "-b", "16",
                                           "--time-steps", "16", "--chunk-size", "4", "--no-amp"),
                                          Anchor((57, 57), 55.2, 14.9)),
    "sdt-8-512-imagenet-amp": Case((*_conf("sdt/imagenet/8_512_300E_t4.yml"), "-b", "32", "--time-steps", "4",
                                    "--opt", "adamw", "--amp", "--amp-dtype", "float16"),
                                   Anchor((125, 149), 97.9, 20.6)),
}

_TINY_MODEL = ("--num-classes", "10", "--dim", "32", "--layer", "1", "--num-heads", "4", "--mlp-ratio", "2",
               "--img-size", "32", "--opt", "adamw", "--smoothing", "0")
# Seconds each on a CPU core: a static-image SDT (fp32 and bf16 autocast) and an event-frame STAtten with TET.
TINY = {
    "tiny-sdt-fp32": Case(("--dataset", "digits", *_TINY_MODEL, "--time-steps", "2", "-b", "8")),
    "tiny-sdt-bf16": Case(("--dataset", "digits", *_TINY_MODEL, "--time-steps", "2", "-b", "8", "--amp",
                           "--amp-dtype", "bfloat16")),
    "tiny-statten-dvs": Case(("--dataset", "cifar10-dvs", *_TINY_MODEL, "--in-channels", "2", "--time-steps", "4",
                              "--attention_mode", "STAtten", "--chunk-size", "2", "--TET", "-b", "4")),
}


def engine_args(flags: Sequence[str]) -> argparse.Namespace:
    """Parse engine flags (``-c FILE`` included) with the engine's own parser (a fresh one: ``-c`` sets defaults)."""
    return parse_args(argparse.ArgumentParser(parents=[get_args_parser()]), list(flags))


def workload(args: argparse.Namespace) -> dict:
    """What a training step computes (call :func:`resolve_model_args` first): the model's arguments but the speed
    flags, the dataset, batch size, precision and optimizer.  A result is compared with its anchor only when its
    workload is the anchor's."""
    kwargs = {key: value for key, value in model_kwargs(args).items() if key not in _SPEED_FLAGS}
    if args.attention_mode != "STAtten":
        kwargs["chunk_size"] = None  # SDT ignores it
    return dict(kwargs, dataset=args.dataset, batch_size=args.batch_size,
                precision=args.amp_dtype if args.amp else "float32", opt=args.opt)


def default_peak(amp: bool, device_name: str) -> tuple[float, str]:
    """``(TFLOP/s, which peak)`` of a GPU for the FLOP utilisation: its fp16/bf16 peak with AMP, else its TF32 peak
    while cuDNN may run fp32 convolutions in TF32 (``torch.backends.cudnn.allow_tf32``, on by default), else its
    plain fp32 peak; the H100's for a GPU :mod:`benchmarks.peaks` does not know."""
    peaks = peaks_of(device_name) or ANCHOR_GPU
    if amp:
        return peaks.half / 1e12, f"{peaks.gpu} fp16/bf16"
    if torch.backends.cudnn.allow_tf32:
        return peaks.tf32 / 1e12, f"{peaks.gpu} tf32"
    return peaks.fp32 / 1e12, f"{peaks.gpu} fp32"


def _random_batch(args: argparse.Namespace, soft_targets: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch on the device, shaped and laid out as :func:`engine.loop.train_one_epoch` passes it."""
    size = args.img_size
    if is_neuromorphic(args.dataset):
        inputs = torch.rand(args.batch_size, args.time_steps, args.in_channels, size, size, device=args.device)
    else:
        inputs = torch.randn(args.batch_size, args.in_channels, size, size, device=args.device)
        if uses_channels_last(args):
            inputs = inputs.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, args.num_classes, (args.batch_size,), device=args.device)
    if soft_targets:
        return inputs, torch.rand(args.batch_size, args.num_classes, device=args.device).softmax(-1)
    return inputs, labels


def busy_time(intervals: Sequence[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals."""
    total, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def top_ops(durations: Iterable[tuple[str, float]], steps: int, top: int = TOP_OPS) -> list[dict]:
    """The ``top`` names by total time in ``(name, microseconds)`` pairs over ``steps`` steps: per name the calls and
    milliseconds per step and the share of the total, largest first."""
    total_us, calls = defaultdict(float), defaultdict(int)
    for name, us in durations:
        total_us[name] += us
        calls[name] += 1
    grand = sum(total_us.values()) or 1.0
    ranked = sorted(total_us, key=lambda name: (-total_us[name], name))[:top]
    return [dict(name=name, calls_per_step=calls[name] / steps, ms_per_step=total_us[name] / 1e3 / steps,
                 share=total_us[name] / grand) for name in ranked]


def _profile(step: Callable[[], object], n: int, sync: Callable[[], None],
             on_cuda: bool) -> tuple[float | None, float | None, list[dict]]:
    """Run ``n`` steps under the torch profiler: the mean GPU-busy ms per step (the union of the CUDA kernel, memcpy
    and memset intervals), the kernels (and copies) launched per step (both None off CUDA) and :func:`top_ops` of
    the CUDA kernels, or off CUDA of the operators' self CPU time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA] if on_cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(n):
            step()
        sync()
    if not on_cuda:
        return None, None, top_ops(((e.name, e.self_cpu_time_total) for e in prof.events()
                                    if e.device_type == DeviceType.CPU and not e.is_user_annotation), n)
    kernels = [e for e in prof.events() if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    busy_ms = busy_time([(e.time_range.start, e.time_range.end) for e in kernels]) / 1e3 / n
    return busy_ms, len(kernels) / n, top_ops(((e.name, e.time_range.elapsed_us()) for e in kernels), n)


def _step_flops(step: Callable[[], object]) -> int | None:
    """Dense FLOPs of one step (matmuls and convolutions, forward and backward), or None if they cannot be counted."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    try:
        with counter:
            step()
    except RuntimeError as exc:  # a kernel that refuses to run under a dispatch mode must not sink the timing
        _logger.warning("FLOPs not counted: %s", exc)
        return None
    return counter.get_total_flops()


def _percentile(sorted_values: Sequence[float], q: int) -> float:
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[q - 1]


def _reset_cpu_peak() -> bool:
    """Start a new peak of the process's resident memory (Linux: ``VmHWM``, reset through ``/proc/self/clear_refs``)
    after handing freed heap memory back to the system; False where either cannot be done."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
    except (OSError, AttributeError):
        return False
    return True


def _cpu_peak(since_reset: bool) -> tuple[float, str]:
    """``(GiB, kind)``: the process's peak resident memory since :func:`_reset_cpu_peak`, or since it started."""
    if since_reset:
        kib = int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))
        return kib * 1024 / _GIB, "process_peak_rss_timed_steps"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / _GIB, "process_peak_rss_since_start"


def bench_step(args: argparse.Namespace, *, warmup: int = 10, steps: int = 40, profile_steps: int = 5,
               peak_tflops: float | None = None) -> dict:
    """Build the config's model, optimizer, AMP and loss, and time :func:`~engine.loop.train_step` on it.

    Args:
        args: parsed engine arguments (see :func:`engine_args`); ``args.device`` empty means CUDA if available.
        warmup: untimed steps first (at least 1; the first one's time is reported as ``first_step_s``).
        steps: timed steps (at least 2).
        profile_steps: steps under the torch profiler for the GPU-busy time and the top operators (0 skips it).
        peak_tflops: device peak for the model FLOP utilisation; None: :func:`default_peak` on CUDA, none on the CPU.

    Returns:
        A JSON-ready dict: the config (model, precision, batch, ...), ``ms_per_step`` (median, p10, p90, min, max),
        ``back_to_back_ms`` (``steps`` more steps without a synchronisation between them, per step), ``host_ms``
        (median time until the step returns, before the synchronisation: the host's share of the step),
        ``images_per_s``, ``gpu_busy_ms`` and ``kernels_per_step`` (None off CUDA), ``peak_memory_gib`` and
        ``peak_memory_kind`` (on the CPU the process's peak resident memory over the timed steps where Linux lets
        it be reset, else since the process started), ``tflop_per_step``, ``tflops``, ``peak_tflops`` and
        ``peak_kind``, ``mfu`` (fractions; None when unknown), ``gpu`` (the device's name; None off CUDA),
        ``workload`` (:func:`workload`),
        ``first_step_s`` and ``top_ops`` (:func:`top_ops` of the CUDA kernels, or off CUDA of the operators' self
        CPU time: ``top_ops_kind``).
    """
    if warmup < 1 or steps < 2:
        raise ValueError(f"need warmup >= 1 and steps >= 2, got {warmup} and {steps}")
    init_distributed(args)
    resolve_model_args(args)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if on_cuda else (lambda: None)

    model = prepare_model(args, build_model(args))
    optimizer, amp = build_optimizer(args, model), build_amp(args)
    soft_targets = mixup_args(args) is not None
    loss_fn = build_train_loss(args, soft_targets)
    inputs, target = _random_batch(args, soft_targets)
    model.train()

    def step() -> torch.Tensor:
        return train_step(model, inputs, target, optimizer, loss_fn, args, amp)

    # FLOPs on the eager model: under FlopCounterMode Dynamo skips the frames it meets, and the skip would last
    # for the rest of the run (the "compiled" steps would be eager, recompiling op bodies while being timed).
    flops = _step_flops(step)
    sync()
    if args.torchcompile:
        torch._dynamo.reset()  # a fresh cache per config: no automatic dynamic shapes from the previous one
        compile_model(args, model)
    start = time.perf_counter()
    step()
    sync()
    first_step_s = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    if on_cuda:  # cached free blocks (earlier configs, the FLOP count, CUDA-graph recording) go back to the device,
        sync()  # and one more untimed step takes what a step holds: the reserved peak is the step's own
        gc.collect()
        torch.cuda.empty_cache()
        step()
    sync()
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    cpu_peak_reset = not on_cuda and _reset_cpu_peak()
    times_ms, host_ms = [], []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        host_ms.append(1e3 * (time.perf_counter() - start))
        sync()
        times_ms.append(1e3 * (time.perf_counter() - start))
    if on_cuda and replays_cuda_graphs(args):
        # CUDA graphs replay into a private memory pool whose blocks the allocator no longer counts as allocated
        peak_gib, memory_kind = torch.cuda.max_memory_reserved(device) / _GIB, "cuda_max_reserved"
    elif on_cuda:
        peak_gib, memory_kind = torch.cuda.max_memory_allocated(device) / _GIB, "cuda_max_allocated"
    else:
        peak_gib, memory_kind = _cpu_peak(cpu_peak_reset)
    start = time.perf_counter()  # the training loop's way: no synchronisation between the steps
    for _ in range(steps):
        step()
    sync()
    back_to_back_ms = 1e3 * (time.perf_counter() - start) / steps
    busy_ms, kernels, top = _profile(step, profile_steps, sync, on_cuda) if profile_steps > 0 else (None, None, [])

    times_ms.sort()
    median_ms = statistics.median(times_ms)
    tflops = flops / (median_ms / 1e3) / 1e12 if flops is not None else None
    gpu = torch.cuda.get_device_name(device) if on_cuda else None
    peak_kind = "given" if peak_tflops is not None else None
    if peak_tflops is None and on_cuda:
        peak_tflops, peak_kind = default_peak(args.amp, gpu)
    return dict(
        model=args.model, attention_mode=args.attention_mode, dim=args.dim, layer=args.layer,
        time_steps=args.time_steps, chunk_size=args.chunk_size if args.attention_mode == "STAtten" else None,
        dataset=args.dataset, img_size=args.img_size, batch_size=args.batch_size, opt=args.opt,
        opt_fused=uses_fused_optimizer(args), precision=args.amp_dtype if args.amp else "float32",
        channels_last=uses_channels_last(args), event_frames=is_neuromorphic(args.dataset),
        neuron_backend=args.neuron_backend, encode_once=args.encode_once, fuse_bn_lif=args.fuse_bn_lif,
        torchcompile=args.torchcompile,
        torchcompile_mode=args.torchcompile_mode, device=str(device), gpu=gpu, workload=workload(args),
        warmup=warmup, steps=steps, first_step_s=first_step_s,
        ms_per_step=dict(median=median_ms, p10=_percentile(times_ms, 10), p90=_percentile(times_ms, 90),
                         min=times_ms[0], max=times_ms[-1]),
        back_to_back_ms=back_to_back_ms, host_ms=statistics.median(host_ms),
        images_per_s=args.batch_size / (median_ms / 1e3), gpu_busy_ms=busy_ms,
        kernels_per_step=kernels,
        peak_memory_gib=peak_gib, peak_memory_kind=memory_kind,
        tflop_per_step=flops / 1e12 if flops is not None else None, tflops=tflops, peak_tflops=peak_tflops,
        peak_kind=peak_kind,
        mfu=tflops / peak_tflops if tflops is not None and peak_tflops else None,
        top_ops=top, top_ops_kind="cuda_kernels" if on_cuda else "cpu_self_time",
    )


def _anchor_workload(case: Case) -> dict:
    """:func:`workload` of the anchor config's own flags."""
    args = engine_args(case.flags)
    resolve_model_args(args)
    return workload(args)


def _differences(ours: dict, anchor: dict) -> dict[str, str]:
    """``{key: "key OURS (anchor ANCHOR'S)"}`` of the workload entries that differ."""
    return {key: f"{key} {ours.get(key)} (anchor {value})" for key, value in anchor.items() if ours.get(key) != value}


def compare(result: dict, case: Case) -> dict:
    """The anchor's figures (none without one), and on CUDA our speed-up and memory ratio against them when the
    result computes the anchor's :func:`workload`; with only another batch size, ``speedup_per_image`` instead.
    ``anchor_note`` says why a ratio is missing, ``gpu_caveat`` what a speed-up on another GPU than the anchors'
    H100 does not say."""
    anchor = case.anchor
    if anchor is None:
        return {}
    out = {"anchor": asdict(anchor)}
    if not result["device"].startswith("cuda"):
        return {**out, "anchor_note": "the anchors were measured on CUDA: no comparison on the CPU"}
    expected = _anchor_workload(case)
    differences = _differences(result["workload"], expected)
    if set(differences) - {"batch_size"}:
        return {**out, "anchor_note": "not the anchor's workload: " + ", ".join(differences.values())}
    out["gpu_caveat"] = gpu_caveat(result["gpu"])
    if differences:  # only the batch size
        anchor_ms_per_image = anchor.ms_per_step[0] / expected["batch_size"]
        out["speedup_per_image"] = anchor_ms_per_image / (result["ms_per_step"]["median"] / result["batch_size"])
        out["anchor_note"] = f"{differences['batch_size']}: speed-up per image, no memory ratio"
        return out
    out["speedup"] = anchor.ms_per_step[0] / result["ms_per_step"]["median"]
    out["memory_ratio"] = result["peak_memory_gib"] / anchor.peak_gib
    return out


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


_COLUMNS = ("config", "precision", "path", "ms/step", "p10-p90", "b2b ms", "host ms", "img/s", "busy ms", "kernels",
            "peak GiB", "GFLOP", "TFLOP/s", "MFU %", "MFU peak", "anchor ms", "anchor busy", "anchor GiB",
            "speed-up", "GPU", "mem ratio", "note")


def speed_path(result: dict) -> str:
    """Short name of the speed flags of a result, e.g. ``fused+once+compile(reduce-overhead)+fused-opt``."""
    parts = [result["neuron_backend"]]
    if result["encode_once"] and not result.get("event_frames"):  # event frames differ per step: no encoding once
        parts.append("once")
    if result.get("fuse_bn_lif"):
        parts.append("bnlif")
    if result["channels_last"]:
        parts.append("cl")
    if result["torchcompile"]:
        parts.append(f"compile({result['torchcompile_mode'] or result['torchcompile']})")
    if result.get("opt_fused"):
        parts.append("fused-opt")
    return "+".join(parts)


def _speedup_cell(r: dict) -> str:
    if "speedup_per_image" in r:
        return f"{r['speedup_per_image']:.2f}/img"
    return f"{r['speedup']:.2f}" if "speedup" in r else ""


def table_rows(results: dict[str, dict]) -> list[tuple[str, ...]]:
    """One row of :data:`_COLUMNS` per result (anchor columns empty where there is no anchor or no comparison)."""
    rows = []
    for name, r in results.items():
        ms, anchor = r["ms_per_step"], r.get("anchor")
        peak = "" if r["peak_tflops"] is None else f"{r['peak_tflops']:g} {r['peak_kind']}"
        row = (name, r["precision"], speed_path(r), f"{ms['median']:.2f}", f"{ms['p10']:.2f}-{ms['p90']:.2f}",
               f"{r['back_to_back_ms']:.2f}", f"{r['host_ms']:.2f}", f"{r['images_per_s']:.1f}",
               _fmt(r["gpu_busy_ms"], ".2f"), _fmt(r.get("kernels_per_step"), ".0f"), f"{r['peak_memory_gib']:.2f}",
               _fmt(None if r["tflop_per_step"] is None else 1e3 * r["tflop_per_step"], ".4g"),
               _fmt(r["tflops"], ".3g"), _fmt(None if r["mfu"] is None else 100 * r["mfu"], ".1f"), peak)
        if anchor is None:
            row += ("",) * 7
        else:
            lo, hi = anchor["ms_per_step"]
            row += (f"{lo:g}" if lo == hi else f"{lo:g}-{hi:g}", f"{anchor['gpu_busy_ms']:g}",
                    f"{anchor['peak_gib']:g}", _speedup_cell(r), short_gpu_name(r["gpu"] or r["device"]),
                    f"{r['memory_ratio']:.2f}" if "memory_ratio" in r else "", r.get("anchor_note", ""))
        rows.append(row)
    return rows


def log_table(results: dict[str, dict]) -> None:
    """Log the results as an aligned table, then each caveat of a comparison on another GPU than the anchors'."""
    rows = [_COLUMNS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    for row in rows:
        _logger.info(" | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
    _logger.info("peak GiB is %s", ", ".join(sorted({r["peak_memory_kind"] for r in results.values()})))
    for caveat in sorted({r["gpu_caveat"] for r in results.values() if r.get("gpu_caveat")}):
        _logger.warning("caveat: %s", caveat)


def log_top_ops(results: dict[str, dict]) -> None:
    """Log each result's :func:`top_ops` (kernel names cut to 100 characters; the JSON keeps them whole)."""
    for name, r in results.items():
        if not r.get("top_ops"):
            continue
        unit = "GPU kernels" if r["top_ops_kind"] == "cuda_kernels" else "CPU operators, self time"
        _logger.info("%s: top %s (ms/step, share, calls/step)", name, unit)
        for op in r["top_ops"]:
            _logger.info("  %8.3f %5.1f%% %7.1f  %s", op["ms_per_step"], 100 * op["share"], op["calls_per_step"],
                         op["name"][:100])


def _environment(results: dict[str, dict]) -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version(), "cpu_threads": torch.get_num_threads()}
    devices = {r["device"] for r in results.values()}
    cuda = sorted(d for d in devices if d.startswith("cuda"))
    if cuda:
        gpu = torch.cuda.get_device_name(cuda[0])
        env.update(gpu=gpu, cuda=torch.version.cuda, gpu_caveat=gpu_caveat(gpu))
    return env


def _cases(opts: argparse.Namespace) -> dict[str, Case]:
    cases: dict[str, Case] = {}
    if opts.all:
        cases.update(ANCHORS)
    cases.update({name: ANCHORS[name] for name in opts.anchor})
    if opts.tiny:
        cases.update(TINY)
    cases.update({path: Case(("-c", path)) for path in opts.config})
    return cases


def main(argv: Sequence[str] | None = None) -> dict[str, dict]:
    """Benchmark the selected configs, log the table, write ``--json``; return ``{config: result}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog="Other flags go to the engine.")
    parser.add_argument("--all", action="store_true", help="every anchor config of issue 10")
    parser.add_argument("--anchor", action="append", default=[], choices=sorted(ANCHORS), help="one anchor config")
    parser.add_argument("--config", action="append", default=[], metavar="YAML", help="an engine config file")
    parser.add_argument("--tiny", action="store_true", help="tiny CPU smoke configs")
    parser.add_argument("--device", default="", help="cpu, cuda, cuda:N (default: cuda if available)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (at least 1)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps (at least 2)")
    parser.add_argument("--profile-steps", type=int, default=5,
                        help="steps under the torch profiler (GPU busy time on CUDA, top operators on the CPU)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help=f"device peak for the FLOP utilisation (default on CUDA: the GPU's dense peak, "
                             f"{ANCHOR_GPU.half / 1e12:g} with AMP and {ANCHOR_GPU.tf32 / 1e12:g} in fp32 with "
                             f"cuDNN's TF32 on an H100 or H200)")
    parser.add_argument("--json", default="", metavar="PATH", help="write the results here")
    opts, engine_flags = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cases = _cases(opts)
    if not cases:
        parser.error("nothing to benchmark: give --all, --anchor, --config or --tiny")
    if opts.warmup < 1 or opts.steps < 2:
        parser.error(f"--warmup {opts.warmup} --steps {opts.steps}: give at least 1 warm-up and 2 timed steps")
    if opts.json and (reason := unwritable_reason(opts.json)):
        parser.error(f"--json {opts.json}: {reason}")
    if opts.profile_steps < 0 or (opts.peak_tflops is not None and not opts.peak_tflops > 0):
        parser.error(f"--profile-steps {opts.profile_steps} --peak-tflops {opts.peak_tflops}: give at least 0 "
                     f"profiled steps and a positive peak")
    device_flags = ["--device", opts.device] if opts.device else []
    try:  # every config's flags as train.py checks them, before any is measured
        configs = {name: engine_args([*case.flags, *device_flags, *engine_flags]) for name, case in cases.items()}
        for args in configs.values():
            check_run_args(args, train=True)
    except SetupError as exc:
        parser.error(str(exc))
    results = {}
    for name, case in cases.items():
        args = configs[name]
        _logger.info("%s: %s", name, " ".join([*case.flags, *engine_flags]))
        try:
            result = bench_step(args, warmup=opts.warmup, steps=opts.steps, profile_steps=opts.profile_steps,
                                peak_tflops=opts.peak_tflops)
        except SetupError as exc:  # a model the flags cannot build (e.g. T not divisible by --chunk-size)
            parser.error(f"{name}: {exc}")
        results[name] = {**result, **compare(result, case)}
        log_table({name: results[name]})  # after every config, so that a run stopped early keeps what it measured
        log_top_ops({name: results[name]})
        if opts.json:
            write_text_atomic(opts.json, json.dumps({"environment": _environment(results), "results": results},
                                                    indent=2))
    if len(results) > 1:
        _logger.info("all configs:")
        log_table(results)
    if opts.json:
        _logger.info("wrote %s", opts.json)
    return results


if __name__ == "__main__":
    main()
