"""Patch-performance trainers: any trainer plus a map of its validation tiles (SPEC 7).

``nnUNetTrainerPatchPerformance`` is nnU-Net's trainer with :class:`PatchPerformanceMixin`; any
other trainer gets the same by the suffix ``_PatchPerformance`` (``nnUNetTrainerUXNet_PatchPerformance``,
``nnUNetTrainerNoMirroring_PatchPerformance``), derived on first use like the short schedules, so it
combines with them: ``nnUNetTrainerUXNet_PatchPerformance_20epochs_50iters``. The mixin changes two hooks:

- ``_build_loss`` wraps nnU-Net's loss in :class:`PatchPerformanceLoss` (switched off while
  training: training patches are augmented and foreground-biased, so their map misleads);
- ``perform_actual_validation`` runs nnU-Net's validation, then tiles every validation case
  (un-augmented, preprocessed as for validation) with the training patch at step 0.5, feeds the
  loss wrapper's tracker and writes ``patch_performance.{npz,json,png}`` into the fold folder.
  ``nnUNetv2_train ... --val`` recomputes it from the final checkpoint.

Exported to nnU-Net's trainer lookup by ``nnunet_efficient/trainers/patch_performance_trainers.py``.
"""

from __future__ import annotations

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_efficient.errors import EfficientError
from nnunet_efficient.inference.patch_performance import (
    MAP_TILE_STEP,
    check_softmax_labels,
    recommend_and_save,
    tile_cases,
)
from nnunet_efficient.patch_performance.tracking import PatchErrorTracker, PatchPerformanceLoss
from nnunet_efficient.training.derived import derived_trainer, find_base_trainer

SUFFIX = "_PatchPerformance"


class PatchPerformanceMixin:
    """Adds the end-of-training patch-performance map to an ``nnUNetTrainer`` (put it first in the bases)."""

    #: grid step used to tile the validation cases for the map
    patch_map_tile_step: float = MAP_TILE_STEP

    def _build_loss(self):
        check_softmax_labels(self.label_manager, f"trainer {type(self).__name__}")
        tracker = PatchErrorTracker(self.label_manager.num_segmentation_heads, self.configuration_manager.patch_size,
                                    self.label_manager.ignore_label)
        return PatchPerformanceLoss(super()._build_loss(), tracker, enabled=False)

    def perform_actual_validation(self, save_probabilities: bool = False):
        super().perform_actual_validation(save_probabilities)
        if self.local_rank == 0:  # one map per fold; the other ranks have nothing left to do
            self.compute_patch_performance()

    def compute_patch_performance(self):
        """Tile the validation cases, write the map files into the fold folder and log the recommendation."""
        if self.is_cascaded:
            self.print_to_log_file("patch performance: skipped, cascades (previous-stage inputs) are not supported")
            return None
        self.set_deep_supervision_enabled(False)
        network = self.network.module if self.is_ddp else self.network
        _, val_keys = self.do_split()
        dataset = self.dataset_class(self.preprocessed_dataset_folder, val_keys,
                                     folder_with_segs_from_previous_stage=self.folder_with_segs_from_previous_stage)
        tracker = self.loss.tracker
        tracker.reset()
        cases = ((key, *dataset.load_case(key)[:2]) for key in dataset.identifiers)
        shapes, windows = tile_cases(tracker, network, cases, self.device, self.patch_map_tile_step,
                                     max(1, self.batch_size), log=self.print_to_log_file)
        recommendation, paths = recommend_and_save(
            self.output_folder, tracker.compute(), shapes, self.dataset_json["labels"],
            {"cases": len(shapes), "windows": windows, "tile_step": self.patch_map_tile_step,
             "from": "validation cases (nnUNet_preprocessed)", "trainer": type(self).__name__})
        self.print_to_log_file(f"patch performance: recommended tile_step_size {recommendation.step:g} "
                               f"({recommendation.reason}); {paths['map']}", also_print_to_console=True)
        return recommendation


def _refuse_unsupported(base: type) -> None:
    from nnunet_efficient.training.nmsw import nnUNetTrainerNMSW

    if issubclass(base, nnUNetTrainerNMSW):
        raise EfficientError(f"{base.__name__}{SUFFIX}: NMSW trainers choose their windows themselves; "
                             "patch-performance maps are for sliding-window models")


def with_patch_performance(base: type) -> type:
    """``base`` with :class:`PatchPerformanceMixin`, named ``<base>_PatchPerformance`` (cached).

    Raises:
        EfficientError: ``base`` is an NMSW trainer (no sliding window to tune).
    """
    name = base.__name__ + SUFFIX

    def make() -> type:
        _refuse_unsupported(base)
        return type(name, (PatchPerformanceMixin, base), {
            "__module__": __name__, "__doc__": f"{base.__name__} plus the end-of-training patch-performance map."})

    return derived_trainer(name, make)


def patch_performance_variant(name: str) -> type:
    """Resolve ``<Trainer>_PatchPerformance`` to a trainer class, looking ``<Trainer>`` up as nnU-Net does.

    Raises:
        AttributeError: ``name`` lacks the suffix, its base trainer does not exist or already makes
            maps (the error nnU-Net's lookup expects from a module that lacks the class).
        EfficientError: the base trainer cannot make maps (NMSW).
    """
    if not name.endswith(SUFFIX) or name == SUFFIX:
        raise AttributeError(name)

    def make() -> type:
        base = find_base_trainer(name, name[:-len(SUFFIX)])
        if issubclass(base, PatchPerformanceMixin):
            raise AttributeError(name)
        return with_patch_performance(base)

    return derived_trainer(name, make)


class nnUNetTrainerPatchPerformance(PatchPerformanceMixin, nnUNetTrainer):
    """nnU-Net's trainer plus the end-of-training patch-performance map of its validation cases."""
