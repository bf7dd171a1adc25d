"""ASTER for ``main.py`` and ``finetune.py``: attention-skip flags, early-exit evaluation, sweeps, the SEENN oracle
and the skip x threshold study, with the artefacts the hardware model reads.

Behaviour follows ASTER's ``main.py`` (``../shared/reference/aster_hw.md`` sections 1.3-1.5) and SEENN-I (2.1);
the selection and exit rules themselves are :mod:`engine.skip` and :mod:`engine.early_exit`.  Differences from the
reference: rates come from ``firing.json`` or a reference ``sdt.log``, and a missing or unparsable file is an
error instead of a silent empty skip list; blocks can also be skipped by an explicit list or as the K lowest-rate
ones; early exit runs for every dataset (the reference only did it for cifar10-dvs, gesture and imagenet); one
forward pass per batch serves the validation metrics, the fixed-t accuracies, the chosen threshold and a whole
sweep of thresholds.

Artefacts (JSON schemas in ``docs/aster.md``): ``skip.json`` (``skip-blocks/1``), ``exit_steps.json``
(``early-exit/1``), ``early_exit_class_stats.json``, ``aster_eval.json`` (``aster-eval/1``),
``fixed_step_accuracy.csv``, ``exit_sweep.csv`` + ``exit_sweep_portion.csv`` + ``exit_sweep.png``, and for the
study ``aster_heatmap.csv`` + ``aster_heatmap.png``.  The JSON is strict: non-finite numbers are written as text.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from data import canonical_static_name

from .args import empty_means_none
from .atomic import atomic_open, write_text_atomic
from .distributed import is_primary
from .early_exit import EXIT_METRICS, EarlyExitMeter, EarlyExitSweep
from .errors import ConfigError
from .firing import load_firing_rates
from .loop import validate
from .model import unwrap
from .optim import Amp
from .skip import SkipDecision, block_attention_rates, select_skip_blocks

__all__ = ["HEATMAP_THRESHOLDS", "aster_skip_parser", "aster_eval_parser", "check_exit_args", "read_firing_rates",
           "resolve_skip", "skip_record", "AsterResult", "evaluate_aster", "write_aster_outputs", "run_study",
           "write_study"]

_logger = logging.getLogger(__name__)

# The exit thresholds of the paper's heat map (plot_heatmap.py), used by --study when --exit-sweep is not given.
HEATMAP_THRESHOLDS = (0.1, 0.3, 0.5, 0.6, 0.8, 0.9)
FLOAT32 = Amp(contextlib.nullcontext)
NO_EXIT = math.inf  # a threshold no score exceeds: every sample runs all T steps


# ---------------------------------------------------------------------------------------------------- arguments
def int_list(text) -> list[int]:
    """``"0,3"`` (or a single int from YAML) -> ``[0, 3]``; ``""`` -> ``[]``."""
    return [int(v) for v in str(text).replace(" ", "").split(",") if v]


def _float_list(text) -> list[float]:
    """``"0.5,0.9,inf"`` -> ``[0.5, 0.9, inf]``."""
    return [float(v) for v in str(text).replace(" ", "").split(",") if v]


int_list.__name__, _float_list.__name__ = "comma-separated list of ints", "comma-separated list of floats"
# A YAML config (e.g. a run's args.yaml) may also give these flags as lists of this type (engine.config).
int_list.element_type, _float_list.element_type = int, float


def aster_skip_parser(add_help: bool = False) -> argparse.ArgumentParser:
    """Attention-skip flags (``main.py`` and ``finetune.py``): one of --auto-skip, --skip-lowest, --skip-blocks."""
    parser = argparse.ArgumentParser(add_help=add_help)
    group = parser.add_argument_group("ASTER attention skipping (bypass the SDSA branch of a block; its MLP runs)")
    group.add_argument("--auto-skip", action=argparse.BooleanOptionalAction, default=False,
                       help="skip every block whose attention-output firing rate (MS_SSA_Conv{l}_x_after_qkv, mean "
                            "over time steps, read from --log-file) is <= --skip-threshold")
    group.add_argument("--skip-threshold", type=float, default=0.001, help="--auto-skip threshold (inclusive)")
    group.add_argument("--log-file", default="", metavar="PATH",
                       help="firing rates of the un-skipped model: firing.json or a reference-format sdt.log "
                            "(written by firing_num.py)")
    group.add_argument("--skip-lowest", type=int, default=None, metavar="K",
                       help="skip the K blocks with the lowest rates in --log-file (the paper's heat-map axis)")
    group.add_argument("--skip-blocks", type=int_list, default=None, metavar="L,L",
                       help="skip exactly these blocks, e.g. 0,3")
    group.add_argument("--firing-thresholds", type=float, nargs="*", default=None, metavar="X", help="(no effect)")
    return empty_means_none(parser)


def aster_eval_parser(add_help: bool = False) -> argparse.ArgumentParser:
    """Early-exit, sweep, evaluation-only and study flags of ``main.py``."""
    parser = argparse.ArgumentParser(add_help=add_help)
    group = parser.add_argument_group("ASTER early exit (SEENN-I: per sample, stop at the first confident step)")
    group.add_argument("--early-exit", action=argparse.BooleanOptionalAction, default=False,
                       help="report early-exit accuracy, average time steps, exit portions and per-class statistics; "
                            "write exit_steps.json and early_exit_class_stats.json")
    group.add_argument("--exit-metric", default="confidence", choices=EXIT_METRICS,
                       help="score of the cumulative logits: max softmax (confidence) or 1 - H/ln C (entropy)")
    group.add_argument("--exit-threshold", type=float, default=0.9, help="exit when the score exceeds this")
    group.add_argument("--exit-sweep", type=_float_list, default=None, metavar="X,X",
                       help="thresholds evaluated from the same forward passes: exit_sweep.csv and a PNG of accuracy "
                            "vs average time steps (inf = never exit early)")
    group.add_argument("--validate-only", action=argparse.BooleanOptionalAction, default=False,
                       help="evaluate --initial-checkpoint only (no training)")
    group.add_argument("--study", action=argparse.BooleanOptionalAction, default=False,
                       help="evaluation only: accuracy for 0..--study-max-skip lowest-rate blocks skipped x the "
                            "--exit-sweep thresholds (default: the paper's 0.1..0.9); aster_heatmap.csv and .png")
    group.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=False,
                       help="--validate-only / --study: evaluate --initial-checkpoint's EMA weights (a --model-ema "
                            "run's training evaluates those)")
    group.add_argument("--study-max-skip", type=int, default=None, metavar="K",
                       help="--study: largest number of skipped blocks (default: all blocks)")
    group.add_argument("--export-traces", default="", metavar="DIR",
                       help="--validate-only: also write spike traces of the (skipping) model for hw/ to DIR, for the "
                            "first --trace-samples validation samples (the ids of exit_steps.json)")
    group.add_argument("--trace-samples", type=int, default=16, metavar="N", help="samples to export as traces")
    return empty_means_none(parser)


def aster_finetune_parser(add_help: bool = False) -> argparse.ArgumentParser:
    """The flags of ``finetune.py`` (next to the training and skip flags)."""
    parser = argparse.ArgumentParser(add_help=add_help)
    group = parser.add_argument_group("Fine-tuning")
    group.add_argument("--finetune-checkpoint", default="", metavar="PATH",
                       help="weights to start from (required); only the classifier head trains")
    group.add_argument("--use-ema", action=argparse.BooleanOptionalAction, default=False,
                       help="start from the checkpoint's EMA weights (which ranked a --model-ema run's checkpoints)")
    group.add_argument("--freeze-bn-stats", action=argparse.BooleanOptionalAction, default=True,
                       help="keep the frozen BatchNorm layers in eval mode (no running-statistics updates)")
    return parser


def check_exit_args(args: argparse.Namespace) -> None:
    """Reject NaN exit thresholds (no score exceeds NaN, so it would silently mean "never exit early").

    Raises:
        ConfigError: a NaN --exit-threshold or --exit-sweep value.
    """
    if math.isnan(args.exit_threshold):
        raise ConfigError("--exit-threshold nan is not a threshold; give a number (inf: never exit early)")
    if any(math.isnan(t) for t in args.exit_sweep or []):
        raise ConfigError("--exit-sweep holds nan, which is not a threshold; give numbers (inf: never exit early)")


# --------------------------------------------------------------------------------------------------------- skip
def read_firing_rates(path: str, depths: int, T: int, attention_mode: str | None = None) -> dict[str, dict[str, float]]:
    """:func:`engine.firing.load_firing_rates`, checked against a model of ``depths`` blocks, ``T`` steps and
    ``attention_mode`` (None: either mode's key, :func:`engine.skip.block_attention_rates`).

    Raises:
        ConfigError: naming the file, for every problem with it.
    """
    try:
        rates = load_firing_rates(Path(path))
        block_attention_rates(rates, depths, attention_mode)
    except (OSError, ValueError) as exc:
        message = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
        raise ConfigError(f"--log-file: {message}") from None
    while rates and not rates[next(reversed(rates))]:  # the reference's firing_num.py always wrote "t0".."t3",
        rates.popitem()  # leaving the steps of a T < 4 model empty: they are not its steps
    if len(rates) != T:
        raise ConfigError(f"--log-file: {path} holds the rates of {len(rates)} time steps, the model runs "
                          f"--time-steps {T}; measure them with firing_num.py at the same T")
    return rates


def resolve_skip(args: argparse.Namespace) -> SkipDecision | None:
    """The blocks to skip from --auto-skip / --skip-lowest / --skip-blocks (at most one), or None for no rule.

    Runs before anything is built or written, so a bad flag or log file stops the run at once.

    Raises:
        ConfigError: two rules, a rule without --log-file, a missing or unparsable log, or a bad block index.
    """
    rules = {"--auto-skip": args.auto_skip or None, "--skip-lowest": args.skip_lowest,
             "--skip-blocks": args.skip_blocks or None}  # '' (an empty list) takes a config's rule back
    given = [flag for flag, value in rules.items() if value is not None]
    if len(given) > 1:
        undo = {"--auto-skip": "--no-auto-skip", "--skip-lowest": "--skip-lowest ''", "--skip-blocks": "--skip-blocks ''"}
        raise ConfigError(f"{' and '.join(given)} are alternatives; give one skip rule (a rule in the -c config "
                          f"counts too: take it back with {' or '.join(undo[flag] for flag in given)})")
    if not given:
        if args.log_file and not getattr(args, "study", False):
            _logger.warning("--log-file %s is only read with --auto-skip, --skip-lowest or --study", args.log_file)
        return None
    if given[0] != "--skip-blocks" and not args.log_file:
        raise ConfigError(f"{given[0]} needs --log-file (firing.json or sdt.log of the un-skipped model, written "
                          f"by firing_num.py)")
    if args.auto_skip and math.isnan(args.skip_threshold):
        raise ConfigError("--skip-threshold nan is not a threshold; give a number")
    mode = args.attention_mode
    rates = read_firing_rates(args.log_file, args.layer, args.time_steps, mode) if args.log_file else None
    try:
        return select_skip_blocks(args.layer, rates, threshold=args.skip_threshold if args.auto_skip else None,
                                  lowest=args.skip_lowest, explicit=rules["--skip-blocks"], attention_mode=mode)
    except ValueError as exc:
        source = f" (rates from {args.log_file})" if args.log_file else ""
        raise ConfigError(f"{given[0]}: {exc}{source}") from None


def skip_record(args: argparse.Namespace, decision: SkipDecision | None) -> dict:
    """Content of ``skip.json``: :meth:`SkipDecision.as_dict` plus the rule and its inputs (NaN rates -> null)."""
    if decision is None:
        decision = SkipDecision([], [math.nan] * args.layer, ["no skip rule: every block runs its attention"])
    record = decision.as_dict()
    record["block_rates"] = [None if math.isnan(r) else r for r in record["block_rates"]]
    rule = "threshold" if args.auto_skip else "lowest" if args.skip_lowest is not None else \
        "explicit" if args.skip_blocks else "none"
    record.update(depths=args.layer, rule=rule, skip_threshold=args.skip_threshold if args.auto_skip else None,
                  skip_lowest=args.skip_lowest, log_file=args.log_file or None)
    return record


# --------------------------------------------------------------------------------------------------- evaluation
@dataclass
class AsterResult:
    """One evaluation pass: validation metrics (all T steps), fixed-t accuracies and oracle, exits."""

    T: int
    metric: str
    skipped_blocks: list[int]
    validation: dict
    sweep: EarlyExitSweep
    meter: EarlyExitMeter | None

    def summary(self) -> dict:
        """Content of ``aster_eval.json``."""
        fixed = self.sweep.fixed_step_accuracy()
        return {"format": "aster-eval/1", "T": self.T, "metric": self.metric, "skipped_blocks": self.skipped_blocks,
                "samples": self.sweep.total, "validation": dict(self.validation),
                "fixed_step_accuracy": [{"t": t + 1, "accuracy": a} for t, a in enumerate(fixed)],
                "oracle": {"aet": self.sweep.oracle()["aet"], "accuracy": fixed[-1]},
                "early_exit": self.meter.overall() if self.meter is not None else None,
                "sweep": [{k: v for k, v in row.items() if k != "metric"} for row in self.sweep.rows()]}


def confidence_sample_count(dataset: str) -> int:
    """Scores per step kept in ``early_exit_class_stats.json``: 10 on ImageNet (any alias), else 100 (reference)."""
    return 10 if canonical_static_name(dataset) == "imagenet" else 100


def evaluate_aster(model: nn.Module, loader, loss_fn: nn.Module, args: argparse.Namespace, *,
                   thresholds: list[float], metric: str = "confidence", exit_threshold: float | None = None,
                   log_suffix: str = "") -> AsterResult:
    """One validation pass with per-step logits feeding the early-exit meters, in float32 whatever ``--amp`` says
    (the reference's ``early_exit_inference`` ran without autocast; near a threshold, half-precision logits would
    move exits).

    Args:
        model: the (possibly distributed) model; its ``TET`` flag is set for the pass and restored.
        loader: validation batches, in a fixed order (sample i of ``exit_steps.json`` is the i-th sample); when
            distributed, each process's share (``engine.loaders.EvalShard``), combined after the pass.
        loss_fn, args: as for :func:`engine.loop.validate`.
        thresholds: sweep thresholds (may be empty: the fixed-t accuracies and the oracle are always computed).
        metric: ``confidence`` or ``entropy``.
        exit_threshold: the threshold with per-sample records (``--early-exit``), or None.
        log_suffix: appended to the validation log lines.
    """
    bare = unwrap(model)
    if bare.attention_mode == "STAtten" and bare.chunk_size > 1 and is_primary(args):
        _logger.warning("STAtten attention mixes the %d steps of a chunk: an exit inside a chunk is not the same as "
                        "a shorter run (exact only at chunk boundaries)", bare.chunk_size)
    if args.amp and is_primary(args):
        _logger.info("Early exit: this validation pass runs in float32, as the reference's (--amp is for training)")
    sweep = EarlyExitSweep(list(thresholds), bare.T, metric)
    meter = None
    if exit_threshold is not None:
        meter = EarlyExitMeter(T=bare.T, threshold=exit_threshold, metric=metric,
                               confidence_samples=confidence_sample_count(args.dataset))
    observers = [sweep.update] + ([meter.update] if meter is not None else [])
    was_tet, bare.TET = bare.TET, True
    try:
        metrics = validate(model, loader, loss_fn, args, amp=FLOAT32, log_suffix=log_suffix, observers=observers)
    finally:
        bare.TET = was_tet
    if args.distributed:  # every process saw its share (EvalShard): combine them
        sweep.all_reduce()
        if meter is not None:
            meter.gather(list(loader.dataset.indices))
    result = AsterResult(T=bare.T, metric=metric, skipped_blocks=bare.skip_blocks, validation=dict(metrics),
                         sweep=sweep, meter=meter)
    if is_primary(args):
        _log_result(result)
    return result


def _log_result(res: AsterResult) -> None:
    fixed = res.sweep.fixed_step_accuracy()
    _logger.info("Skipped attention blocks: %s. Validation (all %d steps, logits averaged): Acc@1 %.4f",
                 res.skipped_blocks or "none", res.T, res.validation["top1"])
    _logger.info("Fixed time steps (SEENN --test-all): %s", ", ".join(f"t={t + 1}: {a:.2f}%" for t, a in
                                                                         enumerate(fixed)))
    _logger.info("Oracle (SEENN theoretical AET): %.4f time steps at %.2f%% accuracy",
                 res.sweep.oracle()["aet"], fixed[-1])
    for row in res.sweep.rows():
        _logger.info(f"[Early Exit sweep] Threshold: {row['threshold']}, Avg Time: {row['avg_timesteps']:.4f}, "
                     f"Acc: {row['accuracy']:.4f}, Portion: {[round(p, 4) for p in row['portion']]}")
    if res.meter is None:
        return
    _logger.info(res.meter.log_line())
    _logger.info("Per-class early exit (%s > %g): class, samples, accuracy, avg timestep, std", res.metric,
                 res.meter.threshold)
    for label, e in res.meter.per_class().items():
        _logger.info(f"  {label:>5}: {e['samples']:>6d}  {e['accuracy']:7.2f}%  {e['avg_timestep']:.3f}  "
                     f"{e['std_dev']:.3f}")


def _write_csv(path: Path, rows: list[dict], fieldnames: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def _finite_or_text(value):
    """``value`` with every non-finite float replaced by its text (``"inf"``, ``"-inf"``, ``"nan"``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite_or_text(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_text(v) for v in value]
    return value


def _write_json(path: Path, content: dict, compact_values: bool = False) -> None:
    """Strict, indented JSON (non-finite floats as text, see :func:`_finite_or_text`); with ``compact_values``
    each top-level value stays on one line (long per-sample lists)."""
    content = _finite_or_text(content)
    if compact_values:
        text = "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v, allow_nan=False)}"
                                   for k, v in content.items()) + "\n}\n"
    else:
        text = json.dumps(content, indent=2, allow_nan=False) + "\n"
    write_text_atomic(path, text)


EVALUATION_FILES = ("aster_eval.json", "fixed_step_accuracy.csv", "exit_steps.json", "early_exit_class_stats.json",
                    "exit_sweep.csv", "exit_sweep_portion.csv", "exit_sweep.png")
"""What :func:`write_aster_outputs` writes about a trained model (all but ``skip.json``)."""


def write_aster_outputs(out_dir: str | Path, result: AsterResult | None, skip: dict) -> list[Path]:
    """Write ``skip.json`` (logging its reasons again, now into the run's log) and, with a result, the evaluation
    artefacts listed in the module docstring.

    Returns:
        The written paths.
    """
    out = Path(out_dir)
    for reason in skip["reasons"]:
        _logger.info("attention skip: %s", reason)
    written = [out / "skip.json"]
    _write_json(written[0], skip)
    if result is None:
        return written
    _write_json(out / "aster_eval.json", result.summary())
    fixed = [{"t": t + 1, "accuracy": a} for t, a in enumerate(result.sweep.fixed_step_accuracy())]
    _write_csv(out / "fixed_step_accuracy.csv", fixed, ["t", "accuracy"])
    written += [out / "aster_eval.json", out / "fixed_step_accuracy.csv"]
    if result.meter is not None:
        record = {**result.meter.exit_record(), "skipped_blocks": result.skipped_blocks}
        _write_json(out / "exit_steps.json", record, compact_values=True)
        _write_json(out / "early_exit_class_stats.json", result.meter.class_stats())
        written += [out / "exit_steps.json", out / "early_exit_class_stats.json"]
    rows = result.sweep.rows()
    if rows:
        _write_csv(out / "exit_sweep.csv", [{**r, "time_reduction": result.T - r["avg_timesteps"]} for r in rows],
                   ["threshold", "metric", "accuracy", "avg_timesteps", "time_reduction"])
        portions = [{"threshold": r["threshold"], "t": t + 1, "portion": p} for r in rows
                    for t, p in enumerate(r["portion"])]
        _write_csv(out / "exit_sweep_portion.csv", portions, ["threshold", "t", "portion"])
        _plot_exit_curve(result, out / "exit_sweep.png")
        written += [out / "exit_sweep.csv", out / "exit_sweep_portion.csv", out / "exit_sweep.png"]
    for path in written:
        _logger.info("wrote %s", path)
    return written


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=120)
    finally:
        _pyplot().close(fig)


