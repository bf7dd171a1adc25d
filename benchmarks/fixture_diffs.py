"""Max differences between our model and every reference fixture, on any device (a table, no assertions).

    python benchmarks/fixture_diffs.py --device cuda

The model variants of the fixture tests: ``fused`` (the defaults: our stateless LIF op, whose CUDA kernels are in
Triton, and the static encoding conv run once), ``spikingjelly`` (spikingjelly 2.0's neurons, Triton on CUDA,
on T repeated copies), ``bn_lif`` (the defaults with ``fuse_bn_lif``: its train step runs without the hook dict,
whose hooks would keep the pairs unfused) and ``channels_last`` (the defaults with the model and a static input in
NHWC memory, as ``--channels-last`` trains); opt-in, as compiling takes tens of seconds per fixture: ``compiled``
(the defaults with the training copy compiled in place, ``train.compile(backend=--compile-backend)``, as
``--torchcompile`` trains; the eval output and hook columns stay eager, the hooks being a Python dict).  This shows
how far each path is from the reference's CPU float32 numbers (eval output, hook tensors, train output, loss,
gradients, BN running stats), in true float32 unless ``--tf32``.

Without a GPU, ``TRITON_INTERPRET=1`` runs our ops' Triton kernels (the CUDA code path) on the CPU in Triton's
interpreter, slowly (about 20 s per static fixture and variant, ten minutes per event-frame one)::

    TRITON_INTERPRET=1 python benchmarks/fixture_diffs.py --device cpu --variants fused bn_lif channels_last

The compiled training step on the CPU, without inductor's code generation (graph capture and autograd only)::

    python benchmarks/fixture_diffs.py --device cpu --variants compiled --compile-backend aot_eager
"""
from __future__ import annotations

import argparse
import copy
import logging
import sys
from pathlib import Path

import torch
import torch._dynamo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from engine.errors import ConfigError  # noqa: E402
from engine.validate import check_device  # noqa: E402
from module.fused_lif import runs_triton  # noqa: E402
from reference_fixtures import FIXTURES, VARIANTS, build_seeded, load_fixture, reference_loss, unpack_hook  # noqa: E402

_logger = logging.getLogger("fixture_diffs")


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.detach().float().cpu() - b.float()).abs().max().item()


MODEL_VARIANTS = {**VARIANTS, "bn_lif": {"fuse_bn_lif": True}, "channels_last": {}, "compiled": {}}
MEMORY_FORMATS = {"channels_last": torch.channels_last}  # the other variants: contiguous
COMPILED_VARIANTS = {"compiled"}  # their training copy runs under torch.compile
DEFAULT_VARIANTS = [v for v in MODEL_VARIANTS if v not in COMPILED_VARIANTS]  # compiling is slow: opt-in


