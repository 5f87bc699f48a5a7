"""nnU-Net's Gaussian sliding window, with batched windows and batched mirroring."""

from __future__ import annotations

import torch
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.helpers import empty_cache

from nnunet_efficient.inference.strategies.base import InferenceStrategy, StrategyContext, register_strategy
from nnunet_efficient.sampling.sliding_window import WindowRun, sliding_window_logits


def run_windows(context: StrategyContext, data: torch.Tensor, slicers: list,
                mirroring: bool = True, out: torch.Tensor | None = None) -> tuple[torch.Tensor, WindowRun]:
    """Evaluate ``slicers`` of ``data`` the way ``nnUNetPredictor`` does, batched.

    ``mirroring=False`` switches the context's mirroring TTA off for this call (cheap passes).
    ``out``: logits of an earlier pass to refine in place where ``slicers`` cover (see
    :func:`~nnunet_efficient.sampling.sliding_window.sliding_window_logits`); they stay where they are.

    The grid, Gaussian (σ = patch/8, peak 10, float16) and float16 aggregation buffers are
    nnU-Net's, so with the same slicers the logits equal ``nnUNetPredictor``'s. As in nnU-Net,
    buffers go to the device when ``perform_everything_on_device`` and fall back to the host
    when the device runs out of memory.
    """
    on_device = context.perform_everything_on_device and context.device.type != "cpu"
    patch_size = context.patch_size

    def attempt(results_device: torch.device) -> tuple[torch.Tensor, WindowRun]:
        importance = (compute_gaussian(patch_size, sigma_scale=1. / 8, value_scaling_factor=10,
                                       device=results_device) if context.use_gaussian else 1)
        with context.window_progress(len(slicers)) as progress:
            return sliding_window_logits(
                context.network, data.to(results_device), slicers,
                context.label_manager.num_segmentation_heads, importance,
                batch_size=context.batch_size, mirror_axes=context.mirror_axes if mirroring else None,
                device=context.device, results_device=results_device,
                accumulate_dtype=context.accumulate_dtype, on_window=progress.update, out=out)

    if out is not None:
        return attempt(out.device)
    if not on_device:
        return attempt(torch.device("cpu"))
    try:
        return attempt(context.device)
    except torch.OutOfMemoryError:
        print("Prediction on device ran out of memory; aggregating on the CPU instead")
        empty_cache(context.device)
        return attempt(torch.device("cpu"))


@register_strategy
class SlidingWindow(InferenceStrategy):
    """Every window of nnU-Net's grid at the predictor's ``tile_step_size`` (``-step_size``)."""

    name = "sliding_window"

    def predict(self, context, data):
        return run_windows(context, data, context.slicers(data.shape[1:]))
