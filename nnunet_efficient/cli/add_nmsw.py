"""``nnunet-efficient add_nmsw``: add NMSW's ``3d_nmsw`` configuration to existing plans, naming the
trained 3d_fullres model to retrofit (:mod:`nnunet_efficient.planners.add_nmsw`)."""

from __future__ import annotations

NAME = "add_nmsw"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="add configuration 3d_nmsw to existing plans, to retrofit a trained 3d_fullres model with NMSW",
        description="Add NMSW's configuration 3d_nmsw (as nnUNetPlannerNMSW would plan it next to the same "
                    "3d_fullres) to the plans nnUNet_preprocessed/DATASET/PLANS.json, naming the trained "
                    "3d_fullres model whose weights become NMSW's local branch. Then train with "
                    "`nnUNetv2_train D 3d_nmsw FOLD -p PLANS -tr nnUNetTrainerNMSWRetrofit` (frozen local "
                    "branch) or nnUNetTrainerNMSWRetrofitFinetune; each fold loads the source model's same fold.")
    p.add_argument("-d", required=True, help="dataset ID or name")
    p.add_argument("-p", default="nnUNetPlans", help="plans identifier to extend. Default: nnUNetPlans")
    p.add_argument("-tr", default="nnUNetTrainer",
                   help="trainer of the source model (its folder TRAINER__PLANS__3d_fullres under nnUNet_results). "
                        "Default: nnUNetTrainer")
    p.add_argument("-chk", default="checkpoint_final.pth",
                   help="checkpoint file of the source model's fold. Default: checkpoint_final.pth")
    p.add_argument("-m", default=None,
                   help="source model folder (TRAINER__PLANS__3d_fullres, anywhere) instead of the one under "
                        "nnUNet_results; its network must be the plans' 3d_fullres network")


def run(args, extra) -> int:
    from nnunet_efficient.planners.add_nmsw import add_nmsw, retrofit_source

    source = retrofit_source(args.tr, args.p, checkpoint=args.chk, model_folder=args.m)
    plans_file = add_nmsw(args.d, args.p, source)
    print(f"{plans_file}: configuration 3d_nmsw added; retrofit from {source['model_folder']} "
          f"(fold_X/{source['checkpoint']}). Train with: nnUNetv2_train {args.d} 3d_nmsw FOLD -p {args.p} "
          f"-tr nnUNetTrainerNMSWRetrofit")
    return 0
