"""Memory traffic and FLOPs of the training step, op by op, and the H100 roofline time they imply (no GPU needed).

    python benchmarks/roofline.py                 # every anchor config of issue 10, default and --fuse-bn-lif
    python benchmarks/roofline.py --tiny --json out.json

The engine builds each config's model on PyTorch's meta device (shapes only, as ``saved_memory.py`` does; AMP
configs in their half-precision dtype) and runs the forward, the loss and the backward under a dispatch mode that
sees every ATen and custom op (our LIF and BN + LIF ops are one op each, as on CUDA).  Per op: the bytes it reads
(each tensor argument's distinct elements: a broadcast input counts once) and writes (its outputs), and its FLOPs
(``torch.utils.flop_counter``: convolutions and matmuls); BatchNorm and our LIF and fused BN + LIF backwards also
pay the extra passes their CUDA kernels make (:func:`extra_reads`).  Views and allocations cost nothing.  The fused
AdamW step adds 28 bytes per parameter (read weight, gradient and two moments in fp32, write three).

Each op's roofline time is ``max(bytes / bandwidth, FLOPs / peak)`` on the anchors' H100 SXM
(``benchmarks/peaks.py``): 3.35 TB/s; 989.4 TFLOP/s for fp16/bf16, 494.7 for fp32 convolutions (cuDNN's TF32, on
by default in PyTorch) and 67 for other fp32 matmuls (TF32 matmuls are off by default).  The sum is a lower bound
of the GPU-busy time: real kernels reach 60-90 % of the bandwidth, cuDNN may add layout transposes that no ATen op
shows, and launch gaps come on top.  Next to the anchor's measured GPU-busy time it says how far the reference ran
from the bound, and the anchor's ms/step over the bound is the largest speed-up these ops allow without removing
traffic.  Below the table, per config, the op kinds with the most roofline time.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from collections import defaultdict
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_train import Case  # noqa: E402
from benchmarks.peaks import H100  # noqa: E402
from benchmarks.saved_memory import build_on_meta, measure_all  # noqa: E402
from engine.atomic import write_text_atomic  # noqa: E402
from module.fused_lif import keeps_membrane_in_memory, recomputes_membrane  # noqa: E402

__all__ = ["PATHS", "OpTraffic", "distinct_bytes", "extra_reads", "step_traffic", "roofline", "measure", "main"]

_logger = logging.getLogger("roofline")
PATHS = {"default": (), "bn_lif": ("--fuse-bn-lif",)}
ADAMW_BYTES_PER_PARAM = 28
# Ops that move no data: allocations, and aliases that the dispatcher does not mark as views.
_FREE = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "_unsafe_view", "detach",
         "lift_fresh", "alias", "set_", "resize_"}


def distinct_bytes(t: torch.Tensor) -> int:
    """Bytes of the distinct elements a tensor addresses (a broadcast axis, stride 0, counts once)."""
    return math.prod(size for size, stride in zip(t.shape, t.stride()) if stride != 0) * t.element_size()


class OpTraffic(TorchDispatchMode):
    """Per op kind (``aten.convolution``, ``sdt.multistep_lif``, ...): calls, bytes read, bytes written, FLOPs, and
    the roofline seconds (:func:`roofline`) summed over the ops it saw."""

    def __init__(self, fp32_peaks: bool):
        super().__init__()
        self.fp32_peaks = fp32_peaks
        self.ops: dict[str, dict[str, float]] = defaultdict(lambda: dict(calls=0, read=0, written=0, flops=0,
                                                                         seconds=0.0))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        if func.is_view or packet.__name__ in _FREE:
            return out
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        name = f"{func.namespace}.{packet.__name__}"
        read = sum(map(distinct_bytes, inputs)) + extra_reads(name, args)
        written = sum(map(distinct_bytes, outputs))
        flops = flop_registry[packet](*args, **kwargs, out_val=out) if packet in flop_registry else 0
        record = self.ops[name]
        record["calls"] += 1
        record["read"] += read
        record["written"] += written
        record["flops"] += flops
        record["seconds"] += roofline(read + written, flops, self._peak(packet.__name__))
        return out

    def _peak(self, name: str) -> float:
        if not self.fp32_peaks:
            return H100.half
        return H100.tf32 if "convolution" in name else H100.fp32


def extra_reads(op: str, args: tuple) -> int:
    """Bytes that ops known to make more than one pass over their large operands move besides one read of each
    input and one write of each output (their CUDA kernels): BatchNorm in training computes the batch statistics in
    a pass before the normalising one; its backward reduces ``grad_out`` and ``input`` in a pass before the
    elementwise one.  The LIF backwards: :func:`_lif_backward_extra`.  (Counted as reads: the time is the same.)"""
    if op == "aten.native_batch_norm" and args[5]:
        return distinct_bytes(args[0])
    if op == "aten.native_batch_norm_backward" and args[7]:
        return distinct_bytes(args[0]) + distinct_bytes(args[1])
    if op in ("sdt.multistep_lif_backward", "sdt.batch_norm_lif_backward"):
        return _lif_backward_extra(op, args)
    return 0


def _membrane_source(steps: int, itemsize: int, repeated: bool) -> str:
    """Where the Triton LIF backward gets each step's membrane, as ``module.lif_triton`` decides it."""
    if repeated or recomputes_membrane(steps, itemsize):
        return "recompute"
    return "memory" if keeps_membrane_in_memory(steps, itemsize) else "registers"


