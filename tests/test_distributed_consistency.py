"""Two CPU processes (gloo) that must agree: on the weights they evaluate and on a setup error of one of them."""
import logging
import subprocess
import sys

import pytest
from _engine_helpers import REPO, TINY_FLAGS, free_port, subprocess_env

_PATHS = """
import os
import sys

sys.path[:0] = [{repo!r}, {tests!r}]
"""

# Rank 1 cannot see model_best.pth.tar, as on a second node without a shared output folder.
_BEST_UNSEEN = _PATHS + """
from types import SimpleNamespace

import torch
import torch.distributed as dist

import main
from engine.distributed import cleanup_distributed

dist.init_process_group("gloo")
rank = dist.get_rank()
torch.manual_seed(rank)
model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
model[1].running_mean += rank
best = os.path.join({out!r}, "model_best.pth.tar")
if rank == 0:
    torch.manual_seed(100)
    saved = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    saved[1].running_var *= 5
    torch.save({{"state_dict": saved.state_dict()}}, best)
else:
    seen = os.path.isfile
    os.path.isfile = lambda path: path != best and seen(path)
dist.barrier()

evaluated = []


def record_weights(model, *rest, **options):
    mine = torch.cat([t.flatten().float() for t in model.state_dict().values()])
    evaluated.extend(torch.zeros_like(mine) for _ in range(2))
    dist.all_gather(evaluated, mine)


main.evaluate_aster = record_weights
main.write_aster_outputs = lambda *args: None
args = SimpleNamespace(early_exit=True, exit_sweep=None, exit_metric="confidence", exit_threshold=0.9,
                       distributed=True, rank=rank, model_ema=False, model_ema_force_cpu=False)
setup = SimpleNamespace(model=model, loaders=SimpleNamespace(eval=None), eval_loss_fn=None)
main._evaluate_best(args, setup, {out!r}, skip={{}})
saved = torch.load(best, weights_only=True)["state_dict"]
cleanup_distributed(wait_for_peers=True)
assert torch.equal(*evaluated), "the processes evaluated different weights"
assert torch.equal(evaluated[0], torch.cat([t.flatten().float() for t in saved.values()])), "not model_best's"
"""

_EVAL_RANKS = _PATHS + """
import torch
import torch.distributed as dist
from pathlib import Path

from _engine_helpers import tiny_args
from engine.distributed import cleanup_distributed
from engine.run import setup_evaluation

setup = setup_evaluation(tiny_args(Path({out!r})))
weights = torch.cat([t.flatten().float() for t in setup.model.state_dict().values()])
gathered = [torch.zeros_like(weights) for _ in range(2)]
dist.all_gather(gathered, weights)
cleanup_distributed(wait_for_peers=True)
assert torch.equal(*gathered), "the processes evaluate different models"
"""

# Runs a script with rank-specific extra arguments (EXTRA_R<rank>) and its stderr, tracebacks included, in a file.
_RANK_WRAPPER = _PATHS + """
import runpy

err = open(os.path.join({out!r}, "rank%s.err" % os.environ["RANK"]), "w")
os.dup2(err.fileno(), 2)
sys.stderr = err
script = sys.argv[1]
sys.argv = [script, *sys.argv[2:], *os.environ.get("EXTRA_R" + os.environ["RANK"], "").split()]
runpy.run_path(script, run_name="__main__")
"""


def _torchrun(script, *argv, env=None):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(script), *argv]
    return subprocess.run(cmd, cwd=REPO, env=env or subprocess_env(), capture_output=True, text=True, timeout=240)


def _script(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text.format(repo=str(REPO), tests=str(REPO / "tests"), out=str(tmp_path)))
    return path


@pytest.mark.slow
def test_early_exit_evaluates_rank_0s_best_checkpoint_on_every_rank(tmp_path):
    """main.py after training: a process that could not see model_best.pth.tar (another node) kept its last-epoch
    weights while rank 0 loaded the best, so the combined early-exit numbers came from neither model."""
    result = _torchrun(_script(tmp_path, "best_unseen.py", _BEST_UNSEEN))
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_evaluation_without_a_checkpoint_gives_every_rank_rank_0s_model(tmp_path):
    """test.py/firing_num.py without a checkpoint: each process built its own random model (seed + rank), and
    evaluation has no DDP wrapper to synchronise them."""
    result = _torchrun(_script(tmp_path, "eval_ranks.py", _EVAL_RANKS))
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_setup_error_on_one_rank_is_one_error_line_on_every_rank(tmp_path):
    """--resume missing on rank 1's node only: rank 1 printed its error line, rank 0 a traceback from the DDP
    constructor ("Connection closed by peer").  Now both stop at the same point with one line each."""
    missing = tmp_path / "missing.pth.tar"
    env = dict(subprocess_env(), EXTRA_R1=f"--resume {missing}")
    _torchrun(_script(tmp_path, "wrapper.py", _RANK_WRAPPER), "train.py", *TINY_FLAGS, "--epochs", "1",
              "--output", str(tmp_path / "out"), env=env)
    errors = [(tmp_path / f"rank{rank}.err").read_text() for rank in (0, 1)]
    for rank, text in enumerate(errors):
        assert "Traceback" not in text and "ERROR: " in text, f"rank {rank}:\n{text[-3000:]}"
    assert f"ERROR: rank 1 failed: checkpoint '{missing}' not found" in errors[0], errors[0][-3000:]
    assert f"ERROR: checkpoint '{missing}' not found" in errors[1], errors[1][-3000:]
    assert not (tmp_path / "out").exists()


