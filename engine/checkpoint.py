"""Checkpoints in timm ``CheckpointSaver`` format, and strict, checked loading.

A checkpoint is a dict with ``epoch``, ``arch``, ``state_dict``, ``optimizer``, ``version`` (2: the next epoch is
``epoch + 1``), ``args`` (an ``argparse.Namespace``), ``metric``, ``saver`` (history, and a plateau schedule's
progress as ``plateau``) and, when used, ``state_dict_ema`` and ``amp_scaler``.  timm's saver writes
``tmp.pth.tar`` and renames it (``os.replace``), so a killed run never leaves a truncated ``last.pth.tar``; it
keeps the best ``--checkpoint-hist`` epoch files and ``model_best.pth.tar``.  timm schedules are functions of the
epoch, and resuming steps the scheduler to the resumed epoch (except ``plateau``: past its warmup it goes on from
the LR the restored optimizer holds, with its reductions and without the ``--lr-noise`` it carries, and its best
value, patience and cooldown counters, which timm keeps only in the scheduler, go on from the saver's
``plateau``; with ``--no-resume-opt`` its LR and counters restart).

Loading checks every key and shape first and raises :class:`~engine.errors.CheckpointError` with a one-line
summary, so a checkpoint of another architecture is rejected before anything is written; a checkpoint whose
``args`` differ in a field that keeps the shapes but changes the computation (e.g. ``attention_mode``,
``time_steps``) loads with a warning.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import pickle
import re
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, OutputError
from .model import unwrap
from .optim import plateau_progress

__all__ = ["load_checkpoint_file", "load_model_weights", "restores_optimizer", "resume_checkpoint",
           "load_initial_checkpoint", "restore_model_ema", "build_saver", "epoch_loss_so_far", "resume_start",
           "set_aside_later_checkpoints", "weights_key", "check_same_computation", "plateau_progress_of",
           "newest_recovery_files"]

_logger = logging.getLogger(__name__)

_ARCH_ARGS = ("model", "dim", "layer", "num_heads", "mlp_ratio", "num_classes", "in_channels", "pooling_stat",
              "spike_mode", "time_steps", "img_size")
_UNPICKLER_MARK = "WeightsUnpickler error:"
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+)")


def _load_error_detail(exc: Exception) -> str:
    """The informative line of a ``torch.load`` error (past PyTorch's ``weights_only`` preamble)."""
    text = str(exc)
    if _UNPICKLER_MARK in text:
        text = text.split(_UNPICKLER_MARK, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0]}" if isinstance(exc, (KeyError, IndexError)) else lines[0]