def fixture_diffs(path: Path, device: torch.device, variant: str = "fused", compile_backend: str = "inductor") -> dict:
    """Max absolute differences for one fixture file and model variant (:data:`MODEL_VARIANTS`), and the share of
    hook elements that differ.  A compiled variant compiles the training copy with ``compile_backend``."""
    fixture = load_fixture(path)
    net = build_seeded(fixture, **MODEL_VARIANTS[variant])
    net.load_state_dict(fixture["state_dict"])
    memory_format = MEMORY_FORMATS.get(variant, torch.contiguous_format)
    net.to(device, memory_format=memory_format).eval()
    x = fixture["input"].float().to(device)
    if x.dim() == 4:
        x = x.contiguous(memory_format=memory_format)
    with torch.no_grad():
        out, hook = net(x, hook=dict())
    pairs = [(hook[k][:, :1].detach().float().cpu(), unpack_hook(e).float()) for k, e in fixture["hook"].items()]
    hook_err = max((ours - theirs).abs().max().item() for ours, theirs in pairs)
    flips = sum((ours != theirs).sum().item() for ours, theirs in pairs) / sum(t.numel() for _, t in pairs)
    train = copy.deepcopy(net).train()
    if variant in COMPILED_VARIANTS:
        torch._dynamo.reset()  # a fresh cache per fixture: its new shapes never hit the recompilation limit
        train.compile(backend=compile_backend)
    out_t = train(x)
    loss = reference_loss({**fixture, "labels": fixture["labels"].to(device)}, out_t)
    loss.backward()
    params = dict(train.named_parameters())
    state = train.state_dict()
    return {
        "fixture": f"{variant}:{path.stem}",
        "eval_out": _max_abs(out, fixture["eval_output"]),
        "hooks": hook_err,
        "hook_flips": flips,
        "train_out": _max_abs(out_t, fixture["train_output"]),
        "loss": abs(loss.item() - fixture["train_loss"]),
        "grads": max(_max_abs(params[k].grad, g) for k, g in fixture["grads"].items()),
        "bn_stats": max(_max_abs(state[k], v) for k, v in fixture["train_bn_running_stats"].items()),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS, choices=list(MODEL_VARIANTS),
                        help=f"model variants (default: {' '.join(DEFAULT_VARIANTS)}; compiled is opt-in, tens of "
                             "seconds per fixture)")
    parser.add_argument("--fixtures", nargs="+", default=None, metavar="NAME",
                        help="fixture names, e.g. sdt_A_lif_static (default: all)")
    parser.add_argument("--tf32", action="store_true",
                        help="let cuDNN and cuBLAS run float32 in TF32 (PyTorch's default for convolutions, so also "
                             "training's): its 10-bit mantissa moves membranes across the threshold, so the spikes "
                             "differ; without it the comparison is in true float32")
    parser.add_argument("--compile-backend", default="inductor", metavar="BACKEND",
                        help="torch.compile backend of the compiled variant's training step (default inductor; "
                             "aot_eager is the fast CPU check); its eval output and hooks stay eager")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = args.tf32
    try:
        check_device(args.device)
    except ConfigError as exc:
        parser.error(str(exc))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    names = [p.stem for p in FIXTURES]
    unknown = sorted(set(args.fixtures or ()) - set(names))
    if unknown:
        parser.error(f"no fixture named {unknown}; choose from {names}")
    backends = torch._dynamo.list_backends(exclude_tags=())
    if args.compile_backend not in backends:
        parser.error(f"no torch.compile backend named {args.compile_backend!r}; choose from {backends}")
    paths = [p for p in FIXTURES if args.fixtures is None or p.stem in args.fixtures]
    cols = ["fixture", "eval_out", "hooks", "hook_flips", "train_out", "loss", "grads", "bn_stats"]
    kernels = "Triton kernels" if runs_triton(torch.empty(0, device=device)) else "PyTorch loops and ATen"
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    _logger.info("device: %s (%s; our ops run %s; TF32 %s); hook_flips: the share of hook elements (spikes) "
                 "that differ", args.device, name, kernels, "on" if args.tf32 else "off")
    _logger.info(" | ".join(f"{c:>47s}" if c == "fixture" else f"{c:>9s}" for c in cols))
    rows, failed = [], 0
    for variant in args.variants:  # each row as soon as it is known: a variant that fails keeps the others
        for path in paths:
            try:
                row = fixture_diffs(path, device, variant, args.compile_backend)
            except Exception as exc:  # noqa: BLE001  (report it, go on with the next)
                failed += 1
                _logger.error(f"{variant + ':' + path.stem:>47s} | failed: {type(exc).__name__}: {exc}")
                continue
            rows.append(row)
            _logger.info(" | ".join(f"{row[c]:>47s}" if c == "fixture" else f"{row[c]:9.2e}" for c in cols))
    for variant in args.variants:
        mine = [r for r in rows if r["fixture"].startswith(variant + ":")]
        if mine:
            _logger.info(f"{'max ' + variant:>47s} | "
                         + " | ".join(f"{max(r[c] for r in mine):9.2e}" for c in cols[1:]))
    if failed:
        raise SystemExit(f"{failed} fixture comparisons failed (see above)")


if __name__ == "__main__":
    main()