def test_processes_other_than_rank_0_log_errors_only(capsys):
    """Every warning appeared once per process (8 copies with 8 GPUs); errors must still show on every rank, and
    the first process of another node keeps its warnings (its dataset or checkpoint may differ from rank 0's)."""
    from engine.outputs import setup_console_logging

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        setup_console_logging(rank=1, local_rank=1)
        logging.getLogger("rank-test").warning("a warning every process would repeat")
        logging.getLogger("rank-test").error("an error of this process")
        setup_console_logging(rank=8, local_rank=0)
        logging.getLogger("rank-test").warning("a warning of the second node")
        setup_console_logging(rank=0)
        logging.getLogger("rank-test").warning("the warning, from rank 0")
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
    err = capsys.readouterr().err
    assert "an error of this process" in err and "the warning, from rank 0" in err
    assert "a warning of the second node" in err
    assert "a warning every process would repeat" not in err


_LONG_RANK_0_WORK = """
import argparse, datetime, sys, time
import torch.distributed as dist
sys.path[:0] = [{repo!r}, {tests!r}]
from engine.distributed import cleanup_distributed, init_distributed

join = dist.init_process_group
dist.init_process_group = lambda *a, **k: join(*a, timeout=datetime.timedelta(seconds=2), **k)
args = argparse.Namespace(device="cpu", local_rank=0)
init_distributed(args)
if args.rank == 0:
    time.sleep(6)  # rank 0's own work after the last collective (a trace export), past the group's timeout
cleanup_distributed(wait_for_peers=True)
"""


@pytest.mark.slow
def test_the_end_of_run_wait_outlasts_rank_0s_own_work(tmp_path):
    """With --export-traces the other processes waited for rank 0's export in a barrier bounded by the group's
    timeout (gloo 30 min, NCCL 10 min): a longer export was killed half-written.  Here the group's timeout is 2 s
    and rank 0 works for 6 s."""
    result = _torchrun(_script(tmp_path, "long_rank_0.py", _LONG_RANK_0_WORK))
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_collective_that_lost_its_peer_stops_rank_0_with_the_resume_hint(tmp_path, monkeypatch, caplog):
    """Ctrl-C under torchrun reaches the processes one after the other: rank 0, inside DDP's all-reduce when its
    peer left, got gloo's "Connection closed by peer" as a traceback, without the "Interrupted ... resume with
    --resume" line in its log. The group here is a one-process one; the error is the one gloo raised."""
    import logging

    import torch.distributed as dist

    import train
    from engine import run
    from engine.distributed import lost_peer

    closed = RuntimeError("[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:547] Connection closed by peer "
                          "[127.0.0.1]:29320")

    def peer_gone(*args, **kwargs):
        raise closed

    assert not lost_peer(closed)  # no group joined: not a collective's error
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    assert lost_peer(closed) and not lost_peer(RuntimeError("CUDA out of memory")) and not lost_peer(ValueError("x"))
    monkeypatch.setattr(run, "_train_epochs", peer_gone)
    with caplog.at_level(logging.WARNING):
        status = run.cli_main(train.make_parser, run.run_training, [*TINY_FLAGS, "--output", str(tmp_path)])
    assert status == 1 and not dist.is_initialized()
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert messages[-2].startswith("Interrupted before the first checkpoint of ")  # nothing to resume from yet
    assert messages[-1] == ("Another process of this run stopped (Ctrl-C or an error: see its output), so this one "
                            f"stops too ({closed})")

    def out_of_memory(args, parser):
        raise RuntimeError("CUDA out of memory")

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    with pytest.raises(RuntimeError, match="CUDA out of memory"):  # any other error keeps its traceback
        run.cli_main(train.make_parser, out_of_memory, [])
    assert not dist.is_initialized()
