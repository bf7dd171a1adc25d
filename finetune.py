"""Fine-tune only the classifier head of a trained SDT, e.g. after ASTER attention skipping.

``python finetune.py -c CONF --finetune-checkpoint CKPT [--auto-skip --log-file firing.json | --skip-blocks 0,3]``

As ASTER's ``finetune.py`` (``../shared/reference/aster_hw.md`` 1.5): build the model with the chosen attention
branches bypassed, load the checkpoint tolerantly (weights the run does not need are ignored and logged, except
whole blocks and PLIF time constants, see :func:`load_finetune_weights`), freeze every parameter whose name does not
start with ``head_lif`` or ``head.``, log the trainable/total counts and train with the shared engine.
``--finetune-checkpoint`` wins over ``--resume`` / ``--initial-checkpoint`` (with a warning).  Unlike the reference,
the frozen BatchNorm layers also keep their running statistics (``--no-freeze-bn-stats`` restores the reference
behaviour, where they drift with the training batches), and a missing weight is an error unless it belongs to a
skipped attention branch.
"""
import argparse
import logging
import re
import sys

from engine.args import get_args_parser
from engine.aster import aster_finetune_parser, aster_skip_parser, resolve_skip, skip_record, write_aster_outputs
from engine.checkpoint import load_checkpoint_file, load_model_weights, weights_key
from engine.distributed import is_primary
from engine.errors import CheckpointError, ConfigError
from engine.model import freeze_parameters
from engine.run import RunHooks, cli_main, run_training

_logger = logging.getLogger("finetune")

_BLOCK_KEY = re.compile(r"block\.(\d+)\.")
_PLIF_KEY = re.compile(r"_lif\d*\.w$")  # a PLIF neuron's learnable time constant (LIF neurons have none)

# Parameters that train (ASTER finetune.py): the classifier; head_lif has no parameters.
TRAINABLE_PREFIXES = ("head_lif", "head.")


def make_parser() -> argparse.ArgumentParser:
    """The training command line, the ASTER skip flags and the fine-tuning flags."""
    return argparse.ArgumentParser("Fine-tune the classifier head of an SDT (ASTER)",
                                   parents=[get_args_parser(), aster_skip_parser(), aster_finetune_parser()])


def load_finetune_weights(path: str, model, skipped_blocks: list[int], use_ema: bool = False,
                          args: argparse.Namespace | None = None) -> tuple[list[str], list[str]]:
    """Load ``path`` into ``model``: unknown keys are ignored (but not whole blocks the model lacks: a checkpoint of
    a deeper model is an error, nor PLIF time constants a LIF model lacks: other neuron dynamics), a skipped block's
    attention weights may be missing.  The checkpoint's ``state_dict`` (its EMA weights with ``use_ema`` or when it
    has only those); with the run's ``args``, another ``img_size`` than the checkpoint's is warned about too.

    Returns:
        ``(ignored keys, missing keys)``, both logged.
    """
    checkpoint = load_checkpoint_file(path)
    key = weights_key(checkpoint, path, use_ema)
    skipped = tuple(f"block.{b}.attn." for b in skipped_blocks)
    ignored, missing = load_model_weights(model, checkpoint, path, key=key, ignore_unexpected=True,
                                          may_be_missing=lambda k: k.startswith(skipped) if skipped else False,
                                          args=args)
    depth = len(model.block)
    ignored_blocks = {int(match.group(1)) for key in ignored if (match := _BLOCK_KEY.match(key))}
    extra_blocks = sorted(block for block in ignored_blocks if block >= depth)
    if extra_blocks:
        raise CheckpointError(f"checkpoint {path!r} has blocks {extra_blocks} beyond this model's {depth} "
                              f"(--layer {depth}); pass the --layer it was trained with")
    plif_keys = [name for name in ignored if _PLIF_KEY.search(name)]
    if plif_keys and not any(_PLIF_KEY.search(name) for name in model.state_dict()):
        raise CheckpointError(f"checkpoint {path!r} has PLIF neurons ({len(plif_keys)} learnable time constants, "
                              f"e.g. {plif_keys[0]}) and this model LIF neurons, whose dynamics differ; pass "
                              "--spike-mode plif, the mode it was trained with")
    _logger.info("Loaded %s (%s).", path, key)
    if ignored:
        _logger.warning("Ignored %d checkpoint keys the model does not have: %s", len(ignored), ", ".join(ignored))
    if missing:
        _logger.warning("%d weights of skipped attention branches are not in the checkpoint (unused): %s",
                        len(missing), ", ".join(missing))
    return ignored, missing


def run(args: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> dict:
    """Resolve skip list and checkpoint flags, then train the head with the shared engine."""
    if not args.finetune_checkpoint:
        raise ConfigError("--finetune-checkpoint CKPT is required (the weights whose head is fine-tuned)")
    overridden = [(flag, getattr(args, flag)) for flag in ("resume", "initial_checkpoint") if getattr(args, flag)]
    for flag, _ in overridden:
        setattr(args, flag, "")
    recovery_interval, args.recovery_interval = args.recovery_interval, 0  # this script does not resume
    skip = skip_record(args, resolve_skip(args))

    def configure(a: argparse.Namespace, model) -> None:
        if recovery_interval:
            _logger.warning("--recovery-interval %d: finetune.py does not resume (it starts over), so it writes no "
                            "recovery checkpoints", recovery_interval)
        for flag, path in overridden:  # logged here, once the run's log (train.log) is recording
            _logger.warning("--finetune-checkpoint %s wins over --%s %s, which is ignored", a.finetune_checkpoint,
                            flag.replace("_", "-"), path)
        model.skip_blocks = a.skipped_blocks = skip["skipped_blocks"]
        trainable, total = freeze_parameters(model, TRAINABLE_PREFIXES, freeze_bn_stats=a.freeze_bn_stats)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        _logger.info("Trainable parameters: %d of %d (%.3f%%): %s", trainable, total, 100.0 * trainable / total,
                     ", ".join(names))

    def after_training(a: argparse.Namespace, setup, output_dir: str) -> None:
        if is_primary(a):
            write_aster_outputs(output_dir, None, skip)

    hooks = RunHooks(configure_model=configure,
                     load_weights=lambda a, model: load_finetune_weights(a.finetune_checkpoint, model,
                                                                         skip["skipped_blocks"], a.use_ema, a),
                     after_training=after_training, resumable=False)
    return run_training(args, parser, hooks)


if __name__ == "__main__":
    sys.exit(cli_main(make_parser, run))
