"""``EfficientPredictor``: nnU-Net's predictor with pluggable inference strategies.

The sliding-window step (``predict_sliding_window_return_logits``) is replaced by a strategy;
nnU-Net keeps doing preprocessing and fold ensembling. When only labels are wanted (no
probabilities), the export runs class by class in this process (:mod:`.label_export`), so its memory
does not grow with the number of classes; with probabilities nnU-Net's own export runs.

Around the file-based entry points the predictor adds what a user expects from a command:
inputs and the model are checked first and problems end in one line (:mod:`.input_checks`,
:mod:`.model_folder`); outputs are written to a staging folder and each case is moved into place
as soon as it is complete, so an interrupted run leaves complete files only and
``--continue_prediction`` resumes it; a second process writing the same output folder (and the
same ``-part_id``) is refused (:mod:`.output_folder`). nnU-Net's worker processes start deaf to
Ctrl-C and end with a failed run (:mod:`.worker_processes`); the onnxruntime backend's files are
read by :mod:`.onnxruntime_backend`.
"""

from __future__ import annotations

import inspect
import multiprocessing
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.utilities.file_and_folder_operations import save_json
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.helpers import dummy_context, empty_cache
from nnunetv2.utilities.json_export import recursive_fix_for_json_export
from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot, determine_num_input_channels
from tqdm import tqdm

