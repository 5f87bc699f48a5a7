"""The folder that ``nnUNet_extTrainer`` points at (``nnunet-efficient env`` prints the line).

nnU-Net imports each module here by its bare name while looking a trainer up, so modules
here import the plugin absolutely, stay thin, and every class name is unique across nnU-Net.
The helpers that put this folder on ``nnUNet_extTrainer`` live on the ground floor,
:mod:`nnunet_efficient.common.plugin_env`, so that nothing below the trainers imports them.
"""
