"""``nnunet-efficient benchmark``: compare inference strategies on labelled cases (time, MACs, memory, Dice)."""

from __future__ import annotations

import shlex
import sys

NAME = "benchmark"

VARIANT_HELP = (
    "Strategy variants to compare, each STRATEGY[:KEY=VALUE[,KEY=VALUE...]]. KEY is a strategy option "
    "without dashes (the strategy-name prefix may be dropped: sparse:margin=8), or tta=0/1 (mirroring "
    "for this variant), step=S or step=auto (its sliding-window step), bf16=0/1 (bfloat16 autocast on the CPU) "
    "or model=NAME (run it on a model of --models). "
    "Example: sliding_window sliding_window:tta=0 sparse nmsw:k=1 nmsw:k=5. The first sliding_window variant "
    "is the baseline. Default: sliding_window sparse")


def add_parser(subparsers) -> None:
    from nnunet_efficient.cli.predict import STEP_SIZE_HELP, step_size_argument
    from nnunet_efficient.inference.strategies import STRATEGIES

    p = subparsers.add_parser(
        NAME, help="compare inference strategies: time per stage, MACs, peak memory, Dice",
        description="Run several inference strategies with one model on labelled cases and write a report "
                    "(per-case CSV, summary CSV, JSON, Markdown table, Pareto plot) into -o.")
    p.add_argument("-i", required=True, help="input folder of CASE_XXXX<file_ending> images")
    p.add_argument("-ref", required=True, help="folder of reference labels CASE<file_ending>")
    p.add_argument("-m", required=True, help="trained model folder (TRAINER__PLANS__CONFIG)")
    p.add_argument("-f", nargs="+", default=("0",), help="folds to ensemble. Default: 0")
    p.add_argument("-o", required=True, help="report folder; segmentations go to -o/<variant>/")
    p.add_argument("-device", default="cpu", choices=("cuda", "cpu", "mps"), help="Default: cpu")
    p.add_argument("--strategies", nargs="+", default=("sliding_window", "sparse"), metavar="VARIANT",
                   help=VARIANT_HELP)
    p.add_argument("-step_size", type=step_size_argument, default=0.5, help=STEP_SIZE_HELP)
    p.add_argument("--disable_tta", action="store_true", help="no mirroring unless a variant says tta=1")
    p.add_argument("--batch_size", type=int, default=1, help="windows per network call. Default: 1")
    p.add_argument("--cpu_bf16", action="store_true", help="bfloat16 autocast on the CPU unless a variant says bf16=0")
    p.add_argument("--repeat", type=int, default=1,
                   help="timed passes per case and variant; the report takes their median. Default: 1")
    p.add_argument("--no_warmup", action="store_true", help="skip the untimed warm-up pass")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name. Default: checkpoint_final.pth")
    p.add_argument("--disable_progress_bar", action="store_true", help="no progress bar")
    p.add_argument("--models", nargs="+", default=(), metavar="NAME=FOLDER",
                   help="more trained model folders, by name, for variants with model=NAME (e.g. retrofit=PATH); "
                        "the report names each row's model")
    p.add_argument("--regions", nargs="+", default=(), metavar="NAME=LABELS",
                   help="also score unions of labels of a label-based model, e.g. WT=1,2,3,4 TC=1,3,4 ET=4 "
                        "(BraTS's whole tumour, tumour core, enhancing tumour): Dice per region and their mean, "
                        "next to the per-label Dice")
    group = p.add_argument_group("strategy options (defaults for every variant of that strategy)")
    seen = set()
    for strategy in STRATEGIES.values():
        for option in strategy.options:
            if option.flag not in seen:
                seen.add(option.flag)
                group.add_argument(option.flag, type=option.type, default=None,
                                   help=f"[{strategy.name}] {option.help} Default: {option.default}")


def run(args, extra) -> int:
    from nnunet_efficient.benchmark.regions import parse_regions
    from nnunet_efficient.benchmark.runner import Variant, run_benchmark
    from nnunet_efficient.cli.predict import select_device
    from nnunet_efficient.errors import EfficientError
    from nnunet_efficient.inference.strategies import STRATEGIES

    variants = [Variant.parse(spec) for spec in args.strategies]
    regions = parse_regions(args.regions)
    models = {}
    for spec in args.models:
        name, eq, folder = spec.partition("=")
        if not eq or not name or not folder or name in models:
            raise EfficientError(f"--models: '{spec}' is not NAME=FOLDER with a new NAME")
        models[name] = folder
    defaults = {o.dest: getattr(args, o.dest) for s in STRATEGIES.values() for o in s.options}
    paths = run_benchmark(
        args.i, args.ref, args.m, args.o, variants, folds=[f if f == "all" else int(f) for f in args.f],
        device=select_device(args.device), use_mirroring=not args.disable_tta, step_size=args.step_size,
        batch_size=args.batch_size, repeat=args.repeat, checkpoint_name=args.chk, cpu_bf16=args.cpu_bf16,
        strategy_defaults=defaults,
        warmup=not args.no_warmup, progress=not args.disable_progress_bar,
        command=shlex.join(["nnunet-efficient", *sys.argv[1:]]), models=models, regions=regions)
    print(f"report: {paths['markdown']}")
    return 0
