"""``nnunet-efficient export``: a trained model folder's network to ONNX, checked with onnxruntime
(:mod:`nnunet_efficient.export.onnx`)."""

from __future__ import annotations

NAME = "export"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="export a trained model's network to ONNX (checked with onnxruntime) for --backend onnxruntime",
        description="Export the network of a trained model folder to ONNX (dynamic batch axis; dynamic spatial axes "
                    "where the architecture allows), check every file with onnxruntime against PyTorch on random "
                    "and real input, and write plans.json, dataset.json and onnx_export.json beside it, so that "
                    "`nnunet-efficient predict --backend onnxruntime -m OUT_DIR` runs on it.")
    p.add_argument("-m", required=True, help="trained model folder (TRAINER__PLANS__CONFIG)")
    p.add_argument("-f", nargs="+", default=("0",), help="fold(s) to export. Default: 0")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name. Default: checkpoint_final.pth")
    p.add_argument("-o", required=True, help="output folder (created if missing)")
    p.add_argument("-i", nargs="+", metavar="IMAGE",
                   help="channel files of one case for the real-input check. Default: the first case of "
                        "$nnUNet_raw/<dataset>/imagesTr, when present")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest allowed |onnxruntime - PyTorch| relative to max(1, largest |output|). Default: 1e-4")


def run(args, extra) -> int:
    from nnunet_efficient.export.onnx import DEFAULT_TOLERANCE, export_model_folder

    folds = [f if f == "all" else int(f) for f in args.f]
    report = export_model_folder(args.m, folds, args.o, checkpoint_name=args.chk, check_images=args.i,
                                 tolerance=DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance)
    print(report.summary())
    return 0 if report.passed else 1
