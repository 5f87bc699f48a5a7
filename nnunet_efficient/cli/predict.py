"""``nnunet-efficient predict``: nnUNetv2_predict's arguments (or ``-m MODEL_FOLDER``), plus
``--strategy``, ``--batch_size``, the strategies' options and ``-step_size auto``."""

from __future__ import annotations

import argparse
import multiprocessing
import os

NAME = "predict"


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def step_size_argument(text: str) -> float | str:
    """``-step_size``: a number, or ``auto`` (the model's patch-performance recommendation)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1] or 'auto', got '{text}'") from None


STEP_SIZE_HELP = ("sliding-window step as a fraction of the patch (0 < s <= 1), or 'auto': the step recommended by "
                  "the model's patch-performance map (fold_X/patch_performance.json; nnU-Net's 0.5 without one). "
                  "Default: 0.5")
#: the sliding-window step when -step_size is not given (nnU-Net's)
DEFAULT_STEP_SIZE = 0.5


def add_nnunet_predict_arguments(p) -> None:
    """nnUNetv2_predict's flags (``-d``/``-c`` optional here because ``-m`` may replace them)."""
    p.add_argument("-i", required=True, help="input folder of CASE_XXXX<file_ending> images")
    p.add_argument("-o", required=True, help="output folder (created if missing)")
    p.add_argument("-d", help="dataset name or ID (with -tr/-p/-c, finds the model in nnUNet_results)")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier. Default: nnUNetPlans")
    p.add_argument("-tr", default="nnUNetTrainer", help="trainer of the model. Default: nnUNetTrainer")
    p.add_argument("-c", help="configuration, e.g. 3d_fullres")
    p.add_argument("-m", help="trained model folder (TRAINER__PLANS__CONFIG); replaces -d/-tr/-p/-c")
    p.add_argument("-f", nargs="+", default=None,
                   help="folds to ensemble. Default: 0 1 2 3 4 (every exported fold with --backend onnxruntime)")
    # None: not given (DEFAULT_STEP_SIZE), so that a step a strategy would ignore is refused only when asked for
    p.add_argument("-step_size", type=step_size_argument, default=None, help=STEP_SIZE_HELP)
    p.add_argument("--disable_tta", action="store_true", help="no mirroring test-time augmentation")
    p.add_argument("--verbose", action="store_true", help="print more")
    p.add_argument("--save_probabilities", action="store_true", help="also write .npz probabilities")
    p.add_argument("--continue_prediction", action="store_true", help="skip cases already predicted")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name. Default: checkpoint_final.pth")
    p.add_argument("-npp", type=int, default=_env_int("nnUNet_npp", 3),
                   help="preprocessing processes (0 with -nps 0: no multiprocessing). Default: 3")
    p.add_argument("-nps", type=int, default=_env_int("nnUNet_nps", 3),
                   help="export processes (0 with -npp 0: no multiprocessing). Default: 3")
    p.add_argument("-prev_stage_predictions", help="previous-stage predictions (cascade)")
    p.add_argument("-num_parts", type=int, default=1, help="split the cases into this many parts. Default: 1")
    p.add_argument("-part_id", type=int, default=0, help="which part this call predicts (0-based). Default: 0")
    p.add_argument("-device", default=None, choices=("cuda", "cpu", "mps"),
                   help="Default: cuda (cpu with --backend onnxruntime)")
    p.add_argument("--disable_progress_bar", action="store_true", help="no progress bars")
    p.add_argument("--not_on_device", action="store_true", help="keep aggregation buffers on the host")


def add_parser(subparsers) -> None:
    from nnunet_efficient.inference.strategies import add_strategy_arguments

    p = subparsers.add_parser(
        NAME, help="nnUNetv2_predict with inference strategies (same flags, plus --strategy)",
        description="Predict like nnUNetv2_predict (same flags; -m MODEL_FOLDER as in "
                    "nnUNetv2_predict_from_modelfolder) with a choice of inference strategy.")
    add_nnunet_predict_arguments(p)
    p.add_argument("--batch_size", type=int, default=1,
                   help="windows per network call; mirrored copies are batched too. Default: 1")
    p.add_argument("--backend", choices=("pytorch", "onnxruntime"), default="pytorch",
                   help="pytorch: the trained model folder's checkpoints. onnxruntime: a folder written by "
                        "`nnunet-efficient export` (give it with -m; -chk does not apply; runs on the CPU, so -device "
                        "defaults to cpu). Every built-in strategy applies to both. Default: pytorch")
    p.add_argument("--cpu_bf16", action="store_true",
                   help="bfloat16 autocast on the CPU: faster where the CPU has native bfloat16, a few labels "
                        "change (docs/benchmarks.md)")
    add_strategy_arguments(p)


