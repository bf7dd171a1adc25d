"""Every GPU check the open issues ask for, in one run that ends within a time budget (one device-tool call).

On the device tool (15 minutes of device time per task, a machine start included, so one call with
``carry: [".whl"]``: spikingjelly and loguru travel as wheels in ``.whl``, see docs/speed.md)::

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl && export PYTHONPATH=/tmp/site || exit; python3 benchmarks/device_checks.py --out $OUT

The steps run in order of priority, each with the time that is left of ``--budget`` (default 540 s: a 600 s
call, the machine's start outside it, less about a minute for installing the wheels, starting Python and packing),
and a step that runs out is stopped so that the ones before it still come back:

1. ``fixture_diffs``: the reference fixtures on CUDA (issue 3), and ``fixture_diffs_compiled`` /
   ``fixture_diffs_cudagraphs``: three of them with the training step compiled by inductor, and replayed as CUDA
   graphs of eager's kernels (``--torchcompile cudagraphs``);
2. ``cuda_tests``: the tests that need a GPU (``-k cuda``: the Triton LIF, BN + LIF and pool kernels against
   their references, CUDA-event timers, the fused optimizer), and ``bench_kernels``: the LIF and pool kernels alone
   at the anchors' shapes, against the GPU's memory bandwidth;
3. ``profiler`` and ``profiler_timers``: the fork's default model, 30 runs with probes and 30 with timers only
   (issue 7), and ``bench_probes``: the cost of the probes when off;
4. ``bench_train``: every anchor config on the default fast path (channels-last on CUDA), ``bench_train_bn_lif``
   with ``--fuse-bn-lif`` (whether it pays decides its default), ``bench_train_contiguous`` with
   ``--no-channels-last`` (likewise), then ``bench_train_compiled`` with ``--torchcompile --torchcompile-mode
   reduce-overhead`` (CUDA graphs) on every anchor, ``bench_train_compiled_bn_lif`` the same with ``--fuse-bn-lif``
   on the two fp32 DVS anchors (the configs furthest from their goal, with the least memory traffic fused), and
   ``bench_train_cudagraphs`` with ``--torchcompile cudagraphs`` (issue 10).

``OUT`` must not hold an earlier run's results.  ``OUT/log.txt`` has every step's output and a summary;
``OUT/device_checks.tar.gz`` has the files (profiler records, benchmark JSON): two files in all, as the device tool
returns at most eight.  The archive is packed again after every step (written beside and renamed over the last
one), so a call stopped from outside, past the budget, still brings back every finished step's files.  ``--tiny``
runs the same steps on small models (the CPU smoke test).  The exit status is 0 only when every step ran and
passed.
"""
from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ARCHIVE = "device_checks.tar.gz"
_logger = logging.getLogger("device_checks")


@dataclass(frozen=True)
class Step:
    """One check: ``python ARGV`` run from the repository root; ``{device}`` and ``{files}`` are filled in."""
    name: str
    argv: tuple[str, ...]
    tiny_argv: tuple[str, ...] | None = None  # the CPU smoke version (None: the same argv)


_PROFILER_TINY = ("--dim", "32", "--layer", "1", "--num-heads", "2", "--num-classes", "10", "--runs", "2",
                  "--warmup", "1")
_BENCH_TINY = ("--tiny", "--warmup", "1", "--steps", "2", "--profile-steps", "1")

