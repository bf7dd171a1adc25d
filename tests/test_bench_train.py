"""CPU smoke test of benchmarks/bench_train.py: it runs, and reports every field (no timing assertions)."""
import json
import resource

import pytest
import torch

from benchmarks.bench_train import ANCHORS, TINY, Case, bench_step, busy_time, compare, default_peak, engine_args, \
    main, speed_path, table_rows, top_ops, workload
from benchmarks.peaks import H100, gpu_caveat
from engine.model import resolve_model_args

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
        assert r["back_to_back_ms"] > 0, name
        assert r["gpu_busy_ms"] is None and r["kernels_per_step"] is None, name
        assert r["mfu"] is None and r["peak_tflops"] is None, name
        assert r["peak_memory_kind"] == "process_peak_rss_timed_steps" and r["peak_memory_gib"] > 0, name
        assert r["tflop_per_step"] > 0 and r["tflops"] > 0 and r["first_step_s"] > 0, name
        assert "anchor" not in r and "speedup" not in r, name
        assert r["top_ops_kind"] == "cpu_self_time" and 0 < len(r["top_ops"]) <= 15, name
        times = [op["ms_per_step"] for op in r["top_ops"]]
        assert times == sorted(times, reverse=True) and 0 < sum(op["share"] for op in r["top_ops"]) <= 1 + 1e-9
        assert "aten::convolution_backward" in {op["name"] for op in r["top_ops"]}, name
    assert results["tiny-sdt-bf16"]["precision"] == "bfloat16"
    assert results["tiny-statten-dvs"]["chunk_size"] == 2
    assert [len(row) for row in table_rows(results)] == [22] * len(TINY)
    assert {row[0]: row[2] for row in table_rows(results)} == {
        "tiny-sdt-fp32": "fused+once", "tiny-sdt-bf16": "fused+once", "tiny-statten-dvs": "fused"}


def test_encode_once_is_named_only_for_static_images():
    """Event frames differ per time step: ``--encode-once`` does nothing there, and the path does not claim it."""
    flags = dict(neuron_backend="fused", encode_once=True, channels_last=False, torchcompile=None)
    assert speed_path({**flags, "event_frames": False}) == "fused+once"
    assert speed_path({**flags, "event_frames": True}) == "fused"


def test_cpu_peak_memory_is_the_configs_own():
    """The process's peak since it started would report an earlier, larger allocation for every later config."""
    big = torch.ones(2 ** 27)  # 512 MiB, touched
    del big
    since_start_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
    r = bench_step(engine_args([*TINY["tiny-sdt-fp32"].flags, "--device", "cpu"]), warmup=1, steps=2,
                   profile_steps=0)
    assert 0 < r["peak_memory_gib"] < since_start_gib - 0.4
    assert r["peak_memory_kind"] == "process_peak_rss_timed_steps"


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


def _cuda_result(case_name: str, *extra_flags: str, median_ms: float = 12.0, gpu: str = "NVIDIA H100 80GB HBM3"):
    """A CUDA result of an anchor config, as :func:`bench_step` reports it (its workload from the flags)."""
    args = engine_args([*ANCHORS[case_name].flags, *extra_flags])
    resolve_model_args(args)
    return {"device": "cuda:0", "gpu": gpu, "ms_per_step": {"median": median_ms}, "peak_memory_gib": 4.5,
            "batch_size": args.batch_size, "workload": workload(args)}


def test_compare_with_anchor_only_on_cuda():
    case = ANCHORS["sdt-2-512-cifar-fp32"]
    result = _cuda_result("sdt-2-512-cifar-fp32", "--fuse-bn-lif", "--neuron-backend", "spikingjelly")
    assert compare(result, case) == {"anchor": {"ms_per_step": (36, 40), "gpu_busy_ms": 27.0, "peak_gib": 9.0},
                                     "speedup": 3.0, "memory_ratio": 0.5, "gpu_caveat": ""}
    assert set(compare({**result, "device": "cpu"}, case)) == {"anchor", "anchor_note"}
    assert compare(result, Case(case.flags)) == {}


