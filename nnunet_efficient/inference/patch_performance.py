"""Patch-performance maps with nnU-Net's objects: validation tiles of a network, and trained model folders.

The core (:mod:`nnunet_efficient.patch_performance`) tracks errors and recommends a step; this
adapter feeds it nnU-Net's preprocessed cases, runs the network as nnU-Net's predictor would
(eval mode, autocast on CUDA, no mirroring: the map is about positions, and mirroring a window
maps its border onto its border) and blends with nnU-Net's own Gaussian. Used by the
patch-performance trainers at the end of training and by ``nnunet-efficient patch_performance``
for models that are already trained.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

from nnunet_efficient.common.cases import case_id
from nnunet_efficient.errors import EfficientError, InputFileError
from nnunet_efficient.patch_performance.files import save_patch_performance
from nnunet_efficient.patch_performance.recommendation import StepRecommendation, recommend_step
from nnunet_efficient.patch_performance.tracking import PatchErrorTracker, PatchPerformanceMap, accumulate_tiles

#: Step of the grid that tiles the validation cases for the map. Each voxel is then seen at about
#: 2^D positions, so the map is less tied to where anatomy happens to fall on one grid; without
#: mirroring it costs about 1/8 of nnU-Net's own final validation (step 0.5 with 8 mirrorings).
MAP_TILE_STEP = 0.5

Case = tuple[str, np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]


def nnunet_importance_map(patch_size: Sequence[int]) -> torch.Tensor:
    """nnU-Net's Gaussian blending weights for ``patch_size``, as its predictor computes them (float32, CPU)."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian

    # compute_gaussian is lru_cached and returns the cached tensor itself: copy before anyone edits it
    return compute_gaussian(tuple(int(p) for p in patch_size), sigma_scale=1. / 8, value_scaling_factor=10,
                            dtype=torch.float32, device=torch.device("cpu")).clone()


def check_softmax_labels(label_manager, where: str) -> None:
    """Refuse region-based (sigmoid) label layouts: the map's error measure is for softmax over labels."""
    if label_manager.has_regions:
        raise EfficientError(f"{where}: patch-performance maps need softmax labels; this dataset is region-based "
                             "(sigmoid outputs), which is not supported")


def tile_cases(tracker: PatchErrorTracker, network: torch.nn.Module, cases: Iterable[Case], device: torch.device,
               step: float = MAP_TILE_STEP, batch_size: int = 1,
               log: Callable[[str], None] = print) -> tuple[list[tuple[int, ...]], int]:
    """Feed every window of every case to ``tracker``.

    Args:
        tracker: accumulates the errors.
        network: the segmentation network (deep supervision off, or its first output is used).
        cases: ``(identifier, data (C, *spatial), seg (1, *spatial))`` preprocessed as nnU-Net's
            dataset classes hold them; seg -1 (outside the nonzero mask) counts as background, as
            nnU-Net's training transforms treat it.
        device: where the network runs.
        step: grid step of the tiling.
        batch_size: windows per network call.
        log: receives one line per case.

    Returns:
        The cases' spatial shapes and the total number of windows.
    """
    network = network.to(device).eval()
    autocast = torch.autocast(device.type) if device.type == "cuda" else torch.autocast("cpu", enabled=False)

    def predict(x: torch.Tensor) -> torch.Tensor:
        with autocast:
            return network(x.to(device))

    shapes, total = [], 0
    with torch.no_grad():
        for identifier, data, seg in cases:
            data = torch.as_tensor(np.asarray(data[:], dtype=np.float32))
            seg = torch.as_tensor(np.asarray(seg[:]).astype(np.int64))
            seg = torch.where(seg == -1, 0, seg)
            windows = accumulate_tiles(tracker, predict, data, seg, step, batch_size)
            shapes.append(tuple(int(s) for s in data.shape[1:]))
            total += windows
            log(f"patch performance: {identifier} {tuple(data.shape[1:])}, {windows} windows")
    if not shapes:
        raise EfficientError("no cases to compute the patch-performance map from")
    return shapes, total


def recommend_and_save(folder: str, patch_map: PatchPerformanceMap, image_shapes: Sequence[Sequence[int]],
                       labels: dict, source: dict) -> tuple[StepRecommendation, dict[str, str]]:
    """Recommend a step with nnU-Net's Gaussian and write the three files into ``folder``.

    Args:
        folder: the fold folder.
        patch_map: the map.
        image_shapes: the cases' preprocessed spatial shapes (window counts, image edges).
        labels: ``dataset.json``'s ``labels`` (name → value), for the class names.
        source: what the map came from, recorded in the JSON.
    """
    recommendation = recommend_step(patch_map, nnunet_importance_map(patch_map.patch_size), image_shapes)
    names = {int(v): k for k, v in labels.items() if isinstance(v, int)}
    class_names = [names.get(c, str(c)) for c in range(patch_map.num_classes)]
    paths = save_patch_performance(folder, patch_map, recommendation, class_names, source)
    return recommendation, paths


def _validation_keys(preprocessed_dataset: str, fold: int | str, model_folder: str) -> list[str]:
    splits_file = os.path.join(preprocessed_dataset, "splits_final.json")
    if fold == "all":
        raise EfficientError(f"{model_folder}: fold 'all' was trained on every case, so it has no validation cases; "
                             "give held-out cases with -i IMAGES -ref LABELS")
    if not os.path.isfile(splits_file):
        raise InputFileError(splits_file, "missing, so the model's validation cases are unknown; give -i IMAGES "
                                          "-ref LABELS")
    try:
        with open(splits_file) as f:
            keys = json.load(f)[int(fold)]["val"]
    except (ValueError, IndexError, KeyError, TypeError) as problem:
        raise InputFileError(splits_file, f"has no validation cases for fold {fold} ({type(problem).__name__})") \
            from None
    if not keys:
        raise InputFileError(splits_file, f"fold {fold} lists no validation cases")
    return list(keys)


