"""python -m hw.run end to end: outputs, baselines, ablations, dataflows, statistical mode, bad inputs."""
from __future__ import annotations

import csv
import dataclasses
import json
import logging

import pytest
import torch

import hw.run
from engine.traces import capture_sample
from hw.config import CONFIG_DIR, load_config
from hw.energy import COMPONENTS
from hw.pipeline import simulate
from hw.report import REPORT_FILES, write_report
from hw.run import main
from hw.synthetic import dvs_events, firing_model
from hw.workload import Workload, rates_from_traces
from hw_helpers import edited, tiny_capture, write


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    captures = [tiny_capture("SDT", True, seed=s)[0] for s in range(2)]
    return write(tmp_path_factory.mktemp("run") / "trace", captures, tiny_capture()[1], labels=[1, 2])


def _rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_cli_writes_every_report(tmp_path, trace):
    (tmp_path / "skip.json").write_text(json.dumps({"format": "skip-blocks/1", "skipped_blocks": [1]}))
    (tmp_path / "exit.json").write_text(json.dumps({"format": "early-exit/1", "T": 4, "exit_steps": [2, 4],
                                                    "sample_ids": [0, 1]}))
    (tmp_path / "gpu.json").write_text(json.dumps({"latency_ms": 20.0, "avg_power_W": 7.5, "batch": 1}))
    out = tmp_path / "out"
    assert main(["--trace", str(trace), "--hw-config", "aster_default", "--skip-json", str(tmp_path / "skip.json"),
                 "--exit-json", str(tmp_path / "exit.json"), "--gpu-json", str(tmp_path / "gpu.json"),
                 "--workers", "2", "--out", str(out)]) == 0
    for name in ("summary.json", "layers.csv", "components.csv", "timesteps.csv", "ablations.csv",
                 "energy_by_component.png", "energy_by_layer.png", "energy_per_timestep.png"):
        assert (out / name).stat().st_size > 0, name
    s = json.loads((out / "summary.json").read_text())
    assert s["preset"] == "aster_default" and s["samples"] == 2 and s["skipped_blocks"] == [1]
    assert s["accuracy"]["avg_time_steps"] == 3.0 and s["accuracy"]["labelled_samples"] == 2
    assert set(s["ratios"]) == {"dense_pim", "prior_pim", "gpu_modelled", "gpu_measured"}
    assert s["ratios"]["dense_pim"] > 1 and s["baselines"]["gpu_measured"]["energy_uj"] == pytest.approx(150000)
    assert s["baselines"]["gpu_modelled"]["mode"] == "modelled (estimate)"
    e = s["energy_per_inference_uj"]
    assert e["min"] <= e["p5"] <= e["p50"] <= e["p95"] <= e["max"]
    assert sum(s["components_uj"].values()) == pytest.approx(e["mean"])
    assert {r["feature"] for r in s["ablations"]} == {"wordline_gating", "read_skipping", "event_driven_attention",
                                                      "aer_transfer", "attention_skipping", "early_exit"}
    assert all(r["saving_ratio"] >= 1 for r in s["ablations"])
    layers = _rows(out / "layers.csv")
    assert sum(float(r["energy_pj"]) for r in layers) == pytest.approx(e["mean"] * 1e6)
    assert {r["layer"] for r in layers if r["skipped"] == "True"} >= {"block.1.attn.q_conv", "block.1.attn.core"}
    assert all(r["preset"] == "aster_default" and r["node_nm"] == "32.0" for r in layers)
    steps = _rows(out / "timesteps.csv")
    assert [r["t"] for r in steps] == ["1", "2", "3", "4"]
    assert [float(r["running_fraction"]) for r in steps] == [1.0, 1.0, 0.5, 0.5]
    assert {r["component"] for r in _rows(out / "components.csv")} >= {"adc", "leakage", "attention"}


