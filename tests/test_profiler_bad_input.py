"""Bad captures: whatever is valid is parsed, the rest is reported with line numbers, nothing raises."""
import json

from profiler.capture import load_capture
from profiler.tables import read_csv, write_tables
from profiler_helpers import CAPTURE_DIR, cap8_lines, needs_captures

LINES_PER_RUN = 348


def _fork_lines():
    return (CAPTURE_DIR / "capcifar3.txt").read_text().splitlines()


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
    assert read_csv(tables["skipped"])[0]["line"] == str(len(lines))


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
    garbage.write_bytes(b"\xff\xfe binary \x00 junk\n[Time] - MLP: 0.00\n")
    capture = load_capture(garbage)
    assert capture.runs == [] and [s.line for s in capture.skipped] == [1, 2]