from nnunet_efficient.common.arguments import check_part
from nnunet_efficient.common.cases import case_id
from nnunet_efficient.common.plugin_env import register_plugin_trainers
from nnunet_efficient.errors import EfficientError
from nnunet_efficient.inference.input_checks import ModelInput, check_case_files, list_cases
from nnunet_efficient.inference.label_export import export_labels, logits_to_labels
from nnunet_efficient.inference.model_folder import check_model_folder, diagnose_model_folder, quiet_trainer_search
from nnunet_efficient.inference.output_folder import StagedOutputs, check_output_folder, remove_created_folders
from nnunet_efficient.inference.strategies import InferenceStrategy, StrategyContext, get_strategy
from nnunet_efficient.inference.worker_processes import terminate_processes, workers_deaf_to_ctrl_c
from nnunet_efficient.sampling.sliding_window import WindowRun


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
        bounded_export: when no probabilities are saved, export labels class by class in this
            process (peak memory independent of the number of classes, labels as nnU-Net's;
            :mod:`nnunet_efficient.inference.label_export`). False: nnU-Net's export in worker processes.
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
                 accumulate_dtype: torch.dtype = torch.half, cpu_bf16: bool = False, bounded_export: bool = True,
                 **strategy_options):
        super().__init__(tile_step_size, use_gaussian, use_mirroring, perform_everything_on_device, device,
                         verbose, verbose_preprocessing, allow_tqdm)
        if sw_batch_size < 1:
            raise ValueError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        self.strategy = strategy if isinstance(strategy, InferenceStrategy) \
            else get_strategy(strategy, **strategy_options)
        self.sw_batch_size = sw_batch_size
        self.accumulate_dtype = accumulate_dtype
        self.cpu_bf16 = cpu_bf16
        self.bounded_export = bounded_export
        #: where the network runs: "pytorch", or "onnxruntime" after :meth:`initialize_from_exported_folder`
        self.backend = "pytorch"
        self.last_run: WindowRun | None = None
        self.last_network_seconds: float | None = None
        self.last_export_seconds: float | None = None
        self._outputs: StagedOutputs | None = None  # the current file-based run's outputs

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

    def strategy_context(self) -> StrategyContext:
        """What the strategy may use of this predictor: network, grid, device, mirroring, batch size, managers."""
        return StrategyContext(
            network=self.network, device=self.device, step=self.tile_step_size, mirror_axes=self.mirror_axes,
            batch_size=self.sw_batch_size, accumulate_dtype=self.accumulate_dtype, use_gaussian=self.use_gaussian,
            perform_everything_on_device=self.perform_everything_on_device, plans_manager=self.plans_manager,
            configuration_manager=self.configuration_manager, label_manager=self.label_manager,
            trainer_name=getattr(self, "trainer_name", None), verbose=self.verbose, progress=self.window_progress)

    def step_used(self) -> float | None:
        """The sliding-window step the strategy evaluates: ``tile_step_size``, the model's own candidate
        grid's (``nmsw``, ``random_fg``) or None (no grid: ``zoom``, ``global``)."""
        return self.strategy.step_used(self.strategy_context())

    def check_step_used(self, requested: float | str | None = None) -> None:
        """Refuse the requested ``tile_step_size`` (``-step_size``) where the strategy would not use it.

        Args:
            requested: what the user gave, for the message (``"auto"``: ``tile_step_size`` is what it resolved to).

        Raises:
            EfficientError: the strategy evaluates another grid, or none.
        """
        used = self.step_used()
        if used == self.tile_step_size:
            return
        given = f"auto ({self.tile_step_size:g})" if requested == "auto" else f"{self.tile_step_size:g}"
        requested = f"-step_size {given} does not apply to strategy '{self.strategy.name}'"
        if used is None:
            raise EfficientError(f"{requested}: it evaluates no sliding-window grid; leave -step_size out")
        raise EfficientError(f"{requested}: it chooses among the model's candidate windows, nnU-Net's grid at step "
                             f"{used:g} (the plans' nmsw step); leave -step_size out or give {used:g}")

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
            logits, run = self.strategy.predict(self.strategy_context(), data)
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
        folds = check_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        register_plugin_trainers()  # the checkpoint may name one of the plugin's trainers
        try:
            with quiet_trainer_search():
                super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        except Exception as error:  # nnU-Net fails with a traceback: find which file is at fault
            problem = diagnose_model_folder(model_training_output_dir, folds, checkpoint_name, error)
            if problem is None:
                raise
            raise problem from None
        fold_reparameterisations(self.network)
        self.strategy.check(self.strategy_context())

    def manual_initialization(self, *args, **kwargs):
        super().manual_initialization(*args, **kwargs)
        self.strategy.check(self.strategy_context())

    def initialize_from_exported_folder(self, exported_folder: str, use_folds=None) -> None:
        """Load a folder written by ``nnunet-efficient export``: the network runs in onnxruntime.

        Preprocessing, the strategy, fold ensembling and the export of the labels stay as with
        :meth:`initialize_from_trained_model_folder`; no checkpoint or network code is read.

        Args:
            exported_folder: the export's output folder (``plans.json``, ``dataset.json``,
                ``onnx_export.json``, ``fold_X/*.onnx``).
            use_folds: folds to ensemble; None: every exported fold.

        Raises:
            EfficientError: a device other than the CPU, ``cpu_bf16``, or a strategy that needs the
                PyTorch backend; InputFileError for missing or unreadable files.
        """
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

        from nnunet_efficient.inference.onnxruntime_backend import (
            load_exported_network,
            read_export_jsons,
            read_export_metadata,
        )

        if self.device.type != "cpu":
            raise EfficientError(f"the onnxruntime backend runs on the CPU (onnxruntime's CPUExecutionProvider); "
                                 f"use -device cpu, not {self.device.type}")
        if self.cpu_bf16:
            raise EfficientError("--cpu_bf16 is an autocast of the PyTorch backend; the onnxruntime backend runs "
                                 "the exported float32 graph")
        if "onnxruntime" not in self.strategy.backends:
            raise EfficientError(f"strategy '{self.strategy.name}' needs the PyTorch backend (it uses the network's "
                                 f"modules); use --backend pytorch on the trained model folder")
        metadata = read_export_metadata(exported_folder)
        plans, dataset_json = read_export_jsons(exported_folder)
        network, parameters = load_exported_network(exported_folder, use_folds, metadata)
        plans_manager = PlansManager(plans)
        axes = metadata.get("inference_allowed_mirroring_axes")
        self.manual_initialization(network, plans_manager, plans_manager.get_configuration(metadata["configuration"]),
                                   parameters, dataset_json, metadata["trainer_name"],
                                   None if axes is None else tuple(axes))
        self.backend = "onnxruntime"

    def predict_from_files(self, list_of_lists_or_source_folder, output_folder_or_list_of_truncated_output_files,
                           save_probabilities: bool = False, overwrite: bool = True,
                           num_processes_preprocessing: int = default_num_processes,
                           num_processes_segmentation_export: int = default_num_processes,
                           folder_with_segs_from_prev_stage: str = None, num_parts: int = 1, part_id: int = 0):
        cases, outputs = self._checked_cases_and_outputs(list_of_lists_or_source_folder,
                                                         output_folder_or_list_of_truncated_output_files,
                                                         save_probabilities, overwrite, num_parts, part_id,
                                                         folder_with_segs_from_prev_stage)
        return self._staged(outputs, lambda staged: super(EfficientPredictor, self).predict_from_files(
            cases, staged, save_probabilities, True, num_processes_preprocessing,
            num_processes_segmentation_export, folder_with_segs_from_prev_stage, 1, 0), (part_id, num_parts))

    def predict_from_files_sequential(self, list_of_lists_or_source_folder,
                                      output_folder_or_list_of_truncated_output_files,
                                      save_probabilities: bool = False, overwrite: bool = True,
                                      folder_with_segs_from_prev_stage: str = None):
        cases, outputs = self._checked_cases_and_outputs(list_of_lists_or_source_folder,
                                                         output_folder_or_list_of_truncated_output_files,
                                                         save_probabilities, overwrite, 1, 0,
                                                         folder_with_segs_from_prev_stage)
        if save_probabilities or not self.bounded_export:
            return self._staged(outputs, lambda staged: super(EfficientPredictor, self).predict_from_files_sequential(
                cases, staged, save_probabilities, True, folder_with_segs_from_prev_stage))

        def run(staged):
            if staged:
                self._write_run_files(os.path.dirname(staged[0]), folder_with_segs_from_prev_stage)
            return self.predict_from_data_iterator(self._sequential_iterator(cases, staged,
                                                                             folder_with_segs_from_prev_stage))

        return self._staged(outputs, run)

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = default_num_processes):
        """nnU-Net's loop over preprocessed cases; without probabilities, each case's labels are exported
        class by class in this process (:func:`~nnunet_efficient.inference.label_export.export_labels`) before
        the next case starts, so at most one logits buffer exists at a time."""
        if save_probabilities or not self.bounded_export:
            return super().predict_from_data_iterator(data_iterator, save_probabilities,
                                                      num_processes_segmentation_export)
        results = []
        try:
            for item in data_iterator:
                data, ofile, properties = item["data"], item["ofile"], item["data_properties"]
                if isinstance(data, str):  # nnU-Net may hand a large case over as a .npy file
                    path, data = data, torch.from_numpy(np.load(data))
                    os.remove(path)
                print(f"\nPredicting {os.path.basename(ofile) if ofile is not None else tuple(data.shape)}:")
                logits = self.predict_logits_from_preprocessed_data(data)
                del data, item
                start = time.perf_counter()
                if ofile is not None:
                    export_labels(logits, properties, self.configuration_manager, self.plans_manager,
                                  self.dataset_json, ofile)
                    if self._outputs is not None:
                        self._outputs.publish_case(ofile)
                    results.append(None)
                else:
                    results.append(logits_to_labels(logits, self.plans_manager, self.configuration_manager,
                                                    self.label_manager, properties))
                del logits
                self.last_export_seconds = time.perf_counter() - start
                print(f"labels exported class by class in {self.last_export_seconds:.2f} s")
        finally:
            if isinstance(data_iterator, MultiThreadedAugmenter):
                data_iterator._finish()
            compute_gaussian.cache_clear()
            empty_cache(self.device)
        return results

    def _internal_get_data_iterator_from_lists_of_filenames(self, *args, **kwargs):
        return workers_deaf_to_ctrl_c(super()._internal_get_data_iterator_from_lists_of_filenames(*args, **kwargs))

    def _sequential_iterator(self, cases: list[list[str]], outputs: list[str] | None,
                             folder_with_segs_from_prev_stage: str | None) -> Iterator[dict]:
        """Preprocess ``cases`` one at a time in this process (``-npp 0 -nps 0``), as nnU-Net's
        ``predict_from_files_sequential`` does, as items for :meth:`predict_from_data_iterator`."""
        preprocessor = self.configuration_manager.preprocessor_class(verbose=self.verbose_preprocessing)
        ending = self.dataset_json["file_ending"]
        for files, ofile in zip(cases, outputs if outputs is not None else [None] * len(cases)):
            previous = None
            if folder_with_segs_from_prev_stage is not None:
                previous = os.path.join(folder_with_segs_from_prev_stage,
                                        case_id(files[0], ending) + ending)
            data, seg, properties = preprocessor.run_case(files, previous, self.plans_manager,
                                                          self.configuration_manager, self.dataset_json)
            if previous is not None:
                data = np.vstack((data, convert_labelmap_to_one_hot(seg[0], self.label_manager.foreground_labels,
                                                                    data.dtype)))
            yield {"data": torch.from_numpy(data), "data_properties": properties, "ofile": ofile}

    def _write_run_files(self, folder: str, folder_with_segs_from_prev_stage: str | None) -> None:
        # What nnU-Net's predict_from_files_sequential leaves beside the predictions (postprocessing reads them).
        arguments = {name: None for name in inspect.signature(nnUNetPredictor.predict_from_files_sequential).parameters
                     if name != "self"}
        arguments.update(list_of_lists_or_source_folder=None, output_folder_or_list_of_truncated_output_files=folder,
                         save_probabilities=False, overwrite=True,
                         folder_with_segs_from_prev_stage=folder_with_segs_from_prev_stage)
        recursive_fix_for_json_export(arguments)
        save_json(arguments, os.path.join(folder, "predict_from_raw_data_args.json"))
        save_json(self.dataset_json, os.path.join(folder, "dataset.json"), sort_keys=False)
        save_json(self.plans_manager.plans, os.path.join(folder, "plans.json"), sort_keys=False)

    def _checked_cases_and_outputs(self, source, outputs, save_probabilities: bool, overwrite: bool,
                                   num_parts: int, part_id: int, folder_with_segs_from_prev_stage: str | None = None,
                                   ) -> tuple[list[list[str]], list[str] | None]:
        """Resolve and check this part's cases and their final output names (``overwrite`` applied).

        An output folder created here is removed again when a later check fails (no partial output).
        """
        check_part(part_id, num_parts)
        file_ending = self.dataset_json["file_ending"]
        num_channels = determine_num_input_channels(self.plans_manager, self.configuration_manager,
                                                    self.dataset_json)
        if self.configuration_manager.previous_stage_name is not None:
            if folder_with_segs_from_prev_stage is None:
                raise EfficientError(f"this model is a cascade stage: give the predictions of "
                                     f"'{self.configuration_manager.previous_stage_name}' with -prev_stage_predictions")
            # the cascade's extra one-hot channels come from the previous stage, not from files
            num_channels -= len(self.label_manager.foreground_labels)
        if isinstance(source, str):
            cases = list_cases(source, file_ending, num_channels)
        else:
            cases = [list(c) for c in source]
        created: list[str] = []
        try:
            if isinstance(outputs, str):
                if isinstance(source, str) and os.path.realpath(outputs) == os.path.realpath(source):
                    raise EfficientError(f"{outputs}: the output folder is the input folder; give another -o "
                                         f"(predictions CASE{file_ending} would be mixed with the images)")
                created += check_output_folder(outputs)
                outputs = [os.path.join(outputs, case_id(c[0], file_ending)) for c in cases]
            elif outputs is not None:
                outputs = list(outputs)
                if len(outputs) != len(cases):
                    raise ValueError(f"{len(outputs)} output names for {len(cases)} cases")
                for folder in sorted({os.path.dirname(os.path.abspath(o)) for o in outputs}):
                    created += check_output_folder(folder)
            cases = cases[part_id::num_parts]
            outputs = outputs[part_id::num_parts] if outputs is not None else None
            if outputs is not None and not overwrite:
                done = [os.path.isfile(o + file_ending) and (not save_probabilities or os.path.isfile(o + ".npz"))
                        for o in outputs]
                cases = [c for c, d in zip(cases, done) if not d]
                outputs = [o for o, d in zip(outputs, done) if not d]
                print(f"--continue_prediction: {sum(done)} case(s) already predicted, {len(cases)} to go")
            model = ModelInput.of(self.plans_manager, self.configuration_manager, num_channels)
            for case in cases:
                check_case_files(case, self.plans_manager.image_reader_writer_class, num_channels, model)
        except BaseException:
            remove_created_folders(created)
            raise
        return cases, outputs

    def _staged(self, outputs: list[str] | None, run, part: tuple[int, int] = (0, 1)):
        """Run ``run(staged_outputs)`` with :class:`~.output_folder.StagedOutputs`: outputs are written into
        staging folders and move into place as they complete (:meth:`predict_from_data_iterator` moves
        each case as soon as it is written), the output folders claimed for this ``-part_id``."""
        self._outputs = None
        if outputs is None:
            return run(None)
        if not outputs:
            return []
        children = set(multiprocessing.active_children())

        def end_new_workers() -> None:
            # nnU-Net's preprocessing workers outlive a failed run and then print tracebacks once its
            # manager process is gone: end the processes this run started first
            terminate_processes(set(multiprocessing.active_children()) - children)

        self._outputs = StagedOutputs(outputs, self.dataset_json["file_ending"], part, on_failure=end_new_workers)
        with self._outputs as staged:
            return run(staged)

    @property
    def cases_written(self) -> int:
        """Cases of the current file-based run whose outputs are complete in their final place."""
        return 0 if self._outputs is None else self._outputs.cases_written
