"""The simulator: workload -> mapping -> activity -> counts -> cycles -> energy, for the preset, its baselines
(``dense_pim``, ``prior_pim`` switches on the same hardware) and one ablation per sparsity feature.

Exact mode computes each sample's activity once (the expensive, data-dependent part) and evaluates every variant
on it; samples are spread over worker processes.  Statistical mode evaluates the expected activity once.
"""
from __future__ import annotations

import logging
import multiprocessing
from dataclasses import dataclass, field

import numpy as np

from .activity import Activity, exact_activity, statistical_activity
from .baselines import gpu_modelled
from .config import CONFIG_DIR, HwConfig, load_feature_overrides, with_features
from .counts import ALL_COUNTS, count_actions, effective_exit, effective_portion
from .energy import COMPONENTS, compute_energy, energy_matrix, leakage_pj
from .mapping import Mapping, build_mapping
from .timing import StagePlan, compute_timing
from .workload import Rates, Workload, exit_weights, rates_from_traces

__all__ = ["ABLATIONS", "BASELINES", "Variant", "Tally", "Results", "make_variant", "build_variants", "simulate"]

_logger = logging.getLogger(__name__)

# Ablation row name -> the feature switches that turn that feature off.
ABLATIONS = {
    "wordline_gating": {"wordline_gating": False},
    "read_skipping": {"read_skipping": False},
    "event_driven_attention": {"event_driven_attention": False},
    "aer_transfer": {"spike_encoding": "bitmap"},
    "attention_skipping": {"attention_skipping": False},
    "early_exit": {"early_exit": False},
    "reuse_static_encoding": {"reuse_static_encoding": False},
}
BASELINES = ("dense_pim", "prior_pim")


