"""Memory the training step keeps for the backward, counted exactly on the meta device (no data, no compute).

    python benchmarks/saved_memory.py                # every anchor config of issue 10
    python benchmarks/saved_memory.py --tiny --json out.json

The engine builds each config's model on PyTorch's meta device (shapes and dtypes only) and runs one training
forward and loss under ``torch.autograd.graph.saved_tensors_hooks``, which sees every tensor autograd keeps for the
backward.  Tensors are counted once per storage (views share one), parameters apart.  Reported per model path:

* ``saved``: activations kept for the backward at the end of the forward;
* ``state``: parameters, their gradients and AdamW's two moments (4 x the parameter bytes);
* ``saved + state`` next to the anchor's peak memory.  The real peak also holds the backward's temporaries, cuDNN
  workspaces and allocator slack, so the ratio is a lower bound of the measured one.

The meta device has no autocast, so an AMP config runs with the model and input cast to its half-precision dtype:
the activations are then half precision as under autocast (which also keeps the loss and a few [C]-sized BatchNorm
tensors in fp32, a negligible difference).  Paths: ``spikingjelly`` (its neurons, a Python loop over T off CUDA,
on T copies of a static image), ``default`` (fused neurons, encoding conv once) and ``bn_lif``
(``--fuse-bn-lif`` on top).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.bench_train import ANCHORS, TINY, Case, _random_batch, engine_args  # noqa: E402
from engine.atomic import unwritable_reason, write_text_atomic  # noqa: E402
from engine.losses import build_train_loss  # noqa: E402
from engine.model import build_model, resolve_model_args  # noqa: E402
from engine.optim import compute_dtype  # noqa: E402

__all__ = ["PATHS", "MetaStep", "saved_bytes", "build_on_meta", "measure", "measure_all", "main"]

_logger = logging.getLogger("saved_memory")
_GIB = 2.0 ** 30
PATHS = {
    "spikingjelly": ("--neuron-backend", "spikingjelly", "--no-encode-once"),
    "default": (),
    "bn_lif": ("--fuse-bn-lif",),
}


def saved_bytes(model: torch.nn.Module, step) -> int:
    """Bytes of the distinct non-parameter storages that autograd saves while ``step()`` runs."""
    params = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, torch.UntypedStorage] = {}  # holding the storages keeps their ids from being reused

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage._cdata not in params:
            saved[storage._cdata] = storage
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(s.nbytes() for s in saved.values())


@dataclass
class MetaStep:
    """A config's model, loss and batch on the meta device, in the dtype its training step computes in."""

    model: torch.nn.Module
    loss: Callable[[], torch.Tensor]  # the forward and loss of one training step
    dtype: torch.dtype
    batch_size: int
    fp32_parameter_bytes: int


def build_on_meta(case: Case, path_flags: tuple[str, ...]) -> MetaStep:
    """Build one config on one model path on the meta device (shapes only): an AMP config's model and input are
    cast to its half-precision dtype, as autocast would compute them (the meta device has no autocast)."""
    args = engine_args([*case.flags, *path_flags, "--device", "cpu"])
    resolve_model_args(args)
    dtype = compute_dtype(args)
    with torch.device("meta"):
        model = build_model(args).train()
        loss_fn = build_train_loss(args, mixup_active=False)
        args.device = "meta"
        inputs, target = _random_batch(args, soft_targets=False)
    fp32_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    model.to(dtype)
    return MetaStep(model, lambda: loss_fn(model(inputs.to(dtype)).float(), target), dtype, args.batch_size,
                    fp32_bytes)


def measure(case: Case, path_flags: tuple[str, ...]) -> dict:
    """``saved`` and ``state`` bytes of one config on one model path (meta device; AMP configs in half precision)."""
    step = build_on_meta(case, path_flags)
    saved = saved_bytes(step.model, step.loss)
    state = 4 * step.fp32_parameter_bytes  # fp32 master weights, gradients, AdamW's two moments
    return {"saved_gib": saved / _GIB, "state_gib": state / _GIB, "batch_size": step.batch_size,
            "dtype": str(step.dtype).removeprefix("torch.")}


def measure_all(description: str, measure_case: Callable[[Case, tuple[str, ...]], dict], paths: dict,
                argv: list[str] | None) -> tuple[dict[str, Case], dict, str]:
    """The command line of the meta-device benchmarks (``--tiny``, ``--json``): ``(cases, {config: {path:
    measure_case(case, path flags)}}, JSON path)``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tiny", action="store_true", help="the tiny CPU configs instead of the anchors")
    parser.add_argument("--json", default="", metavar="PATH", help="write the results here")
    opts = parser.parse_args(argv)
    if opts.json and (reason := unwritable_reason(opts.json)):
        parser.error(f"--json {opts.json}: {reason}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cases = TINY if opts.tiny else ANCHORS
    results = {name: {path: measure_case(case, flags) for path, flags in paths.items()}
               for name, case in cases.items()}
    return cases, results, opts.json


def main(argv: list[str] | None = None) -> dict:
    cases, results, json_path = measure_all(__doc__.splitlines()[0], measure, PATHS, argv)
    header = (f"{'config':30s} {'path':13s} {'dtype':9s} {'saved GiB':>10s} {'state GiB':>10s} {'sum GiB':>8s} "
              f"{'anchor GiB':>10s}")
    _logger.info("%s %s", header, "sum / anchor")
    for name, per_path in results.items():
        anchor = cases[name].anchor
        for path, r in per_path.items():
            total = r["saved_gib"] + r["state_gib"]
            ratio = f"{total / anchor.peak_gib:.2f}" if anchor else ""
            _logger.info("%-30s %-13s %-9s %10.3f %10.3f %8.3f %10s %s", name, path, r["dtype"], r["saved_gib"],
                         r["state_gib"], total, f"{anchor.peak_gib:g}" if anchor else "", ratio)
    if json_path:
        write_text_atomic(json_path, json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
