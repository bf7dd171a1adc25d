"""benchmarks/kernel_report.py: the Triton kernels compiled for sm_90 without a GPU, and what their code must not
contain."""
import json

import pytest

from module.fused_lif import triton_available
from triton_scripts import run_compiler

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton is not installed")

_LAYOUT_CHECK = """
from benchmarks.kernel_report import compile_kernel
from module import lif_triton as L
backward = dict(v_threshold=1.0, alpha=4.0, REPEATED_INPUT=False, HAS_BN=False, BN_GRAD=False)
half = {"x_ptr": "*bf16", "grad_spike_ptr": "*bf16", "grad_x_ptr": "*bf16"}
cases = {  # the anchors' LIF backwards: CIFAR/ImageNet (T=4, recomputed) and DVS (T=16, register history)
    "T=4 fp32": (dict(T=4, T_POW2=4, MEMBRANE="recompute", BLOCK=L.BLOCK, NEED_DECAY_GRAD=False), {}),
    "T=4 bf16 PLIF": (dict(T=4, T_POW2=4, MEMBRANE="recompute", BLOCK=L.BLOCK, NEED_DECAY_GRAD=True), half),
    "T=16 fp32": (dict(T=16, T_POW2=16, MEMBRANE="registers", BLOCK=L.HISTORY_BLOCK, NEED_DECAY_GRAD=False), {}),
    "T=12 bf16 PLIF": (dict(T=12, T_POW2=16, MEMBRANE="registers", BLOCK=L.HISTORY_BLOCK, NEED_DECAY_GRAD=True),
                       half),
}
for name, (constants, types) in cases.items():
    for aligned in (True, False):  # 16-byte aligned tensors get vector loads, and with them other layouts
        r = compile_kernel(L._lif_backward_kernel, {**backward, **constants}, types, aligned=aligned)
        # elementwise in time: no layout conversion through shared memory in the time loop (at most one, after it:
        # PLIF's fp32 decay gradient stored next to bf16 vectors), no cross-thread reduction, no spill
        assert r.barriers <= 1 and (r.warp_shuffles, r.spilled_bytes) == (0, 0), (name, aligned, r)
print("ok")
"""


def test_lif_backwards_keep_every_value_in_its_thread(tmp_path):
    """The register history was once a ``[BLOCK, T]`` tensor whose step axis Triton spread over 16 lanes: a
    shared-memory conversion and warp shuffles at every step (33 barriers, 128 shuffles at T=16), about 4x the
    kernel's memory time on an H200.  The recomputing backward's addresses, carried through a loop, cost a
    conversion per step too."""
    run_compiler(_LAYOUT_CHECK, tmp_path)


_SCRATCH_CHECK = """
import re
from benchmarks.kernel_report import compile_for_arch
from module import lif_triton as L
constants = dict(T=40, T_POW2=64, MEMBRANE="memory", BLOCK=L.BLOCK, v_threshold=1.0, alpha=4.0,
                 NEED_DECAY_GRAD=False, REPEATED_INPUT=False, HAS_BN=False, BN_GRAD=False)
half = {"x_ptr": "*bf16", "grad_spike_ptr": "*bf16", "grad_x_ptr": "*bf16"}
for types in ({}, half):
    for aligned in (True, False):
        lines = compile_for_arch(L._lif_backward_kernel, constants, types, aligned=aligned).asm["ptx"].splitlines()
        kind = [("store" if "st.global" in line else "load" if "ld.global" in line else "barrier")
                for line in lines if re.search(r"\\b(st\\.global|ld\\.global|bar\\.sync)", line)]
        first_store = kind.index("store")
        first_reload = first_store + kind[first_store:].index("load")  # the backward's first load of the scratch
        last_store = first_reload - 1 - kind[first_reload - 1::-1].index("store")
        assert "barrier" in kind[last_store:first_reload], (types, aligned, kind)
print("ok")
"""


def test_the_backward_reads_its_membrane_scratch_past_a_barrier(tmp_path):
    """Past 32 steps the backward writes every step's membrane to an fp32 scratch, then reads it back in the same
    program, with the layout of its own loads: wider vectors in half precision, so a thread reads what another
    wrote.  Without a barrier between the two phases the last step's membrane (and through it every gradient) was
    read unordered."""
    run_compiler(_SCRATCH_CHECK, tmp_path)


_REPORT = """
import sys
from benchmarks.kernel_report import main
reports = main(["--only", "pool", "--json", sys.argv[1]])
print("ok")
"""


def test_report_table_and_json(tmp_path):
    """The pool group compiles (both layouts, stride 2 and 1) and the JSON holds one row per kernel."""
    path = tmp_path / "report.json"
    run_compiler(_REPORT.replace("sys.argv[1]", repr(str(path))), tmp_path / "cache")
    rows = json.loads(path.read_text())
    assert len(rows) == 8 and all(row["registers"] > 0 and row["ptx_instructions"] > 50 for row in rows.values())
    assert {row["spilled_bytes"] for row in rows.values()} == {0}
    # channels-last backward: per covering output one vector load of offsets and one of gradients (45 loads at
    # stride 1 when the gradients were loaded element by element under the argmax test)
    backward = {name.split(" (")[0][-3:]: row["global_loads"] for name, row in rows.items()
                if "backward" in name and name.endswith("channels-last")}
    assert backward == {"3/2": 2 * 2 * 2, "3/1": 2 * 3 * 3}, backward


def test_a_json_path_that_cannot_be_written_is_refused_before_compiling(tmp_path, capsys):
    from benchmarks.kernel_report import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--only", "pool", "--json", str(tmp_path / "missing" / "report.json")])
    assert exit_info.value.code == 2 and "does not exist" in capsys.readouterr().err
