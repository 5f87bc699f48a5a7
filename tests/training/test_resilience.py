"""The pieces of resilient training on their own: the derived class, atomic checkpoints, the fold claim.

The real commands are driven in ``tests/reliability/test_training.py``.
"""

import errno
import os

import pytest
import torch
from conftest import tiny_plans

from nnunet_efficient.training.resilience import (
    ResilientTraining,
    TrainingStopped,
    claim_fold_folder,
    configuration_changes,
    load_checkpoint_file,
    release_fold_folder,
    resilient,
)


class FakeTrainer:
    """The attributes ``save_checkpoint`` reads, and a write that can fail half-way like a full disk."""

    local_rank = 0
    disable_checkpointing = False
    network = torch.nn.Linear(2, 2)
    fail_after: int | None = None

    def save_checkpoint(self, filename):
        with open(filename, "wb") as f:
            f.write(b"x" * 100)
            if self.fail_after is not None:
                raise OSError(errno.ENOSPC, "No space left on device")
            f.write(b"y" * 100)


def test_resilient_keeps_the_name_and_goes_first():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    derived = resilient(nnUNetTrainer)
    assert derived.__name__ == "nnUNetTrainer" and derived.__mro__[1:3] == (ResilientTraining, nnUNetTrainer)
    assert resilient(nnUNetTrainer) is derived and resilient(derived) is derived


def test_checkpoint_is_replaced_only_once_complete(tmp_path):
    trainer = resilient(FakeTrainer)()
    target = tmp_path / "checkpoint_latest.pth"
    target.write_bytes(b"previous")
    trainer.save_checkpoint(str(target))
    assert target.read_bytes() == b"x" * 100 + b"y" * 100
    assert os.listdir(tmp_path) == ["checkpoint_latest.pth"]


def test_full_disk_keeps_the_previous_checkpoint_and_says_so(tmp_path):
    trainer = resilient(FakeTrainer)()
    trainer.fail_after = 100
    target = tmp_path / "checkpoint_latest.pth"
    target.write_bytes(b"previous")
    with pytest.raises(TrainingStopped, match="No space left on device.*previous checkpoint_latest.pth is intact"):
        trainer.save_checkpoint(str(target))
    assert target.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["checkpoint_latest.pth"]


def test_non_finite_weights_are_never_written(tmp_path):
    trainer = resilient(FakeTrainer)()
    trainer.network = torch.nn.Linear(2, 2)
    with torch.no_grad():
        trainer.network.weight[0, 0] = float("nan")
    trainer.current_epoch, trainer.output_folder, trainer.preprocessed_dataset_folder = 3, str(tmp_path), "pre"
    with pytest.raises(TrainingStopped, match="training stopped in epoch 3: the network's weights are NaN"):
        trainer.save_checkpoint(str(tmp_path / "checkpoint_best.pth"))
    assert os.listdir(tmp_path) == []


def test_truncated_checkpoint_names_the_fallback(tmp_path):
    latest, best = tmp_path / "checkpoint_latest.pth", tmp_path / "checkpoint_best.pth"
    torch.save({"network_weights": {}}, best)
    latest.write_bytes(best.read_bytes()[:100])
    with pytest.raises(Exception, match="truncated or corrupt.*resume from checkpoint_best.pth"):
        load_checkpoint_file(str(latest))
    best.unlink()
    with pytest.raises(Exception, match="delete it and train again without --c"):
        load_checkpoint_file(str(latest))


def test_configuration_changes_resolve_inheritance():
    old = tiny_plans((16, 16, 16), 1)
    new = tiny_plans((16, 16, 16), 1)
    new["configurations"]["3d_fullres"]["batch_size"] = 4
    assert configuration_changes(old, new, "3d_fullres") == ["batch_size"]
    assert configuration_changes(old, old | {"continue_training": True}, "3d_fullres") == []


def test_a_second_claim_of_a_fold_folder_is_refused(tmp_path):
    first = claim_fold_folder(str(tmp_path))
    with pytest.raises(TrainingStopped, match=f"another training \\(pid {os.getpid()}\\)"):
        claim_fold_folder(str(tmp_path))
    release_fold_folder(first, str(tmp_path))
    release_fold_folder(claim_fold_folder(str(tmp_path)), str(tmp_path))
    assert os.listdir(tmp_path) == []
