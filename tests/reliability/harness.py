"""Helpers of the reliability catalogue: running commands, recording what they said, tiny models.

Every case runs a real ``nnunet-efficient`` command in its own process: through the fork server
of ``command_server.py`` (imports paid once), or as the console script itself where a cold start
matters.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel
import numpy as np
from conftest import dataset_json, tiny_plans, write_model_folder

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SCRIPT = Path(sys.executable).with_name("nnunet-efficient")
LABELS = {"background": 0, "a": 1, "b": 2}


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: str
    stderr: str
    seconds: float
    program: str = "nnunet-efficient"

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


class CommandServer:
    """Client of ``command_server.py``: ``run`` a command and wait, or ``start`` it and ``wait`` later."""

    def __init__(self, env: dict[str, str], logs: Path):
        self.logs = logs
        self.counter = 0
        self.log = open(logs / "server.log", "w")
        self.process = subprocess.Popen([sys.executable, str(HERE / "command_server.py")], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self.log, text=True, env=env, cwd=REPO)
        ready = self.process.stdout.readline()
        if not ready:
            raise RuntimeError(f"command server did not start, see {logs / 'server.log'}")
        self.started: dict[int, tuple[list[str], Path, Path, float, str]] = {}

    def _ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def start(self, argv, cwd: Path | None = None, env: dict | None = None, max_file_bytes: int | None = None,
              program: str = "nnunet-efficient") -> int:
        self.counter += 1
        out, err = self.logs / f"{self.counter:03d}.out", self.logs / f"{self.counter:03d}.err"
        argv = [str(a) for a in argv]
        pid = self._ask({"op": "start", "argv": argv, "cwd": str(cwd or REPO), "env": env or {},
                         "stdout": str(out), "stderr": str(err), "max_file_bytes": max_file_bytes,
                         "program": program})["pid"]
        self.started[pid] = (argv, out, err, time.perf_counter(), program)
        return pid

    def wait(self, pid: int) -> Result:
        code = self._ask({"op": "wait", "pid": pid})["returncode"]
        argv, out, err, start, program = self.started.pop(pid)
        return Result(argv, code, out.read_text(), err.read_text(), time.perf_counter() - start, program)

    def run(self, argv, **kwargs) -> Result:
        return self.wait(self.start(argv, **kwargs))

    def close(self):
        self.process.kill()  # nothing to clean up; a polite exit would spend seconds tearing torch down
        self.process.wait()
        self.log.close()


def run_console_script(argv, env: dict[str, str], cwd: Path | None = None, timeout: float = 300) -> Result:
    """``nnunet-efficient ARGV`` as a fresh process (its own imports)."""
    argv = [str(a) for a in argv]
    start = time.perf_counter()
    done = subprocess.run([str(SCRIPT), *argv], capture_output=True, text=True, env=env, cwd=cwd or REPO,
                          timeout=timeout)
    return Result(argv, done.returncode, done.stdout, done.stderr, time.perf_counter() - start)


# ---------------------------------------------------------------- the catalogue's record


PREDICTION = "Prediction, planning and dataset checks"
TRAINING = "Training"


@dataclass
class Observation:
    case: str
    command: str
    situation: str
    expected: str
    returncode: int
    message: str
    section: str = PREDICTION


#: the predict flags most cases share, shown as "…" in the table
COMMON_PREDICT_FLAGS = "-f 0 -device cpu --disable_progress_bar --disable_tta -npp 0 -nps 0"
MODEL_NAMES = {"one/nnUNetTrainer__nnUNetPlansTiny__3d_fullres": "$MODEL",
               "two/nnUNetTrainer__nnUNetPlansTiny__3d_fullres": "$MODEL_2CH",
               "2d/nnUNetTrainer__nnUNetPlansTiny__2d": "$MODEL_2D",
               "nmsw/nnUNetTrainerNMSW__nnUNetPlansTiny__3d_nmsw": "$MODEL_NMSW"}


@dataclass
class Catalogue:
    workspace: Path
    temporary: Path
    observations: list[Observation] = field(default_factory=list)

    def shorten(self, text: str) -> str:
        for folder, name in MODEL_NAMES.items():
            text = text.replace(f"{self.workspace}/models/{folder}", name)
        temporary = re.escape(str(self.temporary)) + r"/[^/\s]+"
        text = re.sub(temporary + rf"/\w+/{TRAINING_DATASET}/\w+__\w+__\w+/fold_\w+", "$FOLD", text)
        text = re.sub(temporary + rf"/\w+/{TRAINING_DATASET}", "$PRE", text)
        text = re.sub(temporary, "$TMP", text)
        text = text.replace(TRAINING_ARGUMENTS, "…")
        text = text.replace(str(self.workspace), "$WS").replace(str(REPO) + "/", "")
        return re.sub(r"pid \d+", "pid N", text)

    def record(self, case: str, situation: str, result: Result, expected: str = "one line, exit 1",
               message: str | None = None, section: str = PREDICTION) -> None:
        command = " ".join([result.program, *result.argv]).replace(COMMON_PREDICT_FLAGS, "…")
        last = message if message is not None else (result.error_lines[-1] if result.error_lines else "")
        self.observations.append(Observation(case, self.shorten(command), situation, expected, result.returncode,
                                             self.shorten(last), section))

    def document(self, existing: str = "") -> str:
        """The catalogue file: the sections observed in this run, the others kept from ``existing``."""
        kept = {m.group(1): m.group(0) for m in re.finditer(r"^## (.+?)\n.*?(?=^## |\Z)", existing,
                                                            re.MULTILINE | re.DOTALL)}
        parts = [DOC_HEADER]
        for name, intro in SECTIONS.items():
            rows = [o for o in self.observations if o.section == name]
            if rows:
                parts.append(f"## {name}\n\n{intro}{self.markdown(rows)}\n")
            elif name in kept:
                parts.append(kept[name].rstrip("\n") + "\n\n")
        return "".join(parts).rstrip("\n") + "\n"

    @staticmethod
    def markdown(observations: list[Observation]) -> str:
        lines = ["| # | case | situation | command | expected | exit | observed message |",
                 "|---|---|---|---|---|---|---|"]
        for i, o in enumerate(observations, 1):
            cells = [str(i), o.case, o.situation, f"`{o.command}`", o.expected, str(o.returncode),
                     o.message.replace("|", "\\|")]
            lines.append("| " + " | ".join(c.replace("\n", " ") for c in cells) + " |")
        return "\n".join(lines) + "\n"


DOC_HEADER = """# Reliability catalogue