def test_compare_only_the_anchors_workload():
    """Flags that change what the step computes leave the anchor columns empty, and say why; another batch size
    alone compares per image."""
    case = ANCHORS["sdt-2-512-cifar-fp32"]
    for flags, changed in [(("--time-steps", "2"), "T 2 (anchor 4)"), (("--dim", "256"), "embed_dims 256"),
                           (("--img-size", "64"), "img_size_h 64"), (("--amp",), "precision float16")]:
        out = compare(_cuda_result("sdt-2-512-cifar-fp32", *flags), case)
        assert set(out) == {"anchor", "anchor_note"}, flags
        assert out["anchor_note"].startswith("not the anchor's workload") and changed in out["anchor_note"], flags
    out = compare(_cuda_result("sdt-2-512-cifar-fp32", "-b", "128", median_ms=24.0), case)
    assert out["speedup_per_image"] == pytest.approx(36 / 64 / (24.0 / 128)) and "speedup" not in out
    assert "memory_ratio" not in out and "per image" in out["anchor_note"]
    row = table_rows({"b128": {**_cuda_result("sdt-2-512-cifar-fp32", "-b", "128"), **_tiny_cuda_row(), **out}})[0]
    assert row[18:] == ("3.00/img", "H100 80GB HBM3", "", out["anchor_note"])


def _tiny_cuda_row() -> dict:
    return dict(precision="float32", neuron_backend="fused", encode_once=True, event_frames=False,
                channels_last=False, torchcompile=None, ms_per_step=dict(median=1.0, p10=1.0, p90=1.0), host_ms=1.0,
                back_to_back_ms=1.0,
                images_per_s=1.0, gpu_busy_ms=1.0, kernels_per_step=1.0, peak_memory_gib=1.0, tflop_per_step=1.0,
                tflops=1.0, mfu=0.5, peak_tflops=494.7, peak_kind="H100 SXM tf32")


def test_anchor_gpu_is_named_and_another_gpu_gets_a_caveat():
    case = ANCHORS["sdt-2-256-dvs-t16-fp32"]
    h200 = compare(_cuda_result("sdt-2-256-dvs-t16-fp32", gpu="NVIDIA H200"), case)
    assert "1.43x" in h200["gpu_caveat"] and "H200" in h200["gpu_caveat"]
    assert gpu_caveat("NVIDIA H100 80GB HBM3") == "" and "A100" in gpu_caveat("NVIDIA A100-SXM4-80GB")
    assert "H100 PCIe is not" in gpu_caveat("NVIDIA H100 PCIe")


def test_fp32_utilisation_uses_the_tf32_peak_while_cudnn_may_use_it(monkeypatch):
    """cuDNN runs fp32 convolutions in TF32 by default: the plain fp32 peak would put the reference above 100 %."""
    assert default_peak(True, "NVIDIA H200") == (989.4, "H200 SXM fp16/bf16")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert default_peak(False, "NVIDIA H100 80GB HBM3") == (H100.tf32 / 1e12, "H100 SXM tf32")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert default_peak(False, "NVIDIA H100 80GB HBM3") == (67.0, "H100 SXM fp32")


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


def test_a_json_path_that_cannot_be_written_is_refused_before_measuring(tmp_path, capsys):
    """An existing file too: the results of an earlier run were replaced (after the first config, so a run that
    died at the second had lost them)."""
    (tmp_path / "earlier.json").write_text("{}")
    for path, message in ((tmp_path / "missing" / "out.json", "does not exist"), (tmp_path, "is a folder"),
                          (tmp_path / "earlier.json", "exists (an earlier run's results?)")):
        with pytest.raises(SystemExit) as exit_info:
            main(["--tiny", "--device", "cpu", "--json", str(path)])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert (tmp_path / "earlier.json").read_text() == "{}"
    for flags in (["--peak-tflops", "0"], ["--profile-steps", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(["--tiny", "--device", "cpu", *flags])
        assert exit_info.value.code == 2 and "give at least 0 profiled steps and a positive peak" in \
            capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--device", "gpu"], "--device 'gpu' is not a device"),
    (["--device", "cpu", "-b", "0"], "-b/--batch-size 0 must be at least 1"),
    (["--device", "cpu", "--time-steps", "3", "--steps", "2", "--warmup", "1", "--profile-steps", "0"],
     "tiny-statten-dvs: model 'sdt': T=3 is not divisible by chunk_size=2"),
])
def test_bad_engine_flags_are_one_error(flags, message, capsys, monkeypatch):
    """The engine's flags are checked as train.py checks them (they ended in tracebacks), before measuring."""
    if "-b" in flags:  # refused before any config is measured
        monkeypatch.setattr("benchmarks.bench_train.bench_step", lambda *a, **k: pytest.fail("measured"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--tiny", *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and "Traceback" not in err
