"""hw.run's report folder and summary.json provenance: a re-run never replaces a report, the input files and their
sha256 are recorded, and the accuracy fields say which model they are of (exit file vs trace)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from unittest import mock

import pytest
import torch

import hw.report
import hw.run
from hw.config import load_config
from hw.pipeline import simulate
from hw.report import write_report
from hw.run import main
from hw.workload import Workload
from hw_helpers import tiny_capture, write

LABELS = [1, 2]


@pytest.fixture(scope="module")
def trace(tmp_path_factory):
    """Two samples of an un-skipped model whose prediction is right at every step."""
    captures = []
    for seed, label in enumerate(LABELS):
        capture = tiny_capture("SDT", True, seed=seed)[0]
        logits = torch.zeros_like(capture.logits)
        logits[:, label] = 5.0
        captures.append(dataclasses.replace(capture, logits=logits))
    return write(tmp_path_factory.mktemp("inputs") / "trace", captures, tiny_capture()[1], labels=LABELS)


def _json(path, content):
    path.write_text(json.dumps(content))
    return str(path)


def _summary(folder):
    return json.loads((folder / "summary.json").read_text())


def _sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_a_rerun_writes_the_next_free_folder_and_logs_it(tmp_path, trace, caplog):
    """A second run into the same --out replaced the first report, so the folder did not say which run it held."""
    out = tmp_path / "out"
    run = lambda *extra: main(["--trace", str(trace), "--workers", "1", "--no-plots", "--out", str(out),  # noqa: E731
                               *extra])
    assert run() == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with caplog.at_level(logging.INFO):
        assert run("--mode", "statistical") == 0
        assert run() == 0
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _summary(tmp_path / "out-1")["mode"] == "statistical" and _summary(tmp_path / "out-2")["mode"] == "exact"
    for folder in ("out-1", "out-2"):
        assert f"or another run is writing one; this run's report went to {tmp_path / folder}" in caplog.text


def test_two_runs_claiming_one_new_folder_at_once_get_two_folders(tmp_path, trace):
    """Two runs writing to the same new --out at the same time both took it (the folder existed for the second
    one), and their files mixed; the folder is now claimed by creating a marker file exclusively."""
    res = simulate(Workload.open(trace), load_config("aster_default"), progress=False)
    claimed = threading.Barrier(2)
    claim = hw.report._claim_report_dir

    def claim_then_wait(out):
        folder = claim(out)
        claimed.wait(timeout=30)  # both runs have claimed a folder before either writes
        return folder

    with mock.patch.object(hw.report, "_claim_report_dir", claim_then_wait):
        threads = [threading.Thread(target=write_report, args=(res, tmp_path / "out"), kwargs={"plots": False})
                   for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("out")) == ["out", "out-1"]
    for folder in ("out", "out-1"):
        assert sorted(p.name for p in (tmp_path / folder).iterdir()) == [
            "ablations.csv", "components.csv", "layers.csv", "summary.json", "timesteps.csv"]


def test_a_killed_run_s_claim_does_not_send_later_runs_elsewhere(tmp_path, trace):
    """A run killed while writing left .report.claim (and its temporary folder and a half report): every later run
    into that --out went to <out>-1, and the leftovers stayed.  The claim is a lock, gone with its process."""
    res = simulate(Workload.open(trace), load_config("aster_default"), progress=False)
    out = tmp_path / "out"
    (out / ".report.h841ijzw").mkdir(parents=True)
    (out / ".report.h841ijzw" / "layers.csv").write_text("partial")
    (out / ".report.claim").touch()
    (out / "ablations.csv").write_text("from the killed run")
    write_report(res, out, plots=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in out.iterdir()) == [
        "ablations.csv", "components.csv", "layers.csv", "summary.json", "timesteps.csv"]
    assert (out / "ablations.csv").read_text() != "from the killed run"


def test_a_failing_rerun_leaves_no_new_folder(tmp_path, trace):
    res = simulate(Workload.open(trace), load_config("aster_default"), progress=False)
    write_report(res, tmp_path / "out", plots=False)
    res.tally.totals["aster_default"] = [(float("nan"), 1.0)] * res.n
    with pytest.raises(ValueError, match="the results hold NaN"):
        write_report(res, tmp_path / "out", plots=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_report_folder_whose_parent_is_read_only_fails_before_simulating(tmp_path, trace, caplog, monkeypatch):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.json").write_text("{}")
    monkeypatch.setattr(hw.run, "simulate", lambda *a, **k: pytest.fail("simulated despite an unusable --out"))
    access = hw.report.os.access
    monkeypatch.setattr(hw.report.os, "access", lambda path, mode: str(path) != str(tmp_path) and access(path, mode))
    with caplog.at_level(logging.ERROR):
        assert main(["--trace", str(trace), "--out", str(tmp_path / "out")]) == 2
    assert len(caplog.records) == 1 and "holds a report, and the next free 'out-N' folder cannot be made" in caplog.text


def test_summary_records_its_input_files_and_their_sha256(tmp_path, trace):
    """summary.json did not say which skip, exit, rates or GPU file a run used."""
    skip = _json(tmp_path / "skip.json", {"skipped_blocks": [1]})
    exit_ = _json(tmp_path / "exit.json", {"exit_steps": [2, 4], "sample_ids": [0, 1]})
    gpu = _json(tmp_path / "gpu.json", {"latency_ms": 20.0, "avg_power_W": 7.5, "batch": 1})
    assert main(["--trace", str(trace), "--skip-json", skip, "--exit-json", exit_, "--gpu-json", gpu, "--workers", "1",
                 "--no-plots", "--out", str(tmp_path / "o")]) == 0
    inputs = _summary(tmp_path / "o")["inputs"]
    assert inputs["trace"] == {"path": str(trace), "meta_sha256": _sha256(trace / "meta.json")}
    for key, path in (("skip_json", skip), ("exit_json", exit_), ("gpu_json", gpu)):
        assert inputs[key] == {"path": path, "sha256": _sha256(path)}, key
    assert inputs["rates"] is None
    assert main(["--trace", str(trace), "--mode", "statistical", "--no-plots", "--out", str(tmp_path / "s")]) == 0
    rates = str(tmp_path / "s" / "rates.json")
    assert main(["--trace", str(trace), "--mode", "statistical", "--rates", rates, "--no-plots",
                 "--out", str(tmp_path / "r")]) == 0
    inputs = _summary(tmp_path / "r")["inputs"]
    assert inputs["rates"] == {"path": rates, "sha256": _sha256(rates)}
    assert inputs["skip_json"] is None and inputs["exit_json"] is None and inputs["gpu_json"] is None


def _accuracy(tmp_path, trace, *extra):
    out = tmp_path / "o"
    assert main(["--trace", str(trace), *extra, "--workers", "1", "--no-plots", "--out", str(out)]) == 0
    accuracy = _summary(out)["accuracy"]
    (out / "summary.json").unlink()
    return accuracy


def test_what_if_accuracy_comes_from_the_exit_file_or_says_it_is_the_unskipped_models(tmp_path, trace):
    """Under a skip list the trace did not apply, the accuracies were the traced (un-skipped) model's, unlabelled,
    while the energy was the skipping model's; main.py's exit file records the skipping model's predictions."""
    skip = _json(tmp_path / "skip.json", {"skipped_blocks": [1]})
    exits = {"exit_steps": [2, 4], "sample_ids": [0, 1], "skipped_blocks": [1]}
    with_predictions = _json(tmp_path / "exit.json", {**exits, "predictions": [1, 0], "labels": LABELS})
    accuracy = _accuracy(tmp_path, trace, "--skip-json", skip, "--exit-json", with_predictions)
    assert accuracy["top1_at_exit"] == 50.0 and accuracy["exit_file_samples"] == 2
    assert accuracy["top1_all_steps"] == 100.0
    assert accuracy["accuracy_source"] == {"top1_all_steps": "trace (model without the skipped blocks applied)",
                                           "top1_at_exit": "exit file"}
    accuracy = _accuracy(tmp_path, trace, "--skip-json", skip, "--exit-json", _json(tmp_path / "bare.json", exits))
    assert accuracy["top1_at_exit"] == 100.0 and "exit_file_samples" not in accuracy
    assert set(accuracy["accuracy_source"].values()) == {"trace (model without the skipped blocks applied)"}
    accuracy = _accuracy(tmp_path, trace)
    assert accuracy["top1_at_exit"] == 100.0 and accuracy["accuracy_source"] == {"top1_all_steps": "trace",
                                                                                 "top1_at_exit": "trace"}