Bad inputs and faults, each driven through a real command in its own process
(`tests/reliability/`), with the message the command printed. Generated by

```bash
NNUNET_EFFICIENT_RELIABILITY_DOC=docs/reliability.md pytest tests/reliability
```

which rewrites the sections of this file that the run observed, in test order. "one line, exit 1"
means: exactly one line on stderr naming the file or argument and the problem, exit status 1, and
no output file left behind (nor a staging folder or lock); the tests assert all three. Cases run
in children of a fork server that has imported torch and nnU-Net once
(`tests/reliability/command_server.py`: each child does what the console script does, with its
own stdout, stderr, exit status and signals), except the one marked *console script*, which
starts `nnunet-efficient` afresh and is checked to answer identically.

"""

PREDICTION_INTRO = """\
In the commands, `…` stands for `-f 0 -device cpu --disable_progress_bar --disable_tta -npp 0 -nps 0`; `$TMP` is the
test's temporary folder, `$WS` the session's workspace (`nnUNet_raw`, `nnUNet_preprocessed` and
the models live there); `$MODEL` is an untrained 1-channel, 3-class 3D model (window 40×56×40),
`$MODEL_2CH` a 2-channel one, `$MODEL_2D` one trained on 2D images, `$MODEL_NMSW` an NMSW model.
Images are the shipped Hippocampus sample (`examples/`) unless the situation says otherwise.

