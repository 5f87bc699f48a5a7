"""``EfficientPredictor``: nnU-Net's predictor with pluggable inference strategies.

Only the sliding-window step (``predict_sliding_window_return_logits``) is replaced; nnU-Net
keeps doing preprocessing, fold ensembling, resampling and export. Around the file-based entry
points the predictor adds what a user expects from a command: inputs are checked first, and
outputs are written to a staging folder and moved into place only when complete.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.helpers import dummy_context, empty_cache
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from tqdm import tqdm

from nnunet_efficient.inference.input_checks import (
    check_case_files,
    check_model_folder,
    check_output_folder,
    list_cases,
)
from nnunet_efficient.inference.strategies import InferenceStrategy, get_strategy
from nnunet_efficient.sampling.sliding_window import WindowRun
from nnunet_efficient.trainers import register_plugin_trainers

STAGING_PREFIX = ".nnunet_efficient_partial_"


def fold_reparameterisations(network: torch.nn.Module) -> None:
    """Bake training-time re-parameterisations (RepUX-Net's ``w * BFM``) into plain kernels.

    Only for a network this predictor built: nnU-Net loads each fold's (unfolded) weights into it
    again before predicting, and the folded modules convert them on loading. Folding is idempotent,
    so nested networks (an NMSW branch) may be reached twice.
    """
    for module in network.modules():
        fold = getattr(module, "fold_reparameterisation", None)
        if callable(fold):
            fold()


class EfficientPredictor(nnUNetPredictor):
    """An ``nnUNetPredictor`` whose sliding window is replaced by an inference strategy.

    Args:
        strategy: a registered strategy name (see ``nnunet_efficient.inference.strategies``) or an
            :class:`InferenceStrategy` instance. ``sliding_window`` reproduces nnU-Net's logits.
        sw_batch_size: windows per network call (mirrored copies run as batches of the same size).
        accumulate_dtype: dtype of the full-volume aggregation buffers. nnU-Net's float16 halves
            their memory; windows batched differently then round differently in the last float16
            bit (relative 1e-3). float32 removes that and logits overflow.
        cpu_bf16: run the network under bfloat16 autocast on the CPU. About 3× faster per window
            where the CPU has native bfloat16 (AVX512-BF16, AMX; docs/benchmarks.md), slower where
            it has not; labels then differ from nnU-Net's on a few voxels in 10⁵. Off by default.
        **strategy_options: options of a strategy given by name (e.g. ``k=5``).

    The other arguments are ``nnUNetPredictor``'s.

    Example:
        >>> predictor = EfficientPredictor(device=torch.device("cpu"), sw_batch_size=4)
        >>> predictor.initialize_from_trained_model_folder(model_folder, use_folds=(0,))
        >>> predictor.predict_from_files(input_folder, output_folder)
    """

    def __init__(self, tile_step_size: float = 0.5, use_gaussian: bool = True, use_mirroring: bool = True,
                 perform_everything_on_device: bool = True, device: torch.device = torch.device("cuda"),
                 verbose: bool = False, verbose_preprocessing: bool = False, allow_tqdm: bool = True,
                 strategy: str | InferenceStrategy = "sliding_window", sw_batch_size: int = 1,
                 accumulate_dtype: torch.dtype = torch.half, cpu_bf16: bool = False, **strategy_options):
        super().__init__(tile_step_size, use_gaussian, use_mirroring, perform_everything_on_device, device,
                         verbose, verbose_preprocessing, allow_tqdm)
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        self.strategy = strategy if isinstance(strategy, InferenceStrategy) \
            else get_strategy(strategy, **strategy_options)
        self.sw_batch_size = sw_batch_size
        self.accumulate_dtype = accumulate_dtype
        self.cpu_bf16 = cpu_bf16
        self.last_run: WindowRun | None = None
        self.last_network_seconds: float | None = None

    @property
    def mirror_axes(self) -> tuple[int, ...] | None:
        """Spatial axes for mirroring TTA, or None when it is off."""
        return self.allowed_mirroring_axes if self.use_mirroring else None

    @contextmanager
    def window_progress(self, total: int) -> Iterator[tqdm]:
        """A progress bar over the windows of one volume (hidden with ``allow_tqdm=False``)."""
        with tqdm(total=total, desc=self.strategy.name, unit="window", disable=not self.allow_tqdm,
                  leave=False) as bar:
            yield bar

    def _autocast(self):
        # nnU-Net enables autocast on CUDA only: on CPU it is slow (unless bfloat16 is native), on MPS unsupported.
        if self.device.type == "cuda":
            return torch.autocast("cuda", enabled=True)
        if self.device.type == "cpu" and self.cpu_bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return dummy_context()

    @torch.inference_mode()
    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> torch.Tensor:
        """Logits of one preprocessed ``(C, *spatial)`` volume, computed by the strategy."""
        if not isinstance(input_image, torch.Tensor) or input_image.ndim != 4:
            raise ValueError("input_image must be a (C, X, Y, Z) torch.Tensor")
        self.network = self.network.to(self.device)
        self.network.eval()
        empty_cache(self.device)
        start = time.perf_counter()
        with self._autocast():
            data, revert_padding = pad_nd_image(input_image, self.configuration_manager.patch_size,
                                                "constant", {"value": 0}, True, None)
            logits, run = self.strategy.predict(self, data)
            logits = logits[(slice(None), *revert_padding[1:])]
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.last_run, self.last_network_seconds = run, time.perf_counter() - start
        print(f"{self.strategy.describe()}: {run.windows} windows, {run.network_passes} network passes "
              f"(batch {self.sw_batch_size}, {'with' if self.mirror_axes else 'no'} mirroring) "
              f"in {self.last_network_seconds:.2f} s")
        empty_cache(self.device)
        return logits

    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds,
                                             checkpoint_name: str = "checkpoint_final.pth"):
        check_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        register_plugin_trainers()  # the checkpoint may name one of the plugin's trainers
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        fold_reparameterisations(self.network)
        self.strategy.check_predictor(self)

    def manual_initialization(self, *args, **kwargs):
        super().manual_initialization(*args, **kwargs)
        self.strategy.check_predictor(self)

    def predict_from_files(self, list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                           save_probabilities: bool = False, overwrite: bool = True,
                           num_processes_preprocessing: int = default_num_processes,
                           num_processes_segmentation_export: int = default_num_processes,
                           folder_with_segs_from_prev_stage: str = None, num_parts: int = 1, part_id: int = 0):
        cases, outputs = self._checked_cases_and_outputs(list_of_lists_or_source_folder,
                                                         output_folder_or_list_of_truncated_output_files,
                                                         save_probabilities, overwrite, num_parts, part_id)
        return self._staged(outputs, lambda staged: super(EfficientPredictor, self).predict_from_files(
            cases, staged, save_probabilities, True, num_processes_preprocessing,
            num_processes_segmentation_export, folder_with_segs_from_prev_stage, 1, 0))

    def predict_from_files_sequential(self, list_of_lists_or_source_folder,
                                      output_folder_or_list_of_truncated_output_files,
                                      save_probabilities: bool = False, overwrite: bool = True,
                                      folder_with_segs_from_prev_stage: str = None):
        cases, outputs = self._checked_cases_and_outputs(list_of_lists_or_source_folder,
                                                         output_folder_or_list_of_truncated_output_files,
                                                         save_probabilities, overwrite, 1, 0)
        return self._staged(outputs, lambda staged: super(EfficientPredictor, self).predict_from_files_sequential(
            cases, staged, save_probabilities, True, folder_with_segs_from_prev_stage))

    def _checked_cases_and_outputs(self, source, outputs, save_probabilities: bool, overwrite: bool,
                                   num_parts: int, part_id: int) -> tuple[list[list[str]], list[str] | None]:
        """Resolve and check this part's cases and their final output names (``overwrite`` applied)."""
        if not 0 <= part_id < num_parts:
            raise ValueError(f"part_id must be in [0, num_parts - 1], got part_id={part_id}, num_parts={num_parts}")
        file_ending = self.dataset_json["file_ending"]
        num_channels = determine_num_input_channels(self.plans_manager, self.configuration_manager,
                                                    self.dataset_json)
        if self.configuration_manager.previous_stage_name is not None:
            # the cascade's extra one-hot channels come from the previous stage, not from files
            num_channels -= len(self.label_manager.foreground_labels)
        if isinstance(source, str):
            cases = list_cases(source, file_ending, num_channels)
        else:
            cases = [list(c) for c in source]
        if isinstance(outputs, str):
            check_output_folder(outputs)
            outputs = [os.path.join(outputs, os.path.basename(c[0])[:-(len(file_ending) + 5)]) for c in cases]
        elif outputs is not None:
            outputs = list(outputs)
            if len(outputs) != len(cases):
                raise ValueError(f"{len(outputs)} output names for {len(cases)} cases")
            for folder in sorted({os.path.dirname(os.path.abspath(o)) for o in outputs}):
                check_output_folder(folder)
        cases = cases[part_id::num_parts]
        outputs = outputs[part_id::num_parts] if outputs is not None else None
        if outputs is not None and not overwrite:
            done = [os.path.isfile(o + file_ending) and (not save_probabilities or os.path.isfile(o + ".npz"))
                    for o in outputs]
            cases = [c for c, d in zip(cases, done) if not d]
            outputs = [o for o, d in zip(outputs, done) if not d]
            print(f"--continue_prediction: {sum(done)} case(s) already predicted, {len(cases)} to go")
        for case in cases:
            check_case_files(case, self.plans_manager.image_reader_writer_class, num_channels)
        return cases, outputs

    @staticmethod
    def _staged(outputs: list[str] | None, run):
        """Run ``run(staged_outputs)`` writing into staging folders, then move results into place.

        nnU-Net writes each output directly to its final name; a crash then leaves a truncated
        file that ``--continue_prediction`` would take for a finished case. Staging in a hidden
        folder beside the outputs (same file system, so the move is an atomic rename) prevents that.
        """
        if outputs is None:
            return run(None)
        if not outputs:
            return []
        folders = sorted({os.path.dirname(os.path.abspath(o)) for o in outputs})
        staging = {f: os.path.join(f, f"{STAGING_PREFIX}{os.getpid()}") for f in folders}
        try:
            for s in staging.values():
                os.makedirs(s, exist_ok=True)
            result = run([os.path.join(staging[os.path.dirname(os.path.abspath(o))], os.path.basename(o))
                          for o in outputs])
            for folder, s in staging.items():
                for name in os.listdir(s):
                    os.replace(os.path.join(s, name), os.path.join(folder, name))
            return result
        finally:
            for s in staging.values():
                shutil.rmtree(s, ignore_errors=True)