def load_checkpoint_file(path: str) -> dict:
    """Load a checkpoint on the CPU with ``weights_only=True`` (``argparse.Namespace`` allowed for ``args``).

    Raises:
        CheckpointError: the path is missing or a directory, or the file is not a readable checkpoint.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a directory; expected a checkpoint file (e.g. "
                              f"{os.path.join(path, 'model_best.pth.tar')})")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} not found")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a corrupted pickle raises almost anything (TypeError, AttributeError, ...)
        refused = _REFUSED_GLOBAL.search(str(exc)) if isinstance(exc, pickle.UnpicklingError) else None
        if refused:
            raise CheckpointError(f"cannot read checkpoint {path!r}: it holds objects that weights_only loading "
                                  f"refuses ({refused.group(1)}; only tensors, plain Python values and "
                                  "argparse.Namespace are read); if you trust the file, load it with "
                                  "torch.load(path, weights_only=False), turn those objects into tensors or plain "
                                  "values and torch.save it again") from exc
        raise CheckpointError(f"cannot read checkpoint {path!r}: not a checkpoint file readable by torch.load "
                              f"({_load_error_detail(exc)})") from exc
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint {path!r} holds a {type(checkpoint).__name__}, not a dict of tensors")
    return checkpoint


def _trained_with(checkpoint: dict) -> str:
    ckpt_args = checkpoint.get("args")
    if not isinstance(ckpt_args, argparse.Namespace):
        return ""
    values = ", ".join(f"{k}={getattr(ckpt_args, k)!r}" for k in _ARCH_ARGS if hasattr(ckpt_args, k))
    return f"; it was trained with {values}"


def _computation_args(ckpt_args: argparse.Namespace, model: nn.Module, args: argparse.Namespace | None,
                      every_skip: bool = False) -> list[tuple[str, Any, Any]]:
    """``(field, trained with, this model)`` of the fields that change the computation but not the weights
    (``img_size`` only with the run's ``args``: the model does not hold it; ``skipped_blocks`` only when the
    checkpoint skipped blocks, unless ``every_skip``)."""
    bare = unwrap(model)
    mode = getattr(ckpt_args, "attention_mode", None)
    reference = getattr(ckpt_args, "reference", None) or (mode and ("statten" if mode == "STAtten" else "sdt"))
    pairs = [("attention_mode", mode, getattr(bare, "attention_mode", None)),
             ("reference", reference, getattr(bare, "reference", None)),
             ("dvs_mode", getattr(ckpt_args, "dvs_mode", None), getattr(bare, "dvs", None)),
             ("pooling_stat", getattr(ckpt_args, "pooling_stat", None),
              getattr(getattr(bare, "patch_embed", None), "pooling_stat", None)),
             ("time_steps", getattr(ckpt_args, "time_steps", None), getattr(bare, "T", None))]
    if args is not None:
        pairs.append(("img_size", getattr(ckpt_args, "img_size", None), getattr(args, "img_size", None)))
    if every_skip or getattr(ckpt_args, "skipped_blocks", None):  # weights trained for a skip list; skipping more of an
        # unskipped model is what main.py and finetune.py are for, so only a checkpoint that skipped is compared
        pairs.append(("skipped_blocks", list(getattr(ckpt_args, "skipped_blocks", None) or []),
                      list(getattr(bare, "skip_blocks", []))))
    if "STAtten" in (mode, getattr(bare, "attention_mode", None)):  # only STAtten chunks the time steps
        pairs.append(("chunk_size", getattr(ckpt_args, "chunk_size", None), getattr(bare, "chunk_size", None)))
    return [(k, trained, now) for k, trained, now in pairs if trained is not None and now is not None]


def _warn_on_changed_computation(model: nn.Module, checkpoint: dict, path: str,
                                 args: argparse.Namespace | None) -> None:
    """Warn when the checkpoint's ``args`` differ from the model in a field that keeps the weights' shapes but
    changes the computation (attention mode, reference variant, DVS attention, pooling stages, time steps, STAtten
    chunks, and with the run's ``args`` the image size)."""
    ckpt_args = checkpoint.get("args")
    if not isinstance(ckpt_args, argparse.Namespace):
        return
    changed = [f"{k}={trained!r} (this model: {now!r})"
               for k, trained, now in _computation_args(ckpt_args, model, args) if trained != now]
    if changed:
        _logger.warning("checkpoint %r was trained with %s: the weights fit but the model computes something else; "
                        "pass the training values to evaluate it as trained (-c the run's args.yaml gives them all; "
                        "skipped_blocks: --skip-blocks)", path, ", ".join(changed))


def check_same_computation(model: nn.Module, checkpoint: dict, path: str, args: argparse.Namespace) -> None:
    """A run resumed into its own folder goes on training the model of its first epochs: a field that changes the
    computation (see :func:`_warn_on_changed_computation`, and any other ``skipped_blocks``) would train another
    model into the same ``summary.csv``.

    Raises:
        CheckpointError: naming the changed fields and the two ways out.
    """
    ckpt_args = checkpoint.get("args")
    if not isinstance(ckpt_args, argparse.Namespace):
        return
    changed = {k: f"{k}={trained!r} (this run: {now!r})"
               for k, trained, now in _computation_args(ckpt_args, model, args, every_skip=True) if trained != now}
    if changed:
        fix = ("pass the training values (-c the run's args.yaml gives them all)" if "skipped_blocks" not in changed
               or hasattr(args, "skip_blocks") else "resume it with main.py -c the run's args.yaml (this script "
               "skips no blocks)")
        raise CheckpointError(f"--resume {path} continues a run trained with {', '.join(changed.values())}: its "
                              f"epochs would train another model into the same run folder. To continue it, {fix}; or "
                              f"give --experiment NAME to train the changed model from these weights in a folder of "
                              f"its own")


# The values that choose the samples of a split mode ("published" is fixed, "official" the dataset's own).
_SPLIT_VALUES = {"stratified": ("dvs_split_ratio", "dvs_split_seed"), "first": ("dvs_split_ratio",)}


def _warn_on_changed_split(checkpoint: dict, path: str, args: argparse.Namespace | None) -> None:
    """Warn when the checkpoint was trained on another train/val split of the same event dataset than the one this
    run built (``args`` holds the split used, :func:`data.neuromorphic.build_dataset`): its validation samples then
    include samples the checkpoint was trained on."""
    ckpt_args = checkpoint.get("args")
    if args is None or not isinstance(ckpt_args, argparse.Namespace):
        return
    trained_mode = getattr(ckpt_args, "dvs_split", None)
    if getattr(ckpt_args, "dataset", None) != getattr(args, "dataset", None) or "official" in (
            trained_mode, getattr(args, "dvs_split", None)):
        return
    changed = [(k, getattr(ckpt_args, k, None), getattr(args, k, None))
               for k in ("dvs_split", *_SPLIT_VALUES.get(trained_mode, ()))]
    changed = [(k, trained, now) for k, trained, now in changed if None not in (trained, now) and trained != now]
    if changed:
        _logger.warning("checkpoint %r was trained on another split of %s: %s; this run's validation samples may "
                        "include samples it was trained on; pass %s (-c the run's args.yaml gives them all)", path,
                        args.dataset, ", ".join(f"{k}={trained!r} (this run: {now!r})" for k, trained, now in changed),
                        " ".join(f"--{k.replace('_', '-')} {trained}" for k, trained, _ in changed))


def _state_dict_of(checkpoint: dict, key: str, path: str) -> Mapping:
    """``checkpoint[key]``, or the checkpoint itself when it is a bare state dict (parameter names -> tensors)."""
    state_dict = checkpoint.get(key, checkpoint)
    if isinstance(state_dict, Mapping) and all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        return state_dict
    if key in checkpoint:
        kind = "has non-tensor values" if isinstance(state_dict, Mapping) else f"is a {type(state_dict).__name__}"
        raise CheckpointError(f"checkpoint {path!r}: {key!r} is not a state dict (parameter names -> tensors); it "
                              f"{kind}")
    raise CheckpointError(f"checkpoint {path!r} has no {key!r} and is not a bare state dict (parameter names -> "
                          f"tensors); its keys: {_listing([str(k) for k in checkpoint])}")


def _listing(items: list[str], limit: int = 8) -> str:
    """``a, b, c`` or ``a, b, ... (+N more)``."""
    shown = ", ".join(items[:limit])
    return shown if len(items) <= limit else f"{shown}, ... (+{len(items) - limit} more)"


def load_model_weights(model: nn.Module, checkpoint: dict, path: str, key: str = "state_dict", *,
                       ignore_unexpected: bool = False, may_be_missing: Callable[[str], bool] | None = None,
                       args: argparse.Namespace | None = None) -> tuple[list[str], list[str]]:
    """Load ``checkpoint[key]`` (or a bare state dict) into ``model`` after checking keys and shapes.

    Strict by default.  ``ignore_unexpected`` drops checkpoint keys the model does not have, and keys for which
    ``may_be_missing(key)`` is true may be absent from the checkpoint (they keep their current values); the
    caller logs both lists.  Shapes must always match.  The run's ``args`` add ``img_size`` to the fields compared
    with the checkpoint's (a warning when they differ).

    Returns:
        ``(ignored unexpected keys, tolerated missing keys)``; both empty for a strict load.

    Raises:
        CheckpointError: not a state dict, missing or unexpected keys (beyond the tolerated ones) or shape
            mismatches, in one line.
    """
    from timm.models import clean_state_dict

    state_dict = clean_state_dict(_state_dict_of(checkpoint, key, path))
    expected = unwrap(model).state_dict()
    all_missing = [k for k in expected if k not in state_dict]
    all_unexpected = [k for k in state_dict if k not in expected]
    missing = [k for k in all_missing if may_be_missing is None or not may_be_missing(k)]
    unexpected = [] if ignore_unexpected else all_unexpected
    mismatched = [f"{k} {list(state_dict[k].shape)} vs {list(v.shape)}" for k, v in expected.items()
                  if k in state_dict and hasattr(state_dict[k], "shape") and state_dict[k].shape != v.shape]
    if missing or unexpected or mismatched:
        problems = [f"{len(items)} {what}: {_listing(items)}" for what, items in
                    (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
                    if items]
        raise CheckpointError(f"checkpoint {path!r} does not fit this model ({', '.join(problems)})"
                              f"{_trained_with(checkpoint)}")
    if all_unexpected:
        state_dict = {k: v for k, v in state_dict.items() if k in expected}
    unwrap(model).load_state_dict(state_dict, strict=not all_missing)
    _warn_on_changed_computation(model, checkpoint, path, args)
    _warn_on_changed_split(checkpoint, path, args)
    return all_unexpected, all_missing


_OPTIMIZER_ARGS = ("lr", "weight_decay", "momentum", "opt_betas", "opt_eps")


def _restore_optimizer(args: argparse.Namespace, optimizer: torch.optim.Optimizer, checkpoint: dict) -> None:
    """Load the optimizer state of a checkpoint made by the same optimizer; warn that it brings back its own
    learning rate and hyper-parameters (timm's schedule starts from the restored ``initial_lr``)."""
    trained = checkpoint.get("args")
    trained_opt = getattr(trained, "opt", None)
    if trained_opt is not None and trained_opt.lower() != args.opt.lower():
        raise CheckpointError(f"checkpoint {args.resume!r} holds the state of optimizer {trained_opt!r}, this run "
                              f"uses --opt {args.opt!r}; pass --opt {trained_opt} to continue, or --no-resume-opt to "
                              "restore the weights only")
    try:
        optimizer.load_state_dict(checkpoint["optimizer"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"checkpoint {args.resume!r}: optimizer state does not fit ({exc}); "
                              f"pass --no-resume-opt to restore the weights only") from None
    changed = [f"--{k.replace('_', '-')} {getattr(args, k)} (checkpoint: {getattr(trained, k)})"
               for k in _OPTIMIZER_ARGS if hasattr(trained, k) and getattr(trained, k) != getattr(args, k, None)]
    if changed:
        _logger.warning("resuming restores the optimizer's own learning rate and hyper-parameters, so %s will not "
                        "take effect; pass --no-resume-opt to start the optimizer afresh with them", ", ".join(changed))


def restores_optimizer(args: argparse.Namespace, checkpoint: dict | None) -> bool:
    """Whether ``--resume`` restores the optimizer's state (and with it its learning rate) from ``checkpoint``."""
    return checkpoint is not None and not args.no_resume_opt and "optimizer" in checkpoint


def resume_checkpoint(args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                      loss_scaler: Any = None) -> tuple[int, int, dict]:
    """Restore model weights, optimizer and AMP scaler state from ``args.resume``.

    With ``--no-resume-opt`` only the weights (and the epoch) are restored.  A recovery checkpoint resumes its
    unfinished epoch (see :func:`batches_done`).

    Returns:
        ``(start_epoch, start_batch, checkpoint)``: ``start_batch`` batches of ``start_epoch`` are already trained
        (:func:`batches_done`; 0 when ``--start-epoch`` overrides the epoch found in the checkpoint).
    """
    checkpoint = load_checkpoint_file(args.resume)
    load_model_weights(model, checkpoint, args.resume, args=args)
    if not args.no_resume_opt:
        if optimizer is not None and restores_optimizer(args, checkpoint):
            _restore_optimizer(args, optimizer, checkpoint)
        if loss_scaler is not None and loss_scaler.state_dict_key in checkpoint:
            loss_scaler.load_state_dict(checkpoint[loss_scaler.state_dict_key])
        elif loss_scaler is None and "amp_scaler" in checkpoint:
            _logger.warning("checkpoint %r holds the state of a float16 loss scaler (amp_scaler), and this run has "
                            "none: it is dropped (pass --amp with --amp-dtype float16 to continue with it)",
                            args.resume)
    start_epoch, done = resume_start(args, checkpoint)
    if done:
        _check_same_batches(args, checkpoint)
    _warn_other_workers(args, checkpoint)
    within = f" after batch {done - 1} of it" if done else ""
    _logger.info("Resumed from %s (epoch %s); continuing at epoch %d%s.", args.resume, checkpoint.get("epoch"),
                 start_epoch, within)
    return start_epoch, done, checkpoint


def _check_same_batches(args: argparse.Namespace, checkpoint: dict) -> None:
    """A recovery checkpoint counts the batches its epoch has trained: they are the same samples only with the
    same ``-b`` and number of processes."""
    trained = checkpoint.get("args")
    if not isinstance(trained, argparse.Namespace):
        return
    before = (getattr(trained, "batch_size", None), getattr(trained, "world_size", 1))
    now = (args.batch_size, getattr(args, "world_size", 1))
    if None not in before and before != now:
        raise CheckpointError(f"recovery checkpoint {args.resume!r} is part-way through an epoch trained with -b "
                              f"{before[0]} on {before[1]} process(es); this run has -b {now[0]} on {now[1]}, so its "
                              "batches are other samples. Resume with the same -b and process count, or from the "
                              "last epoch checkpoint (last.pth.tar / checkpoint-N.pth.tar)")


def _warn_other_workers(args: argparse.Namespace, checkpoint: dict) -> None:
    """Static-image augmentation is drawn by each data-loading worker from its own generator: another ``-j`` gives
    the resumed epochs other augmentations than the uninterrupted run's (event frames are drawn per sample)."""
    from data import is_neuromorphic

    trained, workers = getattr(checkpoint.get("args"), "workers", None), getattr(args, "workers", None)
    if None in (trained, workers) or trained == workers or is_neuromorphic(getattr(args, "dataset", "") or ""):
        return
    _logger.warning("%r was trained with -j %d, this run loads with -j %d: each data-loading worker draws the "
                    "augmentation of its batches, so the resumed epochs are augmented otherwise than in an "
                    "uninterrupted run; resume with -j %d to repeat it", args.resume, trained, workers, trained)


def resume_start(args: argparse.Namespace, checkpoint: dict) -> tuple[int, int]:
    """``(start_epoch, start_batch)`` of a run resumed from ``checkpoint`` (``--resume``; ``--start-epoch`` wins)."""
    epoch = checkpoint.get("epoch")
    done = 0 if args.start_epoch is not None else batches_done(args.resume, checkpoint)
    if args.start_epoch is not None:
        return args.start_epoch, done
    if epoch is None:  # a bare state dict: weights only
        return 0, done
    if done:  # a recovery checkpoint: its epoch is unfinished
        return epoch, done
    return (epoch + 1 if checkpoint.get("version", 1) > 1 else epoch), done  # version 1 stored the next epoch


_RECOVERY_NAME = re.compile(r"recovery-(\d+)-(\d+)\.pth\.tar")


def batches_done(path: str, checkpoint: dict) -> int:
    """How many batches of its epoch a checkpoint has trained: 0 for an end-of-epoch checkpoint, ``b + 1`` for
    a ``--recovery-interval`` checkpoint of batch ``b``, whose epoch a resumed run finishes from batch ``b + 1``.

    The recovery checkpoint stores it (``saver.batches_done``), so a copied or renamed one resumes where it stopped;
    an older one is known by its name, ``recovery-<epoch>-<b>.pth.tar``.

    Raises:
        CheckpointError: an older recovery checkpoint whose name no longer says its batch.
    """
    saver = checkpoint.get("saver") if isinstance(checkpoint.get("saver"), dict) else {}
    if isinstance(saver.get("batches_done"), int):
        return saver["batches_done"]
    match = _RECOVERY_NAME.fullmatch(os.path.basename(path))
    if match is None or checkpoint.get("epoch") != int(match.group(1)) or checkpoint.get("version", 1) < 2:
        if "epoch_loss" in saver or tuple(saver.get("pending", ())) == (None, None):  # only recovery files have these
            raise CheckpointError(f"checkpoint {path!r} is a recovery checkpoint part-way through epoch "
                                  f"{checkpoint.get('epoch')}, saved before recovery checkpoints recorded their batch, "
                                  "and its name no longer says it: rename it back to the name it was saved under "
                                  "(recovery-<epoch>-<batch>.pth.tar), or resume from the last epoch checkpoint")
        return 0
    return int(match.group(2)) + 1


def weights_key(checkpoint: dict, path: str, use_ema: bool = False) -> str:
    """``state_dict_ema`` with ``use_ema`` (``--use-ema``) or when the checkpoint has only those, else ``state_dict``.

    Raises:
        CheckpointError: ``use_ema`` and the checkpoint has no EMA weights.
    """
    if use_ema and "state_dict_ema" not in checkpoint:
        raise CheckpointError(f"checkpoint {path!r} has no EMA weights (state_dict_ema); drop --use-ema "
                              f"(--no-use-ema where the -c config sets use_ema)")
    if use_ema or ("state_dict" not in checkpoint and "state_dict_ema" in checkpoint):
        return "state_dict_ema"
    return "state_dict"


def load_initial_checkpoint(args: argparse.Namespace, model: nn.Module) -> None:
    """Load the weights of ``--initial-checkpoint`` (its EMA weights with ``--use-ema`` or if it has only those)."""
    checkpoint = load_checkpoint_file(args.initial_checkpoint)
    key = weights_key(checkpoint, args.initial_checkpoint, getattr(args, "use_ema", False))
    load_model_weights(model, checkpoint, args.initial_checkpoint, key=key, args=args)
    _logger.info("Loaded initial weights (%s) from %s.", key, args.initial_checkpoint)


def restore_model_ema(model_ema: Any, checkpoint: dict | None, path: str) -> None:
    """Load ``state_dict_ema`` into the EMA model when resuming; warn that a run without EMA drops them, and say
    (INFO) that the EMA of a run resumed from a checkpoint without EMA weights starts from the resumed weights."""
    if checkpoint is None:
        return
    if "state_dict_ema" not in checkpoint:
        if model_ema is not None:
            _logger.info("checkpoint %r has no EMA weights (state_dict_ema): the EMA starts from its model weights",
                         path)
        return
    if model_ema is None:
        _logger.warning("checkpoint %r holds EMA weights (state_dict_ema), but this run has no --model-ema: they are "
                        "dropped and the run goes on without EMA (its checkpoints ranked by the model's metric); pass "
                        "--model-ema to continue the EMA", path)
        return
    load_model_weights(model_ema.module, checkpoint, path, key="state_dict_ema")


@functools.cache
def _saver_class():
    from timm.utils import CheckpointSaver

    class Saver(CheckpointSaver):
        """timm's saver; a recovery checkpoint also keeps the summed loss of its unfinished epoch
        (``saver.epoch_loss``: ``[sum, count]`` over all processes), so a resumed run reports the whole epoch's.

        timm records the epoch being saved as ``pending``, to be added to the history on resume if its
        ``checkpoint-<epoch>`` file exists; for a recovery file that epoch is unfinished, and a ``checkpoint-<epoch>``
        written later by the interrupted run would enter the restored history unranked, so it is left out.  A
        recovery file also records how many batches of its epoch it has trained (``batches_done``).
        """

        epoch_loss: list[float] | None = None
        _recovery_batches: int | None = None
        lr_scheduler: Any = None

        def _save(self, save_path, epoch, metric=None):
            """timm's save; a failed write (``torch.save`` reports a full disk as a RuntimeError) removes the partial
            file and is an :class:`OutputError` naming it."""
            try:
                super()._save(save_path, epoch, metric)
            except (OSError, RuntimeError) as exc:
                if os.path.exists(save_path):
                    os.unlink(save_path)
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0]
                raise OutputError(f"writing {save_path} failed ({reason}); is the disk full? The checkpoints "
                                  f"written before it are kept") from exc

        def _replace(self, src, dst):
            os.replace(src, dst)  # timm deletes dst first (for Windows): a kill then left no last.pth.tar

        def _duplicate(self, src, dst):
            """``dst`` as a hard link to (or, where links fail, a copy of) ``src``, made beside it and renamed over
            it: timm deletes ``dst`` first, so a kill then left no model_best.pth.tar."""
            tmp = f"{dst}.{os.getpid()}.tmp"
            try:
                try:
                    os.link(src, tmp)
                except OSError:
                    shutil.copy2(src, tmp)
                os.replace(tmp, dst)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

        def finish_interrupted_save(self, resumed_from: str, pending: Any) -> None:
            """On resume, redo what a kill cut short of the ``save_checkpoint`` of ``pending`` (``(epoch, metric)``,
            the epoch ``resumed_from`` holds): its ``checkpoint-<epoch>`` (copied from ``resumed_from``, where it
            earns a place in the history), and ``model_best`` (the best epoch's file again)."""
            epoch, metric = pending if isinstance(pending, (list, tuple)) and len(pending) == 2 else (None, None)
            if epoch is not None and not os.path.exists(self._checkpoint_path(epoch)) \
                    and _stored_epoch(resumed_from) == epoch:
                worst = self.checkpoint_files[-1] if self.checkpoint_files else None
                if worst is None or len(self.checkpoint_files) < self.max_history or worst[1] is None \
                        or (metric is not None and self.cmp(metric, worst[1])):
                    if len(self.checkpoint_files) >= self.max_history:
                        self._cleanup_checkpoints(1)
                    self._duplicate(resumed_from, self._checkpoint_path(epoch))
                    self._track_checkpoint(self._checkpoint_path(epoch), epoch, metric, update_best_file=False)
            if self.best_epoch is None or not os.path.isfile(self._checkpoint_path(self.best_epoch)):
                return
            model_best = os.path.join(self.checkpoint_dir, f"model_best{self.extension}")
            if _stored_epoch(model_best) != self.best_epoch:
                self._duplicate(self._checkpoint_path(self.best_epoch), model_best)

        def save_recovery(self, epoch, batch_idx=0):
            self._recovery_batches = batch_idx + 1
            try:
                super().save_recovery(epoch, batch_idx)
            finally:
                self._recovery_batches = None

        def state_dict(self, epoch=None, metric=None):
            state = super().state_dict(epoch, metric)
            if self._recovery_batches is not None:
                state["pending"] = (None, None)
                state["batches_done"] = self._recovery_batches
            if self.epoch_loss is not None:
                state["epoch_loss"] = list(self.epoch_loss)
            plateau = plateau_progress(self.lr_scheduler, getattr(self.args, "eval_metric", None))
            if plateau is not None:
                state["plateau"] = plateau
            return state

    return Saver


def epoch_loss_so_far(checkpoint: dict | None) -> tuple[float, float] | None:
    """``(sum, count)`` of the training losses of a recovery checkpoint's unfinished epoch, or None."""
    value = (checkpoint or {}).get("saver", {}).get("epoch_loss")
    return (float(value[0]), float(value[1])) if isinstance(value, (list, tuple)) and len(value) == 2 else None


def plateau_progress_of(checkpoint: dict | None) -> dict | None:
    """The :func:`~engine.optim.plateau_progress` a checkpoint holds (``saver.plateau``), or None."""
    saver = (checkpoint or {}).get("saver")
    return saver.get("plateau") if isinstance(saver, dict) else None


def build_saver(args: argparse.Namespace, model: nn.Module, optimizer: torch.optim.Optimizer, output_dir: str, *,
                model_ema: Any = None, loss_scaler: Any = None, resume_checkpoint_dict: dict | None = None,
                lr_scheduler: Any = None, evaluations: tuple[str, ...] = ()):
    """timm ``CheckpointSaver`` writing into ``output_dir``; its checkpoints also hold ``lr_scheduler``'s
    :func:`~engine.optim.plateau_progress` (a ``plateau`` schedule's best value and counters, see
    :func:`plateau_progress_of`).

    When resuming from a checkpoint inside ``output_dir``, its history (best metric, kept epoch files) is restored so
    the ranking continues, and the files of the run before it that it replaces (later checkpoints, ``evaluations``)
    are set aside (:func:`set_aside_later_checkpoints`).
    """
    saver = _saver_class()(model=model, optimizer=optimizer, args=args, model_ema=model_ema,
                           amp_scaler=loss_scaler, checkpoint_dir=output_dir, recovery_dir=output_dir,
                           decreasing=args.eval_metric == "loss", max_history=args.checkpoint_hist)
    saver.lr_scheduler = lr_scheduler
    same_dir = args.resume and os.path.samefile(os.path.dirname(os.path.abspath(args.resume)), output_dir)
    if same_dir and resume_checkpoint_dict is not None and "saver" in resume_checkpoint_dict:
        resume_point = resume_start(args, resume_checkpoint_dict)
        moved = set_aside_later_checkpoints(output_dir, *resume_point, args.resume, evaluations)
        saver.load_state_dict(resume_checkpoint_dict["saver"])  # drops history entries whose files were moved
        saver.prev_recovery_file, saver.curr_recovery_file = newest_recovery_files(output_dir)
        saver.finish_interrupted_save(args.resume, resume_checkpoint_dict["saver"].get("pending"))
        model_best = os.path.join(output_dir, f"model_best{saver.extension}")
        if moved:
            restored = (f"; model_best{saver.extension} is the best before it again (epoch {saver.best_epoch})"
                        if os.path.exists(model_best) else "")
            _logger.warning("Resuming at epoch %d: the files of the run before it that this run replaces (%s) were "
                            "moved to %s%s", resume_point[0], ", ".join(os.path.basename(f) for f in moved),
                            os.path.dirname(moved[0]), restored)
    return saver


_CHECKPOINT_NAME = re.compile(r"(checkpoint-\d+|recovery-\d+-\d+|model_best|last)\.pth\.tar")


def newest_recovery_files(output_dir: str) -> tuple[str, str]:
    """``(second newest, newest)`` recovery files of ``output_dir`` by (epoch, batch), ``''`` where missing: timm's
    saver removes the older of its last two at each recovery save, and a resumed run takes over the killed run's."""
    found = sorted((int(m.group(1)), int(m.group(2)), name) for name in os.listdir(output_dir)
                   if (m := _RECOVERY_NAME.fullmatch(name)))
    paths = ["", ""] + [os.path.join(output_dir, name) for _, _, name in found]
    return paths[-2], paths[-1]


def _stored_epoch(path: str) -> int | None:
    """The ``epoch`` a checkpoint file stores (read through a memory map), or None if it cannot be read."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            epoch = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("epoch")
    except Exception:  # noqa: BLE001 - an unreadable file is not this run's to move
        return None
    return epoch if isinstance(epoch, int) else None


def _trained_past(path: str, start_epoch: int, start_batch: int) -> bool:
    """Whether the checkpoint file ``path`` holds training beyond ``start_batch`` batches of ``start_epoch``."""
    epoch = _stored_epoch(path)
    if epoch is None:
        return False
    recovery = _RECOVERY_NAME.fullmatch(os.path.basename(path))
    if recovery is None:  # an end-of-epoch checkpoint: epoch finished
        return epoch >= start_epoch
    return (epoch, int(recovery.group(2)) + 1) > (start_epoch, start_batch)


def set_aside_later_checkpoints(output_dir: str, start_epoch: int, start_batch: int, resumed_from: str,
                                evaluations: tuple[str, ...] = ()) -> list[str]:
    """Move the checkpoint files that trained past ``start_batch`` batches of ``start_epoch`` (a run resumed from an
    earlier checkpoint abandons them), and the ``evaluations`` files (written after training, they describe the run
    before it resumed), into ``output_dir/superseded-from-epoch-<start_epoch>[-N]/``, so that ``model_best``,
    ``last``, the epoch and the recovery files describe the resumed run only and nothing is deleted.
    Returns the new paths."""
    names = sorted(os.listdir(output_dir))
    later = [os.path.join(output_dir, name) for name in names
             if _CHECKPOINT_NAME.fullmatch(name)
             and not os.path.samefile(os.path.join(output_dir, name), resumed_from)]
    later = [path for path in later if _trained_past(path, start_epoch, start_batch)]
    later += [os.path.join(output_dir, name) for name in names if name in evaluations]
    if not later:
        return []
    folder, suffix = os.path.join(output_dir, f"superseded-from-epoch-{start_epoch}"), 1
    while os.path.exists(folder):
        folder, suffix = os.path.join(output_dir, f"superseded-from-epoch-{start_epoch}-{suffix}"), suffix + 1
    os.mkdir(folder)
    moved = [os.path.join(folder, os.path.basename(path)) for path in later]
    for source, target in zip(later, moved):
        os.replace(source, target)
    return moved
