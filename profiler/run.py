"""``python -m profiler run``: the fork's notebook driver (model.ipynb) as a command, with the options it lacked.

Defaults reproduce the fork's captures: an untrained ``sdt`` 8-768 STAtten model (T=4, chunk 2, 1000 classes,
32x32 input, pooling "1111"), 30 forward passes on fresh ``randn(1, 3, 32, 32)`` inputs, in train mode with
autograd on, without resetting the neurons between runs.  Writes into ``--out``:

* ``capture.txt``: the fork's text lines (``profiler.fork_format``), readable by ``python -m profiler parse``;
* ``records.jsonl``: the same measurements as JSON lines (``profiler.records``);
* ``args.yaml`` (the resolved options) and ``meta.json`` (versions, device).

The four files are written as temporary files and renamed together at the end, so an interrupted run leaves
none; a folder that already holds a capture is kept, and the run goes to ``DIR-1``, ``DIR-2``, ... instead
(as ``engine.outputs.resolve_output_dir`` does for training runs).
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import logging
import platform
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from pathlib import Path

import timm
import torch
import yaml
from torch import nn

from module import ATTENTION_MODES, REFERENCES, SPIKE_MODES

from engine.aster import int_list
from engine.atomic import atomic_open
from engine.model import check_model_name
from .capture import Capture, capture_from_records
from .fork_format import ForkTextWriter
from .records import JsonlWriter
from .session import ProfileSession
from .tables import free_folder, summary_lines

__all__ = ["add_run_arguments", "build_model", "int_at_least", "make_inputs", "output_folder", "run_profile"]

_logger = logging.getLogger(__name__)

_OUTPUTS = ("capture.txt", "records.jsonl", "args.yaml", "meta.json")
_NOT_OPTIONS = ("command", "verbose", "config", "ignore_unknown_keys")  # the CLI's own, not run options


class _NotAnIntAtLeast(argparse.ArgumentTypeError, ValueError):
    """A bad count: argparse reports its message; the config reader (``engine.config.load_config``) reports the key
    and the type's name."""


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``low`` (named so for the config reader's message)."""
    def convert(text) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise _NotAnIntAtLeast(f"{text!r} is not an integer") from None
        if value < low:
            raise _NotAnIntAtLeast(f"{value} is less than {low}")
        return value

    convert.__name__ = f"whole number of at least {low}"
    return convert


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``run`` options; model options use the reference train.py names (and YAML keys)."""
    group = parser.add_argument_group("Model parameters")
    group.add_argument("--model", default="sdt", help="timm model name (default: sdt)")
    group.add_argument("--dim", type=int, default=768, help="embedding dimension (default: 768)")
    group.add_argument("--layer", type=int, default=8, help="number of encoder blocks (default: 8)")
    group.add_argument("--num-heads", type=int, default=8)
    group.add_argument("--mlp-ratio", type=float, default=4)
    group.add_argument("--time-steps", type=int, default=4, help="T (default: 4)")
    group.add_argument("--img-size", type=int, default=32)
    group.add_argument("--in-channels", type=int, default=3)
    group.add_argument("--num-classes", type=int, default=1000)
    group.add_argument("--pooling-stat", default="1111", help="stem max-pools (default: 1111, as the fork)")
    group.add_argument("--spike-mode", default="lif", choices=sorted(SPIKE_MODES))
    group.add_argument("--attention-mode", default="STAtten", choices=ATTENTION_MODES)
    group.add_argument("--chunk-size", type=int, default=2)
    group.add_argument("--reference", default=None, choices=REFERENCES,
                       help="which code base to follow where SDT and STAtten differ (default: statten for STAtten "
                            "attention, else sdt); a STAtten-repo checkpoint in SDT mode needs statten")
    group.add_argument("--skip-blocks", type=int_list, default=None, metavar="L,L",
                       help="bypass the attention branch of these blocks (ASTER; default: a -c args.yaml's "
                            "'skipped_blocks', recorded by main.py and finetune.py; '' skips none)")
    group.add_argument("--dvs-mode", action=argparse.BooleanOptionalAction, default=False)
    group.add_argument("--encode-once", action=argparse.BooleanOptionalAction, default=False,
                       help="run the stem's first conv + BN once on a static image instead of on T copies (the "
                            "fork ran T copies, so SPS.PSM is comparable only without it)")
    group.add_argument("--checkpoint", type=Path, default=None, metavar="PATH",
                       help="weights to load (a train.py checkpoint or a state dict of this architecture); "
                            "without it the weights are random")

    group = parser.add_argument_group("Input")
    group.add_argument("--input", default="randn", choices=("randn", "dataset"),
                       help="a fresh torch.randn batch per run, or batches of a dataset through engine/")
    group.add_argument("--dataset", default="", help="dataset name for --input dataset")
    group.add_argument("--data-dir", default="", help="dataset folder for --input dataset")
    group.add_argument("--mean", type=float, nargs="+", default=None, metavar="MEAN",
                       help="--input dataset: normalisation mean (default: the model's, as train.py)")
    group.add_argument("--std", type=float, nargs="+", default=None, metavar="STD",
                       help="--input dataset: normalisation std (default: the model's, as train.py)")
    group.add_argument("--crop-pct", type=float, default=None,
                       help="--input dataset: centre-crop fraction (default: the model's, as train.py)")
    group.add_argument("--interpolation", default="",
                       help="--input dataset: resize interpolation (default: the model's, as train.py)")
    group.add_argument("-b", "--batch-size", type=int_at_least(1), default=1,
                       help="images per run (default: 1, the fork's); a config's batch_size is used too")
    group.add_argument("--seed", type=int, default=0, help="seeds the weights and the random inputs")

    group = parser.add_argument_group("Execution")
    group.add_argument("--runs", type=int_at_least(1), default=30, help="recorded forward passes (default: 30)")
    group.add_argument("--warmup", type=int_at_least(0), default=0, help="unrecorded forward passes first (default: 0)")
    group.add_argument("--mode", default="train", choices=("train", "eval"),
                       help="train: BN batch statistics and autograd, as the fork; eval: eval() + inference_mode")
    group.add_argument("--reset", action=argparse.BooleanOptionalAction, default=False,
                       help="reset the neurons before every run (the fork did not)")
    group.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    group.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False, help="torch.autocast")
    group.add_argument("--amp-dtype", default="float16", choices=("float16", "bfloat16"))

    group = parser.add_argument_group("Measurements and output")
    group.add_argument("--timers", action=argparse.BooleanOptionalAction, default=True)
    group.add_argument("--sparsity", action=argparse.BooleanOptionalAction, default=True,
                       help="sparsity probes; their reductions run inside the timed intervals, so use "
                            "--no-sparsity for the cleanest times")
    group.add_argument("--text-units", default="fork", choices=("fork", "ns"),
                       help="fork: the fork's units and 4 decimals of a second; ns: every timer in ns (lossless)")
    group.add_argument("--out", type=Path, default=None,
                       help="output folder (required, on the command line or as 'out' in the config); one that "
                            "holds a capture is kept and DIR-1, DIR-2, ... used instead")


def build_model(args: argparse.Namespace) -> nn.Module:
    """The model of ``args``, seeded.  Without ``--reset`` the neurons carry their membrane from one run into the
    next, as in the fork (stateful spikingjelly neurons, ``auto_reset=False``); with it they are the stateless
    fused neurons of training.

    Raises:
        ConfigError: ``--model`` is not a model of this project.
        ValueError: the configuration cannot be built (the message names the argument), or ``--skip-blocks``
            names a block the model lacks.
    """
    check_model_name(args.model)  # also registers the models with timm
    torch.manual_seed(args.seed)
    net = timm.create_model(
        args.model, img_size_h=args.img_size, img_size_w=args.img_size, in_channels=args.in_channels,
        num_classes=args.num_classes, embed_dims=args.dim, num_heads=args.num_heads, mlp_ratios=args.mlp_ratio,
        depths=args.layer, T=args.time_steps, pooling_stat=args.pooling_stat, spike_mode=args.spike_mode,
        attention_mode=args.attention_mode, chunk_size=args.chunk_size, reference=args.reference,
        dvs_mode=args.dvs_mode, neuron_backend="fused" if args.reset else "spikingjelly", encode_once=args.encode_once)
    if args.skip_blocks:
        try:
            net.skip_blocks = args.skip_blocks
        except ValueError as exc:
            raise ValueError(f"--skip-blocks: {exc}") from None
    if not args.reset:
        net.auto_reset = False
    if args.checkpoint is not None:
        from engine.checkpoint import load_checkpoint_file, load_model_weights

        load_model_weights(net, load_checkpoint_file(str(args.checkpoint)), str(args.checkpoint))
    elif args.mode == "eval":
        _logger.warning("--mode eval without --checkpoint: random weights with initial BatchNorm statistics "
                        "hardly fire, so the sparsity (and the timings of an idle network) say little")
    return net


def _random_inputs(args: argparse.Namespace, device: torch.device) -> Iterator[torch.Tensor]:
    generator = torch.Generator().manual_seed(args.seed)
    frame = (args.in_channels, args.img_size, args.img_size)
    shape = (args.batch_size, args.time_steps, *frame) if args.dvs_mode else (args.batch_size, *frame)
    while True:
        yield torch.randn(shape, generator=generator).to(device)


def _dataset_loader(args: argparse.Namespace, device: torch.device, net: nn.Module):
    """The validation loader of ``--dataset`` from the training engine, as test.py builds it: the same
    normalisation, crop and interpolation (``--mean``, ``--std``, ``--crop-pct``, ``--interpolation``, the gaps
    filled from ``net``'s pretrained config)."""
    from engine.args import get_args_parser
    from engine.config import parse_args
    from engine.loaders import build_loaders
    from engine.model import resolve_model_args
    from engine.validate import check_run_args

    engine_args = parse_args(argparse.ArgumentParser(parents=[get_args_parser()]), [
        "--dataset", args.dataset, "--data-dir", args.data_dir, "--img-size", str(args.img_size), "--in-channels",
        str(args.in_channels), "--time-steps", str(args.time_steps), "--num-classes", str(args.num_classes),
        "-vb", str(args.batch_size), "--workers", "0", "--device", str(device), "--seed", str(args.seed)])
    engine_args.distributed, engine_args.world_size, engine_args.rank = False, 1, 0
    engine_args.mean, engine_args.std = args.mean, args.std
    engine_args.crop_pct, engine_args.interpolation = args.crop_pct, args.interpolation
    check_run_args(engine_args, train=False)
    resolve_model_args(engine_args)
    return build_loaders(engine_args, net, train=False).eval


def _full_batches(loader, batch_size: int, device: torch.device) -> Iterator[torch.Tensor]:
    """The loader's batches, cycled, without the short last one (drop_last): a batch of another size would
    restart the carried membrane from zero (spikingjelly does so silently) and mix batch sizes in the tables."""
    while True:
        for images, _ in loader:
            if len(images) == batch_size:
                yield images.to(device)


def _check_dataset_size(args: argparse.Namespace, images: int) -> None:
    """Refuse a validation split smaller than one batch; say once that the short last batch is skipped.

    Raises:
        ValueError: fewer images than ``--batch-size``.
    """
    if images < args.batch_size:
        raise ValueError(f"--input dataset: {args.dataset!r} has {images} validation images, fewer than one batch "
                         f"(--batch-size {args.batch_size}): give a smaller --batch-size")
    left_over = images % args.batch_size
    if left_over:
        _logger.info("--input dataset: %d validation images in batches of %d; the last %d are skipped on every pass "
                     "(a short batch would change the batch shape)", images, args.batch_size, left_over)


def make_inputs(args: argparse.Namespace, device: torch.device, net: nn.Module) -> Iterator[torch.Tensor]:
    """An endless stream of input batches: ``torch.randn`` (``--input randn``), or the full validation batches of
    ``--dataset`` (``--input dataset``, through the training engine's loader for ``net``, cycled).

    Raises:
        ValueError: ``--input dataset`` without ``--dataset``, or with fewer images than one batch.
        engine.errors.DatasetError, ConfigError: the dataset cannot be read (missing folder, ...), or bad transform
            options.
    """
    if args.input == "randn":
        return _random_inputs(args, device)
    if not args.dataset:
        raise ValueError("--input dataset needs --dataset NAME (and --data-dir DIR)")
    loader = _dataset_loader(args, device, net)
    _check_dataset_size(args, len(loader.dataset))
    return _full_batches(loader, args.batch_size, device)


def output_folder(out: Path) -> Path:
    """``out``, or ``out-1``, ``out-2``, ... (the first that is free) if ``out`` already holds a capture
    (:func:`profiler.tables.free_folder`).

    Raises:
        ValueError: ``out`` is a file.
    """
    return free_folder(out, _OUTPUTS, "a capture")


def _cpu_name() -> str:
    """The CPU model (``platform.processor()`` is empty on Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    except OSError:
        names = []
    return names[0] if names else platform.processor() or platform.machine()


def _meta(device: torch.device) -> dict:
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "timm": timm.__version__,
            "spikingjelly": importlib.metadata.version("spikingjelly"), "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
            "cpu_threads": torch.get_num_threads()}


def run_profile(args: argparse.Namespace, net: nn.Module, inputs: Iterator[torch.Tensor]) -> Capture:
    """Run ``args.warmup`` unrecorded and ``args.runs`` recorded forward passes; write the outputs into
    ``args.out`` (see :func:`output_folder`), all four files at the end."""
    device = torch.device(args.device)
    net.to(device).train(args.mode == "train")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    grad_mode = torch.inference_mode() if args.mode == "eval" else nullcontext()
    autocast = torch.autocast(device.type, dtype=getattr(torch, args.amp_dtype), enabled=args.amp)
    records = []
    with (atomic_open(out / "capture.txt") as text, atomic_open(out / "records.jsonl") as jsonl,
          atomic_open(out / "args.yaml") as args_file, atomic_open(out / "meta.json") as meta_file):
        options = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k not in _NOT_OPTIONS}
        yaml.safe_dump(options, args_file, sort_keys=False)  # reusable: python -m profiler run -c args.yaml
        json.dump(_meta(device), meta_file, indent=2)
        with grad_mode, autocast, ProfileSession(net, device, timers=args.timers, probes=args.sparsity) as session:
            writers = [ForkTextWriter(text, args.text_units), JsonlWriter(jsonl)]
            for number in range(1 - args.warmup, args.runs + 1):  # warm-up runs are numbered <= 0, not written
                if args.reset:
                    net.reset_neurons()
                x = next(inputs)
                run_records = session.run(number, lambda: net(x))
                if number > 0:
                    for writer in writers:
                        writer.write(run_records)
                    records += run_records
                    _logger.debug("run %d done", number)
    capture = capture_from_records("records.jsonl", records, num_layers=args.layer)
    _logger.info("%d runs on %s written to %s; means over the runs:\n%s", args.runs, device, out,
                 "\n".join(summary_lines(capture)))
    return capture
