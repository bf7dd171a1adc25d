"""What the compiler makes of the project's Triton kernels, without a GPU: each kernel compiled for sm_90 (Triton ->
PTX -> cubin with the ptxas Triton ships) at the anchor configs' shapes, with its registers, spills, shared memory,
warp shuffles, barriers and PTX instructions (a table; optionally JSON).

    python benchmarks/kernel_report.py [--only lif|pool] [--json PATH]

A memory-bound elementwise kernel should need no shared memory and no barriers: a layout conversion between two
register layouts goes through shared memory (``st.shared``, ``bar.sync``, ``ld.shared``) at every place it happens,
and a reduction across threads through warp shuffles.  The scalar arguments are specialised as Triton's JIT
specialises them at run time (a pointer or an integer divisible by 16 is marked so, a stride of 1 is a constant),
which decides how wide the loads are and hence the layouts; a kernel compiled without that specialisation can look
better or worse than the one that runs.  The counts are static: a loop's body is counted once.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.atomic import unwritable_reason, write_text_atomic  # noqa: E402

_logger = logging.getLogger("kernel_report")


@dataclasses.dataclass(frozen=True)
class KernelReport:
    """Resources of one compiled kernel (``cuobjdump --dump-resource-usage``) and counts in its PTX."""
    registers: int
    spilled_bytes: int
    shared_bytes: int
    warp_shuffles: int
    barriers: int
    global_loads: int
    global_stores: int
    ptx_instructions: int


def _signature(kernel, constants: dict, types: dict[str, str], scalar_type: str) -> dict[str, str]:
    """Each argument's type: constexpr if in ``constants``, then ``types``, else ``*fp32`` for a pointer
    (``*_ptr``) and ``scalar_type`` for a scalar."""
    return {name: "constexpr" if name in constants
            else types.get(name, "*fp32" if name.endswith("_ptr") else scalar_type) for name in kernel.arg_names}


def _resource_usage(cubin: bytes, folder: Path) -> dict[str, int]:
    import triton
    path = folder / "kernel.cubin"
    path.write_bytes(cubin)
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    text = subprocess.run([str(tool), "--dump-resource-usage", str(path)], capture_output=True, text=True,
                          check=True).stdout
    return {key: int(value) for key, value in re.findall(r"\b(REG|SHARED|LOCAL):(\d+)", text)}


def compile_for_arch(kernel, constants: dict, types: dict[str, str] | None = None, aligned: bool = True,
                     arch: int = 90, scalar_type: str = "i32"):
    """Triton's compiled kernel (``.asm`` holds its PTX and cubin) of ``kernel`` for ``sm_<arch>`` with
    ``constants`` (its constexprs, and any scalar to specialise) and argument ``types`` (see :func:`_signature`);
    ``aligned`` marks every pointer and integer divisible by 16."""
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = _signature(kernel, constants, types or {}, scalar_type)
    attrs = {(i,): [["tt.divisibility", 16]] for i, kind in enumerate(signature.values())
             if aligned and (kind.startswith("*") or kind in ("i32", "i64"))}
    return triton_compile(ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs),
                          target=GPUTarget("cuda", arch, 32))


def compile_kernel(kernel, constants: dict, types: dict[str, str] | None = None, aligned: bool = True,
                   arch: int = 90, scalar_type: str = "i32") -> KernelReport:
    """The :class:`KernelReport` of :func:`compile_for_arch`'s kernel."""
    compiled = compile_for_arch(kernel, constants, types, aligned, arch, scalar_type)
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as folder:
        usage = _resource_usage(compiled.asm["cubin"], Path(folder))
    return KernelReport(registers=usage.get("REG", 0), spilled_bytes=usage.get("LOCAL", 0),
                        shared_bytes=usage.get("SHARED", 0), warp_shuffles=ptx.count("shfl.sync"),
                        barriers=ptx.count("bar.sync"), global_loads=len(re.findall(r"\bld\.global", ptx)),
                        global_stores=len(re.findall(r"\bst\.global", ptx)),
                        ptx_instructions=len(re.findall(r"^\s+(?:@!?%p\d+\s+)?[a-z][\w.]*\s", ptx, re.MULTILINE)))


