"""CPU smoke test of benchmarks/bench_train.py: it runs, and reports every field (no timing assertions)."""
import json

import pytest
import torch

from benchmarks.bench_train import ANCHORS, TINY, Anchor, bench_step, busy_time, compare, engine_args, main, \
    table_rows, top_ops

torch.set_num_threads(1)


def test_tiny_configs_report_every_field(tmp_path):
    out = tmp_path / "bench.json"
    results = main(["--tiny", "--device", "cpu", "--warmup", "1", "--steps", "2", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert set(results) == set(TINY) == set(saved["results"])
    assert saved["environment"]["torch"] == torch.__version__
    for name, r in saved["results"].items():
        assert r["device"] == "cpu" and r["steps"] == 2 and r["warmup"] == 1, name
        ms = r["ms_per_step"]
        assert 0 < ms["min"] <= ms["p10"] <= ms["median"] <= ms["p90"] <= ms["max"], name
        assert r["images_per_s"] == pytest.approx(r["batch_size"] / ms["median"] * 1e3)
        assert 0 < r["host_ms"] <= ms["max"], name  # on the CPU the step is done when it returns
        assert r["gpu_busy_ms"] is None and r["kernels_per_step"] is None, name
        assert r["mfu"] is None and r["peak_tflops"] is None, name
        assert r["peak_memory_kind"] == "process_peak_rss" and r["peak_memory_gib"] > 0, name
        assert r["tflop_per_step"] > 0 and r["tflops"] > 0 and r["first_step_s"] > 0, name
        assert "anchor" not in r and "speedup" not in r, name
        assert r["top_ops_kind"] == "cpu_self_time" and 0 < len(r["top_ops"]) <= 15, name
        times = [op["ms_per_step"] for op in r["top_ops"]]
        assert times == sorted(times, reverse=True) and 0 < sum(op["share"] for op in r["top_ops"]) <= 1 + 1e-9
        assert "aten::convolution_backward" in {op["name"] for op in r["top_ops"]}, name
    assert results["tiny-sdt-bf16"]["precision"] == "bfloat16"
    assert results["tiny-statten-dvs"]["chunk_size"] == 2
    assert [len(row) for row in table_rows(results)] == [18] * len(TINY)
    assert {row[2] for row in table_rows(results)} == {"fused+once"}


def test_speed_flags_reach_the_benchmarked_step():
    """The reference computation (spikingjelly neurons on T copies) and the compiled fast path both run."""
    flags = [*TINY["tiny-sdt-fp32"].flags, "--device", "cpu"]
    slow = bench_step(engine_args([*flags, "--neuron-backend", "spikingjelly", "--no-encode-once"]), warmup=1,
                      steps=2, profile_steps=0)
    compiled = bench_step(engine_args([*flags, "--torchcompile", "aot_eager"]), warmup=1, steps=2, profile_steps=0)
    assert (slow["neuron_backend"], slow["encode_once"], slow["torchcompile"]) == ("spikingjelly", False, None)
    assert (compiled["neuron_backend"], compiled["encode_once"], compiled["torchcompile"]) == ("fused", True,
                                                                                             "aot_eager")
    assert slow["tflop_per_step"] > compiled["tflop_per_step"] > 0  # the stem conv runs once instead of T times


def test_anchor_configs_parse_with_their_shapes():
    for name, case in ANCHORS.items():
        args = engine_args(case.flags)
        assert args.batch_size in (16, 32, 64) and args.time_steps in (4, 16), name
        assert args.opt == "adamw" and (args.amp == name.endswith("-amp")), name


def test_compare_with_anchor_only_on_cuda():
    anchor = Anchor((36, 40), 27.0, 9.0)
    result = {"device": "cuda:0", "ms_per_step": {"median": 12.0}, "peak_memory_gib": 4.5}
    assert compare(result, anchor) == {"anchor": {"ms_per_step": (36, 40), "gpu_busy_ms": 27.0, "peak_gib": 9.0},
                                       "speedup": 3.0, "memory_ratio": 0.5}
    assert set(compare({**result, "device": "cpu"}, anchor)) == {"anchor"}
    assert compare(result, None) == {}


def test_busy_time_is_the_union_of_intervals():
    assert busy_time([]) == 0
    assert busy_time([(5, 7), (0, 2), (1, 3), (2.5, 2.8), (10, 11)]) == pytest.approx(3 + 2 + 1)


def test_top_ops_sums_per_name_and_step():
    durations = [("conv", 300.0), ("lif", 50.0), ("conv", 100.0), ("bn", 50.0), ("lif", 50.0), ("add", 10.0)]
    top = top_ops(durations, steps=2, top=3)
    assert [op["name"] for op in top] == ["conv", "lif", "bn"]
    assert top[0] == {"name": "conv", "calls_per_step": 1.0, "ms_per_step": 0.2, "share": pytest.approx(400 / 560)}
    assert top[1]["calls_per_step"] == 1.0 and top[1]["ms_per_step"] == pytest.approx(0.05)
    assert top[2]["share"] == pytest.approx(50 / 560)
    assert top_ops([], steps=1) == []
