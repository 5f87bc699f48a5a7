"""The plugin's user-facing error type.

Commands turn an :class:`EfficientError` into one line on stderr and a non-zero exit; any other
exception is a bug and keeps its traceback.
"""


class EfficientError(Exception):
    """A problem the user can fix: bad input file, bad argument, missing model file."""


class InputFileError(EfficientError):
    """An input file is missing, unreadable or inconsistent with its siblings."""

    def __init__(self, path: str, problem: str):
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}")
