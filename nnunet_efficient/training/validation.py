"""nnU-Net's end-of-training validation with any predictor (e.g. an EfficientPredictor strategy).

``nnUNetTrainer.perform_actual_validation`` builds a stock ``nnUNetPredictor`` inline; a trainer
whose inference differs calls :func:`validate_with_predictor` instead. Same outputs as nnU-Net
(``fold_X/validation/*`` segmentations, ``summary.json`` from ``compute_metrics_on_folder``, the
same log lines and logger entries) and the same DDP scheme: each rank predicts
``val_keys[rank::world_size]``, all ranks meet at a barrier, rank 0 computes the metrics. The
only state touched is the trainer's network mode. Differences: no cascade/next-stage export,
and export runs in this process (no spawn pool: on a few CPU cores the network dominates).
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from torch import distributed as dist


def validate_with_predictor(trainer, predictor, save_probabilities: bool = False) -> dict | None:
    """Predict the trainer's validation cases with ``predictor`` and compute nnU-Net's metrics.

    Args:
        trainer: an initialised ``nnUNetTrainer`` (its split, dataset class, plans, output folder).
        predictor: an ``nnUNetPredictor`` already initialised with the trainer's network
            (``manual_initialization``); only ``predict_sliding_window_return_logits`` is used.
        save_probabilities: also write ``.npz`` probabilities.

    Returns:
        The metrics dict on rank 0, None on other ranks.
    """
    from nnunetv2.configuration import default_num_processes
    from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
    from nnunetv2.inference.export_prediction import export_prediction_from_logits

    trainer.network.eval()
    folder = os.path.join(trainer.output_folder, "validation")
    os.makedirs(folder, exist_ok=True)
    _, val_keys = trainer.do_split()
    world = dist.get_world_size() if trainer.is_ddp else 1
    val_keys = val_keys[trainer.local_rank::world]
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, val_keys,
                                    folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)
    for key in dataset.identifiers:
        trainer.print_to_log_file(f"predicting {key}")
        data, _, _, properties = dataset.load_case(key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "The given NumPy array is not writable"
            data = torch.from_numpy(np.asarray(data[:]))
        logits = predictor.predict_sliding_window_return_logits(data).cpu()
        export_prediction_from_logits(logits, properties, trainer.configuration_manager, trainer.plans_manager,
                                      trainer.dataset_json, os.path.join(folder, key), save_probabilities)
    if trainer.is_ddp:
        dist.barrier()
    if trainer.local_rank != 0:
        return None
    label_manager = trainer.label_manager
    metrics = compute_metrics_on_folder(
        os.path.join(trainer.preprocessed_dataset_folder_base, "gt_segmentations"), folder,
        os.path.join(folder, "summary.json"), trainer.plans_manager.image_reader_writer_class(),
        trainer.dataset_json["file_ending"],
        label_manager.foreground_regions if label_manager.has_regions else label_manager.foreground_labels,
        label_manager.ignore_label, chill=True, num_processes=default_num_processes * world)
    for label in metrics["mean"]:
        trainer.logger.log_summary(f"final_val/class_{label}_dice", metrics["mean"][label]["Dice"])
    trainer.logger.log_summary("final_val/foreground_dice", metrics["foreground_mean"]["Dice"])
    trainer.print_to_log_file("Validation complete", also_print_to_console=True)
    trainer.print_to_log_file("Mean Validation Dice: ", metrics["foreground_mean"]["Dice"], also_print_to_console=True)
    return metrics
