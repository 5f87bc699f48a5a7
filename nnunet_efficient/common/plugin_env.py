"""The ``nnUNet_extTrainer`` entry that lets nnU-Net find the plugin's trainers.

nnU-Net looks a trainer name up in its own package and then in the folders listed in
``nnUNet_extTrainer``; the plugin's folder is ``nnunet_efficient/trainers``
(``nnunet-efficient env`` prints the line). Computed from this file's place, so nothing of the
trainers (nor nnunetv2) is imported to find it.
"""

from __future__ import annotations

import os

VARIABLE = "nnUNet_extTrainer"


def ext_trainer_folder() -> str:
    """Absolute path of ``nnunet_efficient/trainers``, the value for ``nnUNet_extTrainer``."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return os.path.join(package, "trainers")


def ext_trainer_value(current: str | None = None) -> str:
    """``nnUNet_extTrainer`` with the plugin's folder first and any existing entries kept."""
    folder = ext_trainer_folder()
    entries = [e for e in (current or "").split(os.pathsep) if e and os.path.abspath(e) != folder]
    return os.pathsep.join([folder, *entries])


def register_plugin_trainers() -> None:
    """Put the plugin's folder on ``nnUNet_extTrainer`` of this process (and of processes it starts).

    nnU-Net resolves the trainer named in a checkpoint through that variable, so loading a
    plugin model fails without it.
    """
    os.environ[VARIABLE] = ext_trainer_value(os.environ.get(VARIABLE))
