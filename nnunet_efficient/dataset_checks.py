"""Checks that turn a bad dataset into one clear line before planning or training starts.

nnU-Net plans and preprocesses label maps without looking at their values (unless
``--verify_dataset_integrity``, which also reads every image), and a value that ``dataset.json``
does not list surfaces, if at all, as an index error deep inside the loss hours into training.
:func:`check_raw_labels` runs before ``plan_and_preprocess``; :func:`check_training_setup` runs
before ``train`` on what training reads: the plans, the configuration and the preprocessed
label maps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nnunet_efficient.common.messages import one_line
from nnunet_efficient.errors import EfficientError, InputFileError


def _environment_folder(variable: str) -> str:
    folder = os.environ.get(variable)
    if not folder:
        raise EfficientError(f"{variable} is not set; export {variable}=<folder> as for nnU-Net")
    if not os.path.isdir(folder):
        raise InputFileError(folder, f"{variable} points to a folder that does not exist")
    return folder


def dataset_name(dataset: str | int) -> str:
    """nnU-Net's ``DatasetXXX_Name`` for an ID or name, or one line saying where it was looked for."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        return maybe_convert_to_dataset_name(dataset)
    except (RuntimeError, ValueError, AssertionError):
        raise EfficientError(f"dataset '{dataset}' not found in nnUNet_raw={os.environ.get('nnUNet_raw')}, "
                             f"nnUNet_preprocessed={os.environ.get('nnUNet_preprocessed')} or "
                             f"nnUNet_results={os.environ.get('nnUNet_results')}") from None


def _load_json(path: str) -> dict:
    if not os.path.isfile(path):
        raise InputFileError(path, "missing")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as error:
        raise InputFileError(path, f"is not valid JSON ({error})") from None


def allowed_label_values(dataset_json: dict) -> set[int]:
    """The values a label map may hold: ``dataset.json``'s labels (regions resolved) and its ignore label."""
    from nnunetv2.utilities.label_handling.label_handling import LabelManager

    manager = LabelManager(dataset_json["labels"], dataset_json.get("regions_class_order"))
    allowed = {int(v) for v in manager.all_labels}
    if manager.ignore_label is not None:
        allowed.add(int(manager.ignore_label))
    return allowed


def _describe(allowed: set[int]) -> str:
    return "{" + ", ".join(str(v) for v in sorted(allowed)) + "}"


def unexpected_label_values(array: np.ndarray, allowed: set[int]) -> list[int]:
    """The values of ``array`` that are not in ``allowed``, sorted."""
    if array.size == 0:
        return []
    low, high = float(array.min()), float(array.max())
    # min and max settle it for a valid map of consecutive labels, without sorting the volume
    if low == int(low) and high == int(high) and high - low < 4096 \
            and all(v in allowed for v in range(int(low), int(high) + 1)):
        return []
    return sorted(float(v) if v != int(v) else int(v) for v in np.unique(array) if v not in allowed)


def check_raw_labels(dataset: str | int, num_processes: int = 4) -> None:
    """Read every training label of a raw dataset and check its values against ``dataset.json``.

    Raises:
        EfficientError: the dataset or its ``dataset.json`` is missing or invalid.
        InputFileError: a label file is missing, unreadable or holds a value ``dataset.json`` does
            not list (the first such file, in case order).
    """
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    raw = _environment_folder("nnUNet_raw")
    folder = os.path.join(raw, dataset_name(dataset))
    dataset_json = _load_json(os.path.join(folder, "dataset.json"))
    try:
        allowed = allowed_label_values(dataset_json)
        cases = get_filenames_of_train_images_and_targets(folder, dataset_json)
    except (KeyError, AssertionError, FileNotFoundError) as error:
        raise InputFileError(os.path.join(folder, "dataset.json"), f"is incomplete ({one_line(error)})") from None
    labels = [cases[c]["label"] for c in sorted(cases)]
    if not labels:
        raise InputFileError(os.path.join(folder, "imagesTr"),
                             f"no training images '*_0000{dataset_json['file_ending']}'")
    reader = determine_reader_writer_from_dataset_json(dataset_json, labels[0], verbose=False)()

    def values(path: str) -> list | InputFileError:
        if not os.path.isfile(path):
            return InputFileError(path, "label file missing for this training case")
        try:
            seg, _ = reader.read_seg(path)
        except Exception as error:  # readers raise anything
            return InputFileError(path, f"cannot be read as a label map ({one_line(error)})")
        return unexpected_label_values(seg, allowed)

    with ThreadPoolExecutor(max(1, num_processes)) as pool:
        for path, found in zip(labels, pool.map(values, labels)):
            if isinstance(found, InputFileError):
                raise found
            unexpected = found
            if unexpected:
                raise InputFileError(path, f"holds label value(s) {unexpected} that dataset.json does not list "
                                           f"(its labels: {_describe(allowed)})")


