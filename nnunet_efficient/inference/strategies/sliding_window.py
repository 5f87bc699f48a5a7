"""nnU-Net's Gaussian sliding window, with batched windows and batched mirroring."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.helpers import empty_cache

from nnunet_efficient.inference.strategies.base import InferenceStrategy, register_strategy
from nnunet_efficient.sampling.sliding_window import WindowRun, sliding_window_logits

if TYPE_CHECKING:
    from nnunet_efficient.inference.predictor import EfficientPredictor


def run_windows(predictor: EfficientPredictor, data: torch.Tensor, slicers: list,
                mirroring: bool = True, out: torch.Tensor | None = None) -> tuple[torch.Tensor, WindowRun]:
    """Evaluate ``slicers`` of ``data`` the way ``nnUNetPredictor`` does, batched.

    ``mirroring=False`` switches the predictor's mirroring TTA off for this call (cheap passes).
    ``out``: logits of an earlier pass to refine in place where ``slicers`` cover (see
    :func:`~nnunet_efficient.sampling.sliding_window.sliding_window_logits`); they stay where they are.

    The grid, Gaussian (σ = patch/8, peak 10, float16) and float16 aggregation buffers are
    nnU-Net's, so with the same slicers the logits equal ``nnUNetPredictor``'s. As in nnU-Net,
    buffers go to the device when ``perform_everything_on_device`` and fall back to the host
    when the device runs out of memory.
    """
    on_device = predictor.perform_everything_on_device and predictor.device.type != "cpu"
    patch_size = tuple(predictor.configuration_manager.patch_size)

    def attempt(results_device: torch.device) -> tuple[torch.Tensor, WindowRun]:
        importance = (compute_gaussian(patch_size, sigma_scale=1. / 8, value_scaling_factor=10,
                                       device=results_device) if predictor.use_gaussian else 1)
        with predictor.window_progress(len(slicers)) as progress:
            return sliding_window_logits(
                predictor.network, data.to(results_device), slicers,
                predictor.label_manager.num_segmentation_heads, importance,
                batch_size=predictor.sw_batch_size, mirror_axes=predictor.mirror_axes if mirroring else None,
                device=predictor.device, results_device=results_device,
                accumulate_dtype=predictor.accumulate_dtype, on_window=progress.update, out=out)

    if out is not None:
        return attempt(out.device)
    if not on_device:
        return attempt(torch.device("cpu"))
    try:
        return attempt(predictor.device)
    except torch.OutOfMemoryError:
        print("Prediction on device ran out of memory; aggregating on the CPU instead")
        empty_cache(predictor.device)
        return attempt(torch.device("cpu"))


@register_strategy
class SlidingWindow(InferenceStrategy):
    """Every window of nnU-Net's grid at the predictor's ``tile_step_size`` (``-step_size``)."""

    name = "sliding_window"

    def predict(self, predictor, data):
        return run_windows(predictor, data, predictor._internal_get_sliding_window_slicers(data.shape[1:]))
