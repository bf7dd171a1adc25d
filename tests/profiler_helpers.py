"""Shared pieces of the profiler tests: the fork's captures, tiny model options, synthetic captures."""
from __future__ import annotations

from pathlib import Path

import pytest

CAPTURE_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "fixtures" / "profiler"
CAPTURES = ("capcifar.txt", "capcifar3.txt", "capcifarTensRandn.txt")

needs_captures = pytest.mark.skipif(
    not all((CAPTURE_DIR / name).is_file() for name in CAPTURES),
    reason=f"the fork's captures are not in {CAPTURE_DIR} (../shared/fixtures/profiler next to the repository)")

# A tiny model for `python -m profiler run`: 2 blocks of width 32, T=4, chunk 2, 32x32 input.
TINY_RUN = ["--dim", "32", "--layer", "2", "--num-heads", "4", "--num-classes", "10", "--device", "cpu"]

# The 20 sparsity lines per block of the old cap8.txt layout (no timers, no shapes, no run lines).
CAP8_BLOCK = ["sparsity x_for_qkv", "sparsity q", "sparsity k", "sparsity v", "sparsity Attention q_chunks",
              "sparsity Attention k_chunks", "sparsity Attention v_chunks", "sparsity Attention postReshape q_chunks",
              "sparsity Attention postReshape k_chunks", "sparsity Attention postReshape v_chunks",
              "sparsity Attention out", "sparsity Attention postReshape output", "sparsity Attention postReshape x",
              "sparsity x", "MLP sparsity x", "MLP sparsity postLIF x after lif", "MLP sparsity postBN x after fc1",
              "MLP sparsity postLIF x after fc2", "MLP sparsity postBN x after fc2ConvBn",
              "MLP sparsity x after identity final"]


def cap8_lines(blocks: int, layers: int = 8) -> list[str]:
    """A cap8-layout capture in which every value of block execution i is ``(i % layers) / 100 + run / 1000``."""
    lines = []
    for i in range(blocks):
        value = (i % layers) / 100 + (i // layers) / 1000
        lines += [f"{name}: {value}" for name in CAP8_BLOCK]
    return lines
