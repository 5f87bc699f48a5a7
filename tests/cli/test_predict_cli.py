"""``nnunet-efficient predict`` end to end on real images, with an untrained model.

The model's weights are random (prediction quality is checked in the integration test); what is
checked here is nnU-Net's output contract and the handling of bad input.
"""

import os
import shutil

import nibabel
import numpy as np
import pytest
import SimpleITK as sitk
from conftest import dataset_json, tiny_plans, write_model_folder

from nnunet_efficient.cli.main import main


def predict(model, images, out, *extra):
    return main(["predict", "-i", str(images), "-o", str(out), "-m", str(model), "-f", "0", "-device", "cpu",
                 "--disable_progress_bar", "--disable_tta", "-npp", "1", "-nps", "1", *extra])


def outputs(folder):
    return sorted(n for n in os.listdir(folder) if not n.endswith(".json")) if os.path.isdir(folder) else []


def one_error_line(capsys, *fragments):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    for fragment in fragments:
        assert fragment in err[0], err[0]
    return err[0]


def test_predictions_keep_the_input_geometry(hippocampus_model, sample_images, tmp_path):
    out = tmp_path / "out"
    assert predict(hippocampus_model, sample_images, out, "--batch_size", "2") == 0
    names = sorted(os.listdir(sample_images))
    assert outputs(out) == [n.replace("_0000", "") for n in names]
    for name in names:
        image = sitk.ReadImage(str(sample_images / name))
        seg = sitk.ReadImage(str(out / name.replace("_0000", "")))
        assert seg.GetSize() == image.GetSize()
        np.testing.assert_allclose(seg.GetSpacing(), image.GetSpacing())
        np.testing.assert_allclose(seg.GetOrigin(), image.GetOrigin())
        np.testing.assert_allclose(seg.GetDirection(), image.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2}
    assert not [n for n in os.listdir(out) if n.startswith(".")], "staging folder left behind"


def test_probabilities_parts_and_continue(hippocampus_model, sample_images, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(hippocampus_model, sample_images, out, "--save_probabilities", "-num_parts", "2",
                   "-part_id", "1") == 0
    first, second = sorted(n.replace("_0000.nii.gz", "") for n in os.listdir(sample_images))
    assert outputs(out) == [f"{second}.nii.gz", f"{second}.npz", f"{second}.pkl"]
    assert np.load(out / f"{second}.npz")["probabilities"].shape[0] == 3

    marker = os.path.getmtime(out / f"{second}.nii.gz")
    capsys.readouterr()
    assert predict(hippocampus_model, sample_images, out, "--save_probabilities", "--continue_prediction") == 0
    assert "1 case(s) already predicted, 1 to go" in capsys.readouterr().out
    assert os.path.getmtime(out / f"{second}.nii.gz") == marker
    assert f"{first}.nii.gz" in outputs(out)


def test_sequential_mode(hippocampus_model, sample_images, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", "-i", str(sample_images), "-o", str(out), "-m", str(hippocampus_model), "-f", "0",
                 "-device", "cpu", "--disable_progress_bar", "--disable_tta", "-npp", "0", "-nps", "0"]) == 0
    assert len(outputs(out)) == 2


@pytest.fixture(scope="module")
def two_channel_model(tmp_path_factory):
    return write_model_folder(tmp_path_factory.mktemp("model2") / "nnUNetTrainer__nnUNetPlansTiny__3d_fullres",
                              tiny_plans((16, 16, 16), 2, features=(2, 4)),
                              dataset_json(2, {"background": 0, "a": 1}))


def write_image(path, array, spacing=(1.0, 1.0, 1.0)):
    # nibabel, not SimpleITK: SimpleITK would not keep NaN/Inf in a NIfTI file
    affine = np.diag([*spacing[::-1], 1.0])
    nibabel.save(nibabel.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0), dtype=np.float32), affine),
                 str(path))


@pytest.fixture
def two_channel_images(tmp_path):
    folder = tmp_path / "images2"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for case in ("a", "b"):
        for channel in (0, 1):
            write_image(folder / f"{case}_{channel:04d}.nii.gz", rng.normal(size=(12, 20, 18)))
    return folder


