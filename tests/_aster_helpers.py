"""Shared by the main.py / finetune.py tests: one tiny trained checkpoint per test session, and small utilities."""
from __future__ import annotations

import atexit
import functools
import re
import shutil
import tempfile
from pathlib import Path

from _engine_helpers import TINY_FLAGS

# 2 blocks, T=3 (so that samples can exit at 1, 2 or 3), batch 16 (about 40 % after one epoch, ~10 s); otherwise
# the engine tests' tiny digits run.
ASTER_FLAGS = [*TINY_FLAGS, "--layer", "2", "--time-steps", "3", "--epochs", "1", "--seed", "0", "-b", "16"]
DEPTHS, T = 2, 3


@functools.lru_cache(maxsize=None)
def trained_run() -> Path:
    """Train the tiny model for one epoch through ``main.py`` (with --early-exit and --exit-sweep, so the run
    folder also shows the after-training evaluation); return the run folder (holds ``model_best.pth.tar``)."""
    import main
    from engine.run import cli_main

    root = Path(tempfile.mkdtemp(prefix="aster_tiny_"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    argv = [*ASTER_FLAGS, "--output", str(root), "--experiment", "train", "--early-exit", "--exit-sweep", "0.5,0.9"]
    assert cli_main(main.make_parser, main.run, argv) == 0
    return root / "train"


def run_main(tmp_path: Path, *extra: str, experiment: str = "eval") -> tuple[int, Path]:
    """``main.py`` in-process with the tiny flags; returns ``(exit status, run folder)``."""
    import main
    from engine.run import cli_main

    argv = [*ASTER_FLAGS, "--output", str(tmp_path), "--experiment", experiment, *extra]
    return cli_main(main.make_parser, main.run, argv), tmp_path / experiment


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if re.search(r" ERROR: ", line)]


def reference_log(rates: dict[str, dict[str, float]], trailer: bool = False) -> str:
    """A log in the format of SDT's firing_num.py (``sdt.log``): asctime + level prefixes, a ``non_zero: ``
    block, then ``firing_rate: `` followed by one record of indented JSON, at the end of the file or (``trailer``)
    followed by a blank line and more records."""
    import json

    def record(message: str, second: int) -> str:
        return f"2024-05-01 12:00:{second:02d},123 INFO: {message}\n"

    non_zero = {t: {k: 0.5 for k in r} for t, r in rates.items()}
    text = (record("Test: [   0/2]  Time: 0.512 (0.512)  Loss:  0.2 (0.2)  Acc@1: 97.0 (97.0)", 1)
            + record("top-1:", 2)
            + record("non_zero: ", 3) + record(json.dumps(non_zero, indent=4), 3)
            + record("firing_rate: ", 4) + record(json.dumps(rates, indent=4), 4))
    return text + "\n" + record("done", 5) if trailer else text
