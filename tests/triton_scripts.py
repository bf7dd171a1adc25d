"""Running Triton check scripts in a fresh interpreter: in Triton's CPU interpreter, or compiling for sm_90."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, **env: str) -> None:
    """Run ``script`` with the repository and this folder importable (before any ``PYTHONPATH`` already set, e.g.
    the device machine's wheels) and ``env`` set; it must exit 0 and print ``ok``."""
    path = os.pathsep.join(p for p in (str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p)
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": path, **env},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]


def run_in_interpreter(script: str) -> None:
    """``script`` with ``TRITON_INTERPRET=1``: the kernels run as Python on the CPU."""
    run_script(script, TRITON_INTERPRET="1")


def run_compiler(script: str, cache_dir: Path) -> None:
    """``script`` compiling kernels (Triton -> PTX -> cubin, no GPU needed) into a private cache."""
    run_script(script, TRITON_CACHE_DIR=str(cache_dir))


def compile_for_hopper(cases, common_types: dict[str, str] | None = None) -> None:
    """Compile each ``(kernel, argument types, constexprs)`` case for sm_90 (no alignment assumed); an argument's
    type comes from the case, then ``common_types``, else ``*fp32`` for a pointer (``*_ptr``) and ``i64`` for a
    scalar."""
    from benchmarks.kernel_report import compile_kernel

    for kernel, types, constants in cases:
        compile_kernel(kernel, constants, {**(common_types or {}), **types}, aligned=False, scalar_type="i64")
