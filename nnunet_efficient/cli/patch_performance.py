"""``nnunet-efficient patch_performance``: the patch-performance map of an already trained model's fold."""

from __future__ import annotations

NAME = "patch_performance"


def add_parser(subparsers) -> None:
    from nnunet_efficient.inference.patch_performance import MAP_TILE_STEP

    p = subparsers.add_parser(
        NAME, help="map where inside the patch a trained model errs, and recommend a sliding-window step",
        description="Tile labelled cases (default: the fold's validation cases from nnUNet_preprocessed) with the "
                    "model's patch, map the error by position inside the patch, and write patch_performance.npz, "
                    ".json (recommended -step_size, table of candidates) and .png into the fold folder. "
                    "`nnunet-efficient predict -step_size auto` then uses the recommendation.")
    p.add_argument("-m", required=True, help="trained model folder (TRAINER__PLANS__CONFIG)")
    p.add_argument("-f", required=True, help="fold (its checkpoint is used, its folder receives the files)")
    p.add_argument("-i", help="raw images of labelled held-out cases instead of the fold's validation cases")
    p.add_argument("-ref", help="their labels (CASE<file_ending>); with -i")
    p.add_argument("-device", default="cpu", choices=("cuda", "cpu", "mps"), help="Default: cpu")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name. Default: checkpoint_final.pth")
    p.add_argument("--tile_step", type=float, default=MAP_TILE_STEP,
                   help=f"grid step of the tiling that collects the map. Default: {MAP_TILE_STEP}")
    p.add_argument("--batch_size", type=int, default=1, help="windows per network call. Default: 1")


def run(args, extra) -> int:
    from nnunet_efficient.cli.predict import select_device
    from nnunet_efficient.inference.patch_performance import ModelFolderMap

    fold = args.f if args.f == "all" else int(args.f)
    mapper = ModelFolderMap(args.m, fold, select_device(args.device), args.chk)
    recommendation, paths = mapper.compute(args.i, args.ref, args.tile_step, args.batch_size)
    print(f"recommended -step_size {recommendation.step:g}: {recommendation.reason}")
    print(f"{'step':>6} {'windows':>9} {'time ×':>7} {'exp. Dice':>9} {'efficiency':>10}")
    for c in recommendation.candidates:
        print(f"{c.step:>6g} {c.windows:>9.1f} {c.relative_time:>7.2f} {c.expected_dice:>9.4f} {c.efficiency:>10.4f}")
    print(f"written: {paths['map']}, {paths['recommendation']}, {paths['plot']}")
    return 0
