"""Checks that turn bad inputs into one clear line before any work starts.

nnU-Net itself fails deep inside preprocessing on these (or, for NaN voxels, silently produces
a wrong segmentation), so they run before prediction and name the file and the problem.
"""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import numpy as np

from nnunet_efficient.common.messages import one_line
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
def quiet_trainer_search() -> Iterator[None]:
    """Silence the deprecation warnings of the modules nnU-Net imports while it searches a trainer class.

    ``recursive_find_trainer_class_by_name`` imports every trainer module until one defines the
    name; some import ``torch.jit.interface``, whose FutureWarning would precede any message.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        yield


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


def check_output_folder(folder: str) -> list[str]:
    """Create ``folder`` if needed and prove that files can be written there.

    Returns:
        The folders this call created, outermost first (see :func:`remove_created_folders`).

    Raises:
        InputFileError: the folder is a file, or cannot be created or written.
    """
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise InputFileError(folder, "is a file; the output must be a folder")
    created = []
    parent = os.path.abspath(folder)
    while not os.path.exists(parent):
        created.insert(0, parent)
        parent = os.path.dirname(parent)
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".nnunet_efficient_write_test_"):
            pass
    except OSError as error:
        remove_created_folders(created)
        raise InputFileError(folder, f"output folder cannot be written ({error.strerror or error})") from None
    return created


def remove_created_folders(created: Sequence[str]) -> None:
    """Remove folders made by :func:`check_output_folder` again, innermost first, where still empty."""
    for folder in reversed(created):
        try:
            os.rmdir(folder)
        except OSError:
            return


LOCK_PREFIX = ".nnunet_efficient_lock"


@contextmanager
def claim_output_folder(folder: str, part_id: int = 0, num_parts: int = 1) -> Iterator[None]:
    """Hold an exclusive claim on ``folder`` for this ``-part_id`` while predicting into it.

    Two runs of the same part into one folder would predict every case twice and race for the
    files; runs of different parts (``-num_parts``) share a folder as in nnU-Net. The claim is an
    ``flock`` on a hidden file, so the kernel releases it whatever way the process ends.

    Raises:
        EfficientError: another process holds the claim.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no claim
        yield
        return
    name = LOCK_PREFIX + (f"_part{part_id}of{num_parts}" if num_parts > 1 else "")
    path = os.path.join(folder, name)
    handle = open(path, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            claimed = True
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
                claimed = False  # a file system without locks: proceed unclaimed
            else:
                handle.seek(0)
                holder = handle.read().strip() or "?"
                same_part = " with the same -part_id" if num_parts > 1 else ""
                raise EfficientError(f"{folder}: another nnunet-efficient predict (pid {holder}) is writing this "
                                     f"output folder{same_part}; wait for it to finish or give another -o") from None
        if claimed:
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
        try:
            yield
        finally:
            with suppress(FileNotFoundError):
                os.remove(path)
    finally:
        handle.close()


def check_model_folder(model_folder: str, folds: Sequence[int | str] | None, checkpoint_name: str) -> list:
    """Check that a trained model folder has what prediction needs.

    Returns:
        The folds to load (those found when ``folds`` is None).

    Raises:
        InputFileError: missing folder, ``plans.json``, ``dataset.json`` or checkpoint.
        EfficientError: no fold given and none found.
    """
    if not os.path.isdir(model_folder):
        raise InputFileError(model_folder, "model folder does not exist (check -d/-tr/-p/-c or -m)")
    for name in ("plans.json", "dataset.json"):
        path = os.path.join(model_folder, name)
        if not os.path.isfile(path):
            raise InputFileError(path, "missing; is this an nnU-Net model folder?")
        try:
            with open(path) as f:
                json.load(f)
        except (OSError, ValueError) as error:
            raise InputFileError(path, f"is not valid JSON ({error})") from None
    if folds is None:
        folds = [d[len("fold_"):] for d in sorted(os.listdir(model_folder))
                 if d.startswith("fold_") and os.path.isfile(os.path.join(model_folder, d, checkpoint_name))]
        if not folds:
            raise EfficientError(f"{model_folder}: no fold_X/{checkpoint_name} found (training not finished?)")
    for fold in folds:
        checkpoint = os.path.join(model_folder, f"fold_{fold}", checkpoint_name)
        if not os.path.isfile(checkpoint):
            raise InputFileError(checkpoint, "checkpoint missing (training not finished? other -chk?)")
    return list(folds)


def diagnose_model_folder(model_folder: str, folds: Sequence[int | str], checkpoint_name: str,
                          error: BaseException) -> EfficientError | None:
    """Name the file at fault when nnU-Net fails to load a model folder that :func:`check_model_folder`
    accepted (corrupt checkpoint, unknown trainer, configuration missing from the plans, weights of
    another network), or None when it is none of these."""
    import torch

    first = None
    for fold in folds:
        path = os.path.join(model_folder, f"fold_{fold}", checkpoint_name)
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as load_error:
            return InputFileError(path, f"cannot be loaded as a PyTorch checkpoint, truncated or corrupt? "
                                        f"({one_line(load_error)})")
        missing = [k for k in ("network_weights", "trainer_name", "init_args") if k not in checkpoint]
        if not isinstance(checkpoint, dict) or missing:
            return InputFileError(path, f"is not an nnU-Net checkpoint (no {', '.join(missing) or 'dict'})")
        first = first or (path, checkpoint)
    if first is None:
        return None
    path, checkpoint = first
    with open(os.path.join(model_folder, "plans.json")) as f:
        configurations = json.load(f).get("configurations", {})
    configuration = checkpoint["init_args"].get("configuration")
    if configuration not in configurations:
        return InputFileError(os.path.join(model_folder, "plans.json"),
                              f"has no configuration '{configuration}', which {os.path.relpath(path, model_folder)} "
                              f"was trained with (it has {', '.join(sorted(configurations)) or 'none'})")
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with quiet_trainer_search():
            recursive_find_trainer_class_by_name(checkpoint["trainer_name"])
    except Exception:
        return InputFileError(path, f"was trained with trainer '{checkpoint['trainer_name']}', which neither nnU-Net "
                                    f"nor nnunet-efficient defines (add its folder to nnUNet_extTrainer)")
    text = str(error)
    if "state_dict" in text:
        mismatch = re.search(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from "
                             r"checkpoint, the shape in current model is torch\.Size\((\[.*?\])\)", text)
        if mismatch:
            detail = f"{mismatch[1]} is {mismatch[2]} in the checkpoint, {mismatch[3]} in the network"
        else:
            detail = next((line.strip() for line in text.splitlines() if "Missing key" in line
                           or "Unexpected key" in line), one_line(error))[:160]
        return InputFileError(path, f"its weights do not fit the network that plans.json describes (other plans "
                                    f"or dataset?): {detail}")
    return None
