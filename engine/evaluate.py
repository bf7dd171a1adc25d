"""Checkpoint evaluation with firing rates, the SOP/MAC energy report and spike-trace export.

``firing_num.py`` (SDT) and ``test.py`` (STAtten) call :func:`run_evaluation`.  One pass over the validation set
gives top-1/top-5, the firing rate and non-zero ratio of every hook key at every time step (any T, averaged exactly
over all samples, :mod:`engine.firing`) and the energy of every Conv2d/Linear (:mod:`engine.energy`).  Outputs go to
``<--output>/<experiment>/`` (a new folder per run, never an earlier one nor the folder of the checkpoint; the root
is ``output/valid`` unless ``--output`` is given on the command line: an ``output`` read from the ``-c`` config, such
as a training run's ``args.yaml``, is that run's training root): ``<model>.log`` with the reference's
``non_zero:`` / ``firing_rate:`` blocks, ``args.yaml``, ``firing.json`` (with an ``energy`` section),
``firing.csv``, ``firing.png`` and ``energy.csv``; optionally ``qkv_<batch>.pkl`` (``--save-qkv``) and a trace
folder for ``hw/`` (``--export-traces DIR --trace-samples N``, format in docs/traces.md).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

from data import is_neuromorphic

from .args import empty_means_none
from .aster import int_list
from .atomic import folder_unwritable, nearest_existing
from .errors import ConfigError

__all__ = ["add_eval_arguments", "check_eval_args", "check_export_traces", "export_model_traces", "run_evaluation"]

_logger = logging.getLogger(__name__)
DEFAULT_VALID_ROOT = os.path.join("output", "valid")


def add_eval_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The evaluation flags shared by ``firing_num.py`` and ``test.py``."""
    group = parser.add_argument_group("Evaluation")
    group.add_argument("--large-valid", action=argparse.BooleanOptionalAction, default=False,
                       help="ImageNet at 288 px: Resize(320), CenterCrop(288), as the reference's 288-px test")
    group.add_argument("--save-qkv", action=argparse.BooleanOptionalAction, default=False,
                       help="save the hook dict of every batch (qkv_<i>.pkl)")
    group.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=False,
                       help="evaluate the checkpoint's EMA weights")
    group.add_argument("--export-traces", default="", metavar="DIR",
                       help="write spike traces of --trace-samples validation samples to DIR (for hw/)")
    group.add_argument("--trace-samples", type=int, default=16, metavar="N", help="samples to export as traces")
    group.add_argument("--e-mac", type=float, default=4.6, metavar="PJ", help="energy of a MAC (pJ, 45 nm fp32)")
    group.add_argument("--e-ac", type=float, default=0.9, metavar="PJ", help="energy of an accumulate (pJ)")
    group.add_argument("--first-layer-as-mac", action=argparse.BooleanOptionalAction, default=None,
                       help="charge the first layer as MACs (default: yes for static images, no for events)")
    group.add_argument("--encoding-steps", type=int, default=1, metavar="N",
                       help="time steps of the encoding conv charged as MACs (1 = the papers' recipe)")
    group.add_argument("--skip-blocks", type=int_list, default=None, metavar="L,L",
                       help="bypass the attention branch of these blocks (ASTER; default: a -c args.yaml's "
                            "'skipped_blocks', recorded by main.py and finetune.py; '' skips none)")
    return empty_means_none(parser)


def check_export_traces(args: argparse.Namespace) -> None:
    """With ``--export-traces DIR``: DIR must be a new or trace-free folder and ``--trace-samples`` at least 1.

    Raises:
        ConfigError: before anything is built or written.
    """
    from .traces import META_FILE

    target = args.export_traces
    if not target:
        return
    if args.trace_samples < 1:
        raise ConfigError(f"--trace-samples {args.trace_samples}: export at least 1 sample")
    existing = nearest_existing(target)
    if not os.path.isdir(existing):
        raise ConfigError(f"--export-traces {target}: {existing} is a file, not a folder; choose a new folder")
    if folder_unwritable(existing):
        raise ConfigError(f"--export-traces {target}: {existing} is not writable (a read-only file system, or not "
                          f"yours); choose another folder")
    if os.path.exists(os.path.join(target, META_FILE)):
        raise ConfigError(f"--export-traces {target} already holds a trace ({META_FILE}); choose a new folder, or "
                          f"--export-traces '' for none (a run's args.yaml given to -c names the folder that run "
                          f"exported to)")


