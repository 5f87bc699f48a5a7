"""Patch-performance maps (SPEC 7): where inside a patch the network errs, and which overlap pays.

Pure PyTorch/NumPy (never imports nnunetv2), in three steps:

- :mod:`.tracking`: :class:`PatchErrorTracker` accumulates, per class, a per-voxel error by
  position inside the patch; :class:`PatchPerformanceLoss` feeds it from a training loss without
  changing the loss; :func:`accumulate_tiles` feeds it from a volume tiled with windows.
- :mod:`.recommendation`: the border band where the error rises, and a recommended sliding-window
  ``tile_step_size`` from the expected Dice and number of windows of candidate steps.
- :mod:`.files`: ``patch_performance.npz`` / ``.json`` / ``.png`` in a fold folder, and the
  ``-step_size auto`` resolution for a model's folds.

The nnU-Net adapters are ``nnunet_efficient/training/patch_performance.py`` (trainers) and
``nnunet_efficient/inference/patch_performance.py`` (maps for already trained models).
"""