def _lif_cases() -> list[tuple[str, object, dict, dict]]:
    from module import lif_triton as L
    half = {"x_ptr": "*bf16", "spike_ptr": "*bf16", "grad_spike_ptr": "*bf16", "grad_x_ptr": "*bf16"}
    backward = dict(v_threshold=1.0, alpha=4.0, NEED_DECAY_GRAD=False, REPEATED_INPUT=False, HAS_BN=False,
                    BN_GRAD=False)
    return [
        ("LIF forward T=4 (CIFAR, fp32)", L._lif_forward_kernel,
         dict(T=4, v_threshold=1.0, REPEATED_INPUT=False, HAS_BN=False, BLOCK=L.BLOCK), {}),
        ("LIF forward T=16 (DVS, fp32)", L._lif_forward_kernel,
         dict(T=16, v_threshold=1.0, REPEATED_INPUT=False, HAS_BN=False, BLOCK=L.BLOCK), {}),
        ("LIF backward T=4 recomputed (CIFAR, fp32)", L._lif_backward_kernel,
         dict(T=4, T_POW2=4, MEMBRANE="recompute", BLOCK=L.BLOCK, **backward), {}),
        ("LIF backward T=4 recomputed (ImageNet, bf16)", L._lif_backward_kernel,
         dict(T=4, T_POW2=4, MEMBRANE="recompute", BLOCK=L.BLOCK, **backward), half),
        ("LIF backward T=16 registers (DVS, fp32)", L._lif_backward_kernel,
         dict(T=16, T_POW2=16, MEMBRANE="registers", BLOCK=L.HISTORY_BLOCK, **backward), {}),
        ("LIF backward T=32 registers, PLIF (fp32)", L._lif_backward_kernel,
         dict(T=32, T_POW2=32, MEMBRANE="registers", BLOCK=L.HISTORY_BLOCK, **dict(backward, NEED_DECAY_GRAD=True)),
         {}),
        ("LIF backward T=40 memory (fp32)", L._lif_backward_kernel,
         dict(T=40, T_POW2=64, MEMBRANE="memory", BLOCK=L.BLOCK, **backward), {}),
        ("BN+LIF grad sums T=16 registers, channels-last", L._bn_lif_grad_sums_kernel,
         dict(T=16, T_POW2=16, v_threshold=1.0, alpha=4.0, MEMBRANE="registers", BJ=4, BC=64, sC=1), {}),
    ]


def _pool_cases() -> list[tuple[str, object, dict, dict]]:
    from module import pool_triton as P
    cases = []
    windows = {"3x3/2 (ImageNet stem, 64 x 224 x 224)": (3, 2, 64, 224), "3x3/1 (DVS attention, 256 x 16 x 16)":
               (3, 1, 256, 16)}
    for window, (kernel, stride, channels, size) in windows.items():
        out_size = (size + 2 - kernel) // stride + 1
        shape = dict(KH=kernel, KW=kernel, SH=stride, SW=stride, PH=1, PW=1, WIDE=False)
        for layout, channels_last, unit in (("channels-last", True, "c"), ("NCHW", False, "w")):
            tile = dict(zip(("TH", "TW", "BC"), P.tile_shape(out_size, out_size, channels, channels_last)))
            cases.append((f"max-pool forward {window}, {layout}", P._max_pool_forward_kernel,
                          dict(shape, **tile, **{f"sx{unit}": 1, f"so{unit}": 1}), {"offset_ptr": "*i8"}))
            tile = dict(zip(("TH", "TW", "BC"), P.tile_shape(size, size, channels, channels_last)))
            cases.append((f"max-pool backward {window}, {layout}", P._max_pool_backward_kernel,
                           dict(shape, **tile, **{f"sg{unit}": 1, f"so{unit}": 1, f"sx{unit}": 1}),
                           {"offset_ptr": "*i8"}))
    return cases


GROUPS = {"lif": _lif_cases, "pool": _pool_cases}


def report(groups: list[str]) -> dict[str, KernelReport]:
    """Compile every case of ``groups`` (keys of :data:`GROUPS`) and report it, by case name."""
    return {name: compile_kernel(kernel, constants, types)
            for group in groups for name, kernel, constants, types in GROUPS[group]()}


def _table(reports: dict[str, KernelReport]) -> str:
    fields = [f.name for f in dataclasses.fields(KernelReport)]
    width = max(len(name) for name in reports)
    lines = [f"{'kernel':<{width}} | " + " | ".join(fields)]
    for name, row in reports.items():
        lines.append(f"{name:<{width}} | " + " | ".join(f"{getattr(row, f):>{len(f)}}" for f in fields))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, KernelReport]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(GROUPS), action="append", help="kernel groups (default: all)")
    parser.add_argument("--json", type=Path, help="also write the reports here")
    args = parser.parse_args(argv)
    if args.json and (reason := unwritable_reason(args.json)):
        parser.error(f"--json {args.json}: {reason}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.pop("TRITON_INTERPRET", None)
    reports = report(args.only or list(GROUPS))
    _logger.info("%s", _table(reports))
    if args.json:
        write_text_atomic(args.json, json.dumps({name: dataclasses.asdict(r) for name, r in reports.items()}, indent=1))
    return reports


if __name__ == "__main__":
    main()