def check_eval_args(args: argparse.Namespace) -> None:
    """The energy constants, ``--encoding-steps`` and the trace flags, checked before anything is built.

    Raises:
        ConfigError: a value out of range, naming the flag.
    """

    for flag, value in (("--e-mac", args.e_mac), ("--e-ac", args.e_ac)):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{flag} {value}: an energy per operation must be a non-negative number of pJ")
    if args.encoding_steps != 1 and is_neuromorphic(args.dataset):
        raise ConfigError(f"--encoding-steps {args.encoding_steps}: it counts the steps of a repeated static image; "
                          f"event frames differ at every step, so --first-layer-as-mac charges all T of them")
    if args.time_steps < 1:
        raise ConfigError(f"--time-steps {args.time_steps}: T must be a positive number of time steps")
    if not 1 <= args.encoding_steps <= args.time_steps:
        raise ConfigError(f"--encoding-steps {args.encoding_steps}: charge between 1 and T={args.time_steps} "
                          f"time steps of the encoding conv (1: the papers' recipe, T: every repeated copy)")
    check_export_traces(args)


def evaluation_output_root(args: argparse.Namespace, parser: argparse.ArgumentParser | None,
                           default: str = DEFAULT_VALID_ROOT) -> str:
    """``--output`` from the command line, else ``default``: an ``output`` from the config (a run's ``args.yaml``)
    is a training root, and an evaluation there would look like another training run."""
    if args.output and parser is not None and "output" not in getattr(parser, "command_line_dests", {"output"}):
        _logger.info("Writing under %s, not under the config's (training) output root %s; give another --output "
                     "on the command line to choose the root.", default, args.output)
        return default
    return args.output or default


def _checkpoint_path(args: argparse.Namespace) -> str:
    return args.resume or args.initial_checkpoint


def _load_weights(args: argparse.Namespace, model: torch.nn.Module) -> None:
    """``--resume`` or ``--initial-checkpoint`` (``--use-ema``: its EMA weights), strictly."""
    from .checkpoint import load_checkpoint_file, load_model_weights, weights_key

    path = _checkpoint_path(args)
    if args.resume and args.initial_checkpoint:
        _logger.warning("--resume %s wins over --initial-checkpoint %s, which is ignored", args.resume,
                        args.initial_checkpoint)
    if not path:
        _logger.warning("No --resume/--initial-checkpoint given: evaluating the randomly initialised model.")
        return
    checkpoint = load_checkpoint_file(path)
    key = weights_key(checkpoint, path, args.use_ema)
    load_model_weights(model, checkpoint, path, key=key, args=args)
    _logger.info("Loaded %s from %s (epoch %s).", key, path, checkpoint.get("epoch"))


def _configure_model(args: argparse.Namespace, model: torch.nn.Module) -> None:
    """The ``RunHooks.configure_model`` hook: ``--skip-blocks`` and ``--large-valid``."""
    if args.skip_blocks:
        try:
            model.skip_blocks = args.skip_blocks
        except ValueError as exc:
            raise ConfigError(f"--skip-blocks: {exc}") from None
        args.skipped_blocks = list(model.skip_blocks)
    _apply_large_valid(args)


def _apply_large_valid(args: argparse.Namespace) -> None:
    """Resize(320) + CenterCrop(288) for the evaluation loader.  Runs after the model is built (from the
    ``configure_model`` hook), so the model keeps its constructor size: the convolutional stem and blocks accept
    the larger token grid."""
    if args.large_valid:
        if args.img_size is not None and args.img_size < 224:
            _logger.warning("--large-valid evaluates ImageNet-sized models at 288 px; this model was built for %d px "
                            "images, which it will see upsampled to 288 (more tokens, another accuracy)",
                            args.img_size)
        args.img_size, args.input_size, args.crop_pct, args.interpolation = 288, None, 288 / 320, "bilinear"


def _single_samples(loader, device: str) -> Iterator[tuple[torch.Tensor, int]]:
    """One ``(input [1, ...], label)`` at a time, from an already-normalising loader."""
    for inputs, targets in loader:
        inputs = inputs.to(device).float()
        for i in range(inputs.shape[0]):
            yield inputs[i:i + 1], int(targets[i])


def export_model_traces(model: torch.nn.Module, loader, args: argparse.Namespace, trace_dir: str,
                        num_samples: int):
    """Spike traces (:mod:`engine.traces`) of the first ``num_samples`` validation samples, in loader order (trace
    sample i is validation sample i), from the model as built: skipped blocks record no SDSA work.  In a
    distributed run (the caller is the primary process) the whole validation set is read, not the process's share,
    so that the ids are the validation set's."""
    from .loaders import build_loaders
    from .model import model_kwargs, unwrap
    from .traces import export_traces

    if args.distributed:
        loader = build_loaders(argparse.Namespace(**{**vars(args), "distributed": False}), unwrap(model),
                               train=False).eval
    return export_traces(unwrap(model), _single_samples(loader, args.device), trace_dir, dataset=args.dataset,
                         num_samples=num_samples, model_config=model_kwargs(args))


