"""Command-line options of the neuromorphic datasets (argparse only: importing this module costs nothing).

``engine/args.py`` registers them with ``add_dvs_arguments(group)``; options the parser already has (``--download``,
``--dvs-aug``, ``--dvs-trival-aug`` are the engine's own) are skipped, so the call is safe in any order. Every option
is read by :func:`data.neuromorphic.build_dvs_dataset` with ``getattr`` and the default below, so a namespace without
them works too.
"""
from __future__ import annotations

import argparse

__all__ = ["SPLIT_MODES", "SPLIT_CHOICES", "DVS_ARG_DEFAULTS", "add_dvs_arguments"]

SPLIT_MODES = ("stratified", "first", "published")
# "official": the fixed train/test sets of Gesture, N-MNIST and TET's CIFAR10-DVS, which a run records in its
# args.yaml; accepted back so that `-c args.yaml` works, refused for the datasets without one.
SPLIT_CHOICES = SPLIT_MODES + ("official",)

DVS_ARG_DEFAULTS = {
    "dvs_split": "stratified",
    "dvs_split_ratio": 0.9,
    "dvs_split_seed": None,
    "dvs_split_file": None,
    "dvs_raw_dir": None,
    "dvs_flip_roll": False,
    "dvs_ncaltech_aug": None,
    "dvs_aug": False,
    "dvs_trival_aug": False,
    "download": False,
}

_HELP = {
    "dvs_split": "CIFAR10-DVS / N-Caltech101 train/val split: 'stratified' (seeded, per class, over sorted file names; "
                 "default), 'first' (first ratio of each class, the reference), 'published' (CIFAR10-DVS 9000/1000); "
                 "'official' is what runs on Gesture, N-MNIST and cifar10-dvs-tet record (their fixed sets)",
    "dvs_split_ratio": "training fraction of each class for 'stratified' and 'first' (default 0.9)",
    "dvs_split_seed": "seed of the 'stratified' split (default: --seed)",
    "dvs_split_file": "split JSON to reuse, or to create if missing (default <data-dir>/splits/<dataset>_<mode>...)",
    "dvs_raw_dir": "folder of the extracted raw recordings, may be read-only (default <data-dir>/extract)",
    "dvs_flip_roll": "event frames: random horizontal flip and roll by +-5 px (the TET-style CIFAR10-DVS loader)",
    "dvs_ncaltech_aug": "event frames: STAtten's roll/rotate/shear (default: on for ncaltech101, off otherwise)",
    "dvs_aug": "event frames: Cutout(1 hole, 16 px) per training sample",
    "dvs_trival_aug": "event frames: SNNAugmentWide (TrivialAugment-style) per training sample",
    "download": "allow downloading a missing dataset (CIFAR10-DVS only among the event datasets)",
}


def add_dvs_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Add the DVS options to ``parser`` (a parser or an argument group), skipping dests it already has."""
    have = {action.dest for action in parser._actions}
    flag = argparse.BooleanOptionalAction
    kinds = {
        "dvs_split": dict(choices=SPLIT_CHOICES), "dvs_split_ratio": dict(type=float), "dvs_split_seed": dict(type=int),
        "dvs_split_file": dict(metavar="PATH"), "dvs_raw_dir": dict(metavar="DIR"), "dvs_flip_roll": dict(action=flag),
        "dvs_ncaltech_aug": dict(action=flag), "dvs_aug": dict(action=flag), "dvs_trival_aug": dict(action=flag),
        "download": dict(action=flag),
    }
    for dest, default in DVS_ARG_DEFAULTS.items():
        if dest not in have:
            parser.add_argument("--" + dest.replace("_", "-"), dest=dest, default=default, help=_HELP[dest],
                                **kinds[dest])
