"""Carry a long evidence run from one machine to the next: pack what ``--c`` needs, unpack it elsewhere.

The evidence runs (``scripts/brats_evidence.sh``, ``scripts/architecture_evidence.sh``) take more CPU-hours
than one working session has, and a later session may get a fresh machine. This packs the part of an evidence
folder that cannot be recomputed cheaply into one tar file that is committed (``evidence_state/``), and
unpacks it into an empty evidence folder; the scripts then re-plan and re-preprocess (deterministic) and
continue with nnU-Net's ``--c``.

What a pack holds, relative to the evidence folder:
- every file under ``*results*/`` and ``compare/`` smaller than 1 MB (logs, progress, plans and dataset
  copies, ``compare_state.json``, tables);
- ``checkpoint_latest.pth`` of each unfinished training, as it is (weights, optimiser state, epoch), so
  ``--c`` continues exactly;
- ``checkpoint_final.pth`` as float32 network weights plus what nnU-Net's predictor reads (no optimiser
  state): enough to predict, to score again and to be a retrofit source;
- kept learning-curve checkpoints (``checkpoint_at_*.pth``) as float16 weights: enough to score them;
- never ``checkpoint_best.pth``, preprocessed data, raw links or predictions.

Usage:
    python scripts/evidence_state.py save EVIDENCE_DIR PACK.tar
    python scripts/evidence_state.py restore PACK.tar EVIDENCE_DIR   (only into a folder without results)
"""

from __future__ import annotations

import io
import os
import sys
import tarfile

import torch

SMALL_FILE_BYTES = 1 << 20
# what nnU-Net's predictor and compare read from a checkpoint besides the weights
_PREDICTOR_KEYS = ("trainer_name", "init_args", "inference_allowed_mirroring_axes", "current_epoch")


def _slim(path: str, dtype: torch.dtype) -> bytes:
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    slim = {key: checkpoint[key] for key in _PREDICTOR_KEYS if key in checkpoint}
    slim["network_weights"] = {name: value.to(dtype) if value.is_floating_point() else value
                               for name, value in checkpoint["network_weights"].items()}
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    return buffer.getvalue()


def _members(evidence: str):
    """``(relative path, bytes or None for the file as it is)`` of everything a pack keeps."""
    for root, dirs, files in os.walk(evidence):
        relative_root = os.path.relpath(root, evidence)
        top = relative_root.split(os.sep)[0]
        if not ("results" in top or top == "compare"):
            continue
        dirs[:] = [d for d in dirs if d not in ("predictions", "validation")]
        for name in sorted(files):
            path = os.path.join(root, name)
            relative = os.path.normpath(os.path.join(relative_root, name))
            if os.path.islink(path) or name.endswith((".partial", ".tmp")):
                continue
            if name == "checkpoint_final.pth":
                yield relative, _slim(path, torch.float32)
            elif name.startswith("checkpoint_at_") and name.endswith(".pth"):
                yield relative, _slim(path, torch.float16)
            elif name == "checkpoint_latest.pth":
                if not os.path.isfile(os.path.join(root, "checkpoint_final.pth")):
                    yield relative, None
            elif name.endswith(".pth"):
                continue
            elif os.path.getsize(path) < SMALL_FILE_BYTES:
                yield relative, None


def save(evidence: str, pack: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(pack)), exist_ok=True)
    temporary = pack + ".partial"
    total = 0
    with tarfile.open(temporary, "w") as tar:
        for relative, data in _members(evidence):
            if data is None:
                tar.add(os.path.join(evidence, relative), arcname=relative)
                total += os.path.getsize(os.path.join(evidence, relative))
            else:
                info = tarfile.TarInfo(relative)
                info.size = len(data)
                info.mtime = int(os.path.getmtime(os.path.join(evidence, relative)))
                tar.addfile(info, io.BytesIO(data))
                total += len(data)
    os.replace(temporary, pack)
    print(f"packed {evidence} into {pack} ({total / 2**20:.1f} MB)")


def restore(pack: str, evidence: str) -> None:
    if os.path.isdir(evidence) and any("results" in d for d in os.listdir(evidence)):
        print(f"{evidence} already holds results: not restoring {pack}")
        return
    os.makedirs(evidence, exist_ok=True)
    with tarfile.open(pack) as tar:
        tar.extractall(evidence, filter="data")
    print(f"restored {pack} into {evidence}")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("save", "restore"):
        sys.exit("usage: evidence_state.py save EVIDENCE_DIR PACK.tar | restore PACK.tar EVIDENCE_DIR")
    (save if sys.argv[1] == "save" else restore)(sys.argv[2], sys.argv[3])
