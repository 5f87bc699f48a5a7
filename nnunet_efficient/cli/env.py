"""``nnunet-efficient env``: the shell line that lets stock nnU-Net commands find plugin trainers."""

from __future__ import annotations

import os
import shlex

from nnunet_efficient.common.plugin_env import ext_trainer_value

NAME = "env"


def add_parser(subparsers) -> None:
    subparsers.add_parser(
        NAME, help="print the line that sets nnUNet_extTrainer (use: eval \"$(nnunet-efficient env)\")",
        description="Print `export nnUNet_extTrainer=...` so that nnUNetv2_train -tr <plugin trainer> and "
                    "nnUNetv2_predict find this plugin's trainers. Apply it with: "
                    "eval \"$(nnunet-efficient env)\"")


def run(args, extra) -> int:
    print(f"export nnUNet_extTrainer={shlex.quote(ext_trainer_value(os.environ.get('nnUNet_extTrainer')))}")
    return 0
