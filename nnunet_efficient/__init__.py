"""nnunet-efficient: cheaper nnU-Net v2 inference and training, as a plugin.

Layout (each layer only imports the ones above it):

- ``networks``, ``sampling``: pure PyTorch (no nnU-Net import) networks, window grids,
  samplers and aggregation.
- ``inference``, ``trainers``, ``planners``: thin adapters between nnU-Net's objects and that core.
- ``cli``: argument parsing only.
"""

__version__ = "0.1.0"
