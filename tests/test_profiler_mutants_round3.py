"""Mutation round 3 on the profiler: the order, bounds and columns of the tables, the JSON-lines and fork line
readers, the summary, the figures' numbers and the recorder, on tiny hand-made captures whose numbers are worked
out in the docstrings."""
from __future__ import annotations

import json
import logging

import pytest
import torch
from matplotlib.figure import Figure

from module import TensorRecorder, instrument
from module.instrument import Recorder, recording
from profiler import plots
from profiler.capture import capture_from_records, load_capture
from profiler.fork_format import TOTAL, LineError, parse_line
from profiler.records import Record, read_jsonl
from profiler.session import ProfileSession
from profiler.tables import (attention_chunks, layer_sparsity, overall_means, read_csv, record_inputs, runs, spread,
                             summary_lines, write_tables)
from profiler_helpers import cap8_lines

_OUT, _X = "Attention postReshape chunk output", "Attention postReshape chunk x"


def _time(run: int, block: int | None, label: str, ms: float) -> Record:
    return Record(run, block, label, "time", ms * 1e6, "ns")


def _probe(run: int, block: int, label: str, value: float, t: int | None = None) -> Record:
    return Record(run, block, label, "sparsity", value, "fraction", t)


def _run(r: int, blocks=(0, 1)) -> list[Record]:
    """Run ``r`` of a 2-layer model in print order: PSM r ms, RPE 2 ms; per block b: q = 0.1 (b + 1) + 0.2 (r - 1),
    the attention output before attn_lif 0.5 + 0.1 t + 0.01 b and after it 0.9 - 0.1 t (t = 0, 1), SSA (b + 1) r ms,
    MLP 3 ms; the model 20 ms, the run 21 ms."""
    records = [_time(r, None, "SPS.PSM", r), _time(r, None, "SPS.RPE", 2)]
    for b in blocks:
        records += [_probe(r, b, "q", 0.1 * (b + 1) + 0.2 * (r - 1))]
        records += [_probe(r, b, _OUT, 0.5 + 0.1 * t + 0.01 * b, t) for t in (0, 1)]
        records += [_probe(r, b, _X, 0.9 - 0.1 * t, t) for t in (0, 1)]
        records += [_time(r, b, "SSA Encoder", (b + 1) * r), _time(r, b, "MLP", 3)]
    return records + [_time(r, None, TOTAL, 20), _time(r, None, "Run total", 21)]


def _capture(*runs_: list[Record], source="tiny.jsonl"):
    return capture_from_records(source, [record for run in runs_ for record in run], num_layers=2)


# ------------------------------------------------------------------------------------------------------- tables


def test_spread_rows_are_stem_then_each_layer_in_print_order_then_totals():
    """spread.csv lists the stem timers, then layer 0's measurements in print order (time steps ascending), then
    layer 1's, then the model totals (``_label_order``: stem, blocks, totals; a layer's rows together)."""
    block = [("q", ""), (_OUT, 0), (_OUT, 1), (_X, 0), (_X, 1), ("SSA Encoder", ""), ("MLP", "")]
    expected = ([("SPS.PSM", "", ""), ("SPS.RPE", "", "")] + [(label, layer, t) for layer in (0, 1)
                                                              for label, t in block]
                + [(TOTAL, "", ""), ("Run total", "", "")])
    rows = spread(_capture(_run(1), _run(2)))
    assert [(row["label"], row["layer"], row["t"]) for row in rows] == expected


def test_spread_min_and_max_and_no_std_for_one_run():
    """q of layer 0 is 0.1 in run 1 and 0.3 in run 2: min 0.1, max 0.3; SSA of layer 1 is 2 and 4 ms.  With one
    run there is no sample standard deviation: std and cv are empty (as the module docstring says), not NaN."""
    rows = {(row["label"], row["layer"]): row for row in spread(_capture(_run(1), _run(2)))}
    assert (rows[("q", 0)]["min"], rows[("q", 0)]["max"]) == pytest.approx((0.1, 0.3))
    assert (rows[("SSA Encoder", 1)]["min"], rows[("SSA Encoder", 1)]["max"]) == pytest.approx((2.0, 4.0))
    one = spread(_capture(_run(1)))
    assert {(row["runs"], row["std"], row["cv"]) for row in one} == {(1, "", "")}


