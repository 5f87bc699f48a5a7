"""Peak host memory and export time of stock ``nnUNetv2_predict`` vs ``nnunet-efficient predict``
as the number of classes grows.

Usage:
    python scripts/memory_vs_classes.py [--classes 2 14 105] [--image_spacing 1.5 1.5 5]
        [--model_spacing 3] [--patch 64 64 64] [--features 4 8 16 32] [--work /tmp/nnunet_efficient_memory]
        [--out docs/memory_vs_classes]

Builds one anisotropic CT case from ``../shared/data/TotalSegmentator_examples/example_ct.nii.gz``
(366 × 303 × 336 mm at 3 mm, resampled linearly to ``--image_spacing``, x y z in mm) and, per
number of classes C, a stock nnU-Net model folder with random weights (PlainConvUNet, CT
normalisation, isotropic ``--model_spacing``, no mirroring so the network pass stays short).
Each C is predicted by both commands with the same flags and their defaults otherwise
(``-npp 3 -nps 3``); a sampler sums the proportional set size (PSS, shared pages split between
processes) of the command's whole process tree every 0.1 s, which is what the machine must
provide. Export seconds run from the end of the network pass (stock: "sending off prediction";
plugin: the strategy's summary line) to the label file's completion (stock: "Segmentation export
complete"; plugin: "labels exported"). Prints a table and writes ``--out``.md, .json and .png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EXAMPLE_CT = REPO.parent / "shared" / "data" / "TotalSegmentator_examples" / "example_ct.nii.gz"
GIB = 2 ** 30
MIB = 2 ** 20


# ---------------------------------------------------------------- process-tree memory


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        tree.setdefault(ppid, []).append(int(entry))
    return tree


def _memory_bytes(pid: int) -> tuple[int, int]:
    """(PSS, USS) of one process: proportional set size, and its private pages alone."""
    pss = uss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
                elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                    uss += int(line.split()[1]) * 1024
    except OSError:
        pass
    return pss, uss


class TreeMemory(threading.Thread):
    """Samples the summed PSS and USS of a process and all its descendants.

    PSS splits shared pages (torch's libraries) among every process that maps them, this
    machine's other users included, so it moves with them by a few hundred MiB; USS counts the
    tree's private pages only, where every buffer that grows with the classes lives.
    """

    def __init__(self, pid: int, interval: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.peak, self.peak_processes, self.peak_private = 0, 0, 0
        self.trace: list[tuple[float, int, int]] = []
        self.stop = threading.Event()
        self.start_time = time.perf_counter()

    def run(self):
        while not self.stop.is_set():
            tree, pids, todo = _children(), [], [self.pid]
            while todo:
                pid = todo.pop()
                pids.append(pid)
                todo.extend(tree.get(pid, []))
            sizes = [_memory_bytes(p) for p in pids]
            total, private = sum(s[0] for s in sizes), sum(s[1] for s in sizes)
            self.trace.append((time.perf_counter() - self.start_time, total, private))
            if total > self.peak:
                self.peak, self.peak_processes = total, len(pids)
            self.peak_private = max(self.peak_private, private)
            self.stop.wait(self.interval)


def run_measured(command: list[str], env: dict[str, str], log: Path) -> dict:
    """Run ``command``; return its wall seconds, peak tree PSS, and the time of each stdout line."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               bufsize=1)
    sampler = TreeMemory(process.pid)
    sampler.start()
    lines = []
    with open(log, "w") as f:
        for line in process.stdout:
            lines.append((time.perf_counter() - start, line.rstrip()))
            f.write(f"{lines[-1][0]:9.2f}  {line}")
    code = process.wait()
    sampler.stop.set()
    sampler.join()
    if code != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({code}); see {log}")
    return {"seconds": time.perf_counter() - start, "peak_bytes": sampler.peak,
            "peak_private_bytes": sampler.peak_private, "peak_processes": sampler.peak_processes, "lines": lines,
            "trace": sampler.trace}


def _time_of(lines: list[tuple[float, str]], pattern: str) -> float:
    for t, line in lines:
        if re.search(pattern, line):
            return t
    raise RuntimeError(f"no output line matches {pattern!r}")


EXPORT_MARKERS = {"stock": ("sending off prediction to background worker", "Segmentation export complete"),
                  "plugin": (r"windows, \d+ network passes", "labels exported class by class")}


# ---------------------------------------------------------------- the case and the models


def make_case(image_spacing: list[float], folder: Path) -> tuple[Path, tuple[int, ...]]:
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "ct_0000.nii.gz"
    source = sitk.ReadImage(str(EXAMPLE_CT))
    size = [int(round(n * s / t)) for n, s, t in zip(source.GetSize(), source.GetSpacing(), image_spacing)]
    image = sitk.Resample(source, size, sitk.Transform(), sitk.sitkLinear, source.GetOrigin(), image_spacing,
                          source.GetDirection(), -1024, sitk.sitkInt16)
    sitk.WriteImage(image, str(path), True)
    return path, tuple(size)


def plans_for(spacing: float, patch: list[int], features: list[int]) -> dict:
    n = len(features)
    configuration = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": patch, "median_image_size_in_voxels": patch, "spacing": [spacing] * 3,
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {
                "n_stages": n, "features_per_stage": features, "conv_op": "torch.nn.modules.conv.Conv3d",
                "kernel_sizes": [[3, 3, 3]] * n, "strides": [[1, 1, 1]] + [[2, 2, 2]] * (n - 1),
                "n_conv_per_stage": [2] * n, "n_conv_per_stage_decoder": [2] * (n - 1), "conv_bias": True,
                "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": False,
    }
    return {
        "dataset_name": "", "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [spacing] * 3,
        "original_median_shape_after_transp": patch, "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": configuration},
        "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 3000.0, "mean": 40.0, "median": 40.0, "min": -1024.0, "percentile_00_5": -1000.0,
            "percentile_99_5": 1500.0, "std": 350.0}},
    }


