"""``nnunet-efficient train``: ``nnUNetv2_train`` with the plugin's trainers on the search path.

The arguments are exactly nnUNetv2_train's, plus one of the plugin's: ``--torch_threads N``. With
``-device cpu`` nnU-Net sets torch to one thread per core; several trainings sharing a machine then
fight over every core (on 2 shared cores that tripled the CPU time of an iteration).
``--torch_threads`` holds a CPU training at N threads.

The training runs nnU-Net's own steps (``get_trainer_from_args``, ``maybe_load_checkpoint``,
``run_training``, ``perform_actual_validation``) with the trainer made resilient, whichever trainer
it is (:mod:`nnunet_efficient.training.resilience`): interruptions save the state, checkpoints are
written atomically, bad checkpoints and NaN losses are one line.
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


def check_trainer(name: str) -> type:
    """The trainer class called ``name``, or one line when nnU-Net would not find it."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_efficient.inference.model_folder import quiet_trainer_search

    try:
        with quiet_trainer_search():
            return recursive_find_trainer_class_by_name(name)
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
                            ("-device", "cuda")):
        parser.add_argument(option, default=default)
    parser.add_argument("-num_gpus", type=int, default=1)
    for flag in ("--npz", "--c", "--val", "--val_best", "--disable_checkpointing"):
        parser.add_argument(flag, action="store_true")
    return parser


def torch_device(name: str, threads: int | None):
    """nnUNetv2_train's device and thread setup: all cores for a CPU training (or ``threads``), one for a GPU's."""
    import multiprocessing

    import torch

    if name == "cpu":
        torch.set_num_threads(threads or multiprocessing.cpu_count())
    elif name == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    return torch.device(name)


def run(args, extra: list[str]) -> int:
    from nnunet_efficient.dataset_checks import check_training_setup
    from nnunet_efficient.training.resilience import run_training

    register_plugin_trainers()
    if {"-h", "--help"} & set(extra):
        from nnunetv2.run.run_training import run_training_entry

        sys.argv = ["nnunet-efficient train", "-h"]
        run_training_entry()
        return 0
    threads, extra = split_torch_threads(extra)
    known, unknown = nnunet_train_arguments().parse_known_args(extra)
    if unknown:
        raise EfficientError(f"unrecognized arguments: {' '.join(unknown)}")
    if known.device not in ("cpu", "cuda", "mps"):
        raise EfficientError(f"-device must be cpu, cuda or mps, got '{known.device}'")
    if threads is not None and known.device != "cpu":
        raise EfficientError(f"--torch_threads applies to -device cpu only, got -device {known.device}")
    trainer = check_trainer(known.tr)
    check_training_setup(known.dataset_name_or_id, known.configuration, known.fold, known.p)
    from nnunet_efficient.training.nmsw_retrofit import check_retrofit_source, nnUNetTrainerNMSWRetrofit

    if issubclass(trainer, nnUNetTrainerNMSWRetrofit):  # the source model, before nnU-Net starts
        check_retrofit_source(known.dataset_name_or_id, known.configuration, known.fold, known.p)
    run_training(known.dataset_name_or_id, known.configuration, known.fold, known.tr, known.p,
                 known.pretrained_weights, known.num_gpus, known.npz, known.c, known.val,
                 known.disable_checkpointing, known.val_best, device=torch_device(known.device, threads))
    return 0