def test_layer_sparsity_keeps_time_step_0_and_orders_the_steps():
    """The per-step probe has rows t = 0 and 1 per layer (t = 0 is a step, not "no step"); its mean over the two
    runs is 0.5 + 0.1 t + 0.01 layer; q has no step (empty t)."""
    rows = layer_sparsity(_capture(_run(1), _run(2)))
    steps = [(row["layer"], row["t"], row["mean"]) for row in rows if row["label"] == _OUT]
    assert [(layer, t) for layer, t, _ in steps] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert [mean for *_, mean in steps] == pytest.approx([0.5, 0.6, 0.51, 0.61])
    assert [row["t"] for row in rows if row["label"] == "q"] == ["", ""]


def test_attention_chunks_output_is_before_attn_lif_and_x_after():
    """Run 2, layer 1, t = 1: the output before attn_lif is 0.5 + 0.1 + 0.01 = 0.61, the spikes after it 0.8."""
    rows = {(row["run"], row["layer"], row["t"]): row for row in attention_chunks(_capture(_run(1), _run(2)))}
    assert len(rows) == 2 * 2 * 2
    assert (rows[(2, 1, 1)]["output"], rows[(2, 1, 1)]["x"]) == pytest.approx((0.61, 0.8))


def test_runs_table_is_in_file_order_with_an_incomplete_run_first():
    """Run 1 lacks block 1 (incomplete), run 2 is whole: runs.csv lists them by first line, run 1 first."""
    capture = _capture(_run(1, blocks=(0,)), _run(2))
    rows = runs(capture)
    assert [(row["run"], row["first_line"], row["blocks"], row["complete"]) for row in rows] == [
        (1, 1, 1, False), (2, 12, 2, True)]
    assert rows[0]["problem"] == "1 blocks, expected 2"


def test_tables_of_a_usable_capture_are_written_next_to_an_unusable_one(tmp_path):
    """Only when no input holds a complete run is parse an error (docs/profiler.md, Bad input): with one whole and
    one incomplete capture the tables are written, runs.csv naming both."""
    good, cut = _capture(_run(1), source="good.jsonl"), _capture(_run(1, blocks=(0,)), source="cut.jsonl")
    paths = write_tables([good, cut], tmp_path / "tables")
    assert [(row["source"], row["complete"]) for row in read_csv(paths["runs"])] == [
        ("good.jsonl", "True"), ("cut.jsonl", "False")]


def test_summary_lines_order_and_per_block_note():
    """Means over the runs of each run's mean: PSM (1 + 2) / 2 = 1.5 ms, RPE 2, SSA per block (1.5 + 3) / 2 = 2.25,
    MLP 3, the model 20, the run 21, in the order stem, blocks (marked as a mean per block), totals."""
    assert summary_lines(_capture(_run(1), _run(2))) == [
        "SPS.PSM                      1.5000 ms", "SPS.RPE                      2.0000 ms",
        "SSA Encoder                  2.2500 ms (mean per block)",
        "MLP                          3.0000 ms (mean per block)",
        "Spikeformer Time time       20.0000 ms", "Run total                   21.0000 ms"]


def test_overall_means_of_one_source():
    """Two sources in one model_times table: the means of 'a' are over its rows only, (1 + 3) / 2 = 2."""
    rows = [dict(source="a", label="MLP", mean_ms=1.0), dict(source="a", label="MLP", mean_ms=3.0),
            dict(source="b", label="MLP", mean_ms=11.0)]
    assert overall_means(rows, "a") == {"MLP": 2.0}
    assert overall_means(rows) == {"MLP": 5.0}


def _tables(tmp_path, *names):
    """The tables of 2-run cap8 captures called ``names`` in ``tmp_path / "tables"``."""
    for name in names:
        (tmp_path / name).write_text("\n".join(cap8_lines(16)) + "\n")
    return write_tables([load_capture(tmp_path / name) for name in names], tmp_path / "tables")


def test_read_csv_refuses_an_empty_cell_where_the_table_always_has_a_value(tmp_path):
    """The layer of a layer_sparsity row is never empty (only t and std may be): an emptied one is an error naming
    the line and column, not a None."""
    table = _tables(tmp_path, "cap8.txt")["layer_sparsity"]
    lines = table.read_text().splitlines()
    cells = lines[1].split(",")
    table.write_text("\n".join([lines[0], ",".join(cells[:1] + [""] + cells[2:])]) + "\n")
    with pytest.raises(ValueError, match="line 2, column 'layer': '' is not an integer"):
        read_csv(table)


