"""Short schedules resolve through nnU-Net's own trainer lookup."""

import os
import subprocess
import sys

import pytest

from nnunet_efficient.common.plugin_env import ext_trainer_folder, ext_trainer_value
from nnunet_efficient.training.schedules import parse_schedule_name, with_schedule


@pytest.mark.parametrize("name, expected", [
    ("nnUNetTrainer_10epochs_20iters", ("nnUNetTrainer", 10, 20)),
    ("nnUNetTrainerNoMirroring_1epoch", ("nnUNetTrainerNoMirroring", 1, None)),
    ("nnUNetTrainer_0epochs", None),
    ("nnUNetTrainer_5epochs_0iters", None),
    ("nnUNetTrainer", None),
    ("nnUNetTrainer_5epochs_x", None),
])
def test_parse_schedule_name(name, expected):
    assert parse_schedule_name(name) == expected


def test_env_puts_the_plugin_folder_first_and_keeps_others():
    value = ext_trainer_value(os.pathsep.join(["/elsewhere", ext_trainer_folder()]))
    assert value.split(os.pathsep) == [ext_trainer_folder(), "/elsewhere"]


def test_env_command_prints_an_export_line():
    out = subprocess.run([sys.executable, "-m", "nnunet_efficient.cli.main", "env"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("export nnUNet_extTrainer=") and ext_trainer_folder() in out


def test_nnunet_finds_schedule_variants_of_any_trainer(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", ext_trainer_folder())
    trainer = recursive_find_trainer_class_by_name("nnUNetTrainerNoMirroring_3epochs_7iters")
    assert trainer.__name__ == "nnUNetTrainerNoMirroring_3epochs_7iters"
    assert trainer.__mro__[1].__name__ == "nnUNetTrainerNoMirroring"
    assert recursive_find_trainer_class_by_name("nnUNetTrainerNoMirroring_3epochs_7iters") is trainer
    with pytest.raises(RuntimeError):
        recursive_find_trainer_class_by_name("nnUNetTrainerMissing_3epochs")


def test_schedule_sets_epochs_and_iterations(tmp_path, monkeypatch):
    import torch
    from conftest import dataset_json, tiny_plans
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    plans = tiny_plans((16, 16, 16), 1)
    plans["continue_training"] = False
    trainer = with_schedule(nnUNetTrainer, 3, 40)(plans, "3d_fullres", 0, dataset_json(1, {"background": 0, "a": 1}),
                                                  torch.device("cpu"))
    assert (trainer.num_epochs, trainer.num_iterations_per_epoch, trainer.num_val_iterations_per_epoch) == (3, 40, 8)
    assert trainer.save_every == 1  # checkpoint_latest after every epoch: --c resumes a short schedule
    assert with_schedule(nnUNetTrainer, 3, 40) is type(trainer)
