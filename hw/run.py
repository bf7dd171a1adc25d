"""CLI: ``python -m hw.run --trace DIR --hw-config hw/config/aster_default.yaml --out DIR`` (docs/hw.md).

Runs the ASTER PIM model on a spike trace (``engine.traces``) and writes summary.json, layers.csv,
components.csv, timesteps.csv, ablations.csv and PNG charts (and rates.json in statistical mode); into
``<out>-1``, ``<out>-2``, ... when ``--out`` already holds a report.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from .baselines import gpu_measured
from .config import HwInputError, load_config
from .pipeline import simulate
from .report import check_out_dir, describe_inputs, write_report
from .workload import Rates, Workload

_logger = logging.getLogger("hw.run")


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser("hw.run", description=__doc__, add_help=add_help)
    p.add_argument("--trace", required=True, help="trace folder written by engine.traces")
    p.add_argument("--hw-config", default="aster_default", help="preset YAML (or a name in hw/config/)")
    p.add_argument("--skip-json", help='skip list: {"skipped_blocks": [...]}')
    p.add_argument("--exit-json", help='exit steps: {"exit_steps": [...], "sample_ids": [...]}')
    p.add_argument("--mode", choices=("exact", "statistical"), default="exact")
    p.add_argument("--rates", help="statistical mode: rates JSON (default: mean rates of the trace)")
    p.add_argument("--dataflow", choices=("timestep_major", "layer_major"), help="override the preset's dataflow")
    p.add_argument("--pipelining", action=argparse.BooleanOptionalAction, default=None,
                   help="override the preset: latency with layer pipelining")
    p.add_argument("--gpu-json", help="measured GPU run: {latency_ms, avg_power_W, batch, ...}")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (exact mode)")
    p.add_argument("--verify-traces", action="store_true", help="check every trace member's CRC-32")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--out", required=True, help="output folder (<out>-N when it already holds a report)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
    try:
        out = check_out_dir(args.out)
        config = load_config(args.hw_config)
        overrides = {k: v for k, v in (("order", args.dataflow), ("pipelining", args.pipelining)) if v is not None}
        config = dataclasses.replace(config, dataflow=dataclasses.replace(config.dataflow, **overrides))
        if args.rates and args.mode != "statistical":
            raise HwInputError(f"--rates {args.rates}: rates apply only to --mode statistical (exact mode reads every "
                               "trace sample); add --mode statistical or drop --rates")
        workload = Workload.open(args.trace, args.skip_json, args.exit_json, check_crc=args.verify_traces)
        if args.mode == "exact" and workload.exit_portion is not None and not workload.exit_steps:
            raise HwInputError(f"{args.exit_json}: field 'portion' applies only to --mode statistical; exact mode "
                               "needs per-sample 'exit_steps' (exit_steps.json of main.py), or add --mode statistical")
        rates = Rates.load(args.rates, workload.meta) if args.rates else None
        gpu = gpu_measured(args.gpu_json) if args.gpu_json else None
        inputs = describe_inputs(args.trace, args.skip_json, args.exit_json, args.rates, args.gpu_json)
        results = dataclasses.replace(simulate(workload, config, args.mode, rates, workers=args.workers),
                                      gpu_measured=gpu)
        summary = write_report(results, out, plots=not args.no_plots, inputs=inputs)
    except (HwInputError, ValueError) as e:
        _logger.error("%s", e)
        return 2
    e, ratios = summary["energy_per_inference_uj"], summary["ratios"]
    ratio = lambda name, digits: "n/a" if ratios[name] is None else f"x{ratios[name]:.{digits}f}"  # noqa: E731
    _logger.info("%s: %.3f uJ per inference (p5 %.3f, p95 %.3f), %.1f us; %s vs dense_pim, %s vs prior_pim, "
                 "%s vs GPU (modelled)", summary["preset"], e["mean"], e["p5"], e["p95"], summary["latency"]["us"],
                 ratio("dense_pim", 2), ratio("prior_pim", 2), ratio("gpu_modelled", 1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
