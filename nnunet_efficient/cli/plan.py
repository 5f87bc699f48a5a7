"""``nnunet-efficient plan_and_preprocess``: nnUNetv2_plan_and_preprocess's arguments; -pl also
takes this plugin's planners."""

from __future__ import annotations

NAME = "plan_and_preprocess"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="nnUNetv2_plan_and_preprocess; -pl also accepts plugin planners (e.g. nnUNetPlannerCPU)",
        description="Fingerprint extraction, experiment planning and preprocessing, exactly as "
                    "nnUNetv2_plan_and_preprocess, except that -pl also accepts this plugin's planners.")
    p.add_argument("-d", nargs="+", type=int, required=True,
                   help="dataset ID(s), e.g. 4 5. Their training labels are checked against dataset.json first")
    p.add_argument("-fpe", default="DatasetFingerprintExtractor", help="fingerprint extractor class name")
    p.add_argument("-npfp", type=int, default=8, help="processes for fingerprint extraction. Default: 8")
    p.add_argument("--verify_dataset_integrity", action="store_true", help="check the raw dataset first")
    p.add_argument("--no_pp", action="store_true", help="fingerprint and plan only, no preprocessing")
    p.add_argument("--clean", action="store_true", help="recompute an existing fingerprint")
    p.add_argument("-pl", default="ExperimentPlanner",
                   help="planner class: a plugin planner (nnUNetPlannerCPU) or one of nnU-Net's "
                        "(ExperimentPlanner, nnUNetPlannerResEncM, ...). Default: ExperimentPlanner")
    p.add_argument("-gpu_memory_target", type=float, default=None,
                   help="memory target in GB that sizes patch and batch (planner default if unset)")
    p.add_argument("-preprocessor_name", default="DefaultPreprocessor", help="preprocessor class name")
    p.add_argument("-overwrite_target_spacing", nargs="+", default=None,
                   help="custom 3d_fullres target spacing (three numbers)")
    p.add_argument("-overwrite_plans_name", default=None,
                   help="plans identifier to write instead of the planner's default")
    p.add_argument("-c", nargs="+", default=["2d", "3d_fullres", "3d_lowres"],
                   help="configurations to preprocess. Default: 2d 3d_fullres 3d_lowres")
    p.add_argument("-np", type=int, nargs="+", default=None,
                   help="preprocessing processes, one number or one per configuration. "
                        "Default: 8 (2d), 4 (3d_fullres), 8 (3d_lowres), 4 otherwise")
    p.add_argument("--verbose", action="store_true", help="print more")
    p.add_argument("--no_pbar", action="store_true", help="no progress bars")


def run(args, extra) -> int:
    from nnunet_efficient.dataset_checks import check_raw_labels
    from nnunet_efficient.planners import resolve_planner
    from nnunet_efficient.planners.api import plan_and_preprocess

    resolve_planner(args.pl)  # an unknown planner fails before the labels are read
    for dataset in args.d:
        check_raw_labels(dataset, args.npfp)
    plans_identifier = plan_and_preprocess(
        args.d, args.pl, fingerprint_extractor=args.fpe, num_processes_fingerprint=args.npfp,
        verify_dataset_integrity=args.verify_dataset_integrity, clean=args.clean,
        gpu_memory_target=args.gpu_memory_target, preprocessor_name=args.preprocessor_name,
        overwrite_target_spacing=args.overwrite_target_spacing, overwrite_plans_name=args.overwrite_plans_name,
        configurations=args.c, num_processes=args.np, preprocess=not args.no_pp, verbose=args.verbose,
        progress_bar=not args.no_pbar)
    print(f"Plans identifier: {plans_identifier} (use -p {plans_identifier} to train and predict)")
    return 0
