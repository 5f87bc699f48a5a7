"""nnunet-efficient: cheaper nnU-Net v2 inference and training, as a plugin.

Layout, by floors from the ground up: each package imports only packages on lower floors (or,
without a circle, on its own floor); ``tests/test_layers.py`` checks it, lazy imports included.

0. ``errors``, ``common``: the ground floor. The error type and the small pieces every floor
   shares (one-line messages, atomic writes, case ids, network unwrapping, the
   ``nnUNet_extTrainer`` helpers, argument checks). Nothing here imports nnunetv2 when it is
   imported, nor any other part of the plugin.
1. ``networks``, ``sampling``, ``patch_performance``: the pure-PyTorch core (never imports
   nnunetv2): networks, window grids, samplers, aggregation, patch-performance maps.
2. ``planners``, ``dataset_checks``: nnU-Net planners; checks of raw and preprocessed datasets.
3. ``inference``: the predictor (an ``nnUNetPredictor`` subclass), its strategies, label export,
   the input/model/output-folder checks and the onnxruntime backend.
4. ``export`` (ONNX export, loads models through the predictor), ``training`` (trainer logic).
5. ``trainers``: the folder ``nnUNet_extTrainer`` points at, one-line re-exports of the trainers.
6. ``benchmark``: measurement, reports and the training comparison.
7. ``cli``: argument parsing only.
"""

__version__ = "0.1.0"
