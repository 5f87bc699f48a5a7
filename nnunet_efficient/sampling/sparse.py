"""Window selection and merging for the sparse sliding window.

Pure PyTorch (never imports nnunetv2). A cheap guide pass says where foreground is; its
foreground voxels, grown by a margin, form the *hot region*; every window of the full-quality
grid that overlaps the hot region is evaluated again at full quality. A window that covers a
hot voxel overlaps the hot region, so *all* full-quality windows covering a hot voxel are
selected: inside the hot region the merged logits are exactly the sliding window's. Outside
it, voxels covered by some selected windows get the Gaussian aggregation of those windows, and
the rest keeps the guide logits.

Slicers are nnU-Net's window index tuples ``(slice(None), *spatial)``; a 2D configuration's
slicers carry the slice index as an int.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

Slicer = tuple  # (slice(None), *spatial slices or ints), as nnU-Net builds them


def grow_mask(mask: torch.Tensor, margin: int) -> torch.Tensor:
    """Dilate a boolean mask by ``margin`` voxels along every axis (a cube, diagonals included).

    Separable (one max-pool per axis), so a large margin on a whole volume stays cheap.

    Args:
        mask: ``(*spatial)`` boolean, 1 to 3 axes.
        margin: voxels to grow by; 0 returns a copy.

    Returns:
        ``(*spatial)`` boolean.

    Example:
        >>> grow_mask(torch.tensor([False, False, True, False, False, False]), 2).tolist()
        [True, True, True, True, True, False]
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if margin == 0 or not mask.any():
        return mask.clone()
    grown = mask[None, None].float()
    pool = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[mask.ndim]
    for axis in range(mask.ndim):
        kernel = [1] * mask.ndim
        kernel[axis] = 2 * margin + 1
        padding = [k // 2 for k in kernel]
        grown = pool(grown, kernel_size=kernel, stride=1, padding=padding)
    return grown[0, 0] > 0


def covered_by(slicers: Sequence[Slicer], spatial_shape: Sequence[int]) -> torch.Tensor:
    """The union of the windows as a ``(*spatial)`` boolean mask."""
    region = torch.zeros(tuple(spatial_shape), dtype=torch.bool)
    for s in slicers:
        region[s[1:]] = True
    return region


def windows_overlapping(region: torch.Tensor, slicers: Sequence[Slicer]) -> list[Slicer]:
    """The slicers (in their order) whose window overlaps ``region`` (``(*spatial)`` boolean)."""
    return [s for s in slicers if bool(region[s[1:]].any())]


def merge_sparse(guide: torch.Tensor, fine: torch.Tensor, fine_slicers: Sequence[Slicer]) -> torch.Tensor:
    """Fine logits where a fine window covers, guide logits elsewhere.

    Args:
        guide: ``(K, *spatial)`` logits of the guide pass.
        fine: ``(K, *spatial)`` logits aggregated over ``fine_slicers`` only (undefined elsewhere).
        fine_slicers: the windows ``fine`` was aggregated from.

    Returns:
        ``(K, *spatial)`` logits on ``fine``'s device, in ``fine``'s dtype.
    """
    covered = covered_by(fine_slicers, fine.shape[1:])
    return torch.where(covered.to(fine.device), fine, guide.to(device=fine.device, dtype=fine.dtype))