def _plot_exit_curve(result: AsterResult, path: Path) -> None:
    """Accuracy vs average time steps: the threshold sweep, the fixed-t accuracies and the oracle point."""
    plt = _pyplot()
    rows = sorted(result.sweep.rows(), key=lambda r: r["avg_timesteps"])
    fixed = result.sweep.fixed_step_accuracy()
    fig, ax = plt.subplots(figsize=(6.4, 4.5))
    ax.plot([r["avg_timesteps"] for r in rows], [r["accuracy"] for r in rows], "o-",
            label=f"early exit ({result.metric} > threshold)")
    for r in rows:
        ax.annotate(f"{r['threshold']:g}", (r["avg_timesteps"], r["accuracy"]), textcoords="offset points",
                    xytext=(4, -10), fontsize=7)
    ax.plot(range(1, result.T + 1), fixed, "s--", color="gray", label="fixed t steps (no exit)")
    ax.plot([result.sweep.oracle()["aet"]], [fixed[-1]], "*", markersize=12, color="tab:red",
            label="oracle (SEENN AET)")
    skipped = f", attention skipped in blocks {result.skipped_blocks}" if result.skipped_blocks else ""
    ax.set_title(f"Early exit: accuracy vs average time steps (T={result.T}{skipped})", fontsize=9)
    ax.set_xlabel("average time steps")
    ax.set_ylabel("accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


# -------------------------------------------------------------------------------------------------------- study
def run_study(model: nn.Module, loader, loss_fn: nn.Module, args: argparse.Namespace, *,
              rates: dict[str, dict[str, float]], max_skip: int, thresholds: list[float],
              metric: str = "confidence") -> list[dict]:
    """Accuracy and average time steps for k = 0..max_skip lowest-rate blocks skipped x each threshold.

    Every row set also holds threshold ``inf`` (no early exit: all T steps), once.  The model's skip list is
    restored.  ``max_skip`` must be in 0..depths (checked up front by ``main.py``).

    Returns:
        Long-format rows: skipped_layers, skipped_blocks (space-separated), threshold, accuracy, avg_timesteps.
    """
    bare = unwrap(model)
    thresholds = list(dict.fromkeys([*thresholds, NO_EXIT]))
    before, rows = bare.skip_blocks, []
    try:
        for k in range(max_skip + 1):
            blocks = select_skip_blocks(bare.depths, rates, lowest=k, attention_mode=bare.attention_mode).blocks
            bare.skip_blocks = blocks
            result = evaluate_aster(model, loader, loss_fn, args, thresholds=thresholds,
                                    metric=metric, log_suffix=f" (skip {k})")
            rows += [{"skipped_layers": k, "skipped_blocks": " ".join(map(str, blocks)), "threshold": r["threshold"],
                      "accuracy": r["accuracy"], "avg_timesteps": r["avg_timesteps"]} for r in result.sweep.rows()]
    finally:
        bare.skip_blocks = before
    return rows


def write_study(out_dir: str | Path, rows: list[dict], T: int) -> list[Path]:
    """``aster_heatmap.csv`` (the rows) and ``aster_heatmap.png`` (accuracy and average time steps)."""
    out = Path(out_dir)
    _write_csv(out / "aster_heatmap.csv", rows, ["skipped_layers", "skipped_blocks", "threshold", "accuracy",
                                                 "avg_timesteps"])
    _plot_heatmap(rows, T, out / "aster_heatmap.png")
    written = [out / "aster_heatmap.csv", out / "aster_heatmap.png"]
    for path in written:
        _logger.info("wrote %s", path)
    return written


def _plot_heatmap(rows: list[dict], T: int, path: Path) -> None:
    import numpy as np

    plt = _pyplot()
    ks = sorted({r["skipped_layers"] for r in rows})
    thresholds = sorted({r["threshold"] for r in rows})
    cell = {(r["skipped_layers"], r["threshold"]): r for r in rows}
    labels = ["no exit" if math.isinf(t) else f"{t:g}" for t in thresholds]
    fig, axes = plt.subplots(2, 1, figsize=(2.5 + 0.8 * len(thresholds), 2.0 + 1.0 * len(ks)))
    for ax, key, title, fmt, cmap in ((axes[0], "accuracy", "accuracy (%)", "{:.1f}", "viridis"),
                                      (axes[1], "avg_timesteps", f"average time steps (T={T})", "{:.2f}", "magma_r")):
        grid = np.array([[cell[(k, t)][key] for t in thresholds] for k in ks])
        image = ax.imshow(grid, cmap=cmap, aspect="auto")
        for i in range(len(ks)):
            for j in range(len(thresholds)):
                r, g, b, _ = image.cmap(image.norm(grid[i, j]))
                color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                ax.text(j, i, fmt.format(grid[i, j]), ha="center", va="center", fontsize=7, color=color)
        ax.set_xticks(range(len(thresholds)))
        ax.set_xticklabels(labels, fontsize=8)
        ax.set_yticks(range(len(ks)))
        ax.set_yticklabels([str(k) for k in ks], fontsize=8)
        ax.set_xlabel("exit threshold")
        ax.set_ylabel("attention layers skipped")
        ax.set_title(f"{title}; skipped = the lowest-rate blocks", fontsize=9)
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    fig.tight_layout()
    _save(fig, path)