"""

#: dataset 905: five shipped Hippocampus cases, preprocessed with tiny plans (harness.write_training_dataset)
TRAINING_DATASET = "Dataset905_TrainTiny"
TRAINING_ARGUMENTS = "905 3d_fullres 0 -p nnUNetPlansTiny"

TRAINING_INTRO = """Trainings of five shipped Hippocampus cases preprocessed by nnU-Net's own preprocessor with tiny
plans (a 3-stage U-Net, 16³ patch), fold 0, on the CPU, with two data-loading worker processes
(`nnUNet_n_proc_DA=2`); `…` stands for `905 3d_fullres 0 -p nnUNetPlansTiny`. Commands are
`nnunet-efficient train` with nnU-Net's own `nnUNetTrainer` in a short schedule
(`_<E>epochs_<I>iters`), or stock `nnUNetv2_train` with the plugin on `nnUNet_extTrainer` where
the command says so. `$FOLD` is the run's fold folder, `$PRE` the preprocessed dataset. Beyond
the one line, the tests check that no worker process outlives its training, that no
`*.partial` file is left, and what each checkpoint holds afterwards.

"""

SECTIONS = {PREDICTION: PREDICTION_INTRO, TRAINING: TRAINING_INTRO}


# ---------------------------------------------------------------- workspace and models


def write_image(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), flip_x=False):
    """An ``(X, Y, Z)``-ordered NIfTI written with nibabel (keeps NaN/Inf, any dimensionality)."""
    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = origin
    if flip_x:
        affine[0, 0] = -affine[0, 0]
    nibabel.save(nibabel.Nifti1Image(np.asarray(array, dtype=np.float32), affine), str(path))


def two_d_plans() -> dict:
    """Plans of a model trained on 2D images: nnU-Net's fake first axis (spacing 999) and a 2d configuration."""
    plans = tiny_plans((32, 32, 32), 1, features=(4, 8))
    config = plans["configurations"].pop("3d_fullres")
    arch = config["architecture"]["arch_kwargs"]
    arch.update(conv_op="torch.nn.modules.conv.Conv2d", norm_op="torch.nn.modules.instancenorm.InstanceNorm2d",
                kernel_sizes=[[3, 3]] * 2, strides=[[1, 1], [2, 2]])
    config.update(patch_size=[32, 32], median_image_size_in_voxels=[32, 32], spacing=[1.0, 1.0],
                  data_identifier="nnUNetPlansTiny_2d")
    plans["configurations"]["2d"] = config
    plans["original_median_spacing_after_transp"] = [999.0, 1.0, 1.0]
    plans["original_median_shape_after_transp"] = [1, 32, 32]
    return plans


def write_2d_model(folder: Path) -> Path:
    return write_model_folder(folder, two_d_plans(), dataset_json(1, LABELS), configuration="2d")


def nmsw_plans() -> dict:
    """Tiny plans with a 3d_nmsw configuration as nnUNetPlannerNMSW writes it."""
    plans = tiny_plans((16, 16, 16), 1, features=(4, 8))
    architecture = copy.deepcopy(plans["configurations"]["3d_fullres"]["architecture"])
    plans["configurations"]["3d_nmsw"] = {"inherits_from": "3d_fullres", "patch_size": [24, 24, 24], "nmsw": {
        "window_size": [16, 16, 16], "global_shape": [12, 12, 12], "global_architecture": architecture,
        "step": 0.5, "k_train": 4, "k_infer": 3, "batch_size": 1}}
    return plans


def write_nmsw_model(folder: Path) -> Path:
    from nnunet_efficient.training.nmsw import nnUNetTrainerNMSW

    return write_model_folder(folder, nmsw_plans(), dataset_json(1, LABELS), trainer_name="nnUNetTrainerNMSW",
                              configuration="3d_nmsw", trainer_class=nnUNetTrainerNMSW)