def resolve_model_folder(args) -> str:
    from nnunet_efficient.errors import EfficientError

    if args.m:
        return args.m
    if not (args.d and args.c):
        raise EfficientError("give either -m MODEL_FOLDER or -d DATASET and -c CONFIGURATION")
    from nnunetv2.utilities.file_path_utilities import get_output_folder

    try:
        return get_output_folder(args.d, args.tr, args.p, args.c)
    except RuntimeError as error:  # unset nnUNet_results, unknown dataset
        raise EfficientError(str(error).splitlines()[0]) from None


def select_device(name: str):
    import torch

    if name == "cpu":
        # as nnUNetv2_predict: every core for the network on CPU
        torch.set_num_threads(multiprocessing.cpu_count())
        return torch.device("cpu")
    if name == "cuda":
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        return torch.device("cuda")
    return torch.device("mps")


def run(args, extra) -> int:
    from nnunet_efficient.common.arguments import check_batch_size, check_part, check_step_size
    from nnunet_efficient.errors import EfficientError
    from nnunet_efficient.inference.predictor import EfficientPredictor
    from nnunet_efficient.inference.strategies import STRATEGIES

    check_part(args.part_id, args.num_parts)
    if args.step_size is not None:
        check_step_size(args.step_size)
    check_batch_size(args.batch_size)
    onnx = getattr(args, "backend", "pytorch") == "onnxruntime"
    if onnx and not args.m:
        raise EfficientError("--backend onnxruntime reads a folder written by `nnunet-efficient export`: "
                             "give it with -m")
    if onnx and args.chk != "checkpoint_final.pth":
        raise EfficientError("-chk does not apply to --backend onnxruntime: the export was made from one checkpoint "
                             "(nnunet-efficient export -chk)")
    model_folder = resolve_model_folder(args)
    folds = [f if f == "all" else int(f) for f in (args.f or ("0", "1", "2", "3", "4"))]
    # with auto, the step is read from the model folder once the predictor has checked that folder
    step_size = DEFAULT_STEP_SIZE if args.step_size in (None, "auto") else args.step_size
    predictor = EfficientPredictor(
        tile_step_size=step_size, use_gaussian=True, use_mirroring=not args.disable_tta,
        perform_everything_on_device=not args.not_on_device,
        device=select_device(args.device or ("cpu" if onnx else "cuda")),
        verbose=args.verbose, verbose_preprocessing=args.verbose, allow_tqdm=not args.disable_progress_bar,
        strategy=STRATEGIES[args.strategy].from_args(args), sw_batch_size=args.batch_size, cpu_bf16=args.cpu_bf16)
    if onnx:
        # an export holds the folds it was given: by default, those
        predictor.initialize_from_exported_folder(model_folder, None if args.f is None else folds)
    else:
        predictor.initialize_from_trained_model_folder(model_folder, folds, checkpoint_name=args.chk)
    if args.step_size == "auto":
        from nnunet_efficient.patch_performance.files import resolve_auto_step

        predictor.tile_step_size, message = resolve_auto_step(model_folder, folds)
        print(message)
    if args.step_size is not None:  # an NMSW strategy has its own candidate grid (or none): refuse another step
        predictor.check_step_used(args.step_size)
    try:
        if args.npp == 0 and args.nps == 0:
            if args.num_parts != 1:
                raise EfficientError("-num_parts needs multiprocessing (-npp/-nps > 0)")
            predictor.predict_from_files_sequential(args.i, args.o, save_probabilities=args.save_probabilities,
                                                    overwrite=not args.continue_prediction,
                                                    folder_with_segs_from_prev_stage=args.prev_stage_predictions)
        else:
            predictor.predict_from_files(args.i, args.o, save_probabilities=args.save_probabilities,
                                         overwrite=not args.continue_prediction,
                                         num_processes_preprocessing=args.npp,
                                         num_processes_segmentation_export=args.nps,
                                         folder_with_segs_from_prev_stage=args.prev_stage_predictions,
                                         num_parts=args.num_parts, part_id=args.part_id)
    except KeyboardInterrupt:
        # outputs move into place case by case, so what exists is complete and --continue_prediction resumes
        raise EfficientError(f"interrupted; {predictor.cases_written} case(s) in {args.o} are complete, rerun with "
                             f"--continue_prediction to predict the rest") from None
    return 0
