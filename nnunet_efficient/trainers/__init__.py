"""The folder that ``nnUNet_extTrainer`` points at (``nnunet-efficient env`` prints the line).

nnU-Net imports each module here by its bare name while looking a trainer up, so modules
here import the plugin absolutely, stay thin, and every class name is unique across nnU-Net.
"""

import os


def ext_trainer_folder() -> str:
    """Absolute path of this folder, the value for ``nnUNet_extTrainer``."""
    return os.path.dirname(os.path.abspath(__file__))
