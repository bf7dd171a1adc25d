"""Model creation from the parsed arguments, and its preparation for (distributed) training."""
from __future__ import annotations

import argparse
import logging
from collections.abc import Collection, Sequence

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["DVS_MODE_DATASETS", "reconcile_input_size", "apply_variant_defaults", "check_model_name",
           "log_variant_defaults",
           "resolve_model_args", "model_kwargs", "build_model", "uses_channels_last", "prepare_model",
           "freeze_parameters", "build_model_ema", "compile_model", "distribute_model", "unwrap"]

_logger = logging.getLogger(__name__)

# Datasets for which the reference switched on ``dvs_mode`` (SDT: cifar10-dvs(-tet); STAtten: also ncaltech101;
# neither did it for gesture).
DVS_MODE_DATASETS = ("cifar10-dvs", "cifar10-dvs-tet", "ncaltech101")
_DEFAULT_IMG_SIZE = 224


def _dvs_default_img_size(dataset: str) -> int | None:
    """The frame size of an event dataset (64, 128, 32, ...), or None for other datasets."""
    from data import is_neuromorphic

    if not is_neuromorphic(dataset):
        return None
    from data.neuromorphic import DEFAULT_IMG_SIZE

    return DEFAULT_IMG_SIZE[dataset.lower()]


# The engine's argument for each constructor argument a named variant (``--model sdt_8_512``, ...) fixes.
_VARIANT_ARGS = {"img_size_h": "img_size", "in_channels": "in_channels", "num_classes": "num_classes",
                 "embed_dims": "dim", "depths": "layer", "T": "time_steps", "pooling_stat": "pooling_stat",
                 "num_heads": "num_heads", "dvs_mode": "dvs_mode"}


def _check_square(input_size: Sequence[int]) -> None:
    if input_size[-2] != input_size[-1]:
        raise ConfigError(f"--input-size {' '.join(map(str, input_size))}: the model takes square images (img_size); "
                          f"give the same height and width")


def reconcile_input_size(args: argparse.Namespace, command_line: Collection[str],
                         given: Collection[str]) -> list[str]:
    """Let ``--input-size C H W`` and ``--in-channels`` / ``--img-size`` follow CLI > YAML: a command-line
    ``--input-size`` replaces the config's sizes; a config's ``input_size`` gives way to the sizes on the command
    line (it is folded into the ones the command line leaves, then dropped).  Returns the options it set that way.

    Args:
        args: parsed arguments, changed in place.
        command_line: the options given on the command line.
        given: the options given on the command line or in the config.

    Raises:
        ConfigError: a non-square ``--input-size``, or one contradicted by a size given at the same level (both on
            the command line, or both in the config).
    """
    input_size = getattr(args, "input_size", None)
    if input_size is None:
        return []
    _check_square(input_size)
    sizes = {"in_channels": input_size[0], "img_size": input_size[-1]}
    from_command_line = "input_size" in command_line
    level = command_line if from_command_line else given
    if not from_command_line and not set(command_line).isdisjoint(sizes):
        folded = [dest for dest in sizes if dest not in command_line]
        for dest in folded:
            setattr(args, dest, sizes[dest])
        args.input_size = None
        return folded
    clashes = [f"--{dest.replace('_', '-')} {getattr(args, dest)}" for dest, value in sizes.items()
               if dest in level and getattr(args, dest) not in (None, value)]
    if clashes:
        where = "on the command line" if from_command_line else "in the config"
        raise ConfigError(f"--input-size {' '.join(map(str, input_size))} disagrees with {' and '.join(clashes)}, "
                          f"both {where}; give the size one way: --input-size C H W, or --in-channels C --img-size N")
    return []


def apply_variant_defaults(args: argparse.Namespace, given: Collection[str], log: bool = True) -> list[str]:
    """Give ``args`` the architecture of the named variant ``args.model`` (``--model sdt_8_384``: 8 blocks of width
    384, 224 px, 1000 classes) wherever the option is not in ``given`` (the options set on the command line or in
    the config), instead of the script's default sizes.  Returns what changed (``["layer=8", ...]``), logged
    unless ``log`` is false (then see :func:`log_variant_defaults`)."""
    from model import variant_defaults

    taken = []
    for name, value in variant_defaults(args.model).items():
        dest = _VARIANT_ARGS.get(name)
        if dest is not None and dest not in given and getattr(args, dest) != value:
            setattr(args, dest, value)
            taken.append(f"{dest}={value}")
    if log:
        log_variant_defaults(args.model, taken)
    return taken


def log_variant_defaults(model_name: str, taken: Collection[str]) -> None:
    """One line naming the sizes :func:`apply_variant_defaults` took from the variant, if any."""
    if taken:
        _logger.info("--model %s: %s (the variant's; flags and config keys override them)", model_name,
                     ", ".join(taken))


