"""Train an SDT / STAtten model: ``python train.py -c conf/<...>.yml [flags]``.

Launch with plain ``python`` (one process), ``torchrun --nproc_per_node=N train.py ...`` or
``python -m torch.distributed.launch --nproc_per_node=N train.py ...``.  All the work is in :mod:`engine`; see
``README.md`` ("Training") for the configs and outputs.
"""
import argparse
import sys

from engine.args import get_args_parser
from engine.run import cli_main, run_training


def make_parser() -> argparse.ArgumentParser:
    """The training command line: the shared engine flags, nothing more."""
    return argparse.ArgumentParser("SDT / STAtten training", parents=[get_args_parser()])


if __name__ == "__main__":
    sys.exit(cli_main(make_parser, run_training))
