"""The folder that ``nnUNet_extTrainer`` points at (``nnunet-efficient env`` prints the line).

nnU-Net imports each module here by its bare name while looking a trainer up, so modules
here import the plugin absolutely, stay thin, and every class name is unique across nnU-Net.
"""

import os


def ext_trainer_folder() -> str:
    """Absolute path of this folder, the value for ``nnUNet_extTrainer``."""
    return os.path.dirname(os.path.abspath(__file__))


def ext_trainer_value(current: str | None = None) -> str:
    """``nnUNet_extTrainer`` with this folder first and any existing entries kept."""
    folder = ext_trainer_folder()
    entries = [e for e in (current or "").split(os.pathsep) if e and os.path.abspath(e) != folder]
    return os.pathsep.join([folder, *entries])


def register_plugin_trainers() -> None:
    """Put this folder on ``nnUNet_extTrainer`` of this process (and of processes it starts).

    nnU-Net resolves the trainer named in a checkpoint through that variable, so loading a
    plugin model fails without it.
    """
    os.environ["nnUNet_extTrainer"] = ext_trainer_value(os.environ.get("nnUNet_extTrainer"))