def test_read_csv_counts_the_fields_of_a_row_with_extra_ones(tmp_path, caplog):
    """A layer_sparsity row (7 columns) with two extra fields is skipped with '9 fields, the header has 7'."""
    table = _tables(tmp_path, "cap8.txt")["layer_sparsity"]
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:2] + [lines[2] + ",1,2"]) + "\n")
    with caplog.at_level(logging.WARNING):
        assert len(read_csv(table)) == 1
    assert f"{table}: line 3 skipped: 9 fields, the header has 7" in caplog.text


def test_record_inputs_adds_to_what_the_folder_records(tmp_path):
    """record_inputs adds the new sources' digests to inputs.json and keeps the others (its docstring: 'Add')."""
    (tmp_path / "inputs.json").write_text(json.dumps({"a": "1", "b": "2"}))
    record_inputs(tmp_path, {"b": "3", "c": "4"})
    assert json.loads((tmp_path / "inputs.json").read_text()) == {"a": "1", "b": "3", "c": "4"}


def test_plotting_every_source_after_one_replaces_that_ones_figures(tmp_path, caplog):
    """plot --source a, then plot of both a and b into the same folder: the folder holds only figures of these
    tables (a's), so it is a rerun and is replaced in place, not a new <out>-1 (inputs.json has no entry for b yet)."""
    _tables(tmp_path, "a.txt", "b.txt")
    out = tmp_path / "plots"
    assert [path.name for path in plots.plot_tables(tmp_path / "tables", out, source="a.txt")] == [
        "a_layer_sparsity.png"]
    with caplog.at_level(logging.WARNING):
        written = plots.plot_tables(tmp_path / "tables", out)
    assert "already holds" not in caplog.text and not (tmp_path / "plots-1").exists()
    assert sorted(path.name for path in written) == ["a_layer_sparsity.png", "b_layer_sparsity.png"]
    assert {path.parent for path in written} == {out}


# --------------------------------------------------------------------------------------------- records and lines


def test_json_lines_keep_the_shape_and_time_step_0(tmp_path):
    """A per-step record at t = 0 with its shape [4, 1, 8] comes back from records.jsonl unchanged, and a blank
    line (an editor's trailing one) is neither a record nor a skipped line."""
    record = Record(1, 0, _OUT, "sparsity", 0.25, "fraction", 0, (4, 1, 8))
    assert Record.from_json(record.to_json()) == record
    path = tmp_path / "records.jsonl"
    path.write_text(record.to_json() + "\n\n" + record.to_json() + "\n")
    numbered, skipped = read_jsonl(path)
    assert [(n, r) for n, r in numbered] == [(1, record), (3, record)] and skipped == []


@pytest.mark.parametrize("line, message", [
    ("sparsity Attention - 1 out: 0.5", "label 'Attention out' takes no time step"),
    ("sparsity Attention postReshape chunk x: 0.5", "label 'Attention postReshape chunk x' needs time step"),
    ("[Time] - q: 5.0000 nanoseconds", "label 'q' is not a timer"),
    ("sparsity MLP: 0.5", "label 'MLP' is not a sparsity probe"),
    ("sparsity q: nan", "value 'nan' out of range"),
    ("[Time] - MLP: inf seconds", "value 'inf' out of range"),
])
def test_fork_lines_that_mix_up_kinds_or_steps_are_refused(line, message):
    """A time step on a whole-tensor probe, none on a per-step one, a probe printed as a timer (or the reverse),
    and a value that is no finite number are each a LineError saying which."""
    with pytest.raises(LineError, match=message):
        parse_line(line)



def test_a_run_without_its_run_total_is_incomplete():
    """Run 2 ends with the model's total but lacks the driver's 'Run i' total that run 1 has: it is cut off
    before that line, so incomplete, and only run 1 enters the tables."""
    capture = _capture(_run(1), _run(2)[:-1])
    assert [run.number for run in capture.runs] == [1]
    assert capture.incomplete[0].problem == "no closing 'Run i - Tempo totale' line (truncated?)"


