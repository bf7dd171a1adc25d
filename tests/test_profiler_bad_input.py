"""Bad captures: whatever is valid is parsed, the rest is reported with line numbers, nothing raises."""
import gzip
import json
import logging

import pytest

from profiler.capture import load_capture
from profiler.cli import main
from profiler.tables import read_csv, write_tables
from profiler_helpers import CAPTURE_DIR, cap8_lines, needs_captures

LINES_PER_RUN = 348


def _fork_lines(name="capcifar3.txt"):
    return (CAPTURE_DIR / name).read_text().splitlines()


@needs_captures
def test_truncated_capture(tmp_path):
    lines = _fork_lines()[:3 * LINES_PER_RUN + 100]  # 3 runs, then the start of run 4 cut mid-line
    lines[-1] = lines[-1][:12]
    path = tmp_path / "truncated.txt"
    path.write_text("\n".join(lines))
    capture = load_capture(path)
    assert [run.number for run in capture.runs] == [1, 2, 3]
    (partial,) = capture.incomplete
    assert partial.first_line == 3 * LINES_PER_RUN + 1 and partial.blocks == 3
    assert [s.line for s in capture.skipped] == [len(lines)]
    tables = write_tables([capture], tmp_path / "tables")
    runs = read_csv(tables["runs"])
    assert [r["complete"] for r in runs] == ["True", "True", "True", "False"]
    assert read_csv(tables["skipped"])[0]["line"] == len(lines)


@needs_captures
def test_run_with_a_missing_block_and_unknown_labels(tmp_path):
    lines = _fork_lines()[:2 * LINES_PER_RUN]
    del lines[LINES_PER_RUN + 2:LINES_PER_RUN + 2 + 43]  # run 2 loses block 0: 7 blocks
    lines.insert(5, "sparsity banana: 0.5")
    lines.insert(9, "[Time] - Teleport: 12.0000 nanoseconds")
    lines.insert(10, "sparsity q: not-a-number")
    lines.insert(11, "some stray print")
    path = tmp_path / "broken.txt"
    path.write_text("\n".join(lines) + "\n")
    capture = load_capture(path)
    assert [run.number for run in capture.runs] == [1]
    assert capture.incomplete[0].number == 2 and "7 blocks, expected 8" in capture.incomplete[0].problem
    assert [(s.line, s.reason.split(" ")[0]) for s in capture.skipped] == [
        (6, "unknown"), (10, "unknown"), (11, "bad"), (12, "not")]
    assert capture.runs[0].blocks == 8


def test_block_count_not_a_multiple_of_the_layer_count(tmp_path):
    path = tmp_path / "cap8_83.txt"
    path.write_text("\n".join(cap8_lines(83)) + "\n")
    capture = load_capture(path)
    assert len(capture.runs) == 10
    (left_over,) = capture.incomplete
    assert left_over.blocks == 3 and left_over.first_line == 80 * 20 + 1 and left_over.last_line == 83 * 20
    assert "not a multiple of 8" in left_over.problem
    assert len(load_capture(path, num_layers=83).runs) == 1


def test_bad_jsonl_lines(tmp_path):
    record = {"run": 1, "block": None, "label": "SPS.PSM", "kind": "time", "value": 5, "unit": "ns", "t": None,
              "shape": None}
    lines = [json.dumps(record), "{not json", json.dumps({**record, "label": "Mystery"}),
             json.dumps({**record, "kind": "sparsity", "unit": "fraction", "value": 3.0}),
             json.dumps({**record, "label": "Run total"})]
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    capture = load_capture(path, num_layers=0)
    assert [s.line for s in capture.skipped] == [2, 3, 4]
    assert len(capture.runs) == 1 and [r.label for r in capture.runs[0].records] == ["SPS.PSM", "Run total"]


def test_empty_and_garbage_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert load_capture(empty).runs == []
    garbage = tmp_path / "garbage.txt"
    garbage.write_bytes(b"\x80\xfe binary \x00 junk\n[Time] - MLP: 0.00\n")  # not UTF-8, NUL bytes
    capture = load_capture(garbage)
    assert capture.runs == [] and [s.line for s in capture.skipped] == [1, 2]


def _no_run_lines():
    """capcifar.txt without its timer and "Run i" lines: the cap8 layout, 36 lines (18 probes) per block."""
    lines = [line for line in _fork_lines("capcifar.txt") if not line.startswith(("[Time]", "Run "))]
    assert len(lines) == 30 * 8 * 36
    return lines


