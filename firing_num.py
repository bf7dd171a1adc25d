"""Evaluate a checkpoint and dump firing rates (SDT's ``firing_num.py``):
``python firing_num.py -c CONF --resume CKPT``.

Reports top-1/top-5, the firing rate and non-zero ratio of every hooked tensor at every time step (any T), the
SOP/MAC energy per image, and optionally exports spike traces for ``hw/``.  See :mod:`engine.evaluate`.
"""
import argparse
import sys

from engine.args import get_args_parser
from engine.evaluate import add_eval_arguments, run_evaluation
from engine.run import cli_main


def make_parser() -> argparse.ArgumentParser:
    """The engine flags plus the evaluation flags."""
    return add_eval_arguments(argparse.ArgumentParser("SDT firing rates and energy", parents=[get_args_parser()]))


if __name__ == "__main__":
    sys.exit(cli_main(make_parser, run_evaluation))
