"""Checks that turn bad inputs into one clear line before any work starts.

nnU-Net itself fails deep inside preprocessing on these (or, for NaN voxels, silently produces
a wrong segmentation), so they run before prediction and name the file and the problem.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence

import numpy as np

from nnunet_efficient.errors import EfficientError, InputFileError

_CASE_CHANNEL = re.compile(r"(?P<case>.+)_(?P<channel>\d{4})")
_CHANNEL_FILE_ANY_ENDING = re.compile(r".+_\d{4}\..+")


def list_cases(folder: str, file_ending: str, num_channels: int) -> list[list[str]]:
    """Group ``CASE_XXXX<ending>`` files of a folder into cases, one file per channel.

    Args:
        folder: nnU-Net raw image folder.
        file_ending: the dataset's file ending, e.g. ``.nii.gz``.
        num_channels: channels the model expects.

    Returns:
        One list of ``num_channels`` paths per case, sorted by case identifier.

    Raises:
        InputFileError: the folder is missing or empty, a file has another ending, or a
            channel file is missing or unexpected.
    """
    if not os.path.isdir(folder):
        raise InputFileError(folder, "input folder does not exist")
    cases: dict[str, dict[int, str]] = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        if not name.endswith(file_ending):
            if _CHANNEL_FILE_ANY_ENDING.fullmatch(name):
                raise InputFileError(path, f"wrong file ending, this model reads '{file_ending}' files")
            continue
        match = _CASE_CHANNEL.fullmatch(name[:-len(file_ending)])
        if match is None:
            raise InputFileError(path, f"name must be CASE_XXXX{file_ending} (XXXX = 4-digit channel index)")
        cases.setdefault(match.group("case"), {})[int(match.group("channel"))] = path
    if not cases:
        raise InputFileError(folder, f"no '*_XXXX{file_ending}' images found")
    lists = []
    for case, channels in sorted(cases.items()):
        for c in range(num_channels):
            if c not in channels:
                missing = os.path.join(folder, f"{case}_{c:04d}{file_ending}")
                raise InputFileError(missing, f"missing channel {c} of case '{case}' "
                                              f"(the model expects {num_channels} channel(s))")
        extra = sorted(set(channels) - set(range(num_channels)))
        if extra:
            raise InputFileError(channels[extra[0]], f"unexpected channel {extra[0]}; the model expects "
                                                     f"{num_channels} channel(s)")
        lists.append([channels[c] for c in range(num_channels)])
    return lists


def check_case_files(files: Sequence[str], reader_writer_class, num_channels: int | None = None) -> None:
    """Read every channel of a case and check that it can be segmented.

    Args:
        files: one path per channel.
        reader_writer_class: the plans' image reader (nnU-Net ``BaseReaderWriter`` subclass).
        num_channels: channels the model expects, if known.

    Raises:
        InputFileError: missing/unreadable file, channel count, shape or spacing that differs from
            the first channel, or non-finite voxels.
    """
    if num_channels is not None and len(files) != num_channels:
        raise InputFileError(files[0] if files else "<case>",
                             f"case has {len(files)} channel file(s), the model expects {num_channels}")
    reader = reader_writer_class()
    reference_shape = reference_spacing = None
    for path in files:
        if not os.path.isfile(path):
            raise InputFileError(path, "file does not exist")
        try:
            image, properties = reader.read_images([path])
        except Exception as error:  # readers raise anything from RuntimeError to struct.error
            raise InputFileError(path, f"cannot be read as an image ({type(error).__name__}: {error})") from None
        shape, spacing = image.shape[1:], np.asarray(properties["spacing"], dtype=float)
        if reference_shape is None:
            reference_shape, reference_spacing = shape, spacing
        elif shape != reference_shape:
            raise InputFileError(path, f"shape {tuple(shape)} differs from channel 0's {tuple(reference_shape)}")
        elif not np.allclose(spacing, reference_spacing, rtol=1e-3, atol=1e-5):
            raise InputFileError(path, f"spacing {tuple(spacing.round(5))} differs from channel 0's "
                                       f"{tuple(reference_spacing.round(5))}")
        non_finite = _count_non_finite(path, image)
        if non_finite:
            raise InputFileError(path, f"{non_finite} voxel(s) are NaN or infinite")


def _count_non_finite(path: str, image: np.ndarray) -> int:
    # SimpleITK's NIfTI reader silently turns NaN and Inf into 0 (its MHA and NRRD readers keep
    # them), so nnU-Net would segment a corrupted NIfTI without notice: read its raw voxels.
    if path.endswith((".nii", ".nii.gz")):
        import nibabel

        image = np.asanyarray(nibabel.load(path).dataobj)
    if not np.issubdtype(image.dtype, np.floating):
        return 0
    return int(image.size - np.count_nonzero(np.isfinite(image)))


def check_output_folder(folder: str) -> None:
    """Create ``folder`` if needed and prove that files can be written there.

    Raises:
        InputFileError: the folder cannot be created or written.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".nnunet_efficient_write_test_"):
            pass
    except OSError as error:
        raise InputFileError(folder, f"output folder cannot be written ({error.strerror or error})") from None


def check_model_folder(model_folder: str, folds: Sequence[int | str] | None, checkpoint_name: str) -> None:
    """Check that a trained model folder has what prediction needs.

    Raises:
        InputFileError: missing folder, ``plans.json``, ``dataset.json`` or checkpoint.
        EfficientError: no fold given and none found.
    """
    if not os.path.isdir(model_folder):
        raise InputFileError(model_folder, "model folder does not exist (check -d/-tr/-p/-c or -m)")
    for name in ("plans.json", "dataset.json"):
        if not os.path.isfile(os.path.join(model_folder, name)):
            raise InputFileError(os.path.join(model_folder, name), "missing; is this an nnU-Net model folder?")
    if folds is None:
        folds = [d[len("fold_"):] for d in sorted(os.listdir(model_folder))
                 if d.startswith("fold_") and os.path.isfile(os.path.join(model_folder, d, checkpoint_name))]
        if not folds:
            raise EfficientError(f"{model_folder}: no fold_X/{checkpoint_name} found (training not finished?)")
    for fold in folds:
        checkpoint = os.path.join(model_folder, f"fold_{fold}", checkpoint_name)
        if not os.path.isfile(checkpoint):
            raise InputFileError(checkpoint, "checkpoint missing (training not finished? other -chk?)")
