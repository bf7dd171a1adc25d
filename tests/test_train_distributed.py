"""Two CPU processes (gloo), launched by torchrun and by the legacy torch.distributed.launch."""
import subprocess
import sys

import pytest
import yaml
from _engine_helpers import REPO, TINY_FLAGS, free_port, read_summary, subprocess_env

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("launcher", ["torch.distributed.run", "torch.distributed.launch"])
def test_two_process_run(tmp_path, launcher):
    cmd = [sys.executable, "-m", launcher, "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "train.py", *TINY_FLAGS, "--epochs", "1",
           "--output", str(tmp_path), "--experiment", "ddp"]
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "ddp"
    assert {"args.yaml", "summary.csv", "train.log", "last.pth.tar", "model_best.pth.tar",
            "checkpoint-0.pth.tar", "tensorboard"} <= {p.name for p in run_dir.iterdir()}
    assert [p.name for p in tmp_path.iterdir()] == ["ddp"]  # rank 1 wrote nothing of its own
    recorded = yaml.safe_load((run_dir / "args.yaml").read_text())
    assert (recorded["world_size"], recorded["distributed"], recorded["rank"]) == (2, True, 0)
    assert [row["epoch"] for row in read_summary(run_dir / "summary.csv")] == ["0"]
    log = (run_dir / "train.log").read_text()
    assert "2 processes" in log and "Test: all 360 samples of 2 processes" in log  # the shares' lines say 180


def _mnist_25(tmp_path):
    """25 random MNIST-format validation images (2 processes: shares of 13 and 12)."""
    import numpy as np
    from test_engine_data import _write_idx

    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 255, (25, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(25) % 10)
    return ["--dataset", "mnist", "--data-dir", str(tmp_path), "-vb", "8"]


def _one_and_two_processes(script, flags, tmp_path):
    runs = {"one": [sys.executable, script],
            "two": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                    f"--master_port={free_port()}", script]}
    for name, launch in runs.items():
        argv = [arg.replace("{name}", name) for arg in flags]
        result = subprocess.run([*launch, *argv, "--experiment", name], cwd=REPO, env=subprocess_env(),
                                capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]


def test_two_process_early_exit_and_traces_equal_one(tmp_path):
    """main.py --validate-only under torchrun: exit_steps.json numbered each process's share from 0 (the labels
    of samples 0, 2, 4, ... under ids 0, 1, 2) and the sweep covered rank 0 only; the traces held samples 0, 2, ...
    Now both equal one process's."""
    import json

    from engine.traces import TraceReader
    from test_evaluate import _checkpoint

    flags = [*TINY_FLAGS, "--time-steps", "2", "--initial-checkpoint", str(_checkpoint(tmp_path, 2)), "--output",
             str(tmp_path / "aster"), *_mnist_25(tmp_path), "--validate-only", "--early-exit", "--exit-sweep",
             "0.3,0.9", "--export-traces", str(tmp_path / "trace-{name}"), "--trace-samples", "6"]
    _one_and_two_processes("main.py", flags, tmp_path)
    one, two = ({f: json.loads((tmp_path / "aster" / name / f).read_text()) for f in ("exit_steps.json",
                                                                                     "aster_eval.json")}
                for name in ("one", "two"))
    assert one["exit_steps.json"] == two["exit_steps.json"] and len(one["exit_steps.json"]["labels"]) == 25
    assert one["aster_eval.json"]["sweep"] == two["aster_eval.json"]["sweep"]
    labels = [[s.label for s in TraceReader(tmp_path / f"trace-{name}").meta.samples] for name in ("one", "two")]
    assert labels[0] == labels[1] == one["exit_steps.json"]["labels"][:6]


def test_two_process_evaluation_equals_one(tmp_path):
    """Each process evaluates its share of 25 images (12 and 13); the accuracy, rates, sample count and energy are
    those of one process (the rates were doubled: the sums were all-reduced but not the element counts; and the
    padding of the distributed samplers counted one image twice)."""
    import json

    import numpy as np
    from test_engine_data import _write_idx
    from test_evaluate import _checkpoint

    checkpoint = _checkpoint(tmp_path, 2)
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 255, (25, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.arange(25) % 10)
    flags = [*TINY_FLAGS, "--time-steps", "2", "--resume", str(checkpoint), "--output", str(tmp_path / "valid"),
             "--dataset", "mnist", "--data-dir", str(tmp_path), "-vb", "8"]
    runs = {"one": [sys.executable, "firing_num.py"],
            "two": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
                    f"--master_port={free_port()}", "firing_num.py"]}
    for name, launch in runs.items():
        result = subprocess.run([*launch, *flags, "--experiment", name], cwd=REPO, env=subprocess_env(),
                                capture_output=True, text=True, timeout=240)
        assert result.returncode == 0, result.stderr[-3000:]
    one, two = (json.loads((tmp_path / "valid" / name / "firing.json").read_text()) for name in runs)
    assert one["samples"] == two["samples"] == 25 and two["top1"] == pytest.approx(one["top1"])
    for step, rates in one["firing_rate"].items():
        assert two["firing_rate"][step] == pytest.approx(rates, rel=1e-9), step
        assert two["non_zero"][step] == pytest.approx(one["non_zero"][step], rel=1e-9), step
    assert any(value > 0 for value in one["firing_rate"]["t1"].values())
    assert two["energy"]["energy_mj"] == pytest.approx(one["energy"]["energy_mj"], rel=1e-9)


_EMA_RANKS = """
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path[:0] = [{repo!r}, {tests!r}]
from _engine_helpers import tiny_args
from engine.distributed import cleanup_distributed
from engine.run import setup_training

setup = setup_training(tiny_args(Path({out!r}), "--model-ema"))
ema = torch.cat([t.flatten().float() for t in setup.model_ema.module.state_dict().values()])
gathered = [torch.zeros_like(ema) for _ in range(2)]
dist.all_gather(gathered, ema)
del setup  # the DDP model holds the process group: gloo aborts if it is torn down at interpreter exit
cleanup_distributed(wait_for_peers=True)
assert torch.equal(*gathered), "the processes' EMAs differ"
"""


def test_two_process_emas_start_from_rank_0s_weights(tmp_path):
    """Each process copied its own random initial weights into the EMA (DDP syncs only the model's), so the EMA
    metric that ranked the checkpoints mixed the processes' EMAs, and only rank 0's was saved."""
    script = tmp_path / "ema_ranks.py"
    script.write_text(_EMA_RANKS.format(repo=str(REPO), tests=str(REPO / "tests"), out=str(tmp_path)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", str(script)]
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
