"""Turning an exception into the one line a user reads."""

from __future__ import annotations


def one_line(error: BaseException, limit: int = 200) -> str:
    """The most telling line of an exception's message (SimpleITK's span several), shortened.

    Args:
        error: any exception.
        limit: the longest line returned; longer ones end in "…".

    Returns:
        The last non-empty line of ``str(error)`` without ITK's ``ERROR:`` prefix, or the
        exception's type name when the message is empty.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    for prefix in ("sitk::ERROR: ", "itk::ERROR: "):
        if text.startswith(prefix):
            text = text[len(prefix):]
    return text if len(text) <= limit else text[:limit - 1] + "…"