def test_statistical_mode_takes_top1_at_exit_from_every_sample_of_the_exit_file(tmp_path, trace):
    """Statistical mode simulates the exit mix of every sample in the file: its accuracy is over the same ones."""
    exit_ = _json(tmp_path / "exit.json", {"exit_steps": [1, 2, 3, 4], "sample_ids": [0, 1, 7, 8],
                                           "predictions": [1, 2, 5, 6], "labels": LABELS + [5, 0]})
    accuracy = _accuracy(tmp_path, trace, "--mode", "statistical", "--exit-json", exit_)
    assert accuracy["top1_at_exit"] == 75.0 and accuracy["exit_file_samples"] == 4
    assert accuracy["labelled_samples"] == 2 and accuracy["top1_all_steps"] == 100.0
    assert accuracy["accuracy_source"] == {"top1_all_steps": "trace", "top1_at_exit": "exit file"}


def test_an_exit_file_of_another_model_is_one_error_unless_the_run_is_a_what_if(tmp_path, trace, caplog,
                                                                               monkeypatch):
    """Only T, labels and skipped blocks were compared, so another checkpoint's exit file was simulated as the
    trace's; its predictions at the exit steps are not the trace's (a what-if's exits are another model's)."""
    exits = {"exit_steps": [2, 4], "sample_ids": [0, 1], "predictions": [1, 0], "labels": LABELS}
    other = _json(tmp_path / "other.json", {**exits, "predictions": [label + 3 for label in LABELS],
                                            "skipped_blocks": []})
    simulate_ = hw.run.simulate
    monkeypatch.setattr(hw.run, "simulate", lambda *a, **k: pytest.fail("simulated despite another model's exits"))
    with caplog.at_level(logging.ERROR):
        assert main(["--trace", str(trace), "--exit-json", other, "--out", str(tmp_path / "o")]) == 2
    assert len(caplog.records) == 1
    assert (f"{other}: the predictions of 2 of the 2 traced samples (first: sample 0) differ from the trace's at "
            f"their exit steps: the exit file comes from another model than {trace}") in caplog.text
    monkeypatch.setattr(hw.run, "simulate", simulate_)
    skip = _json(tmp_path / "skip.json", {"skipped_blocks": [1]})
    what_if = _json(tmp_path / "what_if.json", {**exits, "skipped_blocks": [1]})
    assert _accuracy(tmp_path, trace, "--skip-json", skip, "--exit-json", what_if)["top1_at_exit"] == 50.0
    same = _json(tmp_path / "same.json", {**exits, "predictions": LABELS})
    assert _accuracy(tmp_path, trace, "--exit-json", same)["top1_at_exit"] == 100.0
    caplog.clear()
    one_flipped = _json(tmp_path / "one_flipped.json", exits)  # half: rounding, not another model
    with caplog.at_level(logging.WARNING):
        assert _accuracy(tmp_path, trace, "--exit-json", one_flipped)["top1_at_exit"] == 50.0
    assert "the predictions of 1 of the 2 traced samples (first: sample 1) differ" in caplog.text


