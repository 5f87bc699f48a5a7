"""``nnunet-efficient compare``: trainers trained at one budget, judged on the same held-out images."""

from __future__ import annotations

NAME = "compare"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        NAME, help="train several trainers at one budget and compare Dice, MACs and seconds on held-out images",
        description="Train each TRAINER[:PLANS[:CONFIGURATION]][@SEED] entry with stock nnUNetv2_train at the same "
                    "budget, predict the held-out images, and write one table (compare.csv, compare.md, compare.png) "
                    "into -o: Dice per class and mean, parameters, GMACs per window, seconds per training iteration, "
                    "seconds per predicted case, peak memory; with several seeds of an entry their mean and spread. "
                    "Checkpoints kept at fractions of each budget are scored too: learning curves of held-out Dice "
                    "against training minutes (compare_curve.csv, compare_curve.png). Resumes: runs already trained "
                    "or predicted under the same budget are not redone, an interrupted training continues.")
    p.add_argument("-d", required=True, help="dataset id or name (raw data in nnUNet_raw)")
    p.add_argument("-e", "--entries", nargs="+", required=True, metavar="TRAINER[:PLANS[:CONFIG]][@SEED]",
                   help="contenders, e.g. nnUNetTrainer:nnUNetPlansCPU nnUNetTrainerUXNet:nnUNetPlansUXNetCPU "
                        "(plans default nnUNetPlans, configuration 3d_fullres); missing plans are planned and "
                        "preprocessed with the planner that writes them. The first entry is the reference. @SEED "
                        "trains a seeded run (repeat the entry with other seeds for more runs); without it nnU-Net "
                        "trains unseeded")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="train every entry that names no @SEED N times, with seeds 0..N-1; the table gives each "
                        "entry's mean and min-max and says whether its difference to the first entry exceeds "
                        "that run-to-run spread")
    p.add_argument("--snapshots", type=float, nargs="*", default=None, metavar="FRACTION",
                   help="fractions of each entry's schedule after which a checkpoint is kept and scored on the "
                        "held-out images (points of the learning curves, inside one schedule; the end is always "
                        "scored). Give none for the end only. Default: 0.25 0.5 0.75")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--iterations", type=int, help="training iterations for every entry")
    budget.add_argument("--minutes", type=float,
                        help="minutes of training steps for every entry (CPU time of the training process on "
                             "-device cpu, wall time otherwise); iterations follow from a timing of each trainer")
    p.add_argument("--iterations_per_epoch", type=int, default=50,
                   help="iterations per nnU-Net epoch (validation runs a fifth as many). Default: 50")
    p.add_argument("-f", default="0", help="fold to train (0-4 or all). Default: 0")
    p.add_argument("-i", required=True, help="held-out images (CASE_XXXX<file_ending>), not used in training")
    p.add_argument("-ref", required=True, help="their reference labels (CASE<file_ending>)")
    p.add_argument("-o", required=True, help="output folder (state, logs, predictions, table)")
    p.add_argument("-device", default="cpu", choices=("cpu", "cuda", "mps"), help="Default: cpu")
    p.add_argument("--disable_tta", action="store_true", help="predict without mirroring")
    p.add_argument("--jobs", type=int, default=1,
                   help="trainings to run at once (each its own nnUNetv2_train process; with --minutes on the CPU "
                        "the budget is CPU time, so sharing cores keeps the comparison fair). Default: 1")
    p.add_argument("--repredict", action="store_true",
                   help="predict every entry again, trained or not before, so that seconds per case come from one "
                        "run (e.g. once the machine is quiet); training and timing are kept")
    p.add_argument("--timing_iterations", type=int, default=5,
                   help="training steps timed per entry, after two warm-up steps. Default: 5")


def run(args, extra) -> int:
    from nnunet_efficient.benchmark.compare import DEFAULT_SNAPSHOT_FRACTIONS, Budget, run_compare
    from nnunet_efficient.errors import EfficientError

    if args.f != "all" and not args.f.isdigit():
        raise EfficientError(f"-f must be a fold number or 'all', got '{args.f}'")
    if args.timing_iterations < 1:
        raise EfficientError(f"--timing_iterations must be >= 1, got {args.timing_iterations}")
    budget = Budget(iterations=args.iterations, minutes=args.minutes, iterations_per_epoch=args.iterations_per_epoch)
    paths = run_compare(args.d, args.entries, budget, args.f if args.f == "all" else int(args.f), args.i, args.ref,
                        args.o, device=args.device, use_mirroring=not args.disable_tta,
                        timing_iterations=args.timing_iterations, jobs=args.jobs,
                        repredict=args.repredict, seeds=args.seeds,
                        snapshot_fractions=DEFAULT_SNAPSHOT_FRACTIONS if args.snapshots is None else args.snapshots)
    print(f"table: {paths['markdown']}\nplot: {paths['png']}"
          + (f"\nlearning curves: {paths['curve_png']}" if "curve_png" in paths else ""))
    return 0
