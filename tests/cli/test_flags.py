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
    ("predict", "nnUNetv2_predict", {"-m", "--batch_size", "--strategy", "--cpu_bf16", "--backend"}),
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


def test_train_knows_every_nnunet_train_flag():
    """``--torch_threads`` calls nnU-Net's run_training itself: it must read every flag nnUNetv2_train has."""
    from nnunet_efficient.cli.train import nnunet_train_arguments

    ours = {flag for action in nnunet_train_arguments()._actions for flag in action.option_strings}
    assert ours == nnunet_flags("nnUNetv2_train")


@pytest.mark.parametrize("arguments, message", [
    (["--torch_threads", "0"], "--torch_threads must be a whole number >= 1, got '0'"),
    (["--torch_threads"], "--torch_threads must be a whole number >= 1, got ''"),
    (["-device", "cuda", "--torch_threads", "2"], "--torch_threads applies to -device cpu only"),
    (["-device", "cpu", "--torch_threads", "2", "--no_such_flag"], "unrecognized arguments: --no_such_flag"),
])
def test_train_torch_threads_is_checked(arguments, message):
    from nnunet_efficient.cli.train import run
    from nnunet_efficient.errors import EfficientError

    # the trainer and dataset checks are not reached for the first two; the last two fail before training
    with pytest.raises(EfficientError, match=re.escape(message)):
        run(None, ["990", "3d_fullres", "0", "-tr", "nnUNetTrainer", *arguments])
