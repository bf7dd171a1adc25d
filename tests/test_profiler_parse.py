"""profiler.capture / profiler.tables on the fork's real captures and on the old cap8 layout."""
import logging
import re
from dataclasses import replace

import numpy as np
import pytest

from profiler.capture import load_capture
from profiler.cli import main
from profiler.fork_format import LABELS, parse_line, render_record
from profiler.records import Record
from profiler.tables import TABLES, attention_chunks, layer_sparsity, model_times, read_csv, write_tables
from profiler_helpers import CAPTURE_DIR, CAPTURES, cap8_lines, needs_captures


@pytest.fixture(scope="module")
def captures():
    return {name: load_capture(CAPTURE_DIR / name) for name in CAPTURES}


def _direct_run_means(path):
    """Per-run mean (seconds) of each timer, computed straight from the text with one regex."""
    timer = re.compile(r"\[Time\] - (.+): ([0-9.]+) (seconds|nanoseconds)")
    runs, current = [], {}
    for line in path.read_text().splitlines():
        if m := timer.fullmatch(line):
            current.setdefault(m[1], []).append(float(m[2]) / (1e9 if m[3] == "nanoseconds" else 1))
        elif line.startswith("Run "):
            runs.append({label: np.mean(v) for label, v in current.items()})
            current = {}
    return runs


@needs_captures
@pytest.mark.parametrize("name", CAPTURES)
def test_structure_30_runs_8_blocks_4_steps(captures, name):
    capture = captures[name]
    assert [run.number for run in capture.runs] == list(range(1, 31))
    assert not capture.incomplete and not capture.skipped
    assert capture.num_layers == 8
    for run in capture.runs:
        assert run.blocks == 8
        for block in range(8):
            for label in ("Attention postReshape chunk output", "Attention postReshape chunk x"):
                steps = [r.t for r in run.records if r.block == block and r.label == label]
                assert steps == [0, 1, 2, 3]
    chunks = attention_chunks(capture)
    assert len(chunks) == 30 * 8 * 4 and all(row["output"] != "" and row["x"] != "" for row in chunks)


@needs_captures
@pytest.mark.parametrize("name", CAPTURES)
def test_run_means_equal_direct_computation(captures, name):
    direct = _direct_run_means(CAPTURE_DIR / name)
    rows = model_times(captures[name])
    assert len(direct) == 30
    parsed = {}
    for row in rows:
        parsed.setdefault(row["run"], {})[row["label"]] = row["mean_ms"] / 1e3
    for number, expected in enumerate(direct, 1):
        got = parsed[number]
        assert set(got) == set(expected) | {"Run total"}
        for label, value in expected.items():
            assert got[label] == pytest.approx(value, rel=1e-12, abs=1e-15), (number, label)
    assert {row["count"] for row in rows if row["label"] == "SSA Encoder"} == {8}


def _value(capture, run, block, label, t=None):
    (record,) = [r for r in capture.runs[run - 1].records if r.block == block and r.label == label and r.t == t]
    return record.value


@needs_captures
def test_values_read_by_hand(captures):
    c3, randn, old = captures["capcifar3.txt"], captures["capcifarTensRandn.txt"], captures["capcifar.txt"]
    # capcifar3.txt lines 3, 13, 20, 22, 24, 28, 30, 36 and 339-340 (run 1, block 0)
    assert _value(c3, 1, 0, "x_for_qkv") == 0.690185546875
    assert _value(c3, 1, 0, "Reshape") == 285090
    assert _value(c3, 1, 0, "Matmul") == 187566
    assert _value(c3, 1, 0, "Reshape Time-Space") == 23754
    assert _value(c3, 1, 0, "Attention postReshape chunk output", t=0) == 0.9947916666666666
    assert _value(c3, 1, 0, "Transpose and LIF") == 336281
    assert _value(c3, 1, 0, "Attention postReshape chunk x", t=1) == 1.0
    assert _value(c3, 1, 0, "SSA Encoder") == pytest.approx(0.0039e9)
    assert _value(c3, 1, None, "Spikeformer Time time") == pytest.approx(0.0458e9)
    assert _value(c3, 1, None, "Run total") == pytest.approx(0.0459e9)
    # capcifarTensRandn.txt lines 10416, 10419 and 10426 (run 30, block 7)
    assert _value(randn, 30, 7, "Reshape Time-Space") == 34051
    assert _value(randn, 30, 7, "Attention postReshape chunk output", t=1) == 0.98828125
    assert _value(randn, 30, 7, "Attention postReshape chunk x", t=3) == 0.9990234375
    # capcifar.txt prints the sub-timers in seconds (line 14: "[Time] - Reshape: 0.0003 seconds")
    assert _value(old, 1, 0, "Reshape") == pytest.approx(0.0003e9)
    assert _value(old, 30, None, "Run total") == pytest.approx(0.0524e9)


