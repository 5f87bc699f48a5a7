"""Sparse sliding window for stock nnU-Net models: full quality only where there is foreground.

A guide pass evaluates nnU-Net's grid at step 1.0 (windows side by side) without mirroring.
Its foreground voxels, grown by ``--sparse_margin`` voxels, form the hot region; the windows of
the requested grid (``-step_size``) that overlap it are evaluated again with the requested
mirroring and merged with nnU-Net's Gaussian, in place in the guide's buffer (one full-size
logits buffer in all, as for ``sliding_window``). Inside the hot region the logits equal
``sliding_window``'s; where only some selected windows reach, they are those windows' Gaussian
aggregation; everywhere else the guide's logits are kept. See
:mod:`nnunet_efficient.sampling.sparse`.

The gain is bounded by the share of windows that touch foreground: on BraTS (a tumour in a
large part of the brain) about half of them, on a small organ in a whole-body CT far fewer.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from nnunet_efficient.errors import EfficientError
from nnunet_efficient.inference.strategies.base import InferenceStrategy, StrategyOption, register_strategy
from nnunet_efficient.inference.strategies.sliding_window import run_windows
from nnunet_efficient.sampling.sparse import grow_mask, windows_overlapping

GUIDE_STEP = 1.0


@dataclass
class SparseSelection:
    """What the last sparse prediction chose.

    Attributes:
        guide_windows: windows of the step-1.0 guide grid (all evaluated, no mirroring).
        candidate_windows: windows of the requested grid.
        fine_windows: requested-grid windows evaluated at full quality.
        foreground_voxels: voxels the guide labels foreground.
        hot_voxels: those grown by the margin (where the output equals ``sliding_window``'s).
    """

    guide_windows: int = 0
    candidate_windows: int = 0
    fine_windows: int = 0
    foreground_voxels: int = 0
    hot_voxels: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def foreground_of(logits: torch.Tensor, has_regions: bool) -> torch.Tensor:
    """``(*spatial)`` foreground mask of ``(K, *spatial)`` logits, as nnU-Net would label them."""
    if has_regions:  # sigmoid > 0.5 for any region
        return (logits > 0).any(0)
    return logits.argmax(0) != 0


@register_strategy
class Sparse(InferenceStrategy):
    """Guide pass at step 1.0 without TTA, full quality only around the guide's foreground."""

    name = "sparse"
    options = (StrategyOption("--sparse_margin", int, 4,
                              "Voxels by which the guide's foreground is grown before choosing the windows "
                              "evaluated at full quality (there the output equals sliding_window's)."),)

    def __init__(self, **options):
        super().__init__(**options)
        self.last_selection: SparseSelection | None = None

    def validate(self) -> None:
        if self.settings["sparse_margin"] < 0:
            raise EfficientError(f"--sparse_margin must be >= 0, got {self.settings['sparse_margin']}")

    def predict(self, context, data):
        spatial = data.shape[1:]
        guide_slicers = context.slicers(spatial, GUIDE_STEP)
        guide, run = run_windows(context, data, guide_slicers, mirroring=False)
        candidates = context.slicers(spatial)
        selection = SparseSelection(guide_windows=len(guide_slicers), candidate_windows=len(candidates))
        self.last_selection = selection
        if context.step == GUIDE_STEP and not context.mirror_axes:
            # the full-quality pass would repeat the guide pass window for window
            selection.fine_windows = len(candidates)
            return guide, run

        foreground = foreground_of(guide, context.label_manager.has_regions).cpu()
        hot = grow_mask(foreground, self.settings["sparse_margin"])
        fine_slicers = windows_overlapping(hot, candidates)
        selection.foreground_voxels, selection.hot_voxels = int(foreground.sum()), int(hot.sum())
        selection.fine_windows = len(fine_slicers)
        if context.verbose:
            print(f"sparse: {selection.foreground_voxels} foreground voxels in the guide; "
                  f"{selection.fine_windows}/{selection.candidate_windows} windows at full quality")
        if not fine_slicers:
            return guide, run
        # the guide's logits are replaced wherever a fine window lands: merge_sparse's result, in place
        _, fine_run = run_windows(context, data, fine_slicers, out=guide)
        run += fine_run
        return guide, run
