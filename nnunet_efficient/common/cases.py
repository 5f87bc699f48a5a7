"""Case identifiers of nnU-Net's raw image files (``CASE_XXXX<file_ending>``, XXXX the channel)."""

from __future__ import annotations

import os

#: length of the ``_XXXX`` channel suffix before the file ending
CHANNEL_SUFFIX_LENGTH = 5


def case_id(image_file: str, file_ending: str) -> str:
    """The case of one channel file: ``.../hippocampus_001_0000.nii.gz`` → ``hippocampus_001``.

    Args:
        image_file: a path or file name ``CASE_XXXX<file_ending>``.
        file_ending: the dataset's file ending, e.g. ``.nii.gz``.

    Returns:
        ``CASE``, without folder, channel suffix and ending.
    """
    return os.path.basename(image_file)[:-(len(file_ending) + CHANNEL_SUFFIX_LENGTH)]
