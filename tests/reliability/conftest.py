"""Fixtures of the reliability catalogue: a workspace, tiny models, the command server and the record.

With ``NNUNET_EFFICIENT_RELIABILITY_DOC=docs/reliability.md`` the session writes the catalogue
table of what each command printed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import SAMPLE, dataset_json, tiny_plans, write_model_folder
from reliability.harness import (
    LABELS,
    Catalogue,
    CommandServer,
    write_2d_model,
    write_nmsw_model,
)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("reliability")
    for name in ("raw", "preprocessed", "results", "logs"):
        (ws / name).mkdir()
    return ws


@pytest.fixture(scope="session")
def command_env(workspace) -> dict[str, str]:
    env = dict(os.environ)
    env.update(nnUNet_raw=str(workspace / "raw"), nnUNet_preprocessed=str(workspace / "preprocessed"),
               nnUNet_results=str(workspace / "results"), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               nnUNet_def_n_proc="1")
    env.pop("nnUNet_extTrainer", None)
    return env


@pytest.fixture(scope="session")
def server(workspace, command_env):
    s = CommandServer(command_env, workspace / "logs")
    yield s
    s.close()


@pytest.fixture(scope="session")
def catalogue(workspace, tmp_path_factory):
    record = Catalogue(workspace, tmp_path_factory.getbasetemp())
    yield record
    target = os.environ.get("NNUNET_EFFICIENT_RELIABILITY_DOC")
    if target and record.observations:
        path = Path(target)
        path.write_text(record.document(path.read_text() if path.is_file() else ""))


@pytest.fixture(scope="session")
def models(workspace) -> dict[str, Path]:
    """Untrained model folders: 1- and 2-channel 3D, a 2D-image model and an NMSW model."""
    root = workspace / "models"
    one = write_model_folder(root / "one" / "nnUNetTrainer__nnUNetPlansTiny__3d_fullres",
                             tiny_plans((40, 56, 40), 1), dataset_json(1, LABELS))
    two = write_model_folder(root / "two" / "nnUNetTrainer__nnUNetPlansTiny__3d_fullres",
                             tiny_plans((16, 16, 16), 2, features=(2, 4)), dataset_json(2, LABELS))
    return {"one": one, "two": two, "2d": write_2d_model(root / "2d" / "nnUNetTrainer__nnUNetPlansTiny__2d"),
            "nmsw": write_nmsw_model(root / "nmsw" / "nnUNetTrainerNMSW__nnUNetPlansTiny__3d_nmsw")}


@pytest.fixture(scope="session")
def sample_cases() -> list[Path]:
    return sorted((SAMPLE / "imagesTs").iterdir())


@pytest.fixture
def images(tmp_path, sample_cases):
    """A fresh folder with the first two held-out sample images; ``images(n)`` for n of them."""
    def make(n: int = 2, name: str = "images") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        for path in sample_cases[:n]:
            shutil.copy(path, folder / path.name)
        return folder
    return make