def resolve_model_args(args: argparse.Namespace) -> None:
    """Fill the values derived from others, in place, so that ``args.yaml`` records what was built.

    ``img_size`` comes from ``--input-size`` if given, else stays, else the event dataset's frame size, else 224;
    ``dvs_mode`` defaults from the dataset.

    Raises:
        ConfigError: a non-square ``--input-size`` (the model is ``img_size`` x ``img_size``).
    """
    if args.input_size is not None:
        _check_square(args.input_size)
        args.in_channels, args.img_size = args.input_size[0], args.input_size[-1]
    elif args.img_size is None:
        args.img_size = _dvs_default_img_size(args.dataset) or _DEFAULT_IMG_SIZE
    if args.dvs_mode is None:
        args.dvs_mode = args.dataset.lower() in DVS_MODE_DATASETS


def model_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments of ``timm.create_model(args.model, ...)`` (call :func:`resolve_model_args` first)."""
    return dict(
        img_size_h=args.img_size, img_size_w=args.img_size, in_channels=args.in_channels,
        num_classes=args.num_classes, embed_dims=args.dim, num_heads=args.num_heads, mlp_ratios=args.mlp_ratio,
        depths=args.layer, T=args.time_steps, pooling_stat=args.pooling_stat, spike_mode=args.spike_mode,
        dvs_mode=args.dvs_mode, TET=args.TET, attention_mode=args.attention_mode, chunk_size=args.chunk_size,
        reference=args.reference, neuron_backend=args.neuron_backend, encode_once=args.encode_once,
        fuse_bn_lif=args.fuse_bn_lif,
    )


def check_model_name(name: str) -> None:
    """Raises :class:`ConfigError` unless ``--model name`` is one of this project's registered models."""
    import timm

    import model as _registers_sdt  # noqa: F401  (registers the sdt models with timm)

    known = timm.list_models(module="spikeformer")
    if name not in known:
        kind = "is not a spiking transformer of this project" if timm.is_model(name) else "is unknown"
        raise ConfigError(f"--model {name!r} {kind}; choose one of {', '.join(known)}")


def build_model(args: argparse.Namespace) -> nn.Module:
    """Create the model named ``args.model`` with the dimensions from ``args``.

    Raises:
        ConfigError: unknown model name, or dimensions the model rejects (the message names the argument).
    """
    import timm

    check_model_name(args.model)
    try:
        return timm.create_model(args.model, **model_kwargs(args))
    except ValueError as exc:
        raise ConfigError(f"model {args.model!r}: {exc}") from None


def uses_channels_last(args: argparse.Namespace) -> bool:
    """``--channels-last`` as given, else on for CUDA and off on the CPU (docs/speed.md)."""
    if args.channels_last is not None:
        return args.channels_last
    return torch.device(args.device).type == "cuda"


def prepare_model(args: argparse.Namespace, model: nn.Module) -> nn.Module:
    """Move to ``args.device``; apply ``--linear-prob``, ``--sync-bn`` and ``--channels-last``.

    Raises:
        ConfigError: ``--split-bn`` (see the message), or ``--sync-bn`` in a distributed CPU run.
    """
    if args.linear_prob:
        for param in model.patch_embed.parameters():
            param.requires_grad_(False)
    if args.split_bn:
        raise ConfigError("--split-bn is not supported: these models' BatchNorms see the time steps and the batch "
                          "flattened time-major ([T*B, C, H, W]), so timm's split BatchNorm would split the time "
                          "steps, not the augmentation splits; drop --split-bn (--aug-splits and --jsd work)")
    model = model.to(args.device)
    if uses_channels_last(args):
        model = model.to(memory_format=torch.channels_last)
        if torch.device(args.device).type == "cpu":
            _logger.warning("--channels-last on the CPU: PyTorch's CPU BatchNorm computes the batch statistics of "
                            "channels-last input about 100x less accurately (5e-5 instead of 6e-7 max error in "
                            "fp32), enough to flip spikes; it is meant for CUDA (docs/speed.md)")
    between_processes = [f"--{flag}" for flag, on in (("sync-bn", args.sync_bn), ("dist-bn", args.dist_bn)) if on]
    if between_processes and not args.distributed:
        _logger.warning("%s act between the processes of a distributed run; with one process they do nothing",
                        " and ".join(between_processes))
    if args.distributed and args.sync_bn:
        if args.fuse_bn_lif:
            _logger.warning("--fuse-bn-lif with --sync-bn fuses nothing: the fused kernel takes the batch statistics "
                            "of its own process, SyncBatchNorm those of all processes")
        if torch.device(args.device).type != "cuda":
            raise ConfigError("--sync-bn needs CUDA devices: torch's SyncBatchNorm does not run on the CPU")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        _logger.info("Converted BatchNorm to SyncBatchNorm.")
    return model


