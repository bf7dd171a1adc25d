"""CPU smoke test of benchmarks/device_checks.py: every step runs on tiny models, within the budget, and the
files come back as one archive next to the log."""
import tarfile
from pathlib import Path

import pytest

from benchmarks import device_checks
from benchmarks.device_checks import STEPS, exit_status, main


@pytest.mark.slow
def test_every_step_runs_and_the_files_come_back_in_one_archive(tmp_path):
    summary = main(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--budget", "600"])
    assert list(summary) == [step.name for step in STEPS]
    assert all(rc == 0 for rc, _ in summary.values()), summary
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device_checks.tar.gz", "log.txt"]
    log = (tmp_path / "log.txt").read_text()
    assert all(f"===== {step.name}: python " in log for step in STEPS)
    assert "===== summary" in log and "max fused" in log  # fixture_diffs' table
    with tarfile.open(tmp_path / "device_checks.tar.gz") as tar:
        names = set(tar.getnames())
    for folder in ("profiler", "profiler_timers"):
        assert {f"device_checks/{folder}/records.jsonl", f"device_checks/{folder}/capture.txt"} <= names
    assert {f"device_checks/{name}.json" for name in ("bench_kernels", "bench_train", "bench_train_bn_lif",
                                                     "bench_train_contiguous", "bench_train_compiled",
                                                     "bench_train_compiled_bn_lif",
                                                     "bench_train_cudagraphs")} <= names


def test_a_step_out_of_time_is_stopped_and_the_rest_skipped(tmp_path):
    summary = main(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--budget", "6", "--only",
                    "fixture_diffs", "bench_train"])
    assert summary == {"fixture_diffs": ("timeout", summary["fixture_diffs"][1]), "bench_train": ("skipped", 0.0)}
    assert exit_status(summary) == 1
    assert "fixture_diffs: timeout" in (tmp_path / "log.txt").read_text()
    assert (tmp_path / "device_checks.tar.gz").exists()


def test_each_finished_steps_files_are_in_the_archive_before_the_next_step(tmp_path, monkeypatch):
    """A call stopped from outside (past the budget) brings back what is under OUT: the archive must hold every
    finished step's files, not wait for the last step."""
    archived = []

    def fake_step(step, argv, timeout, log):
        with tarfile.open(tmp_path / "device_checks.tar.gz") as tar:
            archived.append(sorted(tar.getnames()))
        Path(argv[argv.index("--json") + 1]).write_text("{}")
        return 0, 0.0

    monkeypatch.setattr(device_checks, "_run_step", fake_step)
    main(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--only", "bench_train", "bench_train_bn_lif"])
    assert archived == [["device_checks"], ["device_checks", "device_checks/bench_train.json"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["device_checks.tar.gz", "log.txt"]
    assert "----- bench_train: 0 in 0 s" in (tmp_path / "log.txt").read_text()


def test_only_runs_its_steps_in_the_order_given(tmp_path, monkeypatch):
    """A short device call puts its most wanted step first (steps past the budget are skipped)."""
    ran = []

    def fake_step(step, argv, timeout, log):
        ran.append(step.name)
        return 0, 0.0

    monkeypatch.setattr(device_checks, "_run_step", fake_step)
    summary = main(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--only", "bench_train_compiled",
                    "cuda_tests", "bench_train_compiled"])
    assert ran == ["bench_train_compiled", "cuda_tests"] and list(summary) == ran


def test_an_out_folder_with_earlier_results_is_refused_and_kept(tmp_path, capsys):
    """A second run into the same --out replaced the archive and log.txt of the first before any step ran."""
    for name in ("log.txt", "device_checks.tar.gz"):
        (tmp_path / name).write_text("earlier")
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path), "--device", "cpu", "--tiny", "--only", "bench_train"])
    assert exit_info.value.code == 2 and "already holds log.txt and device_checks.tar.gz" in capsys.readouterr().err
    assert [p.read_text() for p in sorted(tmp_path.iterdir())] == ["earlier", "earlier"]


def test_the_exit_status_is_0_only_when_every_step_passed():
    """The script exited 0 whatever its steps returned (every step failing on a wrong --device, or all skipped)."""
    assert exit_status({"a": (0, 1.0), "b": (0, 2.0)}) == 0
    assert exit_status({"a": (0, 1.0), "b": (2, 2.0)}) == 1
    assert exit_status({"a": ("skipped", 0.0)}) == 1


@pytest.mark.parametrize("flags, message", [(["--budget", "1"], "--budget 1: a step needs at least 5 s"),
                                            (["--out", "{tmp}/file"], "is a file; give a folder")])
def test_bad_flags_are_refused_before_any_step(tmp_path, capsys, flags, message):
    (tmp_path / "file").write_text("kept")
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "out"), "--device", "cpu", "--tiny", *(f.format(tmp=tmp_path) for f in flags)])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
