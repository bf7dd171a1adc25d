"""benchmarks/bench_kernels.py on the CPU (the smoke test; the GPU numbers come from the device tool)."""
import json

import pytest

from benchmarks.bench_kernels import main


def test_rows_and_least_bytes_by_hand(tmp_path):
    path = tmp_path / "kernels.json"
    rows = main(["--device", "cpu", "--tiny", "--repeats", "1", "--warmup", "0", "--json", str(path)])
    by_name = {(r["case"], r["kernel"]): r for r in rows}
    assert len(rows) == 2 * 2 + 2 * 4 and all(r["ms"] > 0 and r["% of bandwidth"] is None for r in rows)
    lif = 4 * 2 * 8 * 6 * 6  # [T, B, C, H, W] fp32: read x, write spikes; backward reads x and the gradient
    assert by_name["LIF tiny T=4", "forward"]["bytes"] == 2 * lif * 4
    assert by_name["LIF tiny T=4", "backward"]["bytes"] == 3 * lif * 4
    inputs, outputs = 4 * 8 * 6 * 6, 4 * 8 * 3 * 3  # 3x3/2, padding 1: 6 x 6 -> 3 x 3
    assert by_name["pool tiny 3x3/2", "forward"]["bytes"] == (inputs + outputs) * 4 + outputs  # int8 offsets
    assert by_name["pool tiny 3x3/2", "ATen backward"]["bytes"] == (inputs + outputs) * 4 + 8 * outputs
    row = by_name["pool tiny 3x3/1", "backward"]
    assert row["GB/s"] == row["bytes"] / row["ms"] / 1e6
    written = json.loads(path.read_text())
    assert written["device"] == "cpu" and len(written["rows"]) == len(rows)
    assert written["cases"]["pool tiny 3x3/1"]["shape"] == [4, 8, 6, 6]


@pytest.mark.parametrize("flags, message", [(["--repeats", "0"], "--repeats 0"),
                                            (["--json", "{tmp}/missing/k.json"], "does not exist"),
                                            (["--json", "{tmp}"], "is a folder"),
                                            (["--json", "{tmp}/earlier.json"], "exists (an earlier run's results?)"),
                                            (["--device", "gpu"], "--device 'gpu' is not a device")])
def test_bad_flags_are_refused_before_measuring(tmp_path, capsys, flags, message):
    (tmp_path / "earlier.json").write_text("{}")
    with pytest.raises(SystemExit) as exit_info:
        main(["--device", "cpu", "--tiny", *(f.format(tmp=tmp_path) for f in flags)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert (tmp_path / "earlier.json").read_text() == "{}"


def test_json_is_written_after_every_case(tmp_path, monkeypatch):
    """A run stopped midway (device_checks' time budget) keeps the cases it measured."""
    import benchmarks.bench_kernels as bench_kernels

    path, seen = tmp_path / "kernels.json", []
    real = bench_kernels._pool_rows

    def pool_rows_then_check(*args):
        seen.append(len(json.loads(path.read_text())["rows"]))  # the two LIF cases are already on disk
        return real(*args)

    monkeypatch.setattr(bench_kernels, "_pool_rows", pool_rows_then_check)
    main(["--device", "cpu", "--tiny", "--repeats", "1", "--warmup", "0", "--json", str(path)])
    assert seen == [4, 8] and len(json.loads(path.read_text())["rows"]) == 12
