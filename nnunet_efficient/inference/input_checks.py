"""Checks of the input images that turn bad inputs into one clear line before any work starts.

nnU-Net itself fails deep inside preprocessing on these (or, for NaN voxels, silently produces
a wrong segmentation), so they run before prediction and name the file and the problem. The
model folder's checks are in :mod:`.model_folder`, the output folder's in :mod:`.output_folder`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from nnunet_efficient.common.messages import one_line
from nnunet_efficient.errors import InputFileError

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


@dataclass(frozen=True)
class ModelInput:
    """What a model reads, for the image checks.

    Attributes:
        num_channels: channel files per case.
        patch_dims: spatial dimensions of the configuration's patch (3: a 3D configuration).
        trained_on_2d_images: the dataset's images were 2D (nnU-Net gives them a fake first axis of
            spacing 999 × the largest spacing), so a 3D volume is not what the model knows.
    """

    num_channels: int | None = None
    patch_dims: int | None = None
    trained_on_2d_images: bool = False

    @classmethod
    def of(cls, plans_manager, configuration_manager, num_channels: int | None = None) -> ModelInput:
        spacing = plans_manager.plans.get("original_median_spacing_after_transp")
        trained_on_2d = bool(spacing) and min(spacing) > 0 and max(spacing) / min(spacing) >= FAKE_2D_SPACING_RATIO
        return cls(num_channels, len(configuration_manager.patch_size), trained_on_2d)


#: nnU-Net reads a 2D image as one slice whose spacing is 999 × the largest in-plane spacing.
FAKE_2D_SPACING_RATIO = 900


def _is_2d_image(image: np.ndarray, spacing: np.ndarray) -> bool:
    return image.shape[1] == 1 and spacing[0] >= FAKE_2D_SPACING_RATIO * max(spacing[1:].max(), 1e-12)


def check_case_files(files: Sequence[str], reader_writer_class, num_channels: int | None = None,
                     model: ModelInput | None = None) -> None:
    """Read every channel of a case and check that it can be segmented.

    Args:
        files: one path per channel.
        reader_writer_class: the plans' image reader (nnU-Net ``BaseReaderWriter`` subclass).
        num_channels: channels the model expects, if known.
        model: what the model reads (2D or 3D), if known.

    Raises:
        InputFileError: missing, empty, unreadable, truncated or 4D file; a 2D image for a 3D
            model or the reverse; channel count, shape, spacing, origin or direction that differs
            from the first channel; non-finite voxels.
    """
    if num_channels is not None and len(files) != num_channels:
        raise InputFileError(files[0] if files else "<case>",
                             f"case has {len(files)} channel file(s), the model expects {num_channels}")
    reader = reader_writer_class()
    reference = None
    for path in files:
        image, properties = _read(reader, path)
        spacing = np.asarray(properties["spacing"], dtype=float)
        if image.shape[0] != 1:
            raise InputFileError(path, f"holds {image.shape[0]} volumes (a 4D image); nnU-Net reads one 3D image "
                                       f"per channel file (CASE_0000, CASE_0001, ...)")
        if model is not None:
            _check_dimensions(path, image, spacing, model)
        geometry = _geometry(properties)
        if reference is None:
            reference = (image.shape[1:], spacing, geometry)
        else:
            _check_same_grid(path, image.shape[1:], spacing, geometry, *reference)
        non_finite = _count_non_finite(path, image)
        if non_finite:
            raise InputFileError(path, f"{non_finite} voxel(s) are NaN or infinite")


def _read(reader, path: str) -> tuple[np.ndarray, dict]:
    if not os.path.isfile(path):
        raise InputFileError(path, "file does not exist")
    if os.path.getsize(path) == 0:
        raise InputFileError(path, "file is empty (0 bytes)")
    with _quiet_itk():
        try:
            return reader.read_images([path])
        except Exception as error:  # readers raise anything from RuntimeError to struct.error
            raise InputFileError(path, f"cannot be read as an image ({one_line(error)})") from None


@contextmanager
def _quiet_itk() -> Iterator[None]:
    # ITK prints its own warnings to stderr; the checks turn problems into one line instead.
    try:
        import SimpleITK as sitk
    except ImportError:  # pragma: no cover - nnU-Net depends on SimpleITK
        yield
        return
    shown = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(shown)


def _check_dimensions(path: str, image: np.ndarray, spacing: np.ndarray, model: ModelInput) -> None:
    two_d = _is_2d_image(image, spacing)
    if two_d and model.patch_dims == 3 and not model.trained_on_2d_images:
        raise InputFileError(path, f"is a 2D image ({image.shape[2]}×{image.shape[3]}); this model segments 3D "
                                   f"volumes (its configuration is 3D)")
    if not two_d and model.trained_on_2d_images:
        raise InputFileError(path, f"is a 3D volume ({'×'.join(map(str, image.shape[1:]))}); this model was trained "
                                   f"on 2D images")


def _geometry(properties: dict) -> dict[str, np.ndarray]:
    """Origin and direction (SimpleITK readers) or the affine (nibabel readers), where the reader gives them."""
    out = {}
    sitk_stuff = properties.get("sitk_stuff") or {}
    for key in ("origin", "direction"):
        if key in sitk_stuff:
            out[key] = np.asarray(sitk_stuff[key], dtype=float)
    nibabel_stuff = properties.get("nibabel_stuff") or {}
    if "original_affine" in nibabel_stuff:
        out["affine"] = np.asarray(nibabel_stuff["original_affine"], dtype=float)
    return out


def _check_same_grid(path: str, shape, spacing: np.ndarray, geometry: dict, reference_shape, reference_spacing,
                     reference_geometry: dict) -> None:
    if shape != reference_shape:
        raise InputFileError(path, f"shape {tuple(shape)} differs from channel 0's {tuple(reference_shape)}")
    if not np.allclose(spacing, reference_spacing, rtol=1e-3, atol=1e-5):
        raise InputFileError(path, f"spacing {_short(spacing)} differs from channel 0's {_short(reference_spacing)}")
    # a hundredth of a voxel: channels of one scan agree far better, channels of two scans do not
    tolerance = {"origin": 0.01 * float(spacing.min()), "direction": 1e-4, "affine": 0.01 * float(spacing.min())}
    for key, value in geometry.items():
        expected = reference_geometry.get(key)
        if expected is not None and (value.shape != expected.shape
                                     or not np.allclose(value, expected, rtol=0, atol=tolerance[key])):
            raise InputFileError(path, f"{key} {_short(value)} differs from channel 0's {_short(expected)} "
                                       f"(channels must lie on the same voxel grid)")


def _short(values: np.ndarray) -> str:
    return "(" + ", ".join(f"{v + 0.0:.4g}" for v in np.asarray(values, dtype=float).ravel()) + ")"  # no -0


def _count_non_finite(path: str, image: np.ndarray) -> int:
    # SimpleITK's NIfTI reader silently turns NaN and Inf into 0 (its MHA and NRRD readers keep
    # them) and silently zero-fills a truncated .nii.gz, so nnU-Net would segment a corrupted
    # NIfTI without notice: read its raw voxels.
    if path.endswith((".nii", ".nii.gz")):
        import nibabel

        try:
            image = np.asanyarray(nibabel.load(path).dataobj)
        except Exception as error:  # EOFError, zlib.error, ImageFileError, ...
            raise InputFileError(path, f"is truncated or corrupt ({one_line(error)})") from None
    if not np.issubdtype(image.dtype, np.floating):
        return 0
    return int(image.size - np.count_nonzero(np.isfinite(image)))