class ModelFolderMap:
    """Computes the map of one fold of a trained model folder (``nnunet-efficient patch_performance``).

    Args:
        model_folder: trained model folder (``TRAINER__PLANS__CONFIG``).
        fold: the fold (its checkpoint is used and its folder receives the files).
        device: where the network runs.
        checkpoint_name: checkpoint file in ``fold_X``.
    """

    def __init__(self, model_folder: str, fold: int | str, device: torch.device,
                 checkpoint_name: str = "checkpoint_final.pth"):
        from nnunet_efficient.inference.predictor import EfficientPredictor

        self.model_folder, self.fold, self.device, self.checkpoint_name = model_folder, fold, device, checkpoint_name
        self.predictor = EfficientPredictor(device=device, use_mirroring=False, allow_tqdm=False)
        self.predictor.initialize_from_trained_model_folder(model_folder, [fold], checkpoint_name)
        p = self.predictor
        check_softmax_labels(p.label_manager, model_folder)
        if p.configuration_manager.previous_stage_name is not None:
            raise EfficientError(f"{model_folder}: cascade configurations need previous-stage segmentations, which "
                                 "the patch-performance map does not provide")
        # nnU-Net loads each fold's weights just before predicting; this map uses the network directly
        getattr(p.network, "_orig_mod", p.network).load_state_dict(p.list_of_parameters[0])

    def preprocessed_cases(self) -> Iterable[Case]:
        """The fold's validation cases from ``nnUNet_preprocessed`` (as nnU-Net's final validation reads them)."""
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class

        p = self.predictor
        root = os.environ.get("nnUNet_preprocessed")
        if not root:
            raise EfficientError("nnUNet_preprocessed is not set, so the model's validation cases cannot be found; "
                                 "set it or give -i IMAGES -ref LABELS")
        dataset_folder = os.path.join(root, p.plans_manager.dataset_name)
        keys = _validation_keys(dataset_folder, self.fold, self.model_folder)
        data_folder = os.path.join(dataset_folder, p.configuration_manager.data_identifier)
        if not os.path.isdir(data_folder):
            raise InputFileError(data_folder, "missing (preprocess the dataset with this plans and configuration, "
                                              "or give -i IMAGES -ref LABELS)")
        dataset = infer_dataset_class(data_folder)(data_folder, keys)
        for key in keys:
            try:
                data, seg, _, _ = dataset.load_case(key)
            except (OSError, FileNotFoundError) as problem:
                raise InputFileError(os.path.join(data_folder, key), f"validation case cannot be read ({problem})") \
                    from None
            yield key, data, seg

    def raw_cases(self, images: str, labels: str) -> Iterable[Case]:
        """Labelled raw cases, preprocessed with the model's plans (every file checked before any work)."""
        from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

        from nnunet_efficient.inference.input_checks import check_case_files, list_cases

        p = self.predictor
        ending = p.dataset_json["file_ending"]
        channels = determine_num_input_channels(p.plans_manager, p.configuration_manager, p.dataset_json)
        if not os.path.isdir(labels):
            raise InputFileError(labels, "label folder does not exist")
        cases = []
        for files in list_cases(images, ending, channels):
            check_case_files(files, p.plans_manager.image_reader_writer_class, channels)
            case = case_id(files[0], ending)
            label = os.path.join(labels, case + ending)
            if not os.path.isfile(label):
                raise InputFileError(label, f"label of case '{case}' is missing")
            cases.append((case, files, label))
        preprocessor = p.configuration_manager.preprocessor_class(verbose=False)
        for case, files, label in cases:
            data, seg, _ = preprocessor.run_case(files, label, p.plans_manager, p.configuration_manager,
                                                 p.dataset_json)
            yield case, data, seg

    def compute(self, images: str | None = None, labels: str | None = None, step: float = MAP_TILE_STEP,
                batch_size: int = 1) -> tuple[StepRecommendation, dict[str, str]]:
        """Tile the cases, write ``patch_performance.{npz,json,png}`` into the fold folder, return the recommendation.

        Args:
            images: raw image folder of labelled held-out cases, or None for the fold's validation cases.
            labels: their label folder (with ``images``).
            step: grid step of the tiling.
            batch_size: windows per network call.
        """
        if (images is None) != (labels is None):
            raise EfficientError("give both -i IMAGES and -ref LABELS, or neither (the fold's validation cases)")
        if not 0 < step <= 1:
            raise EfficientError(f"--tile_step must be in (0, 1], got {step}")
        if batch_size < 1:
            raise EfficientError(f"--batch_size must be >= 1, got {batch_size}")
        p = self.predictor
        cases = self.preprocessed_cases() if images is None else self.raw_cases(images, labels)
        tracker = PatchErrorTracker(p.label_manager.num_segmentation_heads, p.configuration_manager.patch_size,
                                    p.label_manager.ignore_label)
        shapes, windows = tile_cases(tracker, p.network, cases, self.device, step, batch_size)
        source = {"cases": len(shapes), "windows": windows, "tile_step": step,
                  "checkpoint": self.checkpoint_name,
                  "from": "validation cases (nnUNet_preprocessed)" if images is None else os.path.abspath(images)}
        return recommend_and_save(os.path.join(self.model_folder, f"fold_{self.fold}"), tracker.compute(), shapes,
                                  p.dataset_json["labels"], source)
