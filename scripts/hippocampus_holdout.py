"""Link the shared Hippocampus data as Dataset204_HippocampusHoldout for the compare evidence scripts.

The first 200 cases (sorted by name) are imagesTr/labelsTr, the last 40 are held out as
imagesTs/labelsTs; splits_final.json puts 192 training cases in fold 0 and validates on 8 (so
nnU-Net's end-of-training validation stays short; they are not the test set). Idempotent.

Usage: python scripts/hippocampus_holdout.py SOURCE_DATASET_FOLDER TARGET_DATASET_FOLDER
"""
import json
import os
import sys

source, target = sys.argv[1:]
cases = sorted(f[:-len(".nii.gz")] for f in os.listdir(os.path.join(source, "labelsTr")))
train, test = cases[:200], cases[200:]
for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
    os.makedirs(os.path.join(target, sub), exist_ok=True)
for split, names in (("Tr", train), ("Ts", test)):
    for case in names:
        for kind, name in (("images", f"{case}_0000.nii.gz"), ("labels", f"{case}.nii.gz")):
            link = os.path.join(target, kind + split, name)
            if not os.path.lexists(link):
                os.symlink(os.path.join(source, kind + "Tr", name), link)
spec = json.load(open(os.path.join(source, "dataset.json")))
spec["numTraining"] = len(train)
json.dump(spec, open(os.path.join(target, "dataset.json"), "w"), indent=1)
json.dump([{"train": train[:192], "val": train[192:]}], open(os.path.join(target, "splits_final.json"), "w"))
print(f"{len(train)} training cases, {len(test)} held out: {test[0]} .. {test[-1]}")