def _lif_backward_extra(op: str, args: tuple) -> int:
    """Extra bytes of a LIF backward (``module/lif_triton.py``).  Recomputing the membrane from step 0 re-reads
    recent steps of the input, which hit the cache: one pass.  The register history and the fp32 scratch (a write
    and a read of 4 bytes per neuron and step) are filled in a first pass over the input, and the backward pass
    reads the input again where it uses it: for the decay gradient (PLIF), and in the fused BN + LIF backward for
    the norm's input gradient.  That backward makes two such kernel passes (the per-channel reduction, then the
    input gradient), each over the spike gradient and the input (twice with the register history: 7 tensor passes
    per pair, 5 where the membrane is recomputed); past the register history the LIF backward writes the norm
    output's gradient and BatchNorm's two backward passes read it and the input."""
    grad_spikes, x = args[0], args[1]
    need_decay_grad = args[4] if op == "sdt.multistep_lif_backward" else args[7]
    source = _membrane_source(grad_spikes.shape[0], x.element_size(), x.shape[0] != grad_spikes.shape[0])
    x_bytes = distinct_bytes(x)
    scratch = 8 * grad_spikes.numel() if source == "memory" else 0
    decay_reread = x_bytes if need_decay_grad and source != "recompute" else 0
    if op == "sdt.multistep_lif_backward":
        return scratch + decay_reread
    if source == "memory":  # dy written, then read twice by BatchNorm's backward, which reads x twice too
        return scratch + decay_reread + 5 * x_bytes
    input_reads_per_kernel = 1 if source == "recompute" else 2
    return distinct_bytes(grad_spikes) + (2 * input_reads_per_kernel - 1) * x_bytes


def roofline(nbytes: float, flops: float, peak_flops: float, bandwidth: float = H100.bandwidth) -> float:
    """Seconds of an op bound by memory or by arithmetic, whichever takes longer."""
    return max(nbytes / bandwidth, flops / peak_flops)


def step_traffic(case: Case, path_flags: tuple[str, ...]) -> tuple[dict[str, dict], int, torch.dtype, int]:
    """``(per-op records, parameter count, dtype, batch size)`` of one training step of a config on the meta
    device (AMP configs in half precision)."""
    step = build_on_meta(case, path_flags)
    params = sum(p.numel() for p in step.model.parameters() if p.requires_grad)
    with OpTraffic(fp32_peaks=step.dtype == torch.float32) as traffic:
        step.loss().backward()
    return dict(traffic.ops), params, step.dtype, step.batch_size


def measure(case: Case, path_flags: tuple[str, ...]) -> dict:
    """Totals of :func:`step_traffic` with the optimizer step, the roofline time and the top op kinds."""
    ops, params, dtype, batch = step_traffic(case, path_flags)
    optimizer_bytes = ADAMW_BYTES_PER_PARAM * params
    ops["optimizer.adamw_fused"] = dict(calls=1, read=16 * params, written=12 * params, flops=0,
                                        seconds=optimizer_bytes / H100.bandwidth)
    total = {key: sum(op[key] for op in ops.values()) for key in ("calls", "read", "written", "flops", "seconds")}
    ranked = sorted(ops.items(), key=lambda item: -item[1]["seconds"])
    result = {"dtype": str(dtype).removeprefix("torch."), "batch_size": batch, "params": params,
              "ops": total["calls"], "gb_moved": (total["read"] + total["written"]) / 1e9,
              "tflop": total["flops"] / 1e12, "roofline_ms": 1e3 * total["seconds"],
              "memory_bound_ms": 1e3 * (total["read"] + total["written"]) / H100.bandwidth,
              "top": [dict(op=name, calls=op["calls"], gb=(op["read"] + op["written"]) / 1e9,
                           tflop=op["flops"] / 1e12, ms=1e3 * op["seconds"],
                           share=op["seconds"] / total["seconds"]) for name, op in ranked[:10]]}
    if case.anchor is not None:
        result["anchor_busy_over_roofline"] = case.anchor.gpu_busy_ms / result["roofline_ms"]
        result["speedup_bound"] = case.anchor.ms_per_step[0] / result["roofline_ms"]
    return result


def main(argv: list[str] | None = None) -> dict:
    cases, results, json_path = measure_all(__doc__.splitlines()[0], measure, PATHS, argv)
    _logger.info("%-30s %-8s %-9s %6s %9s %8s %11s %12s %11s %13s", "config", "path", "dtype", "ops", "GB moved",
                 "TFLOP", "roofline ms", "anchor busy", "busy/bound", "speed-up bound")
    for name, per_path in results.items():
        anchor = cases[name].anchor
        for path, r in per_path.items():
            _logger.info("%-30s %-8s %-9s %6d %9.2f %8.3f %11.2f %12s %11s %13s", name, path, r["dtype"], r["ops"],
                         r["gb_moved"], r["tflop"], r["roofline_ms"], f"{anchor.gpu_busy_ms:g}" if anchor else "",
                         f"{r['anchor_busy_over_roofline']:.1f}" if anchor else "",
                         f"{r['speedup_bound']:.1f}" if anchor else "")
    for name, per_path in results.items():
        r = per_path["default"]
        _logger.info("%s (default path): op kinds by roofline time (ms, share, calls, GB, TFLOP)", name)
        for op in r["top"]:
            _logger.info("  %7.2f %5.1f%% %6d %8.2f %7.3f  %s", op["ms"], 100 * op["share"], op["calls"], op["gb"],
                         op["tflop"], op["op"])
    if json_path:
        write_text_atomic(json_path, json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
