"""The command line shared by every entry script: the reference ``train.py`` flags, same names and defaults.

Differences from the reference (see ``README.md`` "Training" and ``../shared/reference/reference_code.md`` 3.2):

* booleans are ``argparse.BooleanOptionalAction`` (``--TET`` / ``--no-TET``; the reference's ``type=bool`` made
  ``--TET False`` true, here it is one error line naming both spellings), and the flags whose name already starts
  with ``no-`` (``--no-aug``, ``--no-resume-opt``, ``--no-prefetcher``) get their negation too (``--aug``,
  ``--resume-opt``, ``--prefetcher``: :class:`NoFlagAction`), so that the command line can take back what a config
  set;
* an empty value sets an option whose default is none back to none (``--start-epoch ''``, ``--mean ''``:
  :func:`empty_means_none`);
* the model dimensions are all flags (``--dim`` is new: the reference read it only from YAML), and
  ``--attention_mode``, ``--chunk-size``, ``--reference`` and ``--dvs-mode`` really reach the model;
* ``--attention_mode`` defaults to ``SDT`` (STAtten's train.py defaulted to STAtten but never used the flag); the
  STAtten configs set ``attention_mode: STAtten`` explicitly;
* enumerations have ``choices=``; ``--local-rank`` and ``--local_rank`` are both accepted;
* new: ``--download``, ``--device``, ``--amp-dtype`` and the speed flags (``--neuron-backend``, ``--encode-once``,
  ``--fuse-bn-lif``, ``--torchcompile``, ``--opt-fused``; ``--pin-mem`` defaults to on for CUDA).

Flags that did nothing in the reference either are kept so that old command lines and configs still parse; they are
listed in :data:`INERT_FLAGS` and a warning is logged when one is set.
"""
from __future__ import annotations

import argparse

__all__ = ["get_args_parser", "empty_means_none", "none_for_empty_lists", "NoFlagAction", "INERT_FLAGS",
           "STATIC_IMAGE_FLAGS", "ATTENTION_MODES", "NEURON_BACKENDS", "SPIKE_MODES"]

ATTENTION_MODES = ("SDT", "STAtten")
SPIKE_MODES = ("lif", "plif", "alif", "blif")
NEURON_BACKENDS = ("fused", "spikingjelly")

# dest -> why the flag has no effect (it had none in the reference code either).
INERT_FLAGS = {
    "train_split_path": "the reference loaded it and never used it",
    "pretrained": "no pretrained weights are published for these models; use --initial-checkpoint",
    "gp": "the model always averages tokens",
    "patch_size": "the model ignores it (the stem is fixed by --pooling-stat)",
    "drop": "the model has no dropout (the reference passed the rate to a model that ignored it)",
    "drop_connect": "the reference never used it",
    "drop_path": "the model never applies DropPath (neither did the reference)",
    "drop_block": "the model has no DropBlock",
    "bn_tf": "the reference never used it",
    "bn_momentum": "the reference never used it",
    "bn_eps": "the reference never used it",
    "epoch_repeats": "only timm's iterable datasets use it",
    "save_images": "the reference never used it",
    "tta": "test-time augmentation is not part of training",
    "torchscript": "the spiking neurons are not scriptable",
    "log_wandb": "Weights & Biases is not a dependency; use the TensorBoard scalars",
    "apex_amp": "apex is not used, so (as in the reference without apex) it stays float32; --amp selects torch.amp",
    "firing_thresholds": "ASTER's main.py never used it either (its code is commented out)",
}

# The static-image transforms' flags (timm's create_loader): the event-frame datasets never read them.
STATIC_IMAGE_FLAGS = ("no_aug", "scale", "ratio", "hflip", "vflip", "color_jitter", "aa", "reprob", "remode",
                      "recount", "resplit", "train_interpolation", "interpolation", "crop_pct", "mean", "std")


class NoFlagAction(argparse.Action):
    """A flag named ``--no-X`` with its negation ``--X``: ``--no-aug`` sets ``no_aug`` true, ``--aug`` false.

    ``BooleanOptionalAction`` cannot give such a flag its negation: it reads any ``--no-`` prefix as "false".
    """

    def __init__(self, option_strings, dest, default=False, help=None):
        negations = ["--" + option[len("--no-"):] for option in option_strings if option.startswith("--no-")]
        super().__init__([*option_strings, *negations], dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, option_string.startswith("--no-"))

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


