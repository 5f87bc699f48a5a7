"""Checks of the arguments that ``predict``, ``benchmark`` and the predictor share, with one wording."""

from __future__ import annotations

from nnunet_efficient.errors import EfficientError


def check_step_size(step: float | str) -> None:
    """``-step_size``: a fraction of the patch in (0, 1], or ``"auto"``.

    Raises:
        EfficientError: any other value.
    """
    if step != "auto" and not 0 < step <= 1:
        raise EfficientError(f"-step_size must be in (0, 1] or auto, got {step}")


def check_batch_size(batch_size: int) -> None:
    """``--batch_size``: windows per network call, at least 1.

    Raises:
        EfficientError: a smaller value.
    """
    if batch_size < 1:
        raise EfficientError(f"--batch_size must be >= 1, got {batch_size}")


def check_part(part_id: int, num_parts: int) -> None:
    """``-part_id`` of ``-num_parts``: 0-based, below ``num_parts``.

    Raises:
        EfficientError: a part that does not exist.
    """
    if not 0 <= part_id < num_parts:
        raise EfficientError(f"-part_id must be between 0 and -num_parts - 1, got {part_id}")
