"""Stage 6: report.  ``summary.json``, ``layers.csv``, ``components.csv``, ``timesteps.csv``, ``ablations.csv`` and
PNG bar charts, all from one :class:`hw.pipeline.Results`, moved into their folder only once all are complete; a
folder that already holds a report is never overwritten: the report goes to ``<out>-1``, ``<out>-2``, ...
(:func:`write_report`).  ``summary.json`` records the input files of the run and their sha256.

Energies are per inference (mean over samples in exact mode, the expectation in statistical mode), in pJ in the
CSV files and in uJ in the summary.  Every table repeats the preset name and technology node.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from engine.atomic import atomic_open, lock_exclusive, numbered_paths, write_text_atomic

from .config import HwInputError
from .counts import ALL_COUNTS
from .energy import COMPONENTS
from .pipeline import ABLATIONS, BASELINES, Results

__all__ = ["REPORT_FILES", "ACCURACY_SOURCES", "check_out_dir", "describe_inputs", "summarize", "write_report"]

_logger = logging.getLogger(__name__)
_C = {name: i for i, name in enumerate(ALL_COUNTS)}

REPORT_FILES = ("summary.json", "layers.csv", "components.csv", "timesteps.csv", "ablations.csv",
                "energy_by_component.png", "energy_by_layer.png", "energy_per_timestep.png", "rates.json")

# where a top-1 of summary.json comes from: the traced model's predictions, the same under a skip list the trace did
# not apply (a what-if: the simulated model skips blocks that the traced one ran), or the exit file's predictions
ACCURACY_SOURCES = {"trace": "trace", "what_if": "trace (model without the skipped blocks applied)",
                    "exit_file": "exit file"}

TOPS_PER_W_DEFINITION = ("(SOPs + 2 * MACs) / energy: one SOP is one synaptic accumulate of the paper convention "
                         "(input spikes x nominal fan-out), a MAC of the analog first layer counts as 2 ops")


def _write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _mean_total(res: Results, name: str) -> tuple[float, float]:
    """Mean (energy pJ, latency cycles) per inference of a variant."""
    values = np.array(res.tally.totals[name])
    return float(values[:, 0].mean()), float(values[:, 1].mean())


def _ratio(energy: float, reference: float) -> float | None:
    """``energy / reference``; over a zero reference 1.0 when both are 0, else None (no finite ratio)."""
    if reference:
        return energy / reference
    return 1.0 if energy == 0 else None


def summarize(res: Results, inputs: dict | None = None) -> dict:
    """The content of ``summary.json``; ``inputs``: :func:`describe_inputs` (null without it)."""
    cfg, meta, tally, n = res.main.config, res.workload.meta, res.tally, res.n
    energies = np.array([e for e, _ in tally.totals[res.main.name]])
    energy, cycles = _mean_total(res, res.main.name)
    us = lambda c: c / (cfg.chip.clock_ghz * 1e3)  # noqa: E731  cycles -> microseconds
    sops = tally.counts[..., _C["sops"]].sum() / n
    macs = tally.counts[..., _C["macs"]].sum() / n
    gpu = {"gpu_modelled": res.gpu_modelled}
    if res.gpu_measured is not None:
        gpu["gpu_measured"] = res.gpu_measured
    baselines = {name: dict(zip(("energy_uj", "latency_us"), (e * 1e-6, us(c))))
                 for name, (e, c) in ((b, _mean_total(res, b)) for b in BASELINES)}
    ratios = {name: _ratio(b["energy_uj"], energy * 1e-6) for name, b in {**baselines, **gpu}.items()}
    memory = res.main.mapping.memory
    return {
        "preset": cfg.name, "technology_nm": cfg.technology_nm, "config_file": cfg.source,
        "config_hash": cfg.hash, "config": cfg.to_dict(),
        "trace": str(res.workload.reader.dir), "inputs": inputs, "mode": res.mode,
        "samples": res.rates.samples if res.mode == "statistical" else n, "T": meta.T,
        "dataset": meta.dataset, "model": meta.model, "input_kind": meta.input_kind,
        # skipped by the skip JSON (rows powered off) or already in the traced model (its attention never ran)
        "skipped_blocks": sorted({r.block for r in res.main.mapping.rows if r.skipped} | set(meta.skipped_blocks)),
        "dataflow": cfg.dataflow.order, "pipelining": cfg.dataflow.pipelining,
        "energy_per_inference_uj": {
            "mean": energy * 1e-6, **{f"p{q}": float(np.percentile(energies, q)) * 1e-6 for q in (5, 50, 95)},
            "min": float(energies.min()) * 1e-6, "max": float(energies.max()) * 1e-6},
        "latency": {"cycles": cycles, "us": us(cycles), "serial_us": us(tally.latency_serial.sum() / n),
                    "pipelined_us": us(tally.latency_pipelined.sum() / n), "clock_ghz": cfg.chip.clock_ghz},
        "throughput_inferences_per_s": 1e6 / us(cycles) if cycles else None,
        "sops_per_inference": sops, "macs_per_inference": macs,
        "pj_per_sop": energy / sops if sops else None,
        "tops_per_w": (sops + 2 * macs) / energy if energy else None, "tops_per_w_definition": TOPS_PER_W_DEFINITION,
        "memory": memory,
        "dram_bytes_per_inference": tally.counts[..., _C["dram_bits"]].sum() / n / 8,
        "weight_programming_once": _weight_programming(memory["weight_cells"], cfg),
        "accuracy": _accuracy(res),
        "components_uj": {c: float(x) * 1e-6 / n for c, x in zip(COMPONENTS, tally.energy.sum((0, 1)))},
        "baselines": {**baselines, **gpu}, "ratios": ratios,
        "ablations": _ablations(res, energy, us),
    }


def _weight_programming(weight_cells: int, cfg) -> dict:
    """Writing the weights once: every replicated copy of a crossbar is written, from one DRAM read of each cell."""
    written = weight_cells * cfg.crossbar.replication
    return {"cells": written, "energy_uj": written * cfg.energy.cell_write * 1e-6,
            "dram_energy_uj": weight_cells * cfg.crossbar.cell_bits * cfg.energy.dram_bit * 1e-6}


def _accuracy(res: Results) -> dict:
    """Top-1 at T and at the exit step, the mean steps run, and where each top-1 comes from (``accuracy_source``).

    The trace's per-step predictions are those of the traced model: under a skip list the trace did not apply they
    are not the skipping model's, and their source says so.  An exit file with each sample's prediction and label
    gives ``top1_at_exit`` of the model that made the exits: over the traced samples in exact mode, over every
    sample of the file (the exit mix simulated) in statistical mode.  Statistical mode simulates one expected
    sample: ``top1_all_steps`` is that of every labelled trace sample, and ``top1_at_exit`` needs such a file.
    """
    meta, tally, exit_predictions = res.workload.meta, res.tally, res.workload.exit_predictions
    by_id = {s.id: s for s in meta.samples}
    ids = list(by_id) if res.mode == "statistical" else tally.samples
    labels = [(s, by_id[s].label) for s in ids if by_id[s].label is not None]
    trace_source = ACCURACY_SOURCES["what_if" if res.workload.skip - set(meta.skipped_blocks) else "trace"]
    accuracy, sources = {"labelled_samples": len(labels), "avg_time_steps": float(np.mean(tally.steps))}, {}
    if labels:
        pred = lambda s, t: by_id[s].pred_per_step[t - 1]  # noqa: E731
        accuracy["top1_all_steps"] = 100.0 * np.mean([pred(s, meta.T) == y for s, y in labels])
        sources["top1_all_steps"] = trace_source
        if res.mode == "exact" and exit_predictions is None:
            steps = dict(zip(tally.samples, tally.steps))
            accuracy["top1_at_exit"] = 100.0 * np.mean([pred(s, round(steps[s])) == y for s, y in labels])
            sources["top1_at_exit"] = trace_source
    if exit_predictions is not None:
        exited = list(exit_predictions.values()) if res.mode == "statistical" else [exit_predictions[s]
                                                                                    for s in tally.samples]
        accuracy["top1_at_exit"] = 100.0 * np.mean([p == y for p, y in exited])
        accuracy["exit_file_samples"] = len(exited)
        sources["top1_at_exit"] = ACCURACY_SOURCES["exit_file"]
    accuracy["accuracy_source"] = sources
    return accuracy


def _file_record(path: str | Path) -> dict:
    """The absolute path of an input file and the sha256 of its bytes."""
    try:
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError as e:
        raise HwInputError(f"{path}: cannot read it to record its sha256 ({e.strerror}); was it moved during the "
                           "run?") from None
    return {"path": os.path.abspath(path), "sha256": digest}


def describe_inputs(trace: str | Path, skip_json: str | Path | None = None, exit_json: str | Path | None = None,
                    rates: str | Path | None = None, gpu_json: str | Path | None = None) -> dict:
    """The ``inputs`` section of ``summary.json``: each input file given (null when not) with its sha256; the
    trace is identified by its folder and the sha256 of its ``meta.json`` (which holds the export's random
    ``trace_id``, also in every sample file, and each sample's file name and label)."""
    meta = _file_record(Path(trace) / "meta.json")
    return {"trace": {"path": os.path.abspath(trace), "meta_sha256": meta["sha256"]},
            **{name: None if path is None else _file_record(path) for name, path in
               (("skip_json", skip_json), ("exit_json", exit_json), ("rates", rates), ("gpu_json", gpu_json))}}


def _ablations(res: Results, energy: float, us) -> list[dict]:
    rows = []
    for feature in ABLATIONS:
        name = f"no_{feature}"
        if name in res.tally.totals:
            e, c = _mean_total(res, name)
            rows.append({"feature": feature, "energy_uj_with": energy * 1e-6, "energy_uj_without": e * 1e-6,
                         "saving_ratio": _ratio(e, energy), "latency_us_without": us(c)})
    return rows


def _layer_rows(res: Results) -> list[dict]:
    cfg, tally, n, m = res.main.config, res.tally, res.n, res.main.mapping
    per = lambda x: x.sum(1) / n  # noqa: E731  per inference, summed over steps
    counts, energy, cycles = per(tally.counts), per(tally.energy), per(tally.row_cycles)
    steps_run = tally.running.sum() / n
    rows = []
    for i, r in enumerate(m.rows):
        k = counts[i]
        steps = 0.0 if r.skipped else steps_run
        presented = k[_C["in_numel"]]  # inputs the crossbars saw (a reused static encoding: one step)
        rows.append({
            "preset": cfg.name, "node_nm": cfg.technology_nm, "layer": r.name, "kind": r.kind, "block": r.block,
            "sdsa": r.sdsa, "skipped": r.skipped, "stage": m.rows[r.stage].name, "steps": steps,
            "in_nnz": k[_C["in_nnz"]], "in_density": k[_C["in_nnz"]] / presented if r.geom and presented else "",
            "row_block_reads": k[_C["row_block_reads"]], "crossbar_reads": k[_C["xbar_reads"]],
            "wordlines": k[_C["wl_rows"]], "adc_conversions": k[_C["adc_conv"]], "shift_adds": k[_C["shift_adds"]],
            "psum_adds": k[_C["psum_adds"]], "lif_updates": k[_C["lif_updates"]],
            "attention_ops": k[_C["attn_gates"]] + k[_C["attn_incs"]] + k[_C["attn_adds"]],
            "residual_adds": k[_C["res_adds"]], "pool_ops": k[_C["pool_or"]] + k[_C["pool_cmp"]],
            "sram_bits_read": k[_C["spike_rd_bits"]] + k[_C["state_rd_bits"]],
            "sram_bits_written": k[_C["spike_wr_bits"]] + k[_C["state_wr_bits"]],
            "gb_bits": k[_C["gb_rd_bits"]] + k[_C["gb_wr_bits"]], "noc_bit_hops": k[_C["noc_bit_hops"]],
            "dram_bits": k[_C["dram_bits"]], "sops": k[_C["sops"]], "macs": k[_C["macs"]], "cycles": cycles[i],
            "energy_pj": energy[i].sum(), **{f"energy_{c}_pj": energy[i, j] for j, c in enumerate(COMPONENTS)},
        })
    return rows


def _plots(out: Path, res: Results, layers: list[dict], components: list[dict], steps: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title = f"{res.main.config.name} ({res.main.config.technology_nm:g} nm), {res.mode} mode"
    charts = (
        ("energy_by_component.png", [c["component"] for c in components], [c["energy_pj"] for c in components]),
        ("energy_by_layer.png", [r["layer"] for r in layers], [r["energy_pj"] for r in layers]),
        ("energy_per_timestep.png", [str(s["t"]) for s in steps], [s["energy_pj"] for s in steps]),
    )
    for name, labels, values in charts:
        fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * len(labels)), 4.5))
        ax.bar(range(len(values)), np.asarray(values) * 1e-6)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        ax.set_ylabel("energy per inference (uJ)")
        ax.set_title(f"{name.removesuffix('.png').replace('_', ' ')}: {title}", fontsize=9)
        fig.tight_layout()
        with atomic_open(out / name, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
        plt.close(fig)


def check_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as a path; a file in its place or above it, or a folder we cannot write (for a folder holding a
    report: its parent, where ``<out>-N`` goes), is an :class:`HwInputError` (the CLI checks this before
    simulating)."""
    out = Path(out_dir)
    existing = next(p for p in (out, *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise HwInputError(f"--out {out}: {existing} is a file, not a folder; choose a folder path for the report")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise HwInputError(f"--out {out}: cannot write into {existing} (permission denied); choose another folder")
    base = Path(os.path.abspath(out))
    if (out / "summary.json").exists() and not os.access(base.parent, os.W_OK | os.X_OK):
        raise HwInputError(f"--out {out}: holds a report, and the next free '{base.name}-N' folder cannot be made in "
                           f"{base.parent} (permission denied); choose another folder")
    return out


def _dumps(obj, name: str, **kwargs) -> str:
    """JSON text of ``obj``; a NaN or infinity is an error (it would be invalid JSON and a silent wrong number)."""
    try:
        return json.dumps(obj, default=float, allow_nan=False, **kwargs)
    except ValueError:
        raise ValueError(f"{name}: the results hold NaN or infinity (check the preset's constants); the report was "
                         "not written") from None


def _write_files(res: Results, out: Path, plots: bool, inputs: dict | None) -> dict:
    """Write every report file into the (empty) folder ``out`` and return the summary."""
    cfg, tally, n = res.main.config, res.tally, res.n
    summary = summarize(res, inputs)
    write_text_atomic(out / "summary.json", _dumps(summary, "summary.json", indent=2))
    layers = _layer_rows(res)
    _write_csv(out / "layers.csv", layers)
    total = tally.energy.sum() / n
    components = [{"preset": cfg.name, "node_nm": cfg.technology_nm, "component": c, "energy_pj": x / n,
                   "share": x / n / total if total else 0.0} for c, x in zip(COMPONENTS, tally.energy.sum((0, 1)))]
    _write_csv(out / "components.csv", components)
    us = 1.0 / (cfg.chip.clock_ghz * 1e3)
    steps = [{"preset": cfg.name, "node_nm": cfg.technology_nm, "t": t + 1, "energy_pj": tally.energy[:, t].sum() / n,
              "cycles": tally.latency[t] / n, "latency_us": tally.latency[t] / n * us,
              "running_fraction": tally.running[t] / n} for t in range(tally.latency.size)]
    _write_csv(out / "timesteps.csv", steps)
    if summary["ablations"]:
        _write_csv(out / "ablations.csv", [{"preset": cfg.name, "node_nm": cfg.technology_nm, **row}
                                           for row in summary["ablations"]])
    if plots:
        _plots(out, res, layers, components, steps)
    if res.rates is not None:
        write_text_atomic(out / "rates.json", _dumps(res.rates.to_json(), "rates.json"))
    return summary


_CLAIM = ".report.claim"


def _claim_report_dir(out: Path) -> tuple[Path, bool, int]:
    """The folder for this run's report, claimed by locking its ``.report.claim`` (of two runs, one gets a folder;
    the lock of a killed run is gone with its process), whether it was created here, and the claim's descriptor:
    ``out`` unless it holds a report (its ``summary.json``) or a live run's claim, else the first such free
    ``<out>-1``, ``<out>-2``, ...  The temporary folders a killed run left are removed.  :func:`write_report` removes
    the claim."""
    for path in numbered_paths(out):
        created = not path.exists()
        path.mkdir(parents=True, exist_ok=True)
        if (path / "summary.json").exists():
            continue
        fd = lock_exclusive(path / _CLAIM)
        if fd is None:
            continue
        if (path / "summary.json").exists():  # finished by the run whose claim was just removed
            os.close(fd)
            continue
        for stale in path.glob(".report.*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        return path, created, fd


def write_report(res: Results, out_dir: str | Path, plots: bool = True, inputs: dict | None = None) -> dict:
    """Write the report into ``out_dir``, or into ``<out_dir>-N`` when ``out_dir`` holds a report, and return the
    summary (``inputs``: see :func:`summarize`).

    The files are written into a temporary folder inside the report folder and moved into place only once all are
    complete; report files of an interrupted earlier run that this run did not write are removed, and
    ``summary.json`` comes last: its presence marks a complete report.  A report is never overwritten, a failing run
    leaves no report (and removes the folder it created), and other files in the folder are not touched.
    """
    out = check_out_dir(out_dir)
    folder, created, claim = _claim_report_dir(out)
    tmp = Path(tempfile.mkdtemp(prefix=".report.", dir=folder))
    try:
        summary = _write_files(res, tmp, plots, inputs)
        written = {p.name for p in tmp.iterdir()}
        for name in sorted(written - {"summary.json"}):
            os.replace(tmp / name, folder / name)
        for name in REPORT_FILES:
            if name not in written:
                (folder / name).unlink(missing_ok=True)
        os.replace(tmp / "summary.json", folder / "summary.json")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        (folder / _CLAIM).unlink(missing_ok=True)
        os.close(claim)
        if created and not any(folder.iterdir()):
            folder.rmdir()
    if folder != out:
        _logger.warning("--out %s already holds a report (summary.json) or another run is writing one; this run's "
                        "report went to %s instead", out, folder)
    _logger.info("wrote the hardware report to %s", folder)
    return summary
