"""Command-line layer: argument parsing only; each command calls the library."""

from __future__ import annotations

import argparse


class OneLineErrorParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (the argument and the problem), not the
    whole usage block; ``-h`` still prints the full help."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} -h)\n")
