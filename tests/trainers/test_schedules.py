"""Short schedules resolve through nnU-Net's own trainer lookup."""

import os
import subprocess
import sys

import pytest

from nnunet_efficient.common.plugin_env import ext_trainer_folder, ext_trainer_value
from nnunet_efficient.training.schedules import parse_schedule_name, with_schedule


@pytest.mark.parametrize("name, expected", [
    ("nnUNetTrainer_10epochs_20iters", ("nnUNetTrainer", 10, 20, None, ())),
    ("nnUNetTrainerNoMirroring_1epoch", ("nnUNetTrainerNoMirroring", 1, None, None, ())),
    ("nnUNetTrainer_0epochs", None),
    ("nnUNetTrainer_5epochs_0iters", None),
    ("nnUNetTrainer", None),
    ("nnUNetTrainer_5epochs_x", None),
    ("nnUNetTrainer_40epochs_50iters_seed0", ("nnUNetTrainer", 40, 50, 0, ())),
    ("nnUNetTrainer_40epochs_50iters_seed3_keep10-20-30", ("nnUNetTrainer", 40, 50, 3, (10, 20, 30))),
    ("nnUNetTrainer_4epochs_keep1", ("nnUNetTrainer", 4, None, None, (1,))),
    ("nnUNetTrainer_4epochs_keep4", None),       # the last epoch is checkpoint_final.pth
    ("nnUNetTrainer_4epochs_keep2-1", None),     # not increasing
    ("nnUNetTrainer_4epochs_keep0", None),
    ("nnUNetTrainer_4epochs_seed01", None),      # one spelling per seed: one class, one model folder
    ("nnUNetTrainer_4epochs_keep1_seed1", None),  # seed before keep
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


def test_schedule_name_round_trips():
    from nnunet_efficient.training.schedules import schedule_name

    name = schedule_name("nnUNetTrainerUXNet", 40, 50, 1, (10, 20, 30))
    assert name == "nnUNetTrainerUXNet_40epochs_50iters_seed1_keep10-20-30"
    assert parse_schedule_name(name) == ("nnUNetTrainerUXNet", 40, 50, 1, (10, 20, 30))


def _schedule_trainer(tmp_path, monkeypatch, **schedule):
    import torch
    from conftest import dataset_json, tiny_plans
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    plans = tiny_plans((16, 16, 16), 1)
    plans["continue_training"] = False
    return with_schedule(nnUNetTrainer, 4, 5, **schedule)(plans, "3d_fullres", 0,
                                                          dataset_json(1, {"background": 0, "a": 1}),
                                                          torch.device("cpu"))


def _initial_weights(tmp_path, monkeypatch, seed):
    import torch

    torch.manual_seed(1234)  # whatever came before must not matter
    trainer = _schedule_trainer(tmp_path, monkeypatch, seed=seed)
    # as initialize() builds it, after the constructor (initialize also wants preprocessed data)
    network = trainer.build_network_architecture(trainer.plans_manager, trainer.configuration_manager, 1, 2, True)
    return [p.detach().clone() for p in network.parameters()]


def test_a_seeded_schedule_builds_the_same_initial_network_per_seed(tmp_path, monkeypatch):
    first = _initial_weights(tmp_path, monkeypatch, seed=3)
    import torch

    torch.rand(10)  # the global generator has moved on
    again = _initial_weights(tmp_path, monkeypatch, seed=3)
    other = _initial_weights(tmp_path, monkeypatch, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not all(torch.equal(a, b) for a, b in zip(first, other))


def test_keep_epochs_copy_checkpoint_latest_after_those_epochs_only(tmp_path, monkeypatch):
    trainer = _schedule_trainer(tmp_path, monkeypatch, keep_epochs=(1, 3))
    os.makedirs(trainer.output_folder, exist_ok=True)
    latest = os.path.join(trainer.output_folder, "checkpoint_latest.pth")
    kept = []
    for epochs_done in (1, 2, 3):  # what nnU-Net's on_epoch_end leaves: the epochs done and their checkpoint
        with open(latest, "wb") as f:
            f.write(f"after epoch {epochs_done}".encode())
        trainer.current_epoch = epochs_done
        kept.append(trainer.keep_snapshot())
    assert [k and os.path.basename(k) for k in kept] == ["checkpoint_at_5iters.pth", None,
                                                         "checkpoint_at_15iters.pth"]
    assert open(kept[2], "rb").read() == b"after epoch 3"
    assert sorted(f for f in os.listdir(trainer.output_folder) if f.startswith("checkpoint")) == \
        ["checkpoint_at_15iters.pth", "checkpoint_at_5iters.pth", "checkpoint_latest.pth"]
    # a resumed run (--c) never overwrites a checkpoint it kept before
    with open(latest, "wb") as f:
        f.write(b"later")
    assert trainer.keep_snapshot() is None and open(kept[2], "rb").read() == b"after epoch 3"


def test_schedules_without_keep_epochs_keep_nnunet_hooks():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plain = with_schedule(nnUNetTrainer, 4, 5, seed=2)
    assert plain.on_epoch_end is nnUNetTrainer.on_epoch_end and not hasattr(plain, "keep_snapshot")
