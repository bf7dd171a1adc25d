"""The run folder: log file, ``args.yaml``, ``summary.csv`` and TensorBoard scalars (written by rank 0 only)."""
from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import sys
import time
from collections import OrderedDict, deque

import torch.distributed

from .atomic import lock_exclusive, numbered_paths, write_text_atomic
from .config import dump_args
from .distributed import is_primary
from .errors import ConfigError

__all__ = ["LOG_FORMAT", "setup_console_logging", "start_run_log", "resolve_output_dir", "RunOutputs"]

_logger = logging.getLogger(__name__)
LOG_FORMAT = "%(asctime)s %(levelname)s: %(message)s"
DEFAULT_OUTPUT_ROOT = os.path.join("output", "train")


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when a record arrives (redirections included)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always follows sys.stderr
        pass


def setup_console_logging(rank: int = 0, local_rank: int = 0) -> None:
    """Log to stderr in the reference format.  Rank 0 logs everything; the first process of every other node
    (``local_rank`` 0) warnings and errors, since its files (datasets, checkpoints) may differ from rank 0's; the
    other processes, which would repeat their node's warnings, errors only."""
    root = logging.getLogger()
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root.addHandler(handler)
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING if local_rank == 0 else logging.ERROR)


class _EarlyRecords(logging.Handler):
    """Keeps the records logged before the run folder exists, for :class:`RunOutputs` to put into its log file."""

    def __init__(self, limit: int = 10_000):
        super().__init__(logging.INFO)
        self.records: deque[logging.LogRecord] = deque(maxlen=limit)

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def start_run_log() -> None:
    """Start keeping this run's log records (setup warnings, the resume line) until its log file is opened."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _EarlyRecords)]:
        root.removeHandler(handler)
    root.addHandler(_EarlyRecords())


def _default_experiment(args: argparse.Namespace) -> str:
    dataset = args.dataset.split("/")[-1]
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{args.model}-data-{dataset}-t-{args.time_steps}-spike-{args.spike_mode}"


def _is_run_folder(path: str) -> bool:
    """A run folder of this engine: its ``args.yaml`` is written first, ``summary.csv`` after the first epoch."""
    return any(os.path.isfile(os.path.join(path, name)) for name in ("args.yaml", "summary.csv"))


def _claim_output_dir(args: argparse.Namespace, reuse_resume_dir: bool, experiment_given: bool) -> str:
    resume_dir = os.path.dirname(os.path.abspath(args.resume)) if args.resume and reuse_resume_dir else None
    if resume_dir and not experiment_given and _is_run_folder(resume_dir):
        return resume_dir
    base = os.path.abspath(os.path.join(args.output or DEFAULT_OUTPUT_ROOT, args.experiment or
                                        _default_experiment(args)))
    os.makedirs(os.path.dirname(base), exist_ok=True)
    for path in map(str, numbered_paths(base)):
        if path == resume_dir and os.path.isdir(path):
            return path
        try:
            os.mkdir(path)  # atomic: of two runs started together, one gets the folder, the other the next name
            return path
        except FileExistsError:
            pass


def resolve_output_dir(args: argparse.Namespace, reuse_resume_dir: bool = True,
                       command_line_dests: frozenset[str] | None = None) -> str:
    """Claim ``<--output or output/train>/<--experiment or a timestamped name>`` for this run and return it.

    An existing folder is reused only when ``--resume`` points into it and ``reuse_resume_dir`` (a resumed training
    run; never an evaluation, nor a restart of the schedule with ``--start-epoch``); otherwise ``-1``, ``-2``, ... is
    appended, so a new run never overwrites an earlier one.  A resumed training run without ``--experiment`` on the
    command line (``command_line_dests``, from :func:`engine.config.parse_args`; a config file's ``experiment`` names
    new runs only) continues in the run folder of its checkpoint (a folder holding an ``args.yaml`` or a
    ``summary.csv``, even one killed in its first epoch).  The primary process creates the folder (``os.mkdir``, so
    two runs started at once cannot both take it) and every process of a distributed run gets the primary's path.
    """
    experiment_given = bool(args.experiment) and (command_line_dests is None or "experiment" in command_line_dests)
    path = _claim_output_dir(args, reuse_resume_dir, experiment_given) if is_primary(args) else None
    if getattr(args, "distributed", False):
        shared = [path]
        torch.distributed.broadcast_object_list(shared, src=0)
        path = shared[0]
    return path


def _lock_run_folder(output_dir: str) -> int | None:
    """An exclusive lock on ``output_dir`` for the run's life (the OS releases it if the process dies), or None on a
    file system without locks.

    Raises:
        ConfigError: another run holds it (two runs resumed into the folder at once wrote its summary.csv rows and
            checkpoints in turn), before this one writes anything there.
    """
    try:
        fd = lock_exclusive(output_dir)
    except OSError:
        return None
    if fd is None:
        raise ConfigError(f"another run is writing into {output_dir} (resumed from one of its checkpoints too?); "
                          f"wait for it to end, or give --experiment NAME to resume into a new folder")
    return fd


class RunOutputs:
    """Creates the run folder and records a run into it.

    Args:
        args: resolved arguments, dumped to ``args.yaml`` (``args-resume-N.yaml`` when resuming into a folder that
            has one, so the original run's arguments are kept).
        output_dir: the run folder (see :func:`resolve_output_dir`).
        log_name: file name of the log, e.g. ``train.log``; it starts with the records kept since
            :func:`start_run_log`.
        resume_epoch: the first epoch of a resumed run: ``summary.csv`` rows and TensorBoard scalars of this epoch
            and later ones (left by the run that is resumed from an earlier checkpoint) are dropped.
    """

    def __init__(self, args: argparse.Namespace, output_dir: str, log_name: str = "train.log",
                 resume_epoch: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        os.makedirs(output_dir, exist_ok=True)
        self._lock = _lock_run_folder(output_dir)
        self.output_dir = output_dir
        self.summary_path = os.path.join(output_dir, "summary.csv")
        self._file_handler = logging.FileHandler(os.path.join(output_dir, log_name))
        self._file_handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root = logging.getLogger()
        for early in [h for h in root.handlers if isinstance(h, _EarlyRecords)]:
            for record in early.records:
                self._file_handler.handle(record)
            root.removeHandler(early)
        root.addHandler(self._file_handler)
        dump_args(args, self._args_path())
        if resume_epoch is not None:
            self._drop_summary_rows_from(resume_epoch)
        self.writer = SummaryWriter(log_dir=os.path.join(output_dir, "tensorboard"), purge_step=resume_epoch)

    def _args_path(self) -> str:
        path, n = os.path.join(self.output_dir, "args.yaml"), 1
        while os.path.exists(path):
            path, n = os.path.join(self.output_dir, f"args-resume-{n}.yaml"), n + 1
        return path

    def _drop_summary_rows_from(self, epoch: int) -> None:
        if not os.path.isfile(self.summary_path):
            return
        with open(self.summary_path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and r[0].isdigit() and int(r[0]) < epoch]
        if len(kept) < len(rows):
            buffer = io.StringIO()
            csv.writer(buffer).writerows(kept)
            write_text_atomic(self.summary_path, buffer.getvalue())
            _logger.info("summary.csv: dropped the rows of epoch %d and later, which this run trains again.", epoch)

    def log_epoch(self, epoch: int, train_metrics: OrderedDict, eval_metrics: OrderedDict, lr: float) -> None:
        """Add a ``summary.csv`` row (epoch, train_loss, eval_loss, eval_top1, eval_top5, lr) and TB scalars."""
        row = OrderedDict(epoch=epoch)
        row.update(("train_" + name, value) for name, value in train_metrics.items())
        row.update(("eval_" + name, value) for name, value in eval_metrics.items())
        row["lr"] = lr
        self._add_summary_row(row)
        for prefix, metrics in (("train", train_metrics), ("eval", eval_metrics)):
            for name, value in metrics.items():
                self.writer.add_scalar(f"{prefix}/{name}", value, epoch)
        self.writer.add_scalar("lr", lr, epoch)
        self.writer.flush()

    def _add_summary_row(self, row: OrderedDict) -> None:
        """Rewrite ``summary.csv`` with ``row`` added (timm's format), atomically: a kill leaves the old file whole."""
        earlier = ""
        if os.path.isfile(self.summary_path):
            with open(self.summary_path, newline="") as f:
                earlier = f.read()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=row.keys())
        if not earlier:
            writer.writeheader()
        writer.writerow(row)
        write_text_atomic(self.summary_path, earlier + buffer.getvalue())

    def close(self) -> None:
        """Flush and detach the TensorBoard writer and the log file."""
        self.writer.close()
        logging.getLogger().removeHandler(self._file_handler)
        self._file_handler.close()
        if self._lock is not None:
            os.close(self._lock)  # releases the folder's lock
            self._lock = None
