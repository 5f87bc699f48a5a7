"""NMSW's baselines that need more than ``NMSWNetwork.forward_infer``: global only and zoom-in.

Both run on the weights of an NMSW model (SPEC 3.7: every strategy uses the same weights, so a
comparison measures the choice of windows only). Pure PyTorch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from nnunet_efficient.networks.nmsw import NMSWPipeline, downsample_image
from nnunet_efficient.sampling.windows import ZoomBox

_LINEAR_MODE = {1: "linear", 2: "bilinear", 3: "trilinear"}


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode=_LINEAR_MODE[len(size)], align_corners=False)


@torch.no_grad()
def global_only_infer(net: NMSWPipeline, image: torch.Tensor) -> dict:
    """The global branch alone: its logits resized (linear) to full resolution, no window.

    Args:
        net: an NMSW network (PyTorch or onnxruntime).
        image: ``(B, C_in, X, Y, Z)``.

    Returns:
        dict with ``logits`` ``(B, classes, X, Y, Z)`` float32 and ``global_logits``.
    """
    global_logits, _ = net.global_branch(downsample_image(image, net.global_shape))
    return {"logits": _resize(global_logits.float(), image.shape[2:]), "global_logits": global_logits}


@torch.no_grad()
def zoom_infer(net: NMSWPipeline, image: torch.Tensor) -> dict:
    """Zoom-in baseline: one local pass per foreground class of the global prediction.

    For each class present in ``argmax(global logits)`` (increasing class order), its bounding
    box (:meth:`NMSWNetwork.zoom_boxes`: mapped to full resolution, grown to at least one window)
    is cut out, resized (linear) to the window, segmented by ``local_net`` and its logits resized
    back to the box. Merge: the output starts as the upsampled global logits (as NMSW's merge for
    uncovered voxels); inside a class's box, every voxel that the zoomed pass or the current
    output labels as that class takes the zoomed logits, so each box decides the extent of its
    own class and leaves voxels of other classes alone (a later box can still move a voxel that
    an earlier box assigned). The learned aggregation is not used (the reference's zoom baseline
    has none).

    Args:
        net: an NMSW network (PyTorch or onnxruntime).
        image: ``(B, C_in, X, Y, Z)``; every axis at least the window.

    Returns:
        dict with ``logits`` ``(B, classes, X, Y, Z)`` float32, ``global_logits`` and ``boxes``
        (per sample, the :class:`~nnunet_efficient.sampling.windows.ZoomBox` list evaluated).
    """
    spatial = tuple(image.shape[2:])
    global_logits, _ = net.global_branch(downsample_image(image, net.global_shape))
    out = _resize(global_logits.float(), spatial).clone()
    boxes: list[list[ZoomBox]] = net.zoom_boxes(global_logits, spatial)
    for i, sample_boxes in enumerate(boxes):
        for box in sample_boxes:
            crop = _resize(image[i : i + 1][(..., *box.slices)], net.window_size)
            zoomed = _resize(net.local_pass(crop).float(), box.size)[0]
            region = out[i][(slice(None), *box.slices)]  # a view: writes land in ``out``
            take = (zoomed.argmax(0) == box.label) | (region.argmax(0) == box.label)
            region.copy_(torch.where(take, zoomed, region))
    return {"logits": out, "global_logits": global_logits, "boxes": boxes}