def test_the_log_names_the_first_20_skipped_lines_and_counts_the_rest(tmp_path, caplog):
    """25 unreadable lines before a cap8 capture: the warning lists lines 1-20 and says 'and 5 more'."""
    path = tmp_path / "noisy.txt"
    path.write_text("\n".join(["stray print"] * 25 + cap8_lines(8)) + "\n")
    with caplog.at_level(logging.WARNING):
        load_capture(path).log_summary()
    lines = ", ".join(str(n) for n in range(1, 21))
    assert (f"noisy.txt: skipped 25 lines: {lines} and 5 more (first reason: not a line of the fork's format)"
            in caplog.text)


def test_the_log_counts_the_blocks_of_the_complete_runs(tmp_path, caplog):
    """19 cap8 blocks: 2 complete runs of 8 blocks and 3 left over; the summary gives the complete runs' 8."""
    path = tmp_path / "cap8.txt"
    path.write_text("\n".join(cap8_lines(19)) + "\n")
    with caplog.at_level(logging.INFO):
        load_capture(path).log_summary()
    assert "cap8.txt: 2 complete runs of 8 blocks (8 layers)" in caplog.text


def test_trailing_blanks_without_a_line_end_are_no_cut_off_line(tmp_path):
    """A capture whose last line is only spaces without a line end was not cut inside a measurement: nothing is
    skipped."""
    path = tmp_path / "cap8.txt"
    path.write_text("\n".join(cap8_lines(8)) + "\n   ")
    capture = load_capture(path)
    assert len(capture.runs) == 1 and capture.skipped == []


def test_the_layer_count_is_that_of_most_runs_not_the_largest():
    """Without --layers: runs of 2, 3 and 2 blocks give 2 layers (the most common count), so the 3-block run is the
    incomplete one."""
    capture = capture_from_records("c.jsonl", _run(1) + _run(2, blocks=(0, 1, 2)) + _run(3))
    assert capture.num_layers == 2 and [run.number for run in capture.runs] == [1, 3]
    assert capture.incomplete[0].problem == "3 blocks, expected 2"


def test_one_block_short_of_a_run_without_run_lines_is_left_over(tmp_path):
    """15 cap8 blocks are a run of 8 and 7 left over; those 7 are reported as left over from a count that is not a
    multiple of 8, as 3 of 83 are."""
    path = tmp_path / "cap8.txt"
    path.write_text("\n".join(cap8_lines(15)) + "\n")
    (left_over,) = load_capture(path).incomplete
    assert left_over.problem == "7 blocks left over: 15 blocks without run lines is not a multiple of 8 layers"

# ------------------------------------------------------------------------------------------------------ figures

_SRC = "cap.txt"


def _heights(ax) -> list[float]:
    return [round(p.get_height(), 9) for p in ax.patches]


def _model_times(**means) -> list[dict]:
    names = {"total": TOTAL, "run": "Run total", "psm": "SPS.PSM", "rpe": "SPS.RPE", "ssa": "SSA Encoder",
             "mlp": "MLP", "matmul": "Matmul", "reshape": "Reshape"}
    return [dict(source=_SRC, label=names[key], mean_ms=value) for key, value in means.items()]


def test_times_breakdown_prefers_the_model_total_and_has_no_negative_rest():
    """With both totals the whole-model bar is the model's own timer (8 ms), not the run's wall clock (30 ms);
    stem 1 + 2 and one layer of 4 + 3 exceed it, so the rest is 0, not 8 - 3 - 7 = -2."""
    encoder = [dict(source=_SRC, layer=0, label="SSA Encoder", mean_ms=4.0),
               dict(source=_SRC, layer=0, label="MLP", mean_ms=3.0)]
    ax = Figure().add_subplot()
    plots._times_breakdown(ax, {"model_times": _model_times(total=8.0, run=30.0, psm=1.0, rpe=2.0, ssa=4.0, mlp=3.0),
                                "encoder_means": encoder}, _SRC)
    # whole model | stem, encoder, rest | stem, layer 0, rest | SSA, MLP
    assert _heights(ax) == [8.0, 3.0, 7.0, 0.0, 3.0, 7.0, 0.0, 4.0, 3.0]


def test_attention_breakdown_splits_the_ssa_into_its_sub_timers_and_the_rest():
    """SSA 10 ms with sub-timers Matmul 3 and Reshape 2: the untimed rest is 10 - 5 = 5 ms; the MLP (4 ms) is a bar
    segment of its own, not a sub-timer."""
    ax = Figure().add_subplot()
    plots._attention_breakdown(ax, {"model_times": _model_times(ssa=10.0, mlp=4.0, matmul=3.0, reshape=2.0)}, _SRC)
    # SSA + MLP | rest, Matmul, Reshape, MLP
    assert _heights(ax) == [10.0, 4.0, 5.0, 3.0, 2.0, 4.0]


