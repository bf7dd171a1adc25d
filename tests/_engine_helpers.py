"""Shared helpers of the engine/train tests: a tiny digits run and a free TCP port."""
from __future__ import annotations

import argparse
import hashlib
import os
import socket
from pathlib import Path

import torch

# The test machine may be shared: one intra-op thread avoids the heavy slow-down of oversubscribed OpenMP threads.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]

# A 1-block, width-32, T=1 SDT on digits: about 2 s per epoch on one CPU core.
TINY_FLAGS = [
    "--dataset", "digits", "--num-classes", "10", "--model", "sdt", "--dim", "32", "--layer", "1",
    "--num-heads", "4", "--mlp-ratio", "2", "--time-steps", "1", "--pooling-stat", "1111", "--img-size", "32",
    "--mean", "0.31", "0.31", "0.31", "--std", "0.35", "0.35", "0.35", "--crop-pct", "1.0",
    "--scale", "0.8", "1.0", "--hflip", "0", "--opt", "adamw", "--lr", "3e-3", "--weight-decay", "0.01",
    "--sched", "cosine", "--warmup-epochs", "0", "--cooldown-epochs", "0", "--smoothing", "0.1",
    "-b", "128", "-vb", "256", "-j", "0", "--log-interval", "50", "--device", "cpu",
]

# TINY_FLAGS without the sizes a named variant (--model sdt_test: 1 block of width 32, T=2) fixes
_VARIANT_SIZES = ("--model", "--dim", "--layer", "--num-heads", "--time-steps", "--pooling-stat", "--img-size")
VARIANT_FLAGS = [flag for i, flag in enumerate(TINY_FLAGS)
                 if flag not in _VARIANT_SIZES and TINY_FLAGS[i - 1] not in _VARIANT_SIZES] + ["--model", "sdt_test"]


def tiny_args(tmp_path: Path, *extra: str) -> argparse.Namespace:
    """Parsed arguments of a tiny digits run writing under ``tmp_path``."""
    from engine.args import get_args_parser
    from engine.config import parse_args

    parser = argparse.ArgumentParser(parents=[get_args_parser()])
    return parse_args(parser, [*TINY_FLAGS, "--output", str(tmp_path), *extra])


def free_port() -> int:
    """A TCP port that was free a moment ago (for MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def snapshot(folder: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder``."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_summary(path: Path) -> list[dict[str, str]]:
    """Rows of a ``summary.csv``."""
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def subprocess_env() -> dict[str, str]:
    """Environment for child training processes: one thread each, repo importable."""
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)  # keep a wheels folder
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    env.pop("WORLD_SIZE", None)
    return env
