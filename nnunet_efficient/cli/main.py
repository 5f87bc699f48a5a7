"""``nnunet-efficient``: one command, nnU-Net's sub-commands plus the plugin's.

Each sub-command module exposes ``add_parser(subparsers)`` and a ``run(args, extra)``; this
module only dispatches and turns user errors into one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys

from nnunet_efficient import __version__
from nnunet_efficient.cli import (
    OneLineErrorParser,
    add_nmsw,
    benchmark,
    compare,
    env,
    export,
    patch_performance,
    plan,
    predict,
    train,
)
from nnunet_efficient.errors import EfficientError

COMMANDS = {module.NAME: module for module in (env, train, plan, add_nmsw, predict, export, benchmark, compare,
                                               patch_performance)}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="nnunet-efficient",
        description="Cheaper nnU-Net v2: plugin trainers and planners, and fast inference strategies.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMANDS.values():
        module.add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # `train` hands its arguments to nnU-Net's own parser untouched, so it is dispatched first.
    if argv and argv[0] == train.NAME:
        command, args, extra = train, None, argv[1:]
    else:
        args = build_parser().parse_args(argv)
        command, extra = COMMANDS[args.command], []
    try:
        return command.run(args, extra) or 0
    except EfficientError as error:
        print(f"nnunet-efficient {command.NAME}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