def write_preprocessed_dataset(workspace: Path, dataset_id: int, name: str, cases: int = 2) -> Path:
    """A raw dataset and its preprocessed 3d_fullres data as nnU-Net's preprocessing would leave them."""
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    full = f"Dataset{dataset_id:03d}_{name}"
    raw = workspace / "raw" / full
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(dataset_id)
    for i in range(cases):
        write_image(raw / "imagesTr" / f"case{i}_0000.nii.gz", rng.normal(size=(20, 24, 16)))
        write_image(raw / "labelsTr" / f"case{i}.nii.gz", rng.integers(0, 3, size=(20, 24, 16)))
    dataset = dataset_json(1, LABELS) | {"numTraining": cases}
    (raw / "dataset.json").write_text(json.dumps(dataset))
    pre = workspace / "preprocessed" / full
    data = pre / "nnUNetPlansTiny_3d_fullres"
    data.mkdir(parents=True)
    plans = tiny_plans((16, 16, 16), 1, features=(4, 8)) | {"dataset_name": full}
    (pre / "nnUNetPlansTiny.json").write_text(json.dumps(plans))
    (pre / "dataset.json").write_text(json.dumps(dataset))
    for i in range(cases):
        seg = rng.integers(0, 3, size=(1, 16, 24, 20)).astype(np.int8)
        properties = {"spacing": [1.0, 1.0, 1.0], "class_locations": {1: [], 2: []}}
        nnUNetDatasetBlosc2.save_case(rng.normal(size=(1, 16, 24, 20)).astype(np.float32), seg, properties,
                                      str(data / f"case{i}"))
    return pre


def left_behind(folder: Path) -> list[str]:
    """What a failed run left in an output folder (nothing when the folder does not exist)."""
    return sorted(os.listdir(folder)) if folder.exists() else []


# ---------------------------------------------------------------- training


def write_training_dataset(workspace: Path, dataset_id: int = 905, name: str = "TrainTiny", cases: int = 5,
                           features=(4, 8, 16), patch_size=(16, 16, 16)) -> Path:
    """Shipped Hippocampus cases preprocessed by nnU-Net's own preprocessor, in-process, with tiny plans.

    What ``plan_and_preprocess`` would leave (plans, data, ``gt_segmentations``, fingerprint) for
    a 3-stage U-Net (2 would give nnU-Net zero deep-supervision weights) with a 16³ patch.
    """
    from conftest import SAMPLE
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    full = f"Dataset{dataset_id:03d}_{name}"
    raw = workspace / "raw" / full
    for kind in ("imagesTr", "labelsTr"):
        (raw / kind).mkdir(parents=True)
    names = sorted(p.name[:-len("_0000.nii.gz")] for p in (SAMPLE / "imagesTr").iterdir())[:cases]
    for case in names:
        (raw / "imagesTr" / f"{case}_0000.nii.gz").symlink_to(SAMPLE / "imagesTr" / f"{case}_0000.nii.gz")
        (raw / "labelsTr" / f"{case}.nii.gz").symlink_to(SAMPLE / "labelsTr" / f"{case}.nii.gz")
    dataset = json.loads((SAMPLE / "dataset.json").read_text()) | {"numTraining": cases}
    (raw / "dataset.json").write_text(json.dumps(dataset))
    pre = workspace / "preprocessed" / full
    data = pre / "nnUNetPlansTiny_3d_fullres"
    (pre / "gt_segmentations").mkdir(parents=True)
    data.mkdir()
    plans = tiny_plans(patch_size, 1, features=features) | {"dataset_name": full}
    (pre / "nnUNetPlansTiny.json").write_text(json.dumps(plans))
    (pre / "dataset.json").write_text(json.dumps(dataset))
    (pre / "dataset_fingerprint.json").write_text(json.dumps({"spacings": [[1.0, 1.0, 1.0]] * cases}))
    manager = PlansManager(plans)
    preprocessor = DefaultPreprocessor(verbose=False)
    for case in names:
        preprocessor.run_case_save(str(data / case), [str(raw / "imagesTr" / f"{case}_0000.nii.gz")],
                                   str(raw / "labelsTr" / f"{case}.nii.gz"), manager,
                                   manager.get_configuration("3d_fullres"), dataset)
        (pre / "gt_segmentations" / f"{case}.nii.gz").write_bytes((raw / "labelsTr" / f"{case}.nii.gz").read_bytes())
    return pre