def test_two_channel_prediction_works(two_channel_model, two_channel_images, tmp_path):
    assert predict(two_channel_model, two_channel_images, tmp_path / "out") == 0
    assert outputs(tmp_path / "out") == ["a.nii.gz", "b.nii.gz"]


def test_missing_channel_file(two_channel_model, two_channel_images, tmp_path, capsys):
    os.remove(two_channel_images / "b_0001.nii.gz")
    assert predict(two_channel_model, two_channel_images, tmp_path / "out") == 1
    one_error_line(capsys, "b_0001.nii.gz", "missing channel 1")
    assert outputs(tmp_path / "out") == []


def test_wrong_file_ending(two_channel_model, two_channel_images, tmp_path, capsys):
    image = sitk.ReadImage(str(two_channel_images / "b_0001.nii.gz"))
    os.remove(two_channel_images / "b_0001.nii.gz")
    sitk.WriteImage(image, str(two_channel_images / "b_0001.nrrd"))
    assert predict(two_channel_model, two_channel_images, tmp_path / "out") == 1
    one_error_line(capsys, "b_0001.nrrd", "wrong file ending", ".nii.gz")
    assert outputs(tmp_path / "out") == []


@pytest.mark.parametrize("change, problem", [
    (dict(array=np.zeros((12, 20, 17))), "shape"),
    (dict(array=np.zeros((12, 20, 18)), spacing=(1.0, 1.0, 2.0)), "spacing"),
    (dict(array=np.where(np.arange(12 * 20 * 18).reshape(12, 20, 18) == 7, np.nan, 0.0)), "NaN or infinite"),
    (dict(array=np.full((12, 20, 18), np.inf)), "NaN or infinite"),
], ids=["shape", "spacing", "nan", "inf"])
def test_inconsistent_or_non_finite_channel(two_channel_model, two_channel_images, tmp_path, capsys, change,
                                            problem):
    write_image(two_channel_images / "b_0001.nii.gz", **change)
    assert predict(two_channel_model, two_channel_images, tmp_path / "out") == 1
    one_error_line(capsys, "b_0001.nii.gz", problem)
    assert outputs(tmp_path / "out") == []


def test_output_folder_that_cannot_be_written(hippocampus_model, sample_images, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert predict(hippocampus_model, sample_images, blocker / "out") == 1
    one_error_line(capsys, str(blocker / "out"), "cannot be written")


def test_model_folder_without_checkpoint(hippocampus_model, sample_images, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(hippocampus_model, model)
    os.remove(model / "fold_0" / "checkpoint_final.pth")
    assert predict(model, sample_images, tmp_path / "out") == 1
    one_error_line(capsys, "checkpoint_final.pth", "checkpoint missing")


def test_unknown_strategy(hippocampus_model, sample_images, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        predict(hippocampus_model, sample_images, tmp_path / "out", "--strategy", "no_such_strategy")
    assert exit_info.value.code == 2
    assert "invalid choice: 'no_such_strategy'" in capsys.readouterr().err


def test_unknown_trainer(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("nnUNet_extTrainer", "")
    assert main(["train", "990", "3d_fullres", "0", "-tr", "nnUNetTrainerDoesNotExist"]) == 1
    one_error_line(capsys, "unknown trainer 'nnUNetTrainerDoesNotExist'")


def test_predict_with_unknown_trainer_names_the_missing_model_folder(sample_images, tmp_path, capsys,
                                                                     monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    (tmp_path / "results" / "Dataset990_HippocampusSample").mkdir(parents=True)
    code = main(["predict", "-i", str(sample_images), "-o", str(tmp_path / "out"), "-d", "990", "-c", "3d_fullres",
                 "-tr", "nnUNetTrainerDoesNotExist", "-device", "cpu"])
    assert code == 1
    one_error_line(capsys, "nnUNetTrainerDoesNotExist__nnUNetPlans__3d_fullres", "model folder does not exist")
