"""``nnunet-efficient train``: ``nnUNetv2_train`` with the plugin's trainers on the search path.

The arguments go to nnU-Net's own entry point untouched, so they are exactly nnUNetv2_train's, plus
one of the plugin's: ``--torch_threads N``. With ``-device cpu`` nnU-Net's entry point sets torch to
one thread per core; several trainings sharing a machine then fight over every core (on 2 shared
cores that tripled the CPU time of an iteration). ``--torch_threads`` holds a CPU training at N
threads and calls nnU-Net's ``run_training`` with the same arguments.
"""

from __future__ import annotations

import argparse
import os
import sys

from nnunet_efficient.common.plugin_env import register_plugin_trainers
from nnunet_efficient.errors import EfficientError

NAME = "train"


def add_parser(subparsers) -> None:
    subparsers.add_parser(NAME, add_help=False,
                          help="nnUNetv2_train with plugin trainers available (same arguments)")


def check_trainer(name: str) -> None:
    """Fail with one line when nnU-Net would not find trainer ``name``."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_efficient.inference.model_folder import quiet_trainer_search

    try:
        with quiet_trainer_search():
            recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError):
        raise EfficientError(f"unknown trainer '{name}': not in nnunetv2.training.nnUNetTrainer nor in "
                             f"nnUNet_extTrainer={os.environ['nnUNet_extTrainer']}") from None


def split_torch_threads(extra: list[str]) -> tuple[int | None, list[str]]:
    """``--torch_threads N`` (the plugin's own flag) and the arguments meant for nnU-Net."""
    if "--torch_threads" not in extra:
        return None, extra
    at = extra.index("--torch_threads")
    value = extra[at + 1] if at + 1 < len(extra) else ""
    if not value.isdigit() or int(value) < 1:
        raise EfficientError(f"--torch_threads must be a whole number >= 1, got '{value}'")
    return int(value), extra[:at] + extra[at + 2:]


def nnunet_train_arguments() -> argparse.ArgumentParser:
    """nnUNetv2_train's arguments with its defaults, for the checks (and ``--torch_threads``'s direct call)."""
    from nnunet_efficient.cli import OneLineErrorParser

    parser = OneLineErrorParser(prog="nnunet-efficient train", add_help=False)
    for positional in ("dataset_name_or_id", "configuration", "fold"):
        parser.add_argument(positional)
    for option, default in (("-tr", "nnUNetTrainer"), ("-p", "nnUNetPlans"), ("-pretrained_weights", None),
                            ("-num_gpus", "1"), ("-device", "cuda")):
        parser.add_argument(option, default=default)
    for flag in ("--npz", "--c", "--val", "--val_best", "--disable_checkpointing"):
        parser.add_argument(flag, action="store_true")
    return parser


def run(args, extra: list[str]) -> int:
    from nnunet_efficient.dataset_checks import check_training_setup

    register_plugin_trainers()
    threads, extra = split_torch_threads(extra)
    known = None
    if not {"-h", "--help"} & set(extra):
        known, unknown = nnunet_train_arguments().parse_known_args(extra)
        if threads is not None and unknown:  # nnU-Net's parser is not called then: be as strict as it is
            raise EfficientError(f"unrecognized arguments: {' '.join(unknown)}")
        if threads is not None and known.device != "cpu":
            raise EfficientError(f"--torch_threads applies to -device cpu only, got -device {known.device}")
        check_trainer(known.tr)
        check_training_setup(known.dataset_name_or_id, known.configuration, known.fold, known.p)
    if threads is not None and known is not None:
        import torch
        from nnunetv2.run.run_training import run_training

        torch.set_num_threads(threads)
        run_training(known.dataset_name_or_id, known.configuration, known.fold, known.tr, known.p,
                     known.pretrained_weights, int(known.num_gpus), known.npz, known.c, known.val,
                     known.disable_checkpointing, known.val_best, device=torch.device("cpu"))
        return 0
    from nnunetv2.run.run_training import run_training_entry

    sys.argv = ["nnunet-efficient train", *extra]
    run_training_entry()
    return 0