def test_statistical_mode_and_rates_file(tmp_path, trace):
    out = tmp_path / "stat"
    assert main(["--trace", str(trace), "--mode", "statistical", "--no-plots", "--out", str(out)]) == 0
    again = tmp_path / "again"
    assert main(["--trace", str(trace), "--mode", "statistical", "--rates", str(out / "rates.json"), "--no-plots",
                 "--out", str(again)]) == 0
    first, second = (json.loads((d / "summary.json").read_text()) for d in (out, again))
    assert first["energy_per_inference_uj"]["mean"] == pytest.approx(second["energy_per_inference_uj"]["mean"])
    for summary in (first, second):  # the trace's samples and accuracy, not the one expected sample simulated
        assert summary["samples"] == 2 and summary["accuracy"]["labelled_samples"] == 2
        assert 0 <= summary["accuracy"]["top1_all_steps"] <= 100 and "top1_at_exit" not in summary["accuracy"]


def test_trace_without_samples_is_reported(tmp_path, trace, caplog):
    empty = tmp_path / "empty"
    empty.mkdir()
    meta = json.loads((trace / "meta.json").read_text())
    (empty / "meta.json").write_text(json.dumps({**meta, "samples": []}))
    with caplog.at_level(logging.ERROR):
        assert main(["--trace", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert len(caplog.records) == 1 and "the trace has no samples" in caplog.text and "meta.json" in caplog.text


def test_dataflows_trade_memory_for_global_buffer_traffic(trace):
    workload = Workload.open(trace)
    config = load_config("aster_default")
    tm = simulate(workload, config, progress=False)
    layer_major = dataclasses.replace(config.dataflow, order="layer_major")
    lm = simulate(workload, dataclasses.replace(config, dataflow=layer_major), progress=False)
    assert lm.main.mapping.memory["state_bits_required"] < tm.main.mapping.memory["state_bits_required"]
    assert lm.tally.row_cycles.sum() == pytest.approx(tm.tally.row_cycles.sum())  # same work, other traffic
    gb = COMPONENTS.index("global_buffer")
    assert lm.tally.energy[..., gb].sum() > tm.tally.energy[..., gb].sum()
    assert tm.tally.latency_pipelined.sum() < tm.tally.latency_serial.sum()


def test_cli_reports_bad_input(tmp_path, trace, caplog):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in trace.iterdir():
        (bad / f.name).write_bytes(f.read_bytes()[:200] if f.suffix == ".npz" else f.read_bytes())
    with caplog.at_level(logging.ERROR):
        assert main(["--trace", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "sample_00000.npz" in caplog.text and "truncated" in caplog.text
    (tmp_path / "skip.json").write_text(json.dumps({"skipped_blocks": [5]}))
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert main(["--trace", str(trace), "--skip-json", str(tmp_path / "skip.json"), "--out", str(tmp_path)]) == 2
    assert "skipped_blocks" in caplog.text and "skip.json" in caplog.text


def test_a_skip_list_of_a_model_of_another_depth_is_refused(tmp_path, trace, caplog, monkeypatch):
    """main.py's skip.json records the model's 'depths', which was ignored: a deeper model's skip list whose
    blocks the trace also has was applied to it."""
    depths = Workload.open(trace).meta.model["depths"]
    path = tmp_path / "skip.json"
    path.write_text(json.dumps({"skipped_blocks": [0], "depths": depths}))
    assert Workload.open(trace, skip_json=path).skip == {0}
    path.write_text(json.dumps({"skipped_blocks": [0], "depths": depths + 2}))
    monkeypatch.setattr(hw.run, "simulate", lambda *a, **k: pytest.fail("simulated despite another model's skips"))
    with caplog.at_level(logging.ERROR):
        assert main(["--trace", str(trace), "--skip-json", str(path), "--out", str(tmp_path / "o")]) == 2
    assert len(caplog.records) == 1
    assert (f"{path}: field 'depths' is {depths + 2}, but the traced model has {depths} blocks: the skip list is of "
            "another model") in caplog.text


def test_out_that_is_a_file_fails_before_simulating(tmp_path, trace, caplog, monkeypatch):
    monkeypatch.setattr(hw.run, "simulate", lambda *a, **k: pytest.fail("simulated despite a bad --out"))
    (tmp_path / "taken").write_text("keep me")
    for out in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main(["--trace", str(trace), "--out", str(out)]) == 2
        assert len(caplog.records) == 1 and "is a file, not a folder" in caplog.text
    assert (tmp_path / "taken").read_text() == "keep me"


def test_rerun_leaves_one_report_and_other_files(tmp_path, trace):
    """A folder without summary.json (an interrupted run's leftovers) takes the report: its report files that this
    run does not write go, other files stay.  A folder holding a report is never rewritten: a re-run goes to
    <out>-1 (tests/test_hw_report_inputs.py)."""
    out = tmp_path / "out"
    run = lambda *extra: main(["--trace", str(trace), "--workers", "1", "--out", str(out), *extra])  # noqa: E731
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "rates.json").write_text("{}")
    (out / "energy_by_layer.png").write_text("stale")
    assert run("--no-plots") == 0
    files = {p.name for p in out.iterdir()}
    assert files == {"notes.txt", "summary.json", "layers.csv", "components.csv", "timesteps.csv", "ablations.csv"}
    assert (out / "notes.txt").read_text() == "mine"
    assert set(REPORT_FILES) >= files - {"notes.txt"}
    assert run("--mode", "statistical", "--no-plots") == 0
    assert {p.name for p in out.iterdir()} == files and "rates.json" in {p.name for p in (tmp_path / "out-1").iterdir()}


def test_failing_report_keeps_the_previous_one(tmp_path, trace):
    res = simulate(Workload.open(trace), load_config("aster_default"), progress=False)
    out = tmp_path / "out"
    write_report(res, out, plots=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    res.tally.totals["aster_default"] = [(float("nan"), 1.0)] * res.n
    with pytest.raises(ValueError, match="summary.json: the results hold NaN or infinity"):
        write_report(res, out, plots=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_exact_mode_rejects_statistical_inputs(tmp_path, trace, caplog, monkeypatch):
    monkeypatch.setattr(hw.run, "simulate", lambda *a, **k: pytest.fail("simulated despite bad input"))
    (tmp_path / "portion.json").write_text(json.dumps({"portion": [0.5, 0.5, 0.0, 0.0]}))
    (tmp_path / "rates.json").write_text("{}")
    for extra, message in ((["--exit-json", str(tmp_path / "portion.json")], "portion.json: field 'portion' applies"),
                           (["--rates", str(tmp_path / "rates.json")], "rates apply only to --mode statistical")):
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main(["--trace", str(trace), *extra, "--out", str(tmp_path / "o")]) == 2
        assert len(caplog.records) == 1 and message in caplog.text and "--mode statistical" in caplog.text


def test_reused_static_encoding_reports_the_density_of_the_inputs_presented(tmp_path):
    captures = [tiny_capture("SDT", False, T=2, seed=s)[0] for s in range(2)]
    trace = write(tmp_path / "static", captures, tiny_capture("SDT", False, T=2)[1])
    density = {}
    for preset in ("aster_default", "dense_pim"):  # static reuse on / off
        assert main(["--trace", str(trace), "--hw-config", preset, "--workers", "1", "--no-plots",
                     "--out", str(tmp_path / preset)]) == 0
        first = next(r for r in _rows(tmp_path / preset / "layers.csv") if r["kind"] == "conv")
        density[preset] = float(first["in_density"])
    assert density == {"aster_default": 1.0, "dense_pim": 1.0}  # a random image: every pixel non-zero


def test_an_exit_file_of_other_samples_or_another_skip_list_is_refused(tmp_path, trace, caplog):
    """hw.run paired any exit file with any trace: labels and skipped blocks are now checked against the trace."""
    good = {"exit_steps": [1, 2], "sample_ids": [0, 1], "labels": [1, 2], "skipped_blocks": []}
    cases = [({**good, "labels": [2, 1]}, "sample 0 has label 2, but the trace's sample 0 has label 1"),
             ({**good, "skipped_blocks": [0]}, "skipped the attention of blocks [0], but the trace and --skip-json")]
    (tmp_path / "good.json").write_text(json.dumps(good))
    Workload.open(trace, exit_json=tmp_path / "good.json")
    for content, message in cases:
        (tmp_path / "exit.json").write_text(json.dumps(content))
        caplog.clear()
        with caplog.at_level(logging.ERROR):
            assert main(["--trace", str(trace), "--exit-json", str(tmp_path / "exit.json"), "--out",
                         str(tmp_path / "o")]) == 2
        assert message in caplog.text and not (tmp_path / "o").exists()
    (tmp_path / "skip.json").write_text(json.dumps({"skipped_blocks": [0]}))
    Workload.open(trace, skip_json=tmp_path / "skip.json", exit_json=tmp_path / "exit.json")


def test_summary_figures_recomputed_from_the_report_itself(tmp_path):
    """Each derived figure of summary.json from its parts, by hand: microseconds from cycles at the clock, pJ per
    SOP and TOPS/W from energy, SOPs and MACs, components summing to the energy, ADC energy per conversion (ADC and
    its 8:1 mux), leakage from the used tiles, the global buffer and the latency, and the accuracies from the
    trace's per-step predictions at T and at each sample's exit step."""
    captures = [tiny_capture("SDT", True, seed=s)[0] for s in range(2)]
    T, K = captures[0].logits.shape
    for capture, (first, later) in zip(captures, ((1, 0), (0, 2))):  # the prediction changes after step 1
        capture.logits = torch.zeros(T, K)
        capture.logits[0, first], capture.logits[1:, later] = 1.0, 5.0
    trace = write(tmp_path / "trace", captures, tiny_capture()[1], labels=[1, 0])  # right at t=1, wrong at T
    (tmp_path / "exit.json").write_text(json.dumps({"exit_steps": [1, T], "sample_ids": [0, 1]}))
    assert main(["--trace", str(trace), "--exit-json", str(tmp_path / "exit.json"), "--no-plots", "--workers", "1",
                 "--out", str(tmp_path / "o")]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    config, energy_pj = load_config("aster_default"), s["energy_per_inference_uj"]["mean"] * 1e6
    assert s["latency"]["us"] == pytest.approx(s["latency"]["cycles"] / (config.chip.clock_ghz * 1e3))
    assert s["pj_per_sop"] == pytest.approx(energy_pj / s["sops_per_inference"])
    assert s["tops_per_w"] == pytest.approx((s["sops_per_inference"] + 2 * s["macs_per_inference"]) / energy_pj)
    assert sum(s["components_uj"].values()) == pytest.approx(s["energy_per_inference_uj"]["mean"])
    rows = _rows(tmp_path / "o" / "layers.csv")
    adc = sum(float(r["adc_conversions"]) for r in rows)  # layers.csv: per inference
    assert s["components_uj"]["adc"] * 1e6 == pytest.approx(adc * (config.energy.adc + config.energy.mux))
    leakage_mw = config.leakage.tile_mw * s["memory"]["tiles_used"] + config.leakage.global_buffer_mw
    assert s["components_uj"]["leakage"] * 1e6 == pytest.approx(leakage_mw * s["latency"]["cycles"]
                                                               / config.chip.clock_ghz)
    samples = {sample.id: sample for sample in Workload.open(trace).meta.samples}
    assert [samples[i].pred_per_step for i in (0, 1)] == [(1,) + (0,) * (T - 1), (0,) + (2,) * (T - 1)]
    assert s["accuracy"]["top1_all_steps"] == 0.0  # both wrong with every step
    assert s["accuracy"]["top1_at_exit"] == 50.0 and s["accuracy"]["avg_time_steps"] == (1 + T) / 2


def test_a_preset_named_like_a_baseline_keeps_its_own_totals(tmp_path, trace):
    """Totals were keyed by name: a prior_pim-based preset that kept the name 'prior_pim' mixed its per-sample
    totals with the baseline's (x1.00 vs prior_pim, components not summing to the mean)."""
    summaries = {}
    for name in ("", "name: my_prior\n"):
        (tmp_path / "p.yaml").write_text(f"base: {CONFIG_DIR / 'prior_pim.yaml'}\n{name}features:\n"
                                         "  read_skipping: true\n")
        out = tmp_path / (name or "unnamed")
        assert main(["--trace", str(trace), "--hw-config", str(tmp_path / "p.yaml"), "--workers", "1", "--no-plots",
                     "--out", str(out)]) == 0
        summaries[name] = json.loads((out / "summary.json").read_text())
    unnamed, named = summaries.values()
    assert unnamed["preset"] == "prior_pim" and named["preset"] == "my_prior"
    for key in ("energy_per_inference_uj", "latency", "ratios", "baselines", "ablations"):
        assert unnamed[key] == named[key], key
    assert unnamed["ratios"]["prior_pim"] > 1
    assert sum(unnamed["components_uj"].values()) == pytest.approx(unnamed["energy_per_inference_uj"]["mean"])


def test_folders_named_like_presets_in_the_working_directory(tmp_path, trace, monkeypatch):
    """A bare name looked in the working directory first: after --out prior_pim every run failed ('prior_pim:
    cannot read a preset (Is a directory)'), the baselines being loaded by bare name."""
    monkeypatch.chdir(tmp_path)
    for out in ("prior_pim", "aster_default", "again"):
        assert main(["--trace", str(trace), "--workers", "1", "--no-plots", "--out", out]) == 0
    assert json.loads((tmp_path / "again" / "summary.json").read_text())["config_file"] == str(
        CONFIG_DIR / "aster_default.yaml")


@pytest.fixture(scope="module")
def rates(trace):
    return rates_from_traces(Workload.open(trace).reader).to_json()


STATISTICAL = ("--mode", "statistical")


@pytest.mark.parametrize("flag,extra,content,message", [
    ("--gpu-json", (), lambda r: [1, 2], "the GPU measurement must be a JSON mapping, got list"),
    ("--gpu-json", (), lambda r: {"latency_ms": float("nan"), "avg_power_W": 5.0},
     "field 'latency_ms' must be a positive finite number, got nan"),
    ("--gpu-json", (), None, "cannot read the GPU measurement (No such file"),
    ("--exit-json", (), lambda r: {"exit_steps": [1, 2], "sample_ids": [None, 1]}, "field 'sample_ids' has [None]"),
    ("--exit-json", (), lambda r: {"exit_steps": [1, 2], "sample_ids": ["a", 1]}, "field 'sample_ids' has ['a']"),
    ("--exit-json", (), lambda r: {"exit_steps": [1, 4, 4], "sample_ids": [0, 1, 0]},
     "field 'sample_ids' repeats [0]; each sample has one exit step"),
    ("--exit-json", (), lambda r: {"exit_steps": [1, 2], "skipped_blocks": [[1]]},
     "field 'skipped_blocks' must be a list of block indices, got [[1]]"),
    ("--exit-json", (), lambda r: {"exit_steps": [1, 2], "T": "4"}, "field 'T' is '4'; it must be"),
    ("--exit-json", STATISTICAL, lambda r: {"portion": "ab"}, "field 'portion' must be 4 non-negative fractions"),
    ("--rates", STATISTICAL, lambda r: {**r, "planes": {k: [p[0] for p in v] for k, v in r["planes"].items()}},
     "must be an array of shape [4 steps, bit planes], got shape [4]"),
    ("--rates", STATISTICAL, lambda r: {**r, "means": {}}, "field 'means' lacks"),
    ("--rates", STATISTICAL, lambda r: {**r, "kv": {}}, "field 'kv' lacks"),
    ("--rates", STATISTICAL, lambda r: {**r, "samples": 0}, "field 'samples' must be a positive integer"),
    ("--rates", STATISTICAL, lambda r: {**r, "nonzero": {k: [-0.1] * len(v) for k, v in r["nonzero"].items()}},
     "has -0.1; its values are fractions in 0..1"),
    ("--rates", STATISTICAL, lambda r: {**r, "lif": [[1.5] * len(row) for row in r["lif"]]},
     "field 'lif' has 1.5; its values are fractions in 0..1"),
])
def test_malformed_side_inputs_are_one_error_before_simulating(tmp_path, trace, rates, caplog, monkeypatch, flag,
                                                               extra, content, message):
    """Malformed GPU, exit and rates files gave tracebacks, errors naming no file, or wrong numbers; each is now
    one error line naming the file and the field, before simulating."""
    monkeypatch.setattr(hw.run, "simulate", lambda *a, **k: pytest.fail("simulated despite bad input"))
    path = tmp_path / "side.json"
    if content is not None:
        path.write_text(json.dumps(content(rates)))
    with caplog.at_level(logging.ERROR):
        assert main(["--trace", str(trace), *extra, flag, str(path), "--out", str(tmp_path / "o")]) == 2
    assert len(caplog.records) == 1 and str(path) in caplog.text and message in caplog.text


def test_a_zero_energy_run_reports_its_ratios(tmp_path, caplog):
    """sop45 on an all-zero trace spends nothing: the final log line indexed missing ratios (KeyError, exit 1)."""
    capture, config = tiny_capture("SDT", True)
    trace = write(tmp_path / "zeros", [edited(capture, 0.0)], config)
    with caplog.at_level(logging.INFO):
        assert main(["--trace", str(trace), "--hw-config", "sop45", "--workers", "1", "--no-plots",
                     "--out", str(tmp_path / "o")]) == 0
    s = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert s["energy_per_inference_uj"]["mean"] == 0
    assert s["ratios"] == {"dense_pim": 1.0, "prior_pim": 1.0, "gpu_modelled": None}
    assert s["ablations"] and all(r["saving_ratio"] == 1.0 for r in s["ablations"])
    assert "x1.00 vs dense_pim, x1.00 vs prior_pim, n/a vs GPU (modelled)" in caplog.text


def test_an_event_sample_without_its_batch_axis_names_the_shapes():
    """export_traces of a DVS dataset's [T, C, H, W] items said 'got a batch of 4', calling T a batch size."""
    net = firing_model(T=4, embed_dims=64, img_size=32, in_channels=2, dvs=True)
    events = dvs_events(4, 32)
    with pytest.raises(ValueError, match=r"event frames \[1, T, C, H, W\] \(T=4\); got \[4, 2, 32, 32\]: .*add the "
                                         r"batch axis"):
        capture_sample(net, events[0])
    with pytest.raises(ValueError, match=r"got \[2, 4, 2, 32, 32\], a batch of 2"):
        capture_sample(net, events.expand(2, -1, -1, -1, -1))


@pytest.mark.parametrize("recorded, depths", [(2.0, 2), ("2", 2), (True, 1)])
def test_a_skip_list_s_depths_must_be_the_integer_block_count(tmp_path, recorded, depths):
    """``depths`` is an integer block count (main.py writes one): 2.0, "2" or true is refused, as ``T`` of the
    exit file is, rather than compared equal to 2 or 1."""
    from hw.config import HwInputError
    from hw.workload import load_skip_json

    path = tmp_path / "skip.json"
    path.write_text(json.dumps({"skipped_blocks": [0], "depths": recorded}))
    with pytest.raises(HwInputError, match=f"field 'depths' is {recorded!r}, but the traced model has {depths}"):
        load_skip_json(path, depths)
    path.write_text(json.dumps({"skipped_blocks": [0], "depths": depths}))
    assert load_skip_json(path, depths) == {0}


def test_weight_programming_writes_every_replicated_copy_from_one_dram_read(tmp_path, trace):
    """With crossbar.replication 2 each weight is written into two crossbars (twice the cells and cell-write
    energy) but read from DRAM once (the same DRAM energy); replication ignored, the copies went unprogrammed."""
    config = load_config("aster_default")
    programming = {}
    for copies in (1, 2):
        (tmp_path / "p.yaml").write_text(f"base: {CONFIG_DIR / 'aster_default.yaml'}\ncrossbar:\n"
                                         f"  replication: {copies}\n")
        out = tmp_path / f"x{copies}"
        assert main(["--trace", str(trace), "--hw-config", str(tmp_path / "p.yaml"), "--workers", "1", "--no-plots",
                     "--out", str(out)]) == 0
        s = json.loads((out / "summary.json").read_text())
        programming[copies] = s["weight_programming_once"]
        cells = s["memory"]["weight_cells"]
        assert programming[copies]["cells"] == copies * cells
        assert programming[copies]["energy_uj"] == pytest.approx(copies * cells * config.energy.cell_write * 1e-6)
    assert programming[2]["dram_energy_uj"] == programming[1]["dram_energy_uj"] > 0