@dataclass
class Variant:
    """A preset variant with its mapping (skip set), stage plan and energy table."""

    name: str
    config: HwConfig
    mapping: Mapping
    plan: StagePlan
    matrix: np.ndarray

    def _counts_timing(self, act, input_kind: str, step_weights: np.ndarray | None):
        counts = count_actions(act, self.mapping, self.config, input_kind, step_weights)
        return counts, compute_timing(counts, self.mapping, self.config, self.plan)

    def evaluate(self, act, input_kind: str, step_weights: np.ndarray | None):
        """``(counts [B, R, T, A], Timing, energy [B, R, T, C])`` for a batch of activities."""
        counts, timing = self._counts_timing(act, input_kind, step_weights)
        return counts, timing, compute_energy(counts, timing, self.mapping, self.config, self.matrix)

    def totals(self, act, input_kind: str, step_weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """``(energy pJ [B], latency cycles [B])`` per sample, without the per-row breakdown."""
        counts, timing = self._counts_timing(act, input_kind, step_weights)
        latency = timing.latency.sum(-1)
        leakage = leakage_pj(self.mapping, self.config, latency)
        return counts.sum((1, 2)) @ self.matrix.sum(1) + leakage, latency


def make_variant(name: str, config: HwConfig, workload: Workload) -> Variant:
    """``config`` mapped for ``workload`` (its skip list applies when the preset's attention skipping is on)."""
    skip = workload.skip if config.features.attention_skipping else set()
    mapping = build_mapping(workload.meta, config, skip, workload.meta_path)
    return Variant(name, config, mapping, StagePlan.build(mapping), energy_matrix(config))


def build_variants(workload: Workload, config: HwConfig) -> list[Variant]:
    """The run's preset first, then the baselines, then ``no_<feature>`` for every feature the preset uses.

    Variant names key the per-sample totals, so a preset named like a baseline or an ablation (a YAML that only
    changes ``prior_pim.yaml``'s features inherits its name) is the variant ``<name> (preset)``.
    """
    variants = []
    for name in BASELINES:
        overrides = load_feature_overrides(CONFIG_DIR / f"{name}.yaml")
        variants.append(make_variant(name, with_features(config, name, **overrides), workload))
    for name, switches in ABLATIONS.items():
        if any(getattr(config.features, k) != value for k, value in switches.items()) and _applies(name, workload):
            variants.append(make_variant(f"no_{name}", with_features(config, **switches), workload))
    reserved = {*BASELINES, *(f"no_{name}" for name in ABLATIONS)}
    main = config.name if config.name not in reserved else f"{config.name} (preset)"
    return [make_variant(main, config, workload), *variants]


def _applies(feature: str, workload: Workload) -> bool:
    """False for ablations that cannot change this workload (no skip list beyond the blocks the trace already
    lacks, no exits, event input or a single step for static reuse)."""
    return {"attention_skipping": bool(workload.skip - set(workload.meta.skipped_blocks)),
            "early_exit": bool(workload.exit_steps) or workload.exit_portion is not None,
            "reuse_static_encoding": workload.meta.input_kind == "static" and workload.meta.T > 1}.get(feature, True)


@dataclass
class Tally:
    """Sums over samples for the main variant, and per-sample totals for every variant."""

    energy: np.ndarray
    counts: np.ndarray
    row_cycles: np.ndarray
    stage_cycles: np.ndarray
    stall: np.ndarray
    latency: np.ndarray
    latency_serial: np.ndarray
    latency_pipelined: np.ndarray
    running: np.ndarray  # samples still running at each step
    samples: list[int] = field(default_factory=list)
    steps: list[float] = field(default_factory=list)  # time steps each sample ran (expected in statistical mode)
    totals: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (energy pJ, latency cycles)

    @classmethod
    def empty(cls, variant: Variant) -> "Tally":
        R, T, S = len(variant.mapping.rows), variant.mapping.T, len(variant.plan.heads)
        z = np.zeros
        return cls(z((R, T, len(COMPONENTS))), z((R, T, len(ALL_COUNTS))), z((R, T)),
                   z((S, T)), z((S, T)), z(T), z(T), z(T), z(T))

    def add(self, variants: list[Variant], act, input_kind: str, samples: list[int],
            exit_steps: list[int | None] | None = None, portion: np.ndarray | None = None) -> None:
        """Evaluate every variant on a batch of activities ``[B, R, T]``.

        ``exit_steps`` (exact mode, one per sample, None = runs all steps) or ``portion`` (statistical mode, the
        fraction of samples exiting at each step) apply to the variants with ``early_exit`` on, each rounded up to
        the steps at which that variant's mapping can exit (a STAtten chunk's end).
        """
        T = variants[0].mapping.T
        for i, variant in enumerate(variants):
            w = None
            if portion is not None and variant.config.features.early_exit:
                w = exit_weights(effective_portion(portion, variant.mapping))[None, :]
            if exit_steps is not None and variant.config.features.early_exit:
                ends = [T if s is None else effective_exit(s, variant.mapping) for s in exit_steps]
                w = (np.arange(T)[None, :] < np.array(ends)[:, None]).astype(float)
            if i:
                energy, latency = variant.totals(act, input_kind, w)
                self.totals.setdefault(variant.name, []).extend(zip(energy.tolist(), latency.tolist()))
                continue
            counts, timing, energy = variant.evaluate(act, input_kind, w)
            self.totals.setdefault(variant.name, []).extend(
                zip(energy.sum((1, 2, 3)).tolist(), timing.latency.sum(-1).tolist()))
            for name, value in (("energy", energy), ("counts", counts), ("row_cycles", timing.row_cycles),
                                ("stage_cycles", timing.stage_cycles), ("stall", timing.stall),
                                ("latency", timing.latency), ("latency_serial", timing.latency_serial),
                                ("latency_pipelined", timing.latency_pipelined)):
                setattr(self, name, getattr(self, name) + value.sum(0))
            running = np.ones((len(samples), T)) if w is None else np.broadcast_to(w, (len(samples), T))
            self.running += running.sum(0)
            self.samples += samples
            self.steps += running.sum(1).tolist()

    def merge(self, other: "Tally") -> None:
        for name in ("energy", "counts", "row_cycles", "stage_cycles", "stall", "latency", "latency_serial",
                     "latency_pipelined", "running"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.samples += other.samples
        self.steps += other.steps
        for name, values in other.totals.items():
            self.totals.setdefault(name, []).extend(values)


@dataclass
class Results:
    """Everything the report needs."""

    mode: str
    workload: Workload
    variants: list[Variant]
    tally: Tally
    gpu_modelled: dict
    gpu_measured: dict | None = None
    rates: Rates | None = None

    @property
    def main(self) -> Variant:
        return self.variants[0]

    @property
    def n(self) -> int:
        return len(self.tally.samples)


_STATE: dict = {}


def _init_worker(workload: Workload, variants: list[Variant]) -> None:
    _STATE.update(workload=workload, variants=variants)


def _run_chunk(sample_ids: list[int]) -> Tally:
    """Worker: activity of each sample, then every variant (module state set by :func:`_init_worker`)."""
    workload, variants = _STATE["workload"], _STATE["variants"]
    main = variants[0]
    tally = Tally.empty(main)
    acts = [exact_activity(workload.reader.load_raw(sid), main.mapping, main.config) for sid in sample_ids]
    exits = [workload.exit_steps.get(sid) for sid in sample_ids] if workload.exit_steps else None
    tally.add(variants, Activity.stack(acts), workload.meta.input_kind, list(sample_ids), exits)
    return tally


def simulate(workload: Workload, config: HwConfig, mode: str = "exact", rates: Rates | None = None,
             workers: int = 1, progress: bool = True, chunk: int = 8) -> Results:
    """Run the model on a workload.

    Args:
        workload: trace, skip set and exit steps.
        config: the preset (its ``dataflow`` section already set as wanted).
        mode: ``exact`` (every trace sample) or ``statistical`` (expected counts from ``rates``, or from the
            trace's mean rates when None).
        workers: processes for exact mode.
        progress: tqdm bar over samples.
        chunk: samples per worker task.
    """
    if workload.meta.skipped_blocks:
        _logger.warning("The trace comes from a model that skips the attention of blocks %s: it holds no data for "
                        "them, so the baselines (dense_pim, prior_pim, GPU) leave them out too and no "
                        "attention_skipping ablation is made. For baselines of the full model, export the trace "
                        "without skipping and pass --skip-json.", workload.meta.skipped_blocks)
    variants = build_variants(workload, config)
    main = variants[0]
    tally = Tally.empty(main)
    if mode == "statistical":
        rates = rates or rates_from_traces(workload.reader)
        act = statistical_activity(rates, main.mapping, main.config)
        tally.add(variants, Activity.stack([act]), workload.meta.input_kind, [-1], portion=workload.exit_portion)
    elif mode == "exact":
        from tqdm import tqdm

        ids = workload.reader.sample_ids
        chunks = [ids[i:i + chunk] for i in range(0, len(ids), chunk)]
        bar = tqdm(total=len(ids), disable=not progress, desc="hw samples", unit="sample")
        if workers > 1 and len(chunks) > 1:
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
            with ctx.Pool(workers, _init_worker, (workload, variants)) as pool:
                for part in pool.imap_unordered(_run_chunk, chunks):
                    tally.merge(part)
                    bar.update(len(part.samples))
        else:
            _init_worker(workload, variants)
            for ids_chunk in chunks:
                tally.merge(_run_chunk(ids_chunk))
                bar.update(len(ids_chunk))
        bar.close()
    else:
        raise ValueError(f"mode={mode!r}: choose 'exact' or 'statistical'")
    _logger.info("simulated %d sample(s) of %s with %s (%s mode, %s)", len(tally.samples), workload.reader.dir,
                 config.name, mode, config.dataflow.order)
    return Results(mode, workload, variants, tally, gpu_modelled(workload.meta, main.mapping, config.gpu),
                   rates=rates)