@pytest.mark.parametrize("field,values", [("predictions", [1]), ("labels", [1]), ("predictions", [1, True]),
                                          ("predictions", "12")])
def test_malformed_exit_predictions_are_one_error_before_simulating(tmp_path, trace, caplog, monkeypatch, field,
                                                                     values):
    monkeypatch.setattr(hw.run, "simulate", lambda *a, **k: pytest.fail("simulated despite bad input"))
    exit_ = _json(tmp_path / "exit.json", {"exit_steps": [1, 2], "predictions": [1, 2], "labels": LABELS,
                                           field: values})
    with caplog.at_level(logging.ERROR):
        assert main(["--trace", str(trace), "--exit-json", exit_, "--out", str(tmp_path / "o")]) == 2
    assert len(caplog.records) == 1
    assert f"{exit_}: field '{field}' must list one integer class per entry of 'exit_steps' (2)" in caplog.text


def test_exit_predictions_are_compared_at_each_sample_s_exit_step_and_id(tmp_path, caplog):
    """The traced model's logits favour class 0 at step 1 and the label at steps 2..4 (its prediction, from the logits
    summed so far, is 0 at step 1 and the label from step 3): an exit file of the same model that exits both samples
    at step 1 records 0 and 0 (not an error); its ``sample_ids`` say which recorded entry is whose."""
    captures = []
    for seed, label in enumerate(LABELS):
        capture = tiny_capture("SDT", True, seed=seed)[0]
        logits = torch.zeros_like(capture.logits)
        logits[0, 0], logits[1:, label] = 5.0, 5.0
        captures.append(dataclasses.replace(capture, logits=logits))
    trace = write(tmp_path / "trace", captures, tiny_capture()[1], labels=LABELS)
    early = _json(tmp_path / "early.json", {"exit_steps": [1, 1], "predictions": [0, 0], "labels": LABELS})
    with caplog.at_level(logging.WARNING):
        assert _accuracy(tmp_path, trace, "--exit-json", early)["top1_at_exit"] == 0.0
    assert "differ" not in caplog.text
    swapped = _json(tmp_path / "swapped.json", {"exit_steps": [4, 1], "sample_ids": [1, 0], "predictions": [2, 0],
                                                "labels": [2, 1]})
    assert _accuracy(tmp_path, trace, "--exit-json", swapped)["top1_at_exit"] == 50.0
    assert "differ" not in caplog.text


