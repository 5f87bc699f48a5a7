"""``nnunet-efficient train``: ``nnUNetv2_train`` with the plugin's trainers on the search path.

The arguments go to nnU-Net's own entry point untouched, so they are exactly nnUNetv2_train's.
"""

from __future__ import annotations

import argparse
import os
import sys

from nnunet_efficient.errors import EfficientError
from nnunet_efficient.trainers import register_plugin_trainers

NAME = "train"


def add_parser(subparsers) -> None:
    subparsers.add_parser(NAME, add_help=False,
                          help="nnUNetv2_train with plugin trainers available (same arguments)")


def check_trainer(name: str) -> None:
    """Fail with one line when nnU-Net would not find trainer ``name``."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError):
        raise EfficientError(f"unknown trainer '{name}': not in nnunetv2.training.nnUNetTrainer nor in "
                             f"nnUNet_extTrainer={os.environ['nnUNet_extTrainer']}") from None


def run(args, extra: list[str]) -> int:
    register_plugin_trainers()
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("-tr", default="nnUNetTrainer")
    known, _ = probe.parse_known_args(extra)
    if not {"-h", "--help"} & set(extra):
        check_trainer(known.tr)
    from nnunetv2.run.run_training import run_training_entry

    sys.argv = ["nnunet-efficient train", *extra]
    run_training_entry()
    return 0
