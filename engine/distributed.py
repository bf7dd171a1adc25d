"""Process-group setup for torchrun, ``python -m torch.distributed.launch`` and plain ``python``.

torchrun and ``torch.distributed.launch`` set ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT``; the legacy launcher also passes ``--local-rank=N`` (the parser accepts ``--local_rank`` too).
With ``WORLD_SIZE`` > 1 the process group is initialised from those variables (``env://``): NCCL when the
processes use CUDA devices, gloo otherwise.  Multi-node runs need only torchrun's rendezvous flags.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist

from .errors import SetupError, one_line

__all__ = ["init_distributed", "is_primary", "agreed_setup", "broadcast_state", "cleanup_distributed",
           "evaluation_module", "lost_peer"]

_logger = logging.getLogger(__name__)

# How long a finished process waits at the end for the others: rank 0 alone may still be busy (a trace export, the
# early-exit evaluation's files) far past the process group's own timeout (gloo 30 min, NCCL 10 min).  A process
# that dies stops the others through the launcher, so the long wait does not turn a crash into a hang.
EXIT_WAIT = datetime.timedelta(days=7)


def init_distributed(args: argparse.Namespace) -> None:
    """Set ``args.distributed``, ``rank``, ``world_size``, ``local_rank`` and ``device``; join the process group.

    The device is ``args.device`` if given, else ``cuda:LOCAL_RANK`` when CUDA is available, else ``cpu``.
    """
    args.world_size = int(os.environ.get("WORLD_SIZE", 1))
    args.rank = int(os.environ.get("RANK", 0))
    args.local_rank = int(os.environ.get("LOCAL_RANK", args.local_rank))
    args.distributed = args.world_size > 1
    args.requested_device = getattr(args, "requested_device", args.device)
    if not args.device:
        args.device = f"cuda:{args.local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", args.local_rank)
            args.device = str(device)
        torch.cuda.set_device(device)
    if args.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo", init_method="env://")
        _logger.info("Process %d of %d on %s (backend %s).", args.rank, args.world_size, args.device,
                     dist.get_backend())


def lost_peer(exc: BaseException) -> bool:
    """True for the error a collective raises in a joined group when another process has gone (it stopped after
    Ctrl-C, which the launcher does not deliver to every process at once, or after an error of its own)."""
    if not (dist.is_available() and dist.is_initialized()):
        return False
    return isinstance(exc, dist.DistNetworkError) or (isinstance(exc, RuntimeError) and any(
        text in str(exc) for text in ("Connection closed by peer", "Connection reset by peer")))


def is_primary(args: argparse.Namespace) -> bool:
    """True on the process that writes logs and checkpoints (global rank 0)."""
    return getattr(args, "rank", 0) == 0


@contextmanager
def agreed_setup(args: argparse.Namespace) -> Iterator[None]:
    """Run setup steps that may fail on some processes only (a checkpoint or dataset missing on one node), then
    let every process know: after a :class:`SetupError` on any process all raise one, the failed process its own
    and the others ``rank N failed: <message>``, so none goes on into a collective the failed one never joins.

    Ends with a collective on every process of the group, so the steps inside must use none.  Without a process
    group (one process, or a failure before joining it) an error goes on as it is.
    """
    try:
        yield
    except SetupError as exc:
        _share_setup_failure(args, one_line(exc))
        raise
    _share_setup_failure(args, None)


def _share_setup_failure(args: argparse.Namespace, message: str | None) -> None:
    """Gather every process's setup failure (``None``: none); raise the first one's on a process that did not fail."""
    if not (getattr(args, "distributed", False) and dist.is_initialized()):
        return
    messages = [None] * dist.get_world_size()
    dist.all_gather_object(messages, message)
    failed = [rank for rank, text in enumerate(messages) if text is not None]
    if failed and message is None:
        raise SetupError(f"rank {failed[0]} failed: {messages[failed[0]]}")


def evaluation_module(model: torch.nn.Module) -> torch.nn.Module:
    """The module to evaluate: a DDP model's bare module, after rank 0's buffers (BatchNorm statistics) are
    broadcast as DDP's own first forward would; any other model as it is.

    Evaluating without the DDP wrapper keeps collectives out of the batches, so the processes' shares of the
    evaluation set may differ in length (:class:`engine.loaders.EvalShard`).
    """
    from torch.nn.parallel import DistributedDataParallel

    if not isinstance(model, DistributedDataParallel):
        return model
    if model.broadcast_buffers:
        for buffer in model.module.buffers():
            dist.broadcast(buffer, src=0)
    return model.module


def broadcast_state(module: torch.nn.Module) -> None:
    """Give every process rank 0's parameters and buffers of ``module`` (a collective: every rank calls it)."""
    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src=0)


def cleanup_distributed(wait_for_peers: bool = False) -> None:
    """Leave the process group, if one was joined.

    ``wait_for_peers`` (after a run that ended normally on every process): first wait for every process
    (:func:`_wait_for_every_process`), so no process tears its connections down while another still uses them.
    Objects that still hold the group (a DDP reducer kept by a reference cycle) are collected first, while the
    interpreter is fully alive: gloo's worker threads destroyed during interpreter shutdown abort the process.
    """
    if dist.is_initialized():
        if wait_for_peers:
            _wait_for_every_process()
        gc.collect()
        dist.destroy_process_group()


def _wait_for_every_process() -> None:
    """A barrier on the group's rendezvous store that waits up to :data:`EXIT_WAIT`, not the group's timeout (a
    collective barrier's), whatever the backend, and opens no connection the run did not have.

    Each process marks its arrival and waits for every mark, then marks that it is leaving; rank 0 leaves last,
    after every leaving mark, since in a run started without torchrun its process serves the store.
    """
    store = dist.distributed_c10d._get_default_store()
    ranks = range(dist.get_world_size())
    store.set(f"exit/arrived/{dist.get_rank()}", "1")
    store.wait([f"exit/arrived/{rank}" for rank in ranks], EXIT_WAIT)
    store.set(f"exit/left/{dist.get_rank()}", "1")
    if dist.get_rank() == 0:
        store.wait([f"exit/left/{rank}" for rank in ranks], EXIT_WAIT)
