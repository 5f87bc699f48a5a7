"""Label export whose memory does not grow with the number of classes.

nnU-Net's export (``export_prediction_from_logits``) resamples all ``C`` logit channels at once:
for its default resampling that is a float64 copy of the ``(C, X, Y, Z)`` logits plus the
resampled ``(C, X', Y', Z')`` array, sent to a worker process as a pickled copy, so a 105-class
whole-body CT needs many times the logits' own memory. When only the label map is wanted, the
classes can be resampled one at a time and reduced into a running argmax: the peak is then the
logits (the one compact float16 accumulator the network pass needs anyway) plus a few
single-class volumes.

Labels equal nnU-Net's: every class goes through the same resampling (each of nnU-Net's
resampling functions treats channels independently), is rounded to the logits' dtype as nnU-Net
rounds it, and ties go to the lower class as with ``argmax``. nnU-Net's default probability
resampling (``resample_data_or_seg_to_shape``: linear, or linear in-plane and nearest between
slices on anisotropic data) runs here as float64 bilinear and linear interpolation in PyTorch,
the arithmetic of scikit-image's ``resize``/SciPy's ``zoom`` up to float64 rounding, many times
faster; any other resampling function is called as configured, one class at a time.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
from nnunetv2.configuration import ANISO_THRESHOLD, default_num_processes
from nnunetv2.preprocessing.resampling.default_resampling import determine_do_sep_z_and_axis
from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from scipy.ndimage import map_coordinates

from nnunet_efficient.common.messages import one_line
from nnunet_efficient.errors import InputFileError

#: nnU-Net's default resampling of logits/probabilities, reproduced by :func:`_linear_resampler`.
NNUNET_DEFAULT_RESAMPLING = "resample_data_or_seg_to_shape"


def _source_positions(n_in: int, n_out: int) -> np.ndarray:
    # Pixel-centre mapping of scikit-image's resize / SciPy's zoom(grid_mode=True).
    return (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5


def _select(x: torch.Tensor, axis: int, index: np.ndarray) -> torch.Tensor:
    # advanced indexing of the leading axis copies whole slabs (index_select is many times slower here)
    return x.movedim(axis, 0)[torch.from_numpy(index)].movedim(0, axis)


def resize_axis_linear(x: torch.Tensor, axis: int, n_out: int) -> torch.Tensor:
    """Linear resize of one axis, edges extended (SciPy ``zoom``, ``order=1``, ``mode='nearest'``).

    Args:
        x: any tensor; resized along ``axis``.
        axis: the axis to resize.
        n_out: its new length.

    Returns:
        ``x`` with ``x.shape[axis] == n_out``, same dtype.
    """
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    source = np.clip(_source_positions(n_in, n_out), 0, n_in - 1)
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(lower + 1, n_in - 1)
    shape = [1] * x.ndim
    shape[axis] = n_out
    weight = torch.from_numpy(source - lower).to(x.dtype).view(shape)
    return torch.lerp(_select(x, axis, lower), _select(x, axis, upper), weight)


def nearest_index(n_in: int, n_out: int) -> np.ndarray:
    """Source index of each output position under nnU-Net's out-of-plane rule (``map_coordinates``, order 0)."""
    # Rounding as SciPy rounds, by letting SciPy map the source indices themselves.
    index = map_coordinates(np.arange(n_in, dtype=np.float64), _source_positions(n_in, n_out)[None], order=0,
                            mode="nearest")
    return index.astype(np.int64)


def resize_axis_nearest(x: torch.Tensor, axis: int, n_out: int) -> torch.Tensor:
    """Nearest-neighbour resize of one axis with nnU-Net's out-of-plane rule."""
    return x if x.shape[axis] == n_out else _select(x, axis, nearest_index(x.shape[axis], n_out))