def write_model(results: Path, dataset_id: int, classes: int, plans: dict) -> str:
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    name = f"Dataset{dataset_id:03d}_MemoryC{classes}"
    folder = results / name / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    (folder / "fold_0").mkdir(parents=True, exist_ok=True)
    plans = dict(plans, dataset_name=name)
    labels = {"background": 0, **{f"class_{c}": c for c in range(1, classes)}}
    dataset = {"channel_names": {"0": "CT"}, "labels": labels, "numTraining": 0, "file_ending": ".nii.gz"}
    (folder / "plans.json").write_text(json.dumps(plans))
    (folder / "dataset.json").write_text(json.dumps(dataset))
    manager = PlansManager(plans)
    torch.manual_seed(0)
    network = nnUNetTrainer.build_network_architecture(manager, manager.get_configuration("3d_fullres"), 1, classes,
                                                       enable_deep_supervision=False)
    torch.save({"network_weights": network.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               folder / "fold_0" / "checkpoint_final.pth")
    return name


# ---------------------------------------------------------------- report


def preprocessed_shape(size_xyz: tuple[int, ...], image_spacing: list[float], model_spacing: float) -> list[int]:
    # nnU-Net's compute_new_shape on the (z, y, x) array
    return [int(round(n * s / model_spacing)) for n, s in zip(size_xyz[::-1], image_spacing[::-1])]


def write_report(rows: list[dict], settings: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    classes = [r["classes"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4))
    for tool, marker, color, label in (("stock", "o", "C0", "nnUNetv2_predict (stock)"),
                                       ("plugin", "s", "C1", "nnunet-efficient predict")):
        ax.plot(classes, [r[tool]["peak_bytes"] / GIB for r in rows], marker + "-", color=color, label=f"{label}, PSS")
        ax.plot(classes, [r[tool]["peak_private_bytes"] / GIB for r in rows], marker + "--", color=color,
                label=f"{label}, private")
    base = rows[0]["plugin"]["peak_private_bytes"] - rows[0]["accumulator_bytes"]
    ax.plot(classes, [(base + r["accumulator_bytes"]) / GIB for r in rows], "k:",
            label="plugin private at C=min + float16 accumulator growth")
    ax.set_xlabel("classes C")
    ax.set_ylabel("peak host memory of the process tree (GiB)")
    ax.set_title(f"CT {' × '.join(map(str, settings['image_shape']))} voxels, model at "
                 f"{settings['model_spacing']:g} mm", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)

    first, last = rows[0], rows[-1]
    growth = last["plugin"]["peak_private_bytes"] - first["plugin"]["peak_private_bytes"]
    pss_growth = last["plugin"]["peak_bytes"] - first["plugin"]["peak_bytes"]
    stock_growth = last["stock"]["peak_bytes"] - first["stock"]["peak_bytes"]
    accumulator_growth = last["accumulator_bytes"] - first["accumulator_bytes"]
    window_growth = (last["classes"] - first["classes"]) * int(np.prod(settings["patch"])) * 4
    lines = [
        "# Peak memory and export time vs number of classes",
        "",
        f"Generated by `{settings['command']}` on {settings['machine']} (torch threads: the commands' own "
        f"choice, all CPUs for `-device cpu`).",
        "",
        f"**Case.** {settings['case_description']}. The model (random weights, PlainConvUNet "
        f"{settings['features']}, patch {settings['patch']}, CT normalisation) works at "
        f"{settings['model_spacing']} mm: the network sees "
        f"{' × '.join(map(str, settings['preprocessed_shape'][::-1]))} voxels (x y z), and the export resamples "
        f"the logits to the image's "
        f"{' × '.join(map(str, settings['image_shape']))} voxels with nnU-Net's anisotropic rule (linear in-plane, "
        f"nearest between slices). This is smaller "
        f"than a whole-body CT at 1.5 mm (about 330 × 330 × 1000 voxels), which the 2 shared CPU cores of the "
        f"machine would need hours for; the memory terms that grow with C scale with the voxel count.",
        "",
        f"**Commands** (same flags, defaults otherwise: `-npp 3 -nps 3`): `nnUNetv2_predict {settings['flags']}` "
        f"and `nnunet-efficient predict {settings['flags']}`. **Memory**: peak of the summed proportional set size "
        "(PSS) of the command's process tree, sampled every 0.1 s. **Export**: from the end of the network pass to "
        "the written label map.",
        "",
        "| C | float16 accumulator | stock peak (private) | plugin peak (private) | plugin / stock | stock export | "
        "plugin export | export speed-up | stock total | plugin total | labels equal to stock |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, p = r["stock"], r["plugin"]
        lines.append(
            f"| {r['classes']} | {r['accumulator_bytes'] / MIB:.0f} MiB | {s['peak_bytes'] / GIB:.2f} GiB "
            f"({s['peak_private_bytes'] / GIB:.2f}) | {p['peak_bytes'] / GIB:.2f} GiB "
            f"({p['peak_private_bytes'] / GIB:.2f}) | {p['peak_bytes'] / s['peak_bytes']:.2f} | "
            f"{s['export_seconds']:.1f} s | {p['export_seconds']:.1f} s | "
            f"{s['export_seconds'] / p['export_seconds']:.1f}× | {s['seconds']:.0f} s | {p['seconds']:.0f} s | "
            f"{100 * r['labels_equal']:.4f} % |")
    lines += [
        "",
        "Peak: the process tree's PSS; in parentheses its private memory (USS), which does not depend on what other "
        "processes of the machine share with it and holds every buffer that grows with C.",
        "",
        f"From C = {first['classes']} to C = {last['classes']} the plugin's peak grows by {pss_growth / MIB:.0f} MiB "
        f"(PSS; private: {growth / MIB:.0f} MiB), stock nnU-Net's by {stock_growth / MIB:.0f} MiB. The float16 "
        f"accumulator (C × {' × '.join(map(str, settings['preprocessed_shape'][::-1]))} × 2 B) grows by "
        f"{accumulator_growth / MIB:.0f} MiB; besides it, the plugin holds one window of the network's float32 "
        f"output (C × {' × '.join(map(str, settings['patch']))} × 4 B, {window_growth / MIB:.0f} MiB more at "
        f"C = {last['classes']}), as any prediction does, and single-class volumes during the export. The private "
        f"peak grows by less than the accumulator because at small C it falls in preprocessing, not in the export.",
        "",
        *([settings["note"], ""] if settings.get("note") else []),
        f"![peak memory vs classes]({out.with_suffix('.png').name})",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[2, 14, 105])
    parser.add_argument("--image_spacing", type=float, nargs=3, default=[1.5, 1.5, 5.0], help="x y z, mm")
    parser.add_argument("--model_spacing", type=float, default=3.0, help="isotropic, mm")
    parser.add_argument("--patch", type=int, nargs=3, default=[64, 64, 64])
    parser.add_argument("--features", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--work", type=Path, default=Path("/tmp/nnunet_efficient_memory"))
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "memory_vs_classes")
    parser.add_argument("--tools", nargs="+", default=["stock", "plugin"], choices=["stock", "plugin"])
    parser.add_argument("--from_json", type=Path, help="only rewrite the report from the .json of an earlier run")
    parser.add_argument("--note", help="a paragraph added to the report (e.g. other runs' figures)")
    args = parser.parse_args()
    if args.from_json:
        saved = json.loads(args.from_json.read_text())
        if args.note:
            saved["settings"]["note"] = args.note
        write_report(saved["rows"], saved["settings"], args.out)
        return

    if args.work.exists():
        shutil.rmtree(args.work)
    images, size = make_case(args.image_spacing, args.work / "imagesTs")
    results = args.work / "results"
    env = dict(os.environ, nnUNet_raw=str(args.work / "raw"), nnUNet_preprocessed=str(args.work / "preprocessed"),
               nnUNet_results=str(results), PYTHONUNBUFFERED="1")
    bin_dir = Path(sys.executable).parent
    flags = "-f 0 -c 3d_fullres -device cpu --disable_tta --disable_progress_bar"
    shape = preprocessed_shape(size, args.image_spacing, args.model_spacing)
    plans = plans_for(args.model_spacing, args.patch, args.features)
    rows = []
    for i, classes in enumerate(args.classes):
        dataset = write_model(results, 900 + i, classes, plans)
        row = {"classes": classes, "accumulator_bytes": classes * int(np.prod(shape)) * 2}
        for tool in args.tools:
            out = args.work / f"out_{tool}_C{classes}"
            executable = "nnUNetv2_predict" if tool == "stock" else "nnunet-efficient"
            command = [str(bin_dir / executable), *(["predict"] if tool == "plugin" else []), "-i", str(images.parent),
                       "-o", str(out), "-d", dataset, *flags.split()]
            measured = run_measured(command, env, args.work / f"log_{tool}_C{classes}.txt")
            start, end = EXPORT_MARKERS[tool]
            measured["export_seconds"] = _time_of(measured["lines"], end) - _time_of(measured["lines"], start)
            del measured["lines"]
            row[tool] = measured
            print(f"C={classes:4d} {tool:6s}: peak {measured['peak_bytes'] / GIB:6.2f} GiB "
                  f"(private {measured['peak_private_bytes'] / GIB:5.2f} GiB, {measured['peak_processes']} "
                  f"processes), export {measured['export_seconds']:6.1f} s, "
                  f"total {measured['seconds']:6.1f} s", flush=True)
        if set(args.tools) == {"stock", "plugin"}:
            import SimpleITK as sitk

            a, b = (sitk.GetArrayFromImage(sitk.ReadImage(str(args.work / f"out_{t}_C{classes}" / "ct.nii.gz")))
                    for t in ("stock", "plugin"))
            row["labels_equal"] = float((a == b).mean())
            row["labels_present"] = int(len(np.unique(a)))
            print(f"C={classes:4d} labels equal on {100 * row['labels_equal']:.4f} % of voxels "
                  f"({row['labels_present']} labels present)", flush=True)
        rows.append(row)
    if set(args.tools) == {"stock", "plugin"}:
        for row in rows:
            for tool in args.tools:
                row[tool]["trace"] = row[tool]["trace"][::5]  # keep the JSON small
        settings = {
            "command": " ".join(["python scripts/memory_vs_classes.py", *sys.argv[1:]]),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                       f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / GIB:.0f} GiB RAM "
                       f"(shared with other jobs)",
            "case_description": f"example_ct.nii.gz (366 × 303 × 336 mm) at {args.image_spacing[0]:g} × "
                                f"{args.image_spacing[1]:g} × {args.image_spacing[2]:g} mm, "
                                f"{size[0]} × {size[1]} × {size[2]} voxels",
            "image_shape": list(size), "preprocessed_shape": shape, "model_spacing": args.model_spacing,
            "patch": args.patch, "features": args.features, "flags": flags, "note": args.note,
        }
        write_report(rows, settings, args.out)
        print(f"wrote {args.out.with_suffix('.md')}, .png, .json")


if __name__ == "__main__":
    main()
