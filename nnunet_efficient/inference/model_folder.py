"""Checks of a trained model folder, and the name of the file at fault when nnU-Net cannot load one.

:func:`check_model_folder` runs before nnU-Net reads the folder; :func:`diagnose_model_folder`
runs after nnU-Net failed, so that a corrupt checkpoint, an unknown trainer, a configuration
missing from the plans or weights of another network end in one line naming the file. A bug
inside a trainer module (an import error, a syntax error) is not a user's input problem: it is
left to show its own traceback.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from nnunet_efficient.common.messages import one_line
from nnunet_efficient.errors import EfficientError, InputFileError

#: how nnU-Net's ``recursive_find_trainer_class_by_name`` begins the error for a name no module defines
TRAINER_NOT_FOUND = "Could not find requested nnunet trainer"


def check_model_folder(model_folder: str, folds: Sequence[int | str] | None, checkpoint_name: str) -> list:
    """Check that a trained model folder has what prediction needs.

    Returns:
        The folds to load (those found when ``folds`` is None).

    Raises:
        InputFileError: missing folder, ``plans.json``, ``dataset.json`` or checkpoint.
        EfficientError: no fold given and none found.
    """
    if not os.path.isdir(model_folder):
        raise InputFileError(model_folder, "model folder does not exist (check -d/-tr/-p/-c or -m)")
    for name in ("plans.json", "dataset.json"):
        path = os.path.join(model_folder, name)
        if not os.path.isfile(path):
            raise InputFileError(path, "missing; is this an nnU-Net model folder?")
        try:
            with open(path) as f:
                json.load(f)
        except (OSError, ValueError) as error:
            raise InputFileError(path, f"is not valid JSON ({error})") from None
    if folds is None:
        folds = [d[len("fold_"):] for d in sorted(os.listdir(model_folder))
                 if d.startswith("fold_") and os.path.isfile(os.path.join(model_folder, d, checkpoint_name))]
        if not folds:
            raise EfficientError(f"{model_folder}: no fold_X/{checkpoint_name} found (training not finished?)")
    for fold in folds:
        checkpoint = os.path.join(model_folder, f"fold_{fold}", checkpoint_name)
        if not os.path.isfile(checkpoint):
            raise InputFileError(checkpoint, "checkpoint missing (training not finished? other -chk?)")
    return list(folds)


def diagnose_model_folder(model_folder: str, folds: Sequence[int | str], checkpoint_name: str,
                          error: BaseException) -> EfficientError | None:
    """Name the file at fault when nnU-Net fails to load a model folder that :func:`check_model_folder`
    accepted (corrupt checkpoint, unknown trainer, configuration missing from the plans, weights of
    another network), or None when it is none of these."""
    import torch

    first = None
    for fold in folds:
        path = os.path.join(model_folder, f"fold_{fold}", checkpoint_name)
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as load_error:
            return InputFileError(path, f"cannot be loaded as a PyTorch checkpoint, truncated or corrupt? "
                                        f"({one_line(load_error)})")
        missing = [k for k in ("network_weights", "trainer_name", "init_args") if k not in checkpoint]
        if not isinstance(checkpoint, dict) or missing:
            return InputFileError(path, f"is not an nnU-Net checkpoint (no {', '.join(missing) or 'dict'})")
        first = first or (path, checkpoint)
    if first is None:
        return None
    path, checkpoint = first
    with open(os.path.join(model_folder, "plans.json")) as f:
        configurations = json.load(f).get("configurations", {})
    configuration = checkpoint["init_args"].get("configuration")
    if configuration not in configurations:
        return InputFileError(os.path.join(model_folder, "plans.json"),
                              f"has no configuration '{configuration}', which {os.path.relpath(path, model_folder)} "
                              f"was trained with (it has {', '.join(sorted(configurations)) or 'none'})")
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    try:
        with quiet_trainer_search():
            recursive_find_trainer_class_by_name(checkpoint["trainer_name"])
    except RuntimeError as lookup_error:
        if not str(lookup_error).startswith(TRAINER_NOT_FOUND):
            return None  # a trainer module failed in its own code: nnU-Net's error (its traceback) is the real one
        return InputFileError(path, f"was trained with trainer '{checkpoint['trainer_name']}', which neither nnU-Net "
                                    f"nor nnunet-efficient defines (add its folder to nnUNet_extTrainer)")
    except Exception:  # an ImportError, SyntaxError, ... of a trainer module: a bug to show with its traceback
        return None
    text = str(error)
    if "state_dict" in text:
        mismatch = re.search(r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[.*?\])\) from "
                             r"checkpoint, the shape in current model is torch\.Size\((\[.*?\])\)", text)
        if mismatch:
            detail = f"{mismatch[1]} is {mismatch[2]} in the checkpoint, {mismatch[3]} in the network"
        else:
            detail = next((line.strip() for line in text.splitlines() if "Missing key" in line
                           or "Unexpected key" in line), one_line(error))[:160]
        return InputFileError(path, f"its weights do not fit the network that plans.json describes (other plans "
                                    f"or dataset?): {detail}")
    return None


@contextmanager
def quiet_trainer_search() -> Iterator[None]:
    """Silence the deprecation warnings of the modules nnU-Net imports while it searches a trainer class.

    ``recursive_find_trainer_class_by_name`` imports every trainer module until one defines the
    name; some import ``torch.jit.interface``, whose FutureWarning would precede any message.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        yield