@needs_captures
def test_tables_written_and_grouped_by_layer(captures, tmp_path):
    paths = write_tables(captures.values(), tmp_path)
    assert set(paths) == set(TABLES)
    encoder = read_csv(paths["encoder_means"])
    assert len(encoder) == 3 * 8 * 7  # sources x layers x block timers
    c3 = captures["capcifar3.txt"]
    layer3 = [r.value for r in c3.records() if r.block == 3 and r.label == "SSA Encoder"]
    (row,) = [r for r in encoder
              if r["source"] == "capcifar3.txt" and r["layer"] == 3 and r["label"] == "SSA Encoder"]
    assert row["mean_ms"] == pytest.approx(np.mean(layer3) / 1e6) and row["runs"] == 30
    assert row["std_ms"] == pytest.approx(np.std(layer3, ddof=1) / 1e6)
    spread = read_csv(paths["spread"])
    assert {r["source"] for r in spread} == set(CAPTURES)


def test_cap8_layout_grouped_by_layer_not_by_consecutive_executions(tmp_path):
    path = tmp_path / "cap8.txt"
    path.write_text("\n".join(cap8_lines(80)) + "\n")  # 80 executions = 10 runs of 8 layers, as cap8.txt
    capture = load_capture(path)
    assert len(capture.runs) == 10 and not capture.incomplete and not capture.skipped
    rows = {(r["layer"], r["label"]): r for r in layer_sparsity(capture) if r["t"] == ""}
    for layer in range(8):
        # layer k of run r holds k/100 + r/1000: the by-layer mean is k/100 + mean(r)/1000, runs 0..9
        assert rows[(layer, "Attention postReshape x")]["mean"] == pytest.approx(layer / 100 + 0.0045)
        assert rows[(layer, "q")]["runs"] == 10
    # the reference grouped executions 1-10 as "Encoder 1": it would have mixed layers 0-7 and 0-1
    consecutive = np.mean([(i % 8) / 100 + (i // 8) / 1000 for i in range(10)])
    assert consecutive != pytest.approx(rows[(0, "q")]["mean"])


def test_parse_and_plot_keep_other_captures_outputs_and_replace_their_own(tmp_path, caplog):
    """parse and plot silently replaced the tables and figures of other captures in --out; those now go to <out>-1,
    <out>-2, ... (logged), as with run, hw.run and the evaluation scripts, while running the documented pair again
    on the same capture replaces its own output, so that ``plot T`` still plots what ``parse --out T`` wrote."""
    capture, other = tmp_path / "cap8.txt", tmp_path / "other8.txt"
    capture.write_text("\n".join(cap8_lines(16)) + "\n")
    other.write_text("\n".join(cap8_lines(16)) + "\n")
    tables, plots = tmp_path / "tables", tmp_path / "plots"
    with caplog.at_level(logging.INFO):
        for _ in range(2):
            main(["parse", str(capture), "--out", str(tables)])
            main(["plot", str(tables), "--out", str(plots)])
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cap8.txt", "other8.txt", "plots", "tables"]
        assert "already holds" not in caplog.text
        main(["parse", str(other), "--out", str(tables)])
        main(["plot", str(tmp_path / "tables-1"), "--out", str(plots)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cap8.txt", "other8.txt", "plots", "plots-1", "tables",
                                                          "tables-1"]
    assert {row["source"] for row in read_csv(tables / "runs.csv")} == {capture.name}
    assert {row["source"] for row in read_csv(tmp_path / "tables-1" / "runs.csv")} == {other.name}
    assert [p.name for p in plots.iterdir() if not p.name.startswith("cap8")] == ["inputs.json"]
    assert [p.name for p in (tmp_path / "plots-1").iterdir() if not p.name.startswith("other8")] == ["inputs.json"]
    assert f"{tables} already holds the tables of other captures; writing to {tmp_path / 'tables-1'}" in caplog.text
    assert f"{plots} already holds the figures of other tables; writing to {tmp_path / 'plots-1'}" in caplog.text
    (tmp_path / "tables-2").mkdir()
    (tmp_path / "tables-2" / "notes.txt").write_text("not a table")
    main(["parse", str(capture), str(other), "--out", str(tables)])
    assert (tmp_path / "tables-2" / "runs.csv").is_file()


def test_every_label_round_trips_through_the_line_format():
    for label in LABELS.values():
        t = 2 if label.per_step else None
        value = 1234567.0 if label.kind == "time" else 0.25
        record = Record(3, None if label.scope == "run" else 1, label.name, label.kind, value,
                        "ns" if label.kind == "time" else "fraction", t)
        for units in ("fork", "ns"):
            parsed = parse_line(render_record(record, units))
            assert parsed.label == label and parsed.t == t
            assert parsed.value == pytest.approx(value, abs=0.5e5 if units == "fork" else 1e-9)


@needs_captures
def test_captures_joined_into_one_file_are_renumbered_not_merged(captures, tmp_path, caplog):
    """Two 30-run captures in one file: 60 runs numbered 1..60 in file order (run numbers start again at the
    second; its run 1 overwrote the first's in the tables), for the text format and for JSON lines."""
    first, second = (CAPTURE_DIR / name for name in CAPTURES[:2])
    joined = tmp_path / "joined.txt"
    joined.write_text(first.read_text() + second.read_text())
    capture = load_capture(joined)
    assert [run.number for run in capture.runs] == list(range(1, 61)) and "start again at line" in caplog.text
    assert len(attention_chunks(capture)) == 60 * 8 * 4
    assert capture.runs[30].records == [replace(r, run=31) for r in captures[CAPTURES[1]].runs[0].records]


def test_plot_replaces_only_a_folder_whose_figures_are_all_its_own(tmp_path, caplog):
    """A folder with the figures of cap8 and other8 is not a rerun of plotting cap8 alone: other8's figures would
    sit next to the new ones as if of the same tables, so the new figures go to <out>-1."""
    capture, other = tmp_path / "cap8.txt", tmp_path / "other8.txt"
    capture.write_text("\n".join(cap8_lines(16)) + "\n")
    other.write_text("\n".join(cap8_lines(16)) + "\n")
    both, alone, plots = tmp_path / "both", tmp_path / "alone", tmp_path / "plots"
    main(["parse", str(capture), str(other), "--out", str(both)])
    main(["plot", str(both), "--out", str(plots)])
    main(["parse", str(capture), "--out", str(alone)])
    with caplog.at_level(logging.WARNING):
        main(["plot", str(alone), "--out", str(plots)])
    assert f"{plots} already holds the figures of other tables; writing to {tmp_path / 'plots-1'}" in caplog.text
    assert any(p.name.startswith("other8") for p in plots.iterdir())
    assert [p.name for p in (tmp_path / "plots-1").iterdir() if not p.name.startswith("cap8")] == ["inputs.json"]


def test_an_output_folder_that_is_a_file_is_refused(tmp_path):
    """``--out`` naming a file is an error, not a silent switch to ``<out>-1``."""
    from profiler.tables import free_folder

    (tmp_path / "taken").write_text("keep me")
    with pytest.raises(ValueError, match=f"--out {tmp_path / 'taken'} is a file: give a folder"):
        free_folder(tmp_path / "taken", ["*.csv"], "tables")
    assert not (tmp_path / "taken-1").exists()


def test_another_capture_of_the_same_name_does_not_replace_the_tables_or_figures(tmp_path, caplog):
    """Every 'profiler run' writes capture.txt: parsing a second run's capture.txt into the same --out replaced the
    first run's tables (only the source names were compared), and plotting them replaced its figures.  The inputs'
    digests (inputs.json) now tell them apart; the same capture again still replaces its own output."""
    first, second = tmp_path / "a" / "capture.txt", tmp_path / "b" / "capture.txt"
    first.parent.mkdir(), second.parent.mkdir()
    first.write_text("\n".join(cap8_lines(16)) + "\n")
    second.write_text("\n".join(cap8_lines(24)) + "\n")  # a run more: other numbers, the same name
    tables, plots = tmp_path / "tables", tmp_path / "plots"
    main(["parse", str(first), "--out", str(tables)])
    main(["plot", str(tables), "--out", str(plots)])
    before = {p.name: p.read_bytes() for folder in (tables, plots) for p in folder.iterdir()}
    main(["parse", str(first), "--out", str(tables)])
    main(["plot", str(tables), "--out", str(plots)])
    assert not (tmp_path / "tables-1").exists() and not (tmp_path / "plots-1").exists()
    with caplog.at_level(logging.WARNING):
        main(["parse", str(second), "--out", str(tables)])
        main(["plot", str(tmp_path / "tables-1"), "--out", str(plots)])
    assert {p.name: p.read_bytes() for folder in (tables, plots) for p in folder.iterdir()} == before
    assert len(read_csv(tmp_path / "tables-1" / "runs.csv")) == len(read_csv(tables / "runs.csv")) + 1 == 3
    assert sorted(p.name for p in (tmp_path / "plots-1").iterdir()) == sorted(p.name for p in plots.iterdir())
    assert f"{plots} already holds the figures of other tables; writing to {tmp_path / 'plots-1'}" in caplog.text


def test_two_joined_single_run_streams_are_two_runs(tmp_path, caplog):
    """records.jsonl of two one-run 'profiler run's, joined: both are run 1, so the records were one run with every
    measurement twice (model_times counted 4 blocks of 2, layer_sparsity 2 runs) and no warning.  A measurement
    that comes again starts a new run, as a new run number does."""
    run = [Record(1, block, label, "time", 1000.0 * (block + 1), "ns") for block in (0, 1)
           for label in ("SSA Encoder", "MLP")] + [Record(1, None, "Run total", "time", 9000.0, "ns")]
    other = [replace(record, value=2 * record.value) for record in run]
    path = tmp_path / "joined.jsonl"
    path.write_text("".join(record.to_json() + "\n" for record in run + other))
    with caplog.at_level(logging.WARNING):
        capture = load_capture(path)
    assert [(r.number, len(r.records)) for r in capture.runs] == [(1, 5), (2, 5)] and not capture.incomplete
    assert "the run numbers start again at line 6" in caplog.text
    ssa = [row for row in model_times(capture) if row["label"] == "SSA Encoder"]
    assert [(row["run"], row["count"], row["mean_ms"]) for row in ssa] == [(1, 2, 0.0015), (2, 2, 0.003)]