def _resize_plane(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Bilinear resize of the last two axes of ``(A, P, Q)`` (pixel centres, edges extended, as SciPy's zoom)."""
    if list(x.shape[1:]) == list(size):
        return x
    return F.interpolate(x[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]


def _linear_resampler(kwargs: dict) -> Callable | None:
    """A fast single-channel equivalent of ``resample_data_or_seg_to_shape(**kwargs)``, if there is one."""
    if kwargs.get("is_seg", False) or kwargs.get("order", 3) != 1 or kwargs.get("order_z", 0) not in (0, 1):
        return None  # spline orders above 1 need SciPy's prefilter: use nnU-Net's function itself
    order_z = kwargs.get("order_z", 0)
    force_separate_z = kwargs.get("force_separate_z", False)
    threshold = kwargs.get("separate_z_anisotropy_threshold", ANISO_THRESHOLD)

    def resample(channel: torch.Tensor, new_shape, current_spacing, new_spacing) -> torch.Tensor:
        new_shape = [int(s) for s in new_shape]
        if list(channel.shape) == new_shape:
            return channel
        separate_z, axis = determine_do_sep_z_and_axis(force_separate_z, current_spacing, new_spacing, threshold)
        # the out-of-plane axis (or the first one) leads; the other two are resized as planes
        axis = axis if separate_z else 0
        x = channel.movedim(axis, 0)
        slices, plane = new_shape[axis], [new_shape[a] for a in range(3) if a != axis]
        if separate_z and order_z == 0 and slices <= x.shape[0]:
            # picking slices commutes with resizing each slice: pick first, resize fewer
            x = _resize_plane(resize_axis_nearest(x, 0, slices).to(torch.float64), plane)
        else:
            x = _resize_plane(x.to(torch.float64), plane)  # nnU-Net interpolates in float64 (astype(float))
            x = (resize_axis_nearest if separate_z and order_z == 0 else resize_axis_linear)(x, 0, slices)
        return x.movedim(0, axis).to(channel.dtype)  # nnU-Net's result keeps the logits' dtype

    return resample


def class_resampler(configuration_manager: ConfigurationManager) -> Callable:
    """``f(channel (X, Y, Z) tensor, new_shape, current_spacing, new_spacing) -> tensor``, one class at a time.

    nnU-Net's default probability resampling gets the fast PyTorch equivalent; any other configured
    function is called on the one channel (as ``(1, X, Y, Z)``). Either returns the dtype nnU-Net's
    resampling would return, which its argmax then compares in.
    """
    configuration = configuration_manager.configuration
    name = configuration.get("resampling_fn_probabilities")
    kwargs = configuration.get("resampling_fn_probabilities_kwargs", {})
    if name == NNUNET_DEFAULT_RESAMPLING and (fast := _linear_resampler(kwargs)) is not None:
        return fast
    configured = configuration_manager.resampling_fn_probabilities

    def resample(channel, new_shape, current_spacing, new_spacing):
        out = configured(channel[None].numpy(), new_shape, current_spacing, new_spacing)
        return torch.as_tensor(np.asarray(out)[0])

    return resample


def _spacings(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
              properties: dict) -> tuple[list[float], list[float]]:
    # As nnU-Net's convert_predicted_logits_to_segmentation_with_correct_shape (2D configurations
    # of 3D data keep the first axis' spacing).
    target = [properties["spacing"][i] for i in plans_manager.transpose_forward]
    shape = properties["shape_after_cropping_and_before_resampling"]
    current = configuration_manager.spacing if len(configuration_manager.spacing) == len(shape) \
        else [target[0], *configuration_manager.spacing]
    return list(current), target


@torch.inference_mode()
def logits_to_labels(logits: torch.Tensor | np.ndarray, plans_manager: PlansManager,
                     configuration_manager: ConfigurationManager, label_manager: LabelManager,
                     properties: dict, num_threads: int | None = None) -> np.ndarray:
    """nnU-Net's label map of ``logits`` in the original image's geometry, one class at a time.

    Equivalent to ``convert_predicted_logits_to_segmentation_with_correct_shape(...,
    return_probabilities=False)``: resampled to the original spacing, argmax (or the regions'
    sigmoid > 0.5 in ``regions_class_order``), put back into the uncropped volume, transposed back.

    Args:
        logits: ``(C, *spatial)`` at the configuration's spacing (any float dtype; float16 from the
            sliding window). Read one class at a time and never copied as a whole.
        plans_manager, configuration_manager, label_manager: the model's.
        properties: the case's ``data_properties`` from nnU-Net's preprocessing.
        num_threads: torch threads for the export (default: nnU-Net's export default, at most the CPUs).

    Returns:
        ``(*original spatial)`` uint8 label map (uint16 from 255 foreground labels on), like nnU-Net's.
    """
    if isinstance(logits, np.ndarray):
        logits = torch.from_numpy(logits)
    logits = logits.cpu()
    threads = torch.get_num_threads()
    torch.set_num_threads(num_threads or max(1, min(default_num_processes, os.cpu_count() or 1)))
    try:
        current_spacing, target_spacing = _spacings(plans_manager, configuration_manager, properties)
        new_shape = [int(s) for s in properties["shape_after_cropping_and_before_resampling"]]
        resample = class_resampler(configuration_manager)
        many = len(label_manager.foreground_labels) >= 255
        labels = torch.zeros(new_shape, dtype=torch.int32 if many else torch.uint8)
        best = None
        order = label_manager.regions_class_order if label_manager.has_regions else None
        for c in range(logits.shape[0]):
            channel = resample(logits[c], new_shape, current_spacing, target_spacing)
            if channel.dtype in (torch.float16, torch.bfloat16):
                channel = channel.float()  # exact; the CPU compares float32 faster
            if order is not None:  # regions: later regions overwrite earlier ones, as in nnU-Net
                labels.masked_fill_(torch.sigmoid(channel) > 0.5, int(order[c]))
            elif best is None:
                best = channel
            else:
                higher = channel > best  # strict: ties keep the lower class, as argmax does
                labels.masked_fill_(higher, c)
                torch.maximum(best, channel, out=best)
            del channel
        del best
        uncropped = np.zeros(properties["shape_before_cropping"], dtype=np.uint16 if many else np.uint8)
        uncropped = insert_crop_into_image(uncropped, labels.numpy().astype(uncropped.dtype, copy=False),
                                           properties["bbox_used_for_cropping"])
        return uncropped.transpose(plans_manager.transpose_backward)
    finally:
        torch.set_num_threads(threads)


def export_labels(logits: torch.Tensor | np.ndarray, properties: dict, configuration_manager: ConfigurationManager,
                  plans_manager: PlansManager, dataset_json: dict, output_file_truncated: str,
                  num_threads: int | None = None) -> None:
    """Write the label map of ``logits`` as nnU-Net's ``export_prediction_from_logits`` does without
    probabilities, with :func:`logits_to_labels` (peak memory independent of the number of classes),
    and check that the file is complete.

    Raises:
        InputFileError: the file cannot be written or was written incompletely (disk full,
            permissions), naming the file.
    """
    label_manager = plans_manager.get_label_manager(dataset_json)
    labels = logits_to_labels(logits, plans_manager, configuration_manager, label_manager, properties, num_threads)
    path = output_file_truncated + dataset_json["file_ending"]
    try:
        plans_manager.image_reader_writer_class().write_seg(labels, path, properties)
    except (OSError, RuntimeError) as error:  # SimpleITK reports a failed write as RuntimeError
        raise InputFileError(path, f"cannot write the prediction ({one_line(error)})") from None
    check_written(path, labels.size)


def check_written(path: str, voxels: int) -> None:
    """Read a written NIfTI label map back in full.

    ITK's NIfTI writer ignores failed writes: on a full disk it leaves a truncated file and reports
    success (and SimpleITK's reader zero-fills such a file without a word). nibabel reads every byte.

    Raises:
        InputFileError: the file is shorter than its header says.
    """
    if not path.endswith((".nii", ".nii.gz")):
        return  # other ITK writers raise on a failed write
    import nibabel

    try:
        written = np.asanyarray(nibabel.load(path).dataobj).size
    except Exception as error:  # EOFError, zlib.error, OSError, ...
        written, reason = None, one_line(error)
    else:
        reason = f"{written} of {voxels} voxels"
    if written != voxels:
        raise InputFileError(path, f"was written incompletely, disk full? ({reason})")


