"""Evaluate a checkpoint and dump firing rates (STAtten's ``test.py``): ``python test.py -c CONF --resume CKPT``.

The same evaluation as ``firing_num.py`` (STAtten renamed the script); unlike the reference it passes
``--attention_mode`` and ``--chunk-size`` to the model.  See :mod:`engine.evaluate`.
"""
import argparse
import sys

from engine.args import get_args_parser
from engine.evaluate import add_eval_arguments, run_evaluation
from engine.run import cli_main


def make_parser() -> argparse.ArgumentParser:
    """The engine flags plus the evaluation flags."""
    return add_eval_arguments(argparse.ArgumentParser("STAtten evaluation", parents=[get_args_parser()]))


if __name__ == "__main__":
    sys.exit(cli_main(make_parser, run_evaluation))