def _frozen_batchnorms_in_eval_mode(model: nn.Module, inputs) -> None:
    """Forward pre-hook of the whole model: BatchNorm layers whose parameters are all frozen run in eval mode.

    On the model, not on the layers, so that it survives ``convert_sync_batchnorm`` (``--sync-bn``), which
    replaces the layers (keeping their parameters) but not their hooks."""
    if model.training:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and \
                    not any(p.requires_grad for p in module.parameters(recurse=False)):
                module.train(False)


def freeze_parameters(model: nn.Module, trainable_prefixes: tuple[str, ...],
                      freeze_bn_stats: bool = True) -> tuple[int, int]:
    """Freeze every parameter whose name does not start with one of ``trainable_prefixes``.

    The optimizer then leaves the frozen ones out (timm skips ``requires_grad=False``).  With ``freeze_bn_stats``,
    BatchNorm layers whose parameters are all frozen also stay in eval mode during training (a forward pre-hook on
    the model undoes ``model.train()`` for them): they keep normalising with, and never update, their running
    statistics, so the frozen part computes exactly what it computes at evaluation time.

    Returns:
        ``(trainable, total)`` parameter counts.

    Raises:
        ConfigError: no parameter matches ``trainable_prefixes``.
    """
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith(trainable_prefixes))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ConfigError(f"no parameter name starts with {list(trainable_prefixes)}: nothing would be trained")
    if freeze_bn_stats:
        model.register_forward_pre_hook(_frozen_batchnorms_in_eval_mode)
    return trainable, sum(p.numel() for p in model.parameters())


def build_model_ema(args: argparse.Namespace, model: nn.Module):
    """timm ``ModelEmaV3`` of ``model`` (on the CPU with ``--model-ema-force-cpu``), or None without ``--model-ema``.

    Updated without a step count (:func:`engine.loop.train_one_epoch`), it decays by ``--model-ema-decay`` from
    the first update, as the reference's ``ModelEmaV2``."""
    if not args.model_ema:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(model, decay=args.model_ema_decay, device="cpu" if args.model_ema_force_cpu else None)


CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # torch._inductor.list_mode_options: triton.cudagraphs


def replays_cuda_graphs(args: argparse.Namespace) -> bool:
    """Whether ``--torchcompile`` replays CUDA graphs: inductor in a CUDA-graph mode, or the ``cudagraphs`` backend
    (eager's own kernels captured into graphs, so eager's numbers without its host time)."""
    inductor_graphs = args.torchcompile == "inductor" and args.torchcompile_mode in CUDA_GRAPH_MODES
    return inductor_graphs or args.torchcompile == "cudagraphs"


def compile_model(args: argparse.Namespace, model: nn.Module) -> nn.Module:
    """``torch.compile`` the model in place with ``--torchcompile`` (backend) and ``--torchcompile-mode``.

    In place (``nn.Module.compile``), so state-dict keys, hooks and ``unwrap`` stay as they are; with static shapes
    (each batch size its own graph).

    Raises:
        ConfigError: a backend torch.compile does not know, a mode without inductor (torch.compile would ignore it),
            or CUDA graphs with stateful neurons, which would replay a stale membrane.
    """
    if args.torchcompile_mode and args.torchcompile != "inductor":
        problem = f"--torchcompile {args.torchcompile} ignores it" if args.torchcompile else "--torchcompile is off"
        raise ConfigError(f"--torchcompile-mode {args.torchcompile_mode} is an inductor mode and {problem}; add "
                          "--torchcompile (inductor) or drop the mode")
    if not args.torchcompile:
        return model
    backends = torch._dynamo.list_backends(exclude_tags=())
    if args.torchcompile not in backends:
        raise ConfigError(f"--torchcompile {args.torchcompile}: torch.compile has no such backend; choose from "
                          f"{', '.join(sorted(backends))}")
    if replays_cuda_graphs(args) and args.neuron_backend != "fused":
        how = (f"--torchcompile-mode {args.torchcompile_mode}" if args.torchcompile_mode in CUDA_GRAPH_MODES
               else "--torchcompile cudagraphs")
        raise ConfigError(f"{how} replays CUDA graphs, which need stateless neurons; use --neuron-backend fused")
    # static shapes: a new batch size (an epoch's short last batch) compiles once more; inductor's dynamic-shape
    # recompilation of the STAtten attention fails ("cannot determine truth value of Relational")
    model.compile(backend=args.torchcompile, mode=args.torchcompile_mode, dynamic=False)
    _logger.info("Compiling the model with torch.compile(backend=%s, mode=%s); the first steps are slow.",
                 args.torchcompile, args.torchcompile_mode)
    return model


def distribute_model(args: argparse.Namespace, model: nn.Module) -> nn.Module:
    """Wrap in DistributedDataParallel when running with several processes.

    ``find_unused_parameters`` is on, as in the reference, because ``talking_heads.weight`` never gets a gradient.
    """
    if not args.distributed:
        return model
    device_ids = [torch.device(args.device).index] if torch.device(args.device).type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside a DDP (or EMA) wrapper."""
    return model.module if hasattr(model, "module") else model