def check_training_setup(dataset: str | int, configuration: str, fold: str, plans_identifier: str) -> None:
    """What ``nnUNetv2_train DATASET CONFIGURATION FOLD -p PLANS`` needs, checked before it starts.

    Raises:
        EfficientError / InputFileError: bad fold, dataset not planned or not preprocessed for the
            configuration, plans without the configuration, or a preprocessed label map holding a
            value that ``dataset.json`` does not list.
    """
    if fold != "all":
        try:
            if int(fold) < 0:
                raise ValueError
        except ValueError:
            raise EfficientError(f"fold must be a number >= 0 or 'all', got '{fold}'") from None
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    preprocessed = _environment_folder("nnUNet_preprocessed")
    folder = os.path.join(preprocessed, dataset_name(dataset))
    plans_file = os.path.join(folder, plans_identifier + ".json")
    if not os.path.isfile(plans_file):
        raise InputFileError(plans_file, f"missing: dataset {dataset} is not planned with plans '{plans_identifier}' "
                                         f"(run nnunet-efficient plan_and_preprocess, or give the right -p)")
    plans = _load_json(plans_file)
    configurations = plans.get("configurations", {})
    if configuration not in configurations:
        raise InputFileError(plans_file, f"has no configuration '{configuration}' (it has "
                                         f"{', '.join(sorted(configurations)) or 'none'})")
    data_identifier = PlansManager(plans).get_configuration(configuration).data_identifier
    data_folder = os.path.join(folder, data_identifier)
    if not os.path.isdir(data_folder) or not os.listdir(data_folder):
        raise InputFileError(data_folder, f"missing or empty: configuration '{configuration}' is not preprocessed "
                                          f"(run nnunet-efficient plan_and_preprocess -c {configuration})")
    dataset_json = _load_json(os.path.join(folder, "dataset.json"))
    check_preprocessed_labels(data_folder, allowed_label_values(dataset_json) | {-1})


def check_preprocessed_labels(data_folder: str, allowed: set[int], identifiers: Sequence[str] | None = None) -> None:
    """Check the values of nnU-Net's preprocessed label maps (``-1`` marks voxels outside the image's mask).

    Raises:
        InputFileError: the first label map holding a value outside ``allowed``.
    """
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

    try:
        dataset_class = infer_dataset_class(data_folder)
    except AssertionError:
        raise InputFileError(data_folder, "holds files of several formats; preprocess it again") from None
    dataset = dataset_class(data_folder, list(identifiers) if identifiers is not None else None)
    check_preprocessed_cases(data_folder, dataset.identifiers, dataset_class)
    for identifier in dataset.identifiers:
        unexpected = unexpected_label_values(np.asarray(dataset.load_case(identifier)[1][:]), allowed)
        if unexpected:
            files = [f for f in os.listdir(data_folder) if f.startswith(identifier + "_seg.")]
            path = os.path.join(data_folder, files[0] if files else identifier)
            raise InputFileError(path, f"holds label value(s) {unexpected} that dataset.json does not list "
                                       f"(allowed: {_describe(allowed)}); fix the labels and preprocess again")


def _case_files(identifier: str, dataset_class: type) -> list[str]:
    """The files nnU-Net's dataset class reads for one case (its formats: blosc2, or numpy npz/npy)."""
    if dataset_class.__name__ == "nnUNetDatasetBlosc2":
        return [identifier + ".b2nd", identifier + "_seg.b2nd", identifier + ".pkl"]
    return [identifier + ".npz", identifier + ".pkl"]


def _open_case_file(path: str) -> None:
    if path.endswith(".b2nd"):
        import blosc2

        try:
            blosc2.open(urlpath=path, mode="r")  # checks the frame against its trailer: a cut file fails here
        except RuntimeError:  # its message repeats the path and names a C function
            raise ValueError("not a complete blosc2 array") from None
    elif path.endswith(".npz"):
        with np.load(path):  # reads the zip directory at the end of the file
            pass
    else:
        from batchgenerators.utilities.file_and_folder_operations import load_pickle

        load_pickle(path)


def check_preprocessed_cases(data_folder: str, identifiers: Sequence[str], dataset_class: type,
                             listed_in: str = "the preprocessed folder") -> None:
    """Check that every case's preprocessed files exist and open (cheap: headers only, no decompression).

    A training would otherwise meet a missing or truncated case in a data-loading worker, as a
    traceback some iterations in (or a hang).

    Raises:
        InputFileError: the first missing or unreadable file.
    """
    from nnunet_efficient.common.messages import one_line

    for identifier in identifiers:
        for name in _case_files(identifier, dataset_class):
            path = os.path.join(data_folder, name)
            if name.endswith(".npz") and not os.path.isfile(path) and os.path.isfile(path[:-4] + ".npy"):
                continue  # unpacked by nnU-Net: it reads the .npy files
            if not os.path.isfile(path):
                raise InputFileError(path, f"missing: case '{identifier}' is listed in {listed_in}; "
                                           f"preprocess the dataset again")
            try:
                _open_case_file(path)
            except Exception as error:  # noqa: BLE001 - readers raise anything on a damaged file
                raise InputFileError(path, f"cannot be read, truncated or corrupt? ({one_line(error, 120)}); "
                                           f"preprocess the dataset again") from None