def run_evaluation(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> dict:
    """Evaluate a checkpoint; returns the content of ``firing.json`` (accuracy, rates, energy, paths)."""
    from timm.utils import accuracy


    from .atomic import atomic_open, write_text_atomic
    from .distributed import is_primary
    from .energy import EnergyConstants, EnergyMeter, write_energy_csv
    from .firing import FiringRateMeter
    from .loop import _progress, _to_device
    from .outputs import RunOutputs, resolve_output_dir
    from .run import RunHooks, setup_evaluation

    check_eval_args(args)
    setup = setup_evaluation(args, parser, RunHooks(configure_model=_configure_model, load_weights=_load_weights))
    if args.save_qkv and args.distributed:
        raise ConfigError("--save-qkv saves the hook dict of every batch in validation order: run it in one process "
                          "(each process of a distributed run sees only its share of the samples)")
    model, loaders, amp = setup.model.eval(), setup.loaders, setup.amp

    args.output = evaluation_output_root(args, parser)
    output_dir = resolve_output_dir(args, reuse_resume_dir=False)
    outputs = RunOutputs(args, output_dir, log_name=f"{args.model}.log") if is_primary(args) else None

    rates = FiringRateMeter()
    energy = EnergyMeter(model, T=model.T, dvs_input=is_neuromorphic(args.dataset),  # not dvs_mode (attention)
                         constants=EnergyConstants(e_mac_pj=args.e_mac, e_ac_pj=args.e_ac),
                         first_layer_as_mac=args.first_layer_as_mac, encoding_steps=args.encoding_steps)
    correct = torch.zeros(2, dtype=torch.float64, device=args.device)
    seen = torch.zeros((), dtype=torch.float64, device=args.device)
    top_k = (1, min(5, model.num_classes))
    with torch.no_grad(), energy:
        for batch_idx, (inputs, target) in enumerate(_progress(loaders.eval, args, "eval")):
            inputs, target = _to_device(inputs, target, args)
            with amp.autocast():
                output, hook = model(inputs, hook={})
            output = output.float()
            if output.dim() == 3:  # TET: per-step logits, averaged as in training-time validation
                output = output.mean(0)
            acc1, acc5 = accuracy(output, target, topk=top_k)
            correct += (torch.stack([acc1, acc5]).double() * target.numel() / 100.0).round()  # timm: float32 %
            seen += target.numel()
            rates.update(hook)
            if args.save_qkv and is_primary(args):
                with atomic_open(os.path.join(output_dir, f"qkv_{batch_idx}.pkl"), "wb") as file:
                    torch.save(hook, file)
    if args.distributed:  # every process saw its share of the samples
        for tensor in (correct, seen):
            dist.all_reduce(tensor)
        rates.all_reduce()
        energy.all_reduce()
    top1, top5 = (100.0 * correct / seen).tolist()
    if not is_primary(args):
        return {}

    _logger.info("top-1: %.4f, top-5: %.4f (%d samples)", top1, top5, int(seen.item()))
    energy_rows, energy_summary = energy.rows(), energy.summary()
    write_energy_csv(energy_rows, os.path.join(output_dir, "energy.csv"))
    _logger.info("Energy: %.6f mJ per image (%.4g MACs x %.2f pJ + %.4g SOPs x %.2f pJ; ANN FLOPs %.4g)",
                 energy_summary["energy_mj"], energy_summary["macs"], args.e_mac, energy_summary["sops"],
                 args.e_ac, energy_summary["ann_flops"])
    content = rates.write(output_dir, extra={"top1": top1, "top5": top5, "checkpoint": _checkpoint_path(args),
                                             "energy": {**energy_summary,
                                                        "layers": [vars(r) for r in energy_rows]}})
    if args.export_traces:
        meta = export_model_traces(model, loaders.eval, args, args.export_traces, args.trace_samples)
        content["traces"] = {"dir": os.path.abspath(args.export_traces), "samples": len(meta.samples)}
        write_text_atomic(os.path.join(output_dir, "firing.json"), json.dumps(content, indent=2))
    outputs.writer.add_scalar("eval/top1", top1, 0)
    outputs.writer.add_scalar("eval/top5", top5, 0)
    outputs.writer.add_scalar("eval/energy_mj", energy_summary["energy_mj"], 0)
    _logger.info("Wrote %s", output_dir)
    # Last in the log, as in the reference: ASTER's sdt.log parser reads the firing_rate JSON up to a blank line
    # or the end of the file.
    rates.log_reference_block(logging.getLogger("valid"))
    outputs.close()
    return content