def test_stem_times_total_is_psm_plus_rpe():
    """PSM 1.5 and RPE 0.5 ms stacked, next to their sum 2 ms."""
    ax = Figure().add_subplot()
    plots._stem_times(ax, {"model_times": _model_times(psm=1.5, rpe=0.5)}, _SRC)
    assert _heights(ax) == [1.5, 0.5, 2.0]


def test_layer_sparsity_prefers_the_whole_tensor_probe_to_its_per_step_stand_in():
    """Where a layer has the whole-tensor 'Attention postReshape x' (0.9) and the per-step probe that stands for it
    in the current format (0.1), the bar is the variable itself."""
    rows = [dict(source=_SRC, label="Attention postReshape x", layer=0, mean=0.9),
            dict(source=_SRC, label=_X, layer=0, mean=0.1)]
    ax = Figure().add_subplot()
    plots._layer_sparsity(ax, {"layer_sparsity": rows}, _SRC)
    assert _heights(ax) == [0.9]


def test_step_sparsity_draws_each_time_step_s_own_value():
    """Layer 0 at t = 0 and 1 with outputs 0.2 and 0.6 (x half of them): one bar per step with its own value."""
    rows = [dict(source=_SRC, run=1, layer=0, t=t, output=value, x=value / 2) for t, value in ((0, 0.2), (1, 0.6))]
    fig = Figure()
    plots._step_sparsity(fig, {"attention_chunks": rows}, _SRC)
    assert [_heights(ax) for ax in fig.axes] == [[0.2, 0.6], [0.1, 0.3]]


# ------------------------------------------------------------------------------------------------------ recorder


def test_a_timers_only_recorder_is_active_and_excludes_another():
    """A recorder without probes still enables the measuring points, so a second recorder is refused."""
    with recording(Recorder(probes=False)):
        assert instrument.is_enabled()
        with pytest.raises(RuntimeError, match="already active"), recording(Recorder(timers=False)):
            pass
    assert not instrument.is_enabled()


def test_two_probes_collect_their_own_values_in_order():
    """Probes of a tensor with 1 zero in 4 and of one with 3 zeros in 4, then of the first per step ([2, 2]: 1/2
    and 0): the values come back in probe order, 0.25, 0.75, 0.5, 0.0."""
    a, b = torch.tensor([[0.0, 1.0], [2.0, 3.0]]), torch.tensor([[0.0, 0.0], [0.0, 5.0]])
    with recording(Recorder(timers=False)) as recorder:
        instrument.sparsity(("q", "k"), a, b)
        instrument.sparsity(_X, a, per_step=True)
        got = [(m.label, m.t, m.value) for m in recorder.collect()]
    assert got == [("q", None, 0.25), ("k", None, 0.75), (_X, 0, 0.5), (_X, 1, 0.0)]


def test_every_run_of_a_session_times_its_own_forward():
    """Two runs in one session: each has one model total, within that run's wall-clock total (a timer left from
    run 1 would make run 2's total start in run 1)."""
    net = torch.nn.Linear(4, 2)
    with ProfileSession(net, "cpu") as session, torch.no_grad():
        runs_ = [session.run(number, lambda: net(torch.ones(3, 4))) for number in (1, 2)]
    for number, records in enumerate(runs_, 1):
        assert [(r.run, r.label) for r in records] == [(number, TOTAL), (number, "Run total")]
        assert 0 < records[0].value <= records[1].value


def test_tensor_recorder_keeps_detached_outputs_and_leaves_no_hook():
    """The recorded output of a module run with gradients is detached (no graph is kept alive), and leaving the
    with block removes the hook: a later forward records nothing."""
    net = torch.nn.Linear(4, 2)
    with TensorRecorder([("out", net)]) as recorder:
        out = net(torch.ones(1, 4))
    assert out.requires_grad and not recorder.records["out"].requires_grad
    assert torch.equal(recorder.records["out"], out.detach())
    recorder.records.clear()
    net(torch.ones(1, 4))
    assert recorder.records == {} and not net._forward_hooks
