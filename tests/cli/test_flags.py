"""Each plugin command accepts exactly the flags of the nnU-Net command it stands in for."""

import re
import subprocess
import sys

import pytest

from nnunet_efficient.cli.main import build_parser

OPTION = re.compile(r"^\s{2}(-{1,2}[A-Za-z_][\w-]*)", re.MULTILINE)


def nnunet_flags(command: str) -> set[str]:
    help_text = subprocess.run([command, "-h"], capture_output=True, text=True, check=True).stdout
    return set(OPTION.findall(help_text)) - {"-h", "--help"}


def plugin_flags(subcommand: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[subcommand]
    return {flag for action in sub._actions for flag in action.option_strings} - {"-h", "--help"}


@pytest.mark.parametrize("subcommand, nnunet_command, plugin_only", [
    ("predict", "nnUNetv2_predict", {"-m", "--batch_size", "--strategy", "--cpu_bf16"}),
    ("plan_and_preprocess", "nnUNetv2_plan_and_preprocess", set()),
])
def test_same_flags_as_nnunet(subcommand, nnunet_command, plugin_only):
    nnunet = nnunet_flags(nnunet_command)
    ours = plugin_flags(subcommand)
    assert nnunet, "could not read nnU-Net's flags"
    assert nnunet <= ours, f"missing nnU-Net flags: {sorted(nnunet - ours)}"
    from nnunet_efficient.inference.strategies import STRATEGIES

    strategy_flags = {o.flag for s in STRATEGIES.values() for o in s.options}
    assert ours - nnunet - strategy_flags == plugin_only


def test_train_hands_its_arguments_to_nnunet():
    result = subprocess.run([sys.executable, "-m", "nnunet_efficient.cli.main", "train", "-h"],
                            capture_output=True, text=True)
    assert result.returncode == 0
    assert set(OPTION.findall(result.stdout)) == set(OPTION.findall(
        subprocess.run(["nnUNetv2_train", "-h"], capture_output=True, text=True).stdout))
