#!/usr/bin/env bash
# Evidence for NMSW (issue 3): train nnUNetTrainerNMSW on BraTSmini (3 cases), predict the 4th,
# then compare strategies with the benchmark command. About 75 min on a 2-core CPU (NOT run in CI).
#
#   scripts/nmsw_evidence.sh [WORK_DIR]      (default /tmp/nmsw_evidence)
#   EPOCHS=10 ITERS=20 scripts/nmsw_evidence.sh
#
# Budget: the CPU NMSW plan for BraTSmini has 48x80x80 windows on a 155x240x240 canvas (150
# candidates) and a 56x80x80 global input. One training iteration (1 whole volume, 4 top-k
# windows + 1 random window, forward + backward) takes about 15 s on an idle 2-core machine:
# 10 x 20 iterations plus the final validation of the held-out case took 53 min (measured
# 2026-11-23), the benchmark afterwards about 20 min (mostly sliding_window with mirroring).
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck disable=SC1091
source "$REPO/scripts/setup_venv.sh"
DATA="${NNUNET_EFFICIENT_SHARED_DATA:-$REPO/../shared/data}/Dataset005_BraTSmini"
WORK="${1:-/tmp/nmsw_evidence}"
EPOCHS="${EPOCHS:-10}"
ITERS="${ITERS:-20}"
TRAIN_CASES=(brats_0003 brats_0004 brats_0005)
TEST_CASE=brats_0006
PLANS=nnUNetPlansNMSWCPU
TRAINER="nnUNetTrainerNMSW_${EPOCHS}epochs_${ITERS}iters"

[ -d "$DATA" ] || { echo "BraTSmini not found at $DATA (set NNUNET_EFFICIENT_SHARED_DATA)" >&2; exit 1; }
export nnUNet_raw="$WORK/raw" nnUNet_preprocessed="$WORK/preprocessed" nnUNet_results="$WORK/results"
export nnUNet_compile=0 nnUNet_def_n_proc=2
eval "$(nnunet-efficient env)"

# nnU-Net raw dataset: all 4 cases (the held-out one is the validation case of fold 0, so
# nnU-Net's own validation reports its Dice), one split: 3 training cases, 1 validation case.
raw="$nnUNet_raw/Dataset005_BraTSmini"
mkdir -p "$raw" "$WORK/test/images" "$WORK/test/labels"
ln -sfn "$DATA/imagesTr" "$raw/imagesTr"
ln -sfn "$DATA/labelsTr" "$raw/labelsTr"
cp "$DATA/dataset.json" "$raw/dataset.json"
python - "$raw/splits_final.json" "$TEST_CASE" "${TRAIN_CASES[@]}" <<'PY'
import json, sys
out, test, *train = sys.argv[1:]
json.dump([{"train": train, "val": [test]}], open(out, "w"))
PY
cp "$DATA/imagesTr/${TEST_CASE}_0000.nii.gz" "$DATA/imagesTr/${TEST_CASE}_0001.nii.gz" "$WORK/test/images/"
cp "$DATA/labelsTr/${TEST_CASE}.nii.gz" "$WORK/test/labels/"

nnunet-efficient plan_and_preprocess -d 5 -pl nnUNetPlannerNMSWCPU -c 3d_fullres -np 2 -npfp 2 --no_pbar

# stock nnU-Net command; the trainer comes from nnUNet_extTrainer
nnUNetv2_train 5 3d_nmsw 0 -tr "$TRAINER" -p "$PLANS" -device cpu

MODEL="$nnUNet_results/Dataset005_BraTSmini/${TRAINER}__${PLANS}__3d_nmsw"
nnunet-efficient predict -i "$WORK/test/images" -o "$WORK/test/pred_nmsw" -m "$MODEL" -f 0 \
    --strategy nmsw --disable_tta -device cpu -npp 0 -nps 0

# Same weights, every strategy, in one process. Since issue 21 sliding_window on an NMSW model is
# nnU-Net's predictor running NMSW once per canvas (3d_nmsw's patch size is the canvas), not the local
# branch over all windows as when docs/benchmarks.md was measured.
nnunet-efficient benchmark -i "$WORK/test/images" -ref "$WORK/test/labels" -m "$MODEL" -f 0 -device cpu \
    --disable_tta -o "$WORK/benchmark" \
    --strategies sliding_window:tta=0 sliding_window:tta=1 nmsw:k=1 nmsw:k=3 nmsw:k=5 nmsw:k=10 \
    random_fg:k=5 zoom global