STEPS = (
    Step("fixture_diffs", ("benchmarks/fixture_diffs.py", "--device", "{device}")),
    Step("fixture_diffs_compiled", ("benchmarks/fixture_diffs.py", "--device", "{device}", "--variants", "compiled",
                                    "--fixtures", "sdt_A_lif_static", "statten_A_statten_static",
                                    "statten_C_statten_dvs_chunk2"),
         ("benchmarks/fixture_diffs.py", "--device", "{device}", "--variants", "compiled", "--compile-backend",
          "aot_eager", "--fixtures", "sdt_A_lif_static")),
    Step("fixture_diffs_cudagraphs", ("benchmarks/fixture_diffs.py", "--device", "{device}", "--variants",
                                      "compiled", "--compile-backend", "cudagraphs", "--fixtures", "sdt_A_lif_static",
                                      "statten_A_statten_static", "statten_C_statten_dvs_chunk2"),
         ("benchmarks/fixture_diffs.py", "--device", "{device}", "--variants", "compiled", "--compile-backend",
          "cudagraphs", "--fixtures", "sdt_A_lif_static")),
    Step("cuda_tests", ("-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "tests/test_fused_lif.py",
                        "tests/test_bn_lif.py", "tests/test_pool.py", "tests/test_profiler_instrument.py",
                        "tests/test_train_steps.py"),
         ("-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_fused_lif.py", "-k", "hand_computed")),
    Step("bench_kernels", ("benchmarks/bench_kernels.py", "--device", "{device}", "--json",
                           "{files}/bench_kernels.json"),
         ("benchmarks/bench_kernels.py", "--device", "{device}", "--tiny", "--repeats", "1", "--warmup", "0",
          "--json", "{files}/bench_kernels.json")),
    Step("profiler", ("-m", "profiler", "run", "--device", "{device}", "--runs", "30", "--warmup", "3", "--out",
                      "{files}/profiler"),
         ("-m", "profiler", "run", "--device", "{device}", *_PROFILER_TINY, "--out", "{files}/profiler")),
    Step("profiler_timers", ("-m", "profiler", "run", "--device", "{device}", "--runs", "30", "--warmup", "3",
                             "--no-sparsity", "--out", "{files}/profiler_timers"),
         ("-m", "profiler", "run", "--device", "{device}", *_PROFILER_TINY, "--no-sparsity", "--out",
          "{files}/profiler_timers")),
    Step("bench_probes", ("benchmarks/bench_probes.py", "--device", "{device}", "--repeats", "50"),
         ("benchmarks/bench_probes.py", "--device", "{device}", "--repeats", "1", "--warmup", "0", "--configs",
          "tiny")),
    Step("bench_train", ("benchmarks/bench_train.py", "--all", "--device", "{device}", "--json",
                         "{files}/bench_train.json"),
         ("benchmarks/bench_train.py", *_BENCH_TINY, "--device", "{device}", "--json", "{files}/bench_train.json")),
    Step("bench_train_bn_lif", ("benchmarks/bench_train.py", "--all", "--device", "{device}", "--fuse-bn-lif",
                                "--json", "{files}/bench_train_bn_lif.json"),
         ("benchmarks/bench_train.py", *_BENCH_TINY, "--device", "{device}", "--fuse-bn-lif", "--json",
          "{files}/bench_train_bn_lif.json")),
    Step("bench_train_contiguous", ("benchmarks/bench_train.py", "--all", "--device", "{device}",
                                    "--no-channels-last", "--json", "{files}/bench_train_contiguous.json"),
         ("benchmarks/bench_train.py", *_BENCH_TINY, "--device", "{device}", "--no-channels-last", "--json",
          "{files}/bench_train_contiguous.json")),
    Step("bench_train_compiled", ("benchmarks/bench_train.py", "--all", "--device", "{device}",
                                  "--torchcompile", "--torchcompile-mode", "reduce-overhead", "--json",
                                  "{files}/bench_train_compiled.json"),
         ("benchmarks/bench_train.py", *_BENCH_TINY, "--device", "{device}", "--torchcompile", "aot_eager",
          "--json", "{files}/bench_train_compiled.json")),
    Step("bench_train_compiled_bn_lif", ("benchmarks/bench_train.py", "--anchor", "sdt-2-256-dvs-t16-fp32", "--anchor",
                                         "statten-2-256-c4-dvs-t16-fp32", "--device", "{device}", "--torchcompile",
                                         "--torchcompile-mode", "reduce-overhead", "--fuse-bn-lif", "--json",
                                         "{files}/bench_train_compiled_bn_lif.json"),
         ("benchmarks/bench_train.py", *_BENCH_TINY, "--device", "{device}", "--torchcompile", "aot_eager",
          "--fuse-bn-lif", "--json", "{files}/bench_train_compiled_bn_lif.json")),
    Step("bench_train_cudagraphs", ("benchmarks/bench_train.py", "--all", "--device", "{device}", "--torchcompile",
                                    "cudagraphs", "--json", "{files}/bench_train_cudagraphs.json"),
         ("benchmarks/bench_train.py", *_BENCH_TINY, "--device", "{device}", "--torchcompile", "cudagraphs",
          "--json", "{files}/bench_train_cudagraphs.json")),
)