class _EmptyMeansNone:
    """An option's ``type`` that reads ``''`` as None and anything else with ``base_type``."""

    def __init__(self, base_type):
        self.base_type = base_type
        self.__name__ = base_type.__name__

    def __call__(self, text):
        return None if text == "" else self.base_type(text)


class _ChoicesOrNone(tuple):
    """An option's choices that also admit None (its empty value); help and errors list the choices alone."""

    def __contains__(self, value) -> bool:
        return value is None or tuple.__contains__(self, value)


def empty_means_none(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Let an empty value give None to every option of ``parser`` whose default is None, so that the command line
    can take back a value a config set: ``--start-epoch ''``, ``--torchcompile-mode ''`` (an option with choices),
    ``--mean ''`` (a list option, where ``''`` must be the only value: :func:`none_for_empty_lists`)."""
    for action in parser._actions:
        list_type = hasattr(action.type, "element_type")  # reads '' as its empty list (--skip-blocks '')
        if not action.option_strings or action.default is not None or list_type or action.nargs == 0 \
                or isinstance(action.type, _EmptyMeansNone) or isinstance(action.nargs, int):
            continue
        action.type = _EmptyMeansNone(action.type or str)
        if action.choices is not None:
            action.choices = _ChoicesOrNone(action.choices)
    return parser


def none_for_empty_lists(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Set a list option given as ``''`` (``[None]`` once parsed) to None; ``''`` among other values is an error."""
    for action in parser._actions:
        value = getattr(args, action.dest, None)
        if isinstance(action.type, _EmptyMeansNone) and isinstance(value, list) and None in value:
            if len(value) > 1:
                parser.error(f"{'/'.join(action.option_strings)}: '' (none) must be the only value, got "
                             f"{' '.join('' if v is None else str(v) for v in value)!r}")
            setattr(args, action.dest, None)


def _model_group(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Dataset and model parameters")
    group.add_argument("--data-dir", "-data-dir", dest="data_dir", default="", metavar="DIR",
                       help="dataset root (CIFAR: the folder holding cifar-10-batches-py; ImageNet: holding train/ and "
                            "val/; Fashion-MNIST: also /usr/share/datasets/fashion-mnist)")
    group.add_argument("--dataset", "-d", default="torch/cifar10", metavar="NAME",
                       help="torch/cifar10, torch/cifar100, imagenet, digits, mnist, fashion-mnist, or a neuromorphic "
                            "set (cifar10-dvs, cifar10-dvs-tet, gesture, ncaltech101, nmnist)")
    group.add_argument("--download", action=argparse.BooleanOptionalAction, default=False,
                       help="download CIFAR/MNIST/Fashion-MNIST (torchvision) or CIFAR10-DVS (spikingjelly) into "
                            "--data-dir if missing; the other event sets say where to get them")
    group.add_argument("--train-split", default="train", metavar="NAME", help="training split")
    group.add_argument("--val-split", default="validation", metavar="NAME", help="validation split")
    group.add_argument("--train-split-path", default=None, metavar="PATH", help="(no effect)")
    group.add_argument("--model", default="sdt", metavar="MODEL", help="timm model name (sdt or a registered variant)")
    group.add_argument("--pooling-stat", "--pooling_stat", dest="pooling_stat", default="1111",
                       help="4 chars of 0/1: which stem convolutions are followed by a 2x max-pool")
    group.add_argument("--TET", action=argparse.BooleanOptionalAction, default=False,
                       help="temporal efficient training: loss on every time step's logits")
    group.add_argument("--TET-means", type=float, default=1.0, help="TET: target of the MSE regulariser")
    group.add_argument("--TET-lamb", type=float, default=0.0, help="TET: weight of the MSE regulariser")
    group.add_argument("--spike-mode", default="lif", choices=SPIKE_MODES, help="neuron model")
    group.add_argument("--attention_mode", "--attention-mode", dest="attention_mode", default="SDT",
                       choices=ATTENTION_MODES, help="attention: SDT (spike-driven) or STAtten (block-wise "
                                                     "spatio-temporal); default SDT")
    group.add_argument("--chunk-size", "--chunk_size", dest="chunk_size", type=int, default=2,
                       help="STAtten: time steps per attention block (must divide --time-steps)")
    group.add_argument("--reference", default=None, choices=("sdt", "statten"),
                       help="which code base to follow where SDT and STAtten differ (default: statten for "
                            "STAtten attention, else sdt)")
    group.add_argument("--dvs-mode", dest="dvs_mode", action=argparse.BooleanOptionalAction, default=None,
                       help="DVS pooling in attention; default: on for cifar10-dvs(-tet) and ncaltech101, as in "
                            "the reference")
    group.add_argument("--layer", type=int, default=4, help="number of transformer blocks")
    group.add_argument("--dim", type=int, default=512, help="embedding width")
    group.add_argument("--in-channels", type=int, default=3, help="input channels (2 for event frames)")
    group.add_argument("--pretrained", action=argparse.BooleanOptionalAction, default=False, help="(no effect)")
    group.add_argument("--initial-checkpoint", default="", metavar="PATH",
                       help="load these model weights (strict) before training; the weights to evaluate in "
                            "test.py, firing_num.py and main.py --validate-only")
    group.add_argument("--resume", default="", metavar="PATH",
                       help="resume model, optimizer, scheduler, EMA, AMP scaler and epoch from this checkpoint; "
                            "test.py and firing_num.py evaluate its weights")
    group.add_argument("--no-resume-opt", action=NoFlagAction,
                       help="with --resume: restore only the weights and epoch, not optimizer/scaler state")
    group.add_argument("--num-classes", type=int, default=1000, help="number of classes")
    group.add_argument("--time-steps", type=int, default=4, help="number of time steps T")
    group.add_argument("--num-heads", type=int, default=8, help="attention heads")
    group.add_argument("--patch-size", type=int, default=None, help="(no effect)")
    group.add_argument("--mlp-ratio", type=int, default=4, help="MLP hidden width / embedding width")
    group.add_argument("--gp", default=None, help="(no effect)")
    group.add_argument("--img-size", type=int, default=None, help="input image size (square)")
    group.add_argument("--input-size", type=int, nargs=3, default=None, metavar="N",
                       help="input C H W (overrides --img-size)")
    group.add_argument("--crop-pct", type=float, default=None, help="eval centre-crop fraction")
    group.add_argument("--mean", type=float, nargs="+", default=None, metavar="MEAN", help="normalisation mean")
    group.add_argument("--std", type=float, nargs="+", default=None, metavar="STD", help="normalisation std")
    group.add_argument("--interpolation", default="", help="eval resize interpolation")
    group.add_argument("-b", "--batch-size", type=int, default=32, help="training batch size per process")
    group.add_argument("-vb", "--val-batch-size", type=int, default=16, help="validation batch size per process")


def _optimizer_group(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Optimizer parameters (timm create_optimizer_v2)")
    group.add_argument("--opt", default="sgd", metavar="OPTIMIZER", help="optimizer name: sgd, adamw, lamb, ...")
    group.add_argument("--opt-eps", type=float, default=None, metavar="EPSILON", help="optimizer epsilon")
    group.add_argument("--opt-betas", type=float, nargs="+", default=None, metavar="BETA", help="optimizer betas")
    group.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    group.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay (not on biases and norms)")
    group.add_argument("--clip-grad", type=float, default=None, metavar="NORM", help="gradient clipping threshold")
    group.add_argument("--clip-mode", default="norm", choices=("norm", "value", "agc"), help="gradient clipping mode")
    group.add_argument("--opt-fused", action=argparse.BooleanOptionalAction, default=None,
                       help="the optimizer's fused kernel (torch Adam, AdamW, SGD): one launch per step, and the "
                            "float16 gradient scaler no longer waits for the device (default: on for CUDA when the "
                            "optimizer has one)")


def _scheduler_group(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Learning rate schedule parameters (timm create_scheduler_v2)")
    group.add_argument("--sched", default="step", metavar="SCHEDULER", help="cosine, step, plateau, tanh, poly, ...")
    group.add_argument("--lr", type=float, default=0.01, help="learning rate")
    group.add_argument("--lr-noise", type=float, nargs="+", default=None, metavar="pct, pct",
                       help="learning rate noise on/off epoch percentages")
    group.add_argument("--lr-noise-pct", type=float, default=0.67, help="learning rate noise limit percent")
    group.add_argument("--lr-noise-std", type=float, default=1.0, help="learning rate noise std-dev")
    group.add_argument("--lr-cycle-mul", type=float, default=1.0, help="learning rate cycle length multiplier")
    group.add_argument("--lr-cycle-limit", type=int, default=1, help="learning rate cycle limit")
    group.add_argument("--warmup-lr", type=float, default=1e-4, help="warmup learning rate")
    group.add_argument("--min-lr", type=float, default=1e-5, help="lower lr bound for cyclic schedulers")
    group.add_argument("--epochs", type=int, default=200,
                       help="number of epochs (--cooldown-epochs are added for cosine, tanh, poly, wsd and "
                            "rsqrt; --lr-cycle-limit N repeats the cosine/tanh/poly cycle N times)")
    group.add_argument("--epoch-repeats", type=float, default=0.0, help="(no effect)")
    group.add_argument("--start-epoch", type=int, default=None, help="manual epoch number (useful on restarts)")
    group.add_argument("--decay-epochs", type=float, default=30, help="epoch interval to decay LR (--sched step)")
    group.add_argument("--decay-milestones", type=int, nargs="+", default=[30, 60], metavar="EPOCH",
                       help="--sched multistep decays the LR once per milestone M, from the epoch numbered M-1 in "
                            "summary.csv (the M-th epoch; timm's convention) on (default: 30 60, timm's)")
    group.add_argument("--warmup-epochs", type=int, default=3, help="epochs to warm up LR")
    group.add_argument("--cooldown-epochs", type=int, default=10, help="epochs at min_lr after the cyclic schedule")
    group.add_argument("--patience-epochs", type=int, default=10, help="plateau scheduler patience")
    group.add_argument("--decay-rate", "--dr", type=float, default=0.1, help="LR decay rate")


def _augmentation_group(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Augmentation and regularization parameters (static images)")
    group.add_argument("--no-aug", action=NoFlagAction, help="disable all training augmentation")
    group.add_argument("--scale", type=float, nargs="+", default=[0.08, 1.0], metavar="PCT",
                       help="random resized crop scale range")
    group.add_argument("--ratio", type=float, nargs="+", default=[3.0 / 4.0, 4.0 / 3.0], metavar="RATIO",
                       help="random resized crop aspect ratio range")
    group.add_argument("--hflip", type=float, default=0.5, help="horizontal flip probability")
    group.add_argument("--vflip", type=float, default=0.0, help="vertical flip probability")
    group.add_argument("--color-jitter", type=float, default=0.4, metavar="PCT",
                       help="colour jitter factor (timm ignores it when --aa is set)")
    group.add_argument("--aa", default=None, metavar="NAME", help="auto-augment policy, e.g. rand-m9-n1-mstd0.4-inc1")
    group.add_argument("--aug-splits", type=int, default=0, help="number of augmentation splits (2 or 3 with --jsd)")
    group.add_argument("--jsd", action=argparse.BooleanOptionalAction, default=False,
                       help="Jensen-Shannon divergence + CE loss (needs --aug-splits)")
    group.add_argument("--bce-loss", action=argparse.BooleanOptionalAction, default=False,
                       help="binary cross-entropy loss (timm BinaryCrossEntropy)")
    group.add_argument("--bce-target-thresh", type=float, default=None,
                       help="threshold for binarizing softened BCE targets")
    group.add_argument("--reprob", type=float, default=0.0, metavar="PCT", help="random erase probability")
    group.add_argument("--remode", default="const", choices=("const", "rand", "pixel"), help="random erase mode")
    group.add_argument("--recount", type=int, default=1, help="random erase count")
    group.add_argument("--resplit", action=argparse.BooleanOptionalAction, default=False,
                       help="do not random-erase the first (clean) augmentation split")
    group.add_argument("--mixup", type=float, default=0.0, help="mixup alpha (on if > 0)")
    group.add_argument("--cutmix", type=float, default=0.0, help="cutmix alpha (on if > 0)")
    group.add_argument("--cutmix-minmax", type=float, nargs="+", default=None, help="cutmix min/max ratio")
    group.add_argument("--mixup-prob", type=float, default=1.0, help="probability of mixup or cutmix per batch")
    group.add_argument("--mixup-switch-prob", type=float, default=0.5,
                       help="probability of switching to cutmix when both are on")
    group.add_argument("--mixup-mode", default="batch", choices=("batch", "pair", "elem"), help="how to apply mixup")
    group.add_argument("--mixup-off-epoch", type=int, default=0, metavar="N", help="turn mixup off after this epoch")
    group.add_argument("--smoothing", type=float, default=0.1, help="label smoothing")
    group.add_argument("--train-interpolation", default="random", help="training interpolation")
    group.add_argument("--drop", type=float, default=0.0, metavar="PCT", help="(no effect)")
    group.add_argument("--drop-connect", type=float, default=None, metavar="PCT", help="(no effect)")
    group.add_argument("--drop-path", type=float, default=0.2, metavar="PCT",
                       help="(no effect)")
    group.add_argument("--drop-block", type=float, default=None, metavar="PCT", help="(no effect)")
    group.add_argument("--dvs-aug", action=argparse.BooleanOptionalAction, default=False,
                       help="event frames: Cutout augmentation (read by the neuromorphic datasets)")
    group.add_argument("--dvs-trival-aug", action=argparse.BooleanOptionalAction, default=False,
                       help="event frames: TrivialAugment-style augmentation (read by the neuromorphic datasets)")


def _batchnorm_ema_group(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("BatchNorm and EMA parameters")
    group.add_argument("--bn-tf", action=argparse.BooleanOptionalAction, default=False, help="(no effect)")
    group.add_argument("--bn-momentum", type=float, default=None, help="(no effect)")
    group.add_argument("--bn-eps", type=float, default=None, help="(no effect)")
    group.add_argument("--sync-bn", action=argparse.BooleanOptionalAction, default=False,
                       help="synchronised BatchNorm across processes")
    group.add_argument("--dist-bn", default="", choices=("", "broadcast", "reduce"),
                       help="distribute BatchNorm stats between nodes after each epoch")
    group.add_argument("--split-bn", action=argparse.BooleanOptionalAction, default=False,
                       help="separate BatchNorm per augmentation split (refused: these models' BatchNorms see "
                            "the time steps and the batch flattened time-major)")
    group.add_argument("--linear-prob", action=argparse.BooleanOptionalAction, default=False,
                       help="freeze the patch-embedding stem")
    group.add_argument("--model-ema", action=argparse.BooleanOptionalAction, default=False,
                       help="keep an exponential moving average of the weights (timm ModelEmaV3)")
    group.add_argument("--model-ema-force-cpu", action=argparse.BooleanOptionalAction, default=False,
                       help="keep the EMA on the CPU; as in the reference it is then not validated (but saved)")
    group.add_argument("--model-ema-decay", type=float, default=0.9998, help="EMA decay")


def _speed_group(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Speed (none of these changes the maths; docs/speed.md)")
    group.add_argument("--neuron-backend", default="fused", choices=NEURON_BACKENDS,
                       help="fused: stateless LIF op, one Triton kernel per direction on CUDA (CUDA-graph safe); "
                            "spikingjelly: spikingjelly 2.0's stateful neurons")
    group.add_argument("--encode-once", action=argparse.BooleanOptionalAction, default=True,
                       help="static images: run the first stem conv once instead of on T identical copies")
    group.add_argument("--fuse-bn-lif", action=argparse.BooleanOptionalAction, default=False,
                       help="each BatchNorm followed by a LIF as one op: the LIF normalises on the fly, the BN output "
                            "is neither written nor kept for the backward (needs --neuron-backend fused)")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="channels-last (NHWC) memory layout for the convolutions and BatchNorms (default: on "
                            "CUDA, where it cuts the GPU time of a step by 24-39 %%, off on the CPU, where PyTorch's "
                            "BatchNorm is less accurate in it)")
    group.add_argument("--torchcompile", nargs="?", type=str, default=None, const="inductor", metavar="BACKEND",
                       help="torch.compile the model for training with this backend (default inductor; "
                            "cudagraphs: eager's kernels replayed as CUDA graphs, eager's numbers without its host "
                            "time)")
    group.add_argument("--torchcompile-mode", default=None,
                       choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"),
                       help="torch.compile mode; reduce-overhead replays CUDA graphs (needs --neuron-backend fused)")


def _misc_group(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Miscellaneous parameters")
    group.add_argument("--seed", type=int, default=42, help="random seed")
    group.add_argument("--log-interval", type=int, default=100, help="batches between training log lines")
    group.add_argument("--recovery-interval", type=int, default=0, help="batches between recovery checkpoints")
    group.add_argument("--checkpoint-hist", type=int, default=10, help="number of epoch checkpoints to keep")
    group.add_argument("-j", "--workers", type=int, default=4, help="data loading processes per training process")
    group.add_argument("--save-images", action=argparse.BooleanOptionalAction, default=False, help="(no effect)")
    group.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False,
                       help="mixed precision with torch.amp (see --amp-dtype)")
    group.add_argument("--amp-dtype", default="float16", choices=("float16", "bfloat16"),
                       help="autocast dtype; float16 also uses a gradient scaler")
    group.add_argument("--apex-amp", action=argparse.BooleanOptionalAction, default=False, help="(no effect)")
    group.add_argument("--native-amp", action=argparse.BooleanOptionalAction, default=False, help="same as --amp")
    group.add_argument("--pin-mem", action=argparse.BooleanOptionalAction, default=None,
                       help="pin CPU memory in the data loaders (default: on when training on CUDA)")
    group.add_argument("--no-prefetcher", action=NoFlagAction,
                       help="disable timm's prefetcher (normalisation on the device)")
    group.add_argument("--output", default="", metavar="PATH",
                       help="output root (default: output/train; output/valid for test.py and firing_num.py, "
                            "output/aster for main.py --validate-only and --study)")
    group.add_argument("--experiment", default="", metavar="NAME", help="name of the run folder under --output")
    group.add_argument("--eval-metric", default="top1", choices=("top1", "top5", "loss"),
                       help="metric that ranks checkpoints")
    group.add_argument("--tta", type=int, default=0, metavar="N", help="(no effect)")
    group.add_argument("--local_rank", "--local-rank", dest="local_rank", type=int, default=0,
                       help="set by torch.distributed.launch; torchrun uses LOCAL_RANK instead")
    group.add_argument("--use-multi-epochs-loader", action=argparse.BooleanOptionalAction, default=False,
                       help="timm MultiEpochsDataLoader (faster epochs; a resumed run then differs from an "
                            "uninterrupted one)")
    group.add_argument("--torchscript", action=argparse.BooleanOptionalAction, default=False, help="(no effect)")
    group.add_argument("--log-wandb", action=argparse.BooleanOptionalAction, default=False, help="(no effect)")
    group.add_argument("--device", default="", help="cpu, cuda, cuda:N (default: cuda:LOCAL_RANK if available)")


def _neuromorphic_group(parser: argparse.ArgumentParser) -> None:
    try:
        from data.dvs_args import add_dvs_arguments
    except ImportError:  # the event-camera datasets (data/neuromorphic.py and friends) are optional
        return
    add_dvs_arguments(parser.add_argument_group("Neuromorphic dataset parameters"))


def get_args_parser(add_help: bool = False) -> argparse.ArgumentParser:
    """The shared parser; entry scripts extend it with ``ArgumentParser(parents=[get_args_parser()])``.

    Args:
        add_help: add ``-h/--help`` (leave False when used as a parent).

    Returns:
        A parser holding ``-c/--config`` and every training flag, in argument groups.
    """
    parser = argparse.ArgumentParser("SDT / STAtten", add_help=add_help)
    parser.add_argument("-c", "--config", default="", metavar="FILE",
                        help="YAML file of flag defaults (keys are flag names; '-' and '_' are equivalent)")
    _model_group(parser)
    _optimizer_group(parser)
    _scheduler_group(parser)
    _augmentation_group(parser)
    _batchnorm_ema_group(parser)
    _misc_group(parser)
    _speed_group(parser)
    _neuromorphic_group(parser)
    return empty_means_none(parser)
