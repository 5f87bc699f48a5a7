#!/usr/bin/env bash
# GPU check (issue 21): NMSW and nnU-Net's sliding window on one BraTSmini case on a CUDA device,
# printing seconds and peak device memory per path. Never run in CI; a few minutes on one GPU.
#
#   bash scripts/gpu_check.sh [WORK_DIR]          (default: a fresh temporary folder)
#
# Models: MODEL_SW (a 3d_fullres model folder) and MODEL_NMSW (a 3d_nmsw model folder of the same
# plans, e.g. the retrofit of MODEL_SW from scripts/brats_evidence.sh) when given; otherwise both
# are planned here with nnUNetPlannerNMSW (nnU-Net's GPU plan plus 3d_nmsw) and written untrained,
# which times the paths exactly as trained weights would (their Dice then means nothing).
# Data: brats_0006 of $SHARED_DATA/Dataset005_BraTSmini (default ../shared/data); on a machine
# without it, copy that folder into the checkout and point SHARED_DATA there.
#
# Rows: the sliding window without and with mirroring, nmsw K = 1, 5 (the plans' k_infer) and 10
# without mirroring, nmsw K = 5 with mirroring, and global; then one `predict --strategy nmsw
# --not_on_device` (network on the GPU, merged logits on the host). The benchmark's "Device MiB"
# column is torch's peak allocated CUDA memory of the network stage.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${VIRTUAL_ENV:-}" ]; then
    # shellcheck disable=SC1091
    source "$repo/scripts/setup_venv.sh"
fi
data="${SHARED_DATA:-$repo/../shared/data}/Dataset005_BraTSmini"
work="${1:-$(mktemp -d -t nnunet_efficient_gpu_check.XXXXXX)}"
case_id=brats_0006
[ -d "$data" ] || { echo "gpu_check.sh: BraTSmini not found at $data (set SHARED_DATA)" >&2; exit 1; }
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
    || { echo "gpu_check.sh: no CUDA device visible to torch; this check needs a GPU" >&2; exit 1; }

mkdir -p "$work/test/images" "$work/test/labels"
export nnUNet_raw="$work/raw" nnUNet_preprocessed="$work/preprocessed" nnUNet_results="$work/results"
export nnUNet_compile=0
eval "$(nnunet-efficient env)"
cp "$data/imagesTr/${case_id}_0000.nii.gz" "$data/imagesTr/${case_id}_0001.nii.gz" "$work/test/images/"
cp "$data/labelsTr/${case_id}.nii.gz" "$work/test/labels/"

if [ -z "${MODEL_SW:-}" ] || [ -z "${MODEL_NMSW:-}" ]; then
    raw="$nnUNet_raw/Dataset005_BraTSmini"
    mkdir -p "$raw"
    ln -sfn "$data/imagesTr" "$raw/imagesTr"
    ln -sfn "$data/labelsTr" "$raw/labelsTr"
    cp "$data/dataset.json" "$raw/dataset.json"
    # fingerprint and plans only: prediction preprocesses each case itself
    nnunet-efficient plan_and_preprocess -d 5 -pl nnUNetPlannerNMSW --no_pp -npfp 4 --no_pbar > "$work/plan.log"
    MODEL_SW="$nnUNet_results/Dataset005_BraTSmini/nnUNetTrainer__nnUNetPlansNMSW__3d_fullres"
    MODEL_NMSW="$nnUNet_results/Dataset005_BraTSmini/nnUNetTrainerNMSW__nnUNetPlansNMSW__3d_nmsw"
    python - "$nnUNet_preprocessed/Dataset005_BraTSmini" "$MODEL_SW" "$MODEL_NMSW" <<'PY'
import json, os, shutil, sys

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_efficient.training.nmsw import nnUNetTrainerNMSW

preprocessed, *folders = sys.argv[1:]
plans = json.load(open(os.path.join(preprocessed, "nnUNetPlansNMSW.json")))
dataset = json.load(open(os.path.join(preprocessed, "dataset.json")))
manager = PlansManager(plans)
for folder, trainer, configuration in zip(folders, (nnUNetTrainer, nnUNetTrainerNMSW), ("3d_fullres", "3d_nmsw")):
    torch.manual_seed(0)
    network = trainer.build_network_architecture(manager, manager.get_configuration(configuration),
                                                 len(dataset["channel_names"]), len(dataset["labels"]),
                                                 enable_deep_supervision=False)
    os.makedirs(os.path.join(folder, "fold_0"), exist_ok=True)
    for name in ("plans.json", "dataset.json"):
        shutil.copy(os.path.join(preprocessed, "nnUNetPlansNMSW.json" if name == "plans.json" else name),
                    os.path.join(folder, name))
    torch.save({"network_weights": network.state_dict(), "trainer_name": trainer.__name__,
                "init_args": {"configuration": configuration}, "inference_allowed_mirroring_axes": (0, 1, 2)},
               os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    print(f"untrained {trainer.__name__} ({configuration}): {folder}")
PY
fi

nnunet-efficient benchmark -i "$work/test/images" -ref "$work/test/labels" -m "$MODEL_SW" -f 0 -device cuda \
    --models nmsw="$MODEL_NMSW" --disable_tta --disable_progress_bar -o "$work/benchmark" \
    --regions WT=1,2,3,4 TC=1,3,4 ET=4 \
    --strategies sliding_window sliding_window:tta=1 nmsw:model=nmsw,k=1 nmsw:model=nmsw \
                 nmsw:model=nmsw,k=10 nmsw:model=nmsw,tta=1 global:model=nmsw
cat "$work/benchmark/benchmark.md"

nnunet-efficient predict -i "$work/test/images" -o "$work/pred_not_on_device" -m "$MODEL_NMSW" -f 0 \
    --strategy nmsw --not_on_device --disable_tta -device cuda -npp 1 -nps 1 --disable_progress_bar \
    | grep -E "nmsw\(|windows" || true
python - "$work/benchmark/benchmark.json" <<'PY'
import json, sys

rows = json.load(open(sys.argv[1]))["rows"]
print(f"{'variant':40s} {'seconds':>8s} {'network s':>9s} {'device MiB':>10s}")
for row in rows:
    device = row["peak_device_mib"]
    print(f"{row['variant']:40s} {row['total_seconds']:8.2f} {row['seconds']['network']:9.2f} "
          f"{device if device is None else round(device):>10}")
PY
echo "gpu_check.sh: report in $work/benchmark"