def _run_step(step: Step, argv: list[str], timeout: float, log) -> tuple[int | str, float]:
    """Run one step with its output appended to ``log``; returns (exit code or "timeout", seconds)."""
    log.write(f"\n===== {step.name}: python {' '.join(argv)}\n")
    log.flush()
    start = time.monotonic()
    try:
        rc = subprocess.run([sys.executable, *argv], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        rc = "timeout"
    return rc, time.monotonic() - start


def pack(files: str, out: Path) -> None:
    """Archive ``files`` as ``out/device_checks.tar.gz``, replacing the last archive only once the new one is whole."""
    partial = out / (ARCHIVE + ".part")
    with tarfile.open(partial, "w:gz") as tar:
        tar.add(files, arcname="device_checks")
    os.replace(partial, out / ARCHIVE)


def run_checks(out: Path, device: str, budget_s: float, tiny: bool = False, only: tuple[str, ...] = ()) -> dict:
    """Run the steps named in ``only`` (in its order; default: every step, in order of priority) within
    ``budget_s`` seconds; write ``out/log.txt`` and ``out/device_checks.tar.gz``
    (packed at the start and again after every step).

    Returns ``{step: (exit code, "timeout" or "skipped", seconds)}``.
    """
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + budget_s
    summary: dict[str, tuple[int | str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="device_checks_") as files, open(out / "log.txt", "w") as log:
        pack(files, out)
        by_name = {step.name: step for step in STEPS}
        for step in [by_name[name] for name in dict.fromkeys(only)] if only else STEPS:
            left = deadline - time.monotonic()
            if left < 5:
                summary[step.name] = ("skipped", 0.0)
                continue
            template = step.tiny_argv if tiny and step.tiny_argv is not None else step.argv
            argv = [arg.format(device=device, files=files) for arg in template]
            rc, seconds = _run_step(step, argv, left, log)
            summary[step.name] = (rc, seconds)
            _logger.info("%s: %s in %.0f s", step.name, rc, seconds)
            log.write(f"----- {step.name}: {rc} in {seconds:.0f} s\n")
            log.flush()
            pack(files, out)
        log.write("\n===== summary\n")
        log.writelines(f"{name}: {rc} in {seconds:.0f} s\n" for name, (rc, seconds) in summary.items())
    return summary


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for log.txt and device_checks.tar.gz")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--budget", type=float, default=540,
                        help="seconds for all steps (default: 540, for a 600 s device call)")
    parser.add_argument("--tiny", action="store_true", help="small models (the CPU smoke test)")
    parser.add_argument("--only", nargs="+", default=(), choices=[s.name for s in STEPS],
                        help="these steps only, in this order")
    opts = parser.parse_args(argv)
    if opts.out.exists() and not opts.out.is_dir():
        parser.error(f"--out {opts.out} is a file; give a folder (it is created if missing)")
    if not opts.budget >= 5:
        parser.error(f"--budget {opts.budget:g}: a step needs at least 5 s")
    earlier = [name for name in ("log.txt", ARCHIVE) if (opts.out / name).exists()]
    if earlier:
        parser.error(f"--out {opts.out} already holds {' and '.join(earlier)} of an earlier run, which this run would "
                     f"replace: choose an empty folder, or move them away")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return run_checks(opts.out, opts.device, opts.budget, tiny=opts.tiny, only=tuple(opts.only))


def exit_status(summary: dict) -> int:
    """0 when every step ran and passed; 1 when one failed, timed out or was skipped for lack of time."""
    return int(any(rc != 0 for rc, _ in summary.values()))


if __name__ == "__main__":
    sys.exit(exit_status(main()))