@needs_captures
def test_capture_without_run_lines_cut_inside_a_block(tmp_path):
    path = tmp_path / "cut.txt"
    path.write_text("\n".join(_no_run_lines()[:1986]) + "\n")  # run 7, block 7: 6 of its 36 lines
    capture = load_capture(path)
    assert [run.number for run in capture.runs] == list(range(1, 7))
    (cut,) = capture.incomplete
    assert (cut.number, cut.first_line, cut.last_line, cut.blocks) == (7, 1729, 1985, 8)
    assert cut.problem == "block 7 has no closing 'MLP x after identity final' line (cut off?)"
    rows = read_csv(write_tables([capture], tmp_path / "tables")["layer_sparsity"])
    assert {row["runs"] for row in rows} == {6}


def test_cap8_layout_cut_inside_the_last_block(tmp_path):
    path = tmp_path / "cap8_cut.txt"
    path.write_text("\n".join(cap8_lines(16)[:-1]) + "\n")  # block 7 of run 2 lacks its last probe
    capture = load_capture(path)
    assert [run.number for run in capture.runs] == [1]
    assert capture.incomplete[0].problem == "block 7 has no closing 'MLP x after identity final' line (cut off?)"


@needs_captures
def test_last_line_without_a_line_end_is_cut_off(tmp_path):
    path = tmp_path / "cut.txt"
    lines = _no_run_lines()[:8 * 36 + 4] + ["sparsity k: 0.96"]  # run 2: x_for_qkv, q, then k written up to 0.96
    path.write_text("\n".join(lines))
    capture = load_capture(path)
    assert len(capture.runs) == 1 and capture.incomplete[0].blocks == 1
    (skipped,) = capture.skipped
    assert (skipped.line, skipped.reason, skipped.text) == (len(lines), "cut off: the last line has no line end",
                                                            "sparsity k: 0.96")
    assert [r.label for r in capture.incomplete[0].records] == ["x_for_qkv", "q"]


@needs_captures
def test_utf16_capture_is_decoded(tmp_path):
    text = "\n".join(_fork_lines()[:LINES_PER_RUN]) + "\n"
    path = tmp_path / "powershell.txt"
    path.write_text(text, encoding="utf-16")  # with a byte-order mark, as PowerShell's redirection writes
    capture = load_capture(path)
    assert len(capture.runs) == 1 and not capture.incomplete and not capture.skipped


def test_nothing_found_is_a_warning_with_the_likely_cause(tmp_path, caplog):
    files = {"empty.txt": b"", "cap.txt.gz": gzip.compress(b"sparsity q: 0.5\n"), "bin.txt": b"\x00\x01\x02\n",
             "notes.txt": b"hello\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        load_capture(tmp_path / name).log_summary()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "no capture" in r.message]
    assert warnings == ["empty.txt: no capture lines found: the file is empty",
                        "cap.txt.gz: no capture lines found: the file is gzip-compressed: decompress it first (gunzip)",
                        "bin.txt: no capture lines found: the file holds NUL bytes: binary, or UTF-16 without a "
                        "byte-order mark (convert to UTF-8)",
                        "notes.txt: no capture lines found: is it the fork's output or a capture of 'python -m "
                        "profiler run' (capture.txt, records.jsonl)? UTF-16 files need a byte-order mark or a "
                        "conversion to UTF-8"]


def test_sources_named_by_the_shortest_distinct_path_end(tmp_path, capsys):
    paths = [tmp_path / "A" / "gpu" / "cap8.txt", tmp_path / "B" / "gpu" / "cap8.txt", tmp_path / "other.txt"]
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(cap8_lines(16)) + "\n")
    main(["parse", *map(str, paths), "--out", str(tmp_path / "tables")])
    runs = read_csv(tmp_path / "tables" / "runs.csv")
    assert [(r["source"], r["run"]) for r in runs] == [
        ("A/gpu/cap8.txt", 1), ("A/gpu/cap8.txt", 2), ("B/gpu/cap8.txt", 1), ("B/gpu/cap8.txt", 2),
        ("other.txt", 1), ("other.txt", 2)]
    same = tmp_path / "A" / "gpu" / ".." / "gpu" / "cap8.txt"
    with pytest.raises(SystemExit):
        main(["parse", str(paths[0]), str(same), "--out", str(tmp_path / "twice")])
    assert f"{same} is the same file as {paths[0]}: give each capture once" in capsys.readouterr().err
    assert not (tmp_path / "twice").exists()