def test_a_what_if_s_exit_predictions_may_all_differ_from_the_trace(tmp_path, trace, caplog):
    """Under a skip list the trace did not apply, the exit file is the skipping model's: predictions that all
    differ from the traced (un-skipped) model's are neither an error nor a warning."""
    skip = _json(tmp_path / "skip.json", {"skipped_blocks": [1]})
    what_if = _json(tmp_path / "what_if.json", {"exit_steps": [2, 4], "sample_ids": [0, 1], "skipped_blocks": [1],
                                                "predictions": [label + 3 for label in LABELS], "labels": LABELS})
    with caplog.at_level(logging.WARNING):
        assert _accuracy(tmp_path, trace, "--skip-json", skip, "--exit-json", what_if)["top1_at_exit"] == 0.0
    assert "differ" not in caplog.text



def test_an_exit_file_lacking_a_traced_sample_is_the_one_error_naming_it(tmp_path, trace, caplog):
    """The predictions are compared on the traced samples the exit file lists only, so an exit file of sample 1
    alone reaches the one-line error that names sample 0 (not a KeyError on its missing prediction)."""
    part = _json(tmp_path / "part.json", {"exit_steps": [4], "sample_ids": [1], "predictions": [LABELS[1]],
                                          "labels": [LABELS[1]]})
    with caplog.at_level(logging.ERROR):
        assert main(["--trace", str(trace), "--exit-json", part, "--out", str(tmp_path / "o")]) == 2
    assert len(caplog.records) == 1 and "field 'sample_ids' lacks trace samples [0]" in caplog.text