@pytest.mark.parametrize("layers", ["0", "-1"])
def test_layers_below_one_is_an_error(tmp_path, capsys, layers):
    (tmp_path / "cap8.txt").write_text("\n".join(cap8_lines(8)) + "\n")
    with pytest.raises(SystemExit):
        main(["parse", str(tmp_path / "cap8.txt"), f"--layers={layers}", "--out", str(tmp_path / "tables")])
    assert f"argument --layers: {layers} is less than 1" in capsys.readouterr().err


def test_plot_skips_a_cut_off_table_row(tmp_path, caplog):
    (tmp_path / "cap8.txt").write_text("\n".join(cap8_lines(16)) + "\n")
    main(["parse", str(tmp_path / "cap8.txt"), "--out", str(tmp_path / "tables")])
    table = tmp_path / "tables" / "layer_sparsity.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:-1] + [",".join(lines[-1].split(",")[:3])]))  # the last row cut off
    main(["plot", str(tmp_path / "tables"), "--out", str(tmp_path / "plots")])
    assert f"{table}: line {len(lines)} skipped: 3 fields, the header has 7" in caplog.text
    assert (tmp_path / "plots" / "cap8_layer_sparsity.png").is_file()


def _good_tables(tmp_path):
    """Tables of a 2-run cap8 capture in ``tmp_path / "tables"``, and the bytes of each."""
    (tmp_path / "cap8.txt").write_text("\n".join(cap8_lines(16)) + "\n")
    main(["parse", str(tmp_path / "cap8.txt"), "--out", str(tmp_path / "tables")])
    return {path.name: path.read_bytes() for path in (tmp_path / "tables").iterdir()}


@pytest.mark.parametrize("name, data, cause", [
    ("empty.txt", b"", "empty.txt: no capture lines found: the file is empty"),
    ("cap.txt.gz", gzip.compress(("\n".join(cap8_lines(16)) + "\n").encode()),
     "cap.txt.gz: no capture lines found: the file is gzip-compressed"),
    ("bin.dat", b"\x00\x01\x02\n", "bin.dat: no capture lines found: the file holds NUL bytes"),
    ("cut.txt", ("\n".join(cap8_lines(8)[:-1]) + "\n").encode(), "cut.txt: no run is complete (1 found; the first, "
     "lines 1-159: block 7 has no closing 'MLP x after identity final' line (cut off?))"),
])
def test_parse_without_a_complete_run_is_an_error_and_keeps_the_tables(tmp_path, capsys, name, data, cause):
    before = _good_tables(tmp_path)
    (tmp_path / name).write_bytes(data)
    with pytest.raises(SystemExit) as exit_info:
        main(["parse", str(tmp_path / name), "--out", str(tmp_path / "tables")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert f"no complete run to tabulate, nothing written to {tmp_path / 'tables'}: {cause}" in err
    assert {path.name: path.read_bytes() for path in (tmp_path / "tables").iterdir()} == before


@needs_captures
def test_parse_with_a_wrong_layer_count_names_the_blocks_found(tmp_path, capsys):
    before = _good_tables(tmp_path)
    with pytest.raises(SystemExit):
        main(["parse", str(CAPTURE_DIR / "capcifar.txt"), "--layers", "4", "--out", str(tmp_path / "tables")])
    assert ("capcifar.txt: no run is complete: the 30 found have 8 blocks where 4 layers are expected (give "
            "--layers 8)") in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in (tmp_path / "tables").iterdir()} == before


def test_plot_of_tables_without_rows_is_an_error(tmp_path, capsys):
    _good_tables(tmp_path)
    for table in (tmp_path / "tables").iterdir():
        table.write_text(table.read_text().splitlines()[0] + "\n")
    with pytest.raises(SystemExit):
        main(["plot", str(tmp_path / "tables"), "--out", str(tmp_path / "plots")])
    assert f"{tmp_path / 'tables'}: the tables have no rows, so there is nothing to plot" in capsys.readouterr().err
    assert not (tmp_path / "plots").exists()


def test_plot_names_the_file_line_and_column_of_a_cell_that_is_no_number(tmp_path, capsys):
    _good_tables(tmp_path)
    table = tmp_path / "tables" / "layer_sparsity.csv"
    lines = table.read_text().splitlines()
    lines[3] = ",".join(lines[3].split(",")[:-2] + ["abc", lines[3].split(",")[-1]])  # the 'mean' of line 4
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit):
        main(["plot", str(tmp_path / "tables"), "--out", str(tmp_path / "plots")])
    assert f"{table}: line 4, column 'mean': 'abc' is not a number" in capsys.readouterr().err


def test_plot_names_the_columns_a_header_lacks(tmp_path, capsys):
    _good_tables(tmp_path)
    for table in (tmp_path / "tables").iterdir():
        table.write_text(table.read_text().replace(",", ";"))  # re-saved with another separator
    with pytest.raises(SystemExit):
        main(["plot", str(tmp_path / "tables"), "--out", str(tmp_path / "plots")])
    err = capsys.readouterr().err
    assert f"{tmp_path / 'tables' / 'model_times.csv'}: the header 'source;run;label;count;mean_ms' lacks the " \
           "columns source, run, label, count, mean_ms" in err and "Traceback" not in err


def test_read_csv_converts_the_numbers(tmp_path):
    _good_tables(tmp_path)
    rows = read_csv(tmp_path / "tables" / "layer_sparsity.csv")
    layer, t, runs, mean, std = (rows[0][column] for column in ("layer", "t", "runs", "mean", "std"))
    assert (layer, t, runs) == (0, None, 2) and mean == pytest.approx(0.0005) and std == pytest.approx(0.001 / 2 ** 0.5)


@needs_captures
def test_a_capture_cut_inside_its_first_run_is_no_run_of_fewer_layers(tmp_path, capsys):
    """Cut after its first block's closing line, the fork's capture was read as one complete run of one layer (the
    layer count inferred from that run) and tabulated."""
    path = tmp_path / "cut.txt"
    path.write_text("\n".join(_fork_lines()[:45]) + "\n")  # line 45: block 0's closing '[Time] - MLP'
    capture = load_capture(path)
    assert capture.runs == [] and capture.num_layers == 8 and capture.incomplete[0].problem == "1 blocks, expected 8"
    with pytest.raises(SystemExit) as exit_info:
        main(["parse", str(path), "--out", str(tmp_path / "tables")])
    assert exit_info.value.code == 2 and "no run is complete" in capsys.readouterr().err
    assert not (tmp_path / "tables").exists()
    # cut inside run 4, the partial run lacks the model's total its predecessors have
    path.write_text("\n".join(_fork_lines()[:3 * LINES_PER_RUN + 45]) + "\n")
    capture = load_capture(path)
    assert len(capture.runs) == 3 and capture.incomplete[0].problem.endswith("line after its blocks (cut off?)")


@needs_captures
def test_a_capture_with_timers_but_no_total_lines_keeps_its_runs(tmp_path):
    """A fork build that times the blocks but not the whole model: every run but the last is followed by another,
    so whole, and gives the layer count."""
    lines = [line for line in _fork_lines("capcifar.txt") if "Spikeformer Time time" not in line
             and not line.startswith("Run ")]
    path = tmp_path / "no_totals.txt"
    path.write_text("\n".join(lines) + "\n")
    capture = load_capture(path)
    assert (len(capture.runs), capture.num_layers, capture.incomplete) == (30, 8, [])


def test_a_bad_value_is_one_line_without_the_usage_block(tmp_path, capsys):
    """profiler run printed argparse's 25-line usage before the error, which said nothing about the bad value."""
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--no-timers", "--no-sparsity", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "usage:" not in err
    assert err.endswith("error: --no-timers with --no-sparsity records nothing: keep the timers or the probes\n")
    assert not (tmp_path / "out").exists()


@needs_captures
def test_a_capture_cut_inside_its_first_run_is_not_told_to_change_layers(tmp_path, capsys):
    """The first 217 lines of capcifar.txt (8 layers) end inside run 1, after 5 blocks: the error said 'give
    --layers 5', which tabulates a cut run as a complete 5-layer one.  With one run found it says it may be cut."""
    lines = (CAPTURE_DIR / "capcifar.txt").read_text().splitlines()[:217]
    (tmp_path / "first217.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit):
        main(["parse", str(tmp_path / "first217.txt"), "--layers", "8", "--out", str(tmp_path / "tables")])
    assert ("first217.txt: no run is complete: the only one found has 5 blocks where 8 layers are expected: the "
            "capture is cut off, or give --layers 5 if the model has 5") in capsys.readouterr().err


def test_sources_whose_names_still_clash_get_numbered_figure_prefixes():
    """'gpu/records.jsonl' and 'gpu_records.jsonl' both became gpu_records_jsonl: one's figures replaced the
    other's."""
    from profiler.plots import _file_prefixes

    assert _file_prefixes(["gpu/records.jsonl", "gpu_records.jsonl", "cpu.txt"]) == {
        "gpu/records.jsonl": "gpu_records_jsonl", "gpu_records.jsonl": "gpu_records_jsonl_2", "cpu.txt": "cpu"}
    assert list(_file_prefixes(["run 1/capture.txt", "run_1/capture.txt"]).values()) == [
        "run_1_capture_txt", "run_1_capture_txt_2"]
