"""``nnunet-efficient benchmark`` on the shipped Hippocampus sample, with an untrained model.

The weights are random, so the Dice values mean nothing; what is checked is the report's
contract and that its Dice is nnU-Net's own evaluation of the written predictions.
"""

import csv
import json
import math
import os

import pytest
import torch
from conftest import SAMPLE
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

from nnunet_efficient.cli import predict as predict_cli
from nnunet_efficient.cli.main import main

VARIANTS = ("sliding_window", "sliding_window:tta=0", "sparse:margin=0")
FOLDERS = ("sliding_window", "sliding_window__tta=0", "sparse__margin=0")
CASES = sorted(n[:-len("_0000.nii.gz")] for n in os.listdir(SAMPLE / "imagesTs"))
REPORT = ("benchmark_cases.csv", "benchmark_summary.csv", "benchmark.json", "benchmark.md", "benchmark_pareto.png",
          "benchmark_settings.json")


@pytest.fixture(scope="module")
def one_thread_cpu():
    """The command takes every core, as nnUNetv2_predict does; tiny networks on a busy machine want one."""
    threads = torch.get_num_threads()
    patch = pytest.MonkeyPatch()
    patch.setattr(predict_cli, "select_device", lambda name: torch.device(name))
    torch.set_num_threads(1)
    yield
    patch.undo()
    torch.set_num_threads(threads)


def benchmark(model, out, *extra, images=SAMPLE / "imagesTs", reference=SAMPLE / "labelsTs"):
    return main(["benchmark", "-i", str(images), "-ref", str(reference), "-m", str(model), "-f", "0",
                 "-o", str(out), "-device", "cpu", "--disable_progress_bar", *extra])


@pytest.fixture(scope="module")
def report(hippocampus_model, tmp_path_factory, one_thread_cpu):
    out = tmp_path_factory.mktemp("benchmark")
    assert benchmark(hippocampus_model, out, "--strategies", *VARIANTS) == 0
    return out


def test_every_report_file_and_prediction_is_written(report):
    for name in REPORT:
        assert (report / name).is_file(), name
    for folder in FOLDERS:
        assert sorted(os.listdir(report / folder)) == [f"{case}.nii.gz" for case in CASES]
    with open(report / "benchmark_cases.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(CASES) * len(VARIANTS)
    assert {(r["case"], r["variant"]) for r in rows} == {(c, v) for c in CASES for v in FOLDERS}
    data = json.loads((report / "benchmark.json").read_text())
    assert [s["label"] for s in data["summary"]] == ["sliding_window", "sliding_window tta=0", "sparse margin=0"]
    assert data["summary"][0]["is_baseline"]
    for row in data["rows"]:
        assert set(row["seconds"]) == {"preprocess", "network", "export"}
        assert row["macs"] > 0 and row["windows"] >= 1
        if row["strategy"] == "sparse":  # guide pass without TTA, then the selected windows with it
            details = row["details"]
            assert row["network_inputs"] == details["guide_windows"] + 8 * details["fine_windows"]
        else:
            assert row["network_inputs"] == row["windows"] * (8 if row["tta"] else 1)
    # MACs come from a separate counting pass, which must run the variant's own settings
    macs = {(r["case"], r["variant"]): r["macs"] for r in data["rows"]}
    for case in CASES:
        assert macs[(case, "sliding_window")] == 8 * macs[(case, "sliding_window__tta=0")]


def test_dice_equals_nnunet_evaluation_of_the_written_predictions(report):
    rows = json.loads((report / "benchmark.json").read_text())["rows"]
    for folder in FOLDERS:
        metrics = compute_metrics_on_folder(str(SAMPLE / "labelsTs"), str(report / folder), None, SimpleITKIO(),
                                            ".nii.gz", [1, 2], num_processes=1)
        nnunet = {os.path.basename(c["prediction_file"])[:-len(".nii.gz")]: c["metrics"]
                  for c in metrics["metric_per_case"]}
        for row in (r for r in rows if r["variant"] == folder):
            for label in (1, 2):
                ours, theirs = row["dice"][str(label)], nnunet[row["case"]][label]["Dice"]
                assert (ours is None and math.isnan(theirs)) or ours == pytest.approx(theirs, abs=1e-12)


def test_unknown_strategy_is_one_line_and_writes_nothing(hippocampus_model, tmp_path, capsys):
    assert benchmark(hippocampus_model, tmp_path / "out", "--strategies", "sliding_window", "nope") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown strategy 'nope'" in err[0]
    assert not (tmp_path / "out").exists()


def test_missing_reference_is_one_line_and_writes_nothing(hippocampus_model, tmp_path, capsys):
    reference = tmp_path / "labels"
    reference.mkdir()
    assert benchmark(hippocampus_model, tmp_path / "out", reference=reference) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reference label of case 'hippocampus_038' is missing" in err[0]
    assert not (tmp_path / "out").exists()


def test_regions_and_a_second_model_in_one_report(hippocampus_model, tmp_path, one_thread_cpu):
    from conftest import write_model_folder

    plans = json.loads((hippocampus_model / "plans.json").read_text())
    dataset = json.loads((hippocampus_model / "dataset.json").read_text())
    other = write_model_folder(tmp_path / "other" / "nnUNetTrainer__nnUNetPlansTiny__3d_fullres", plans, dataset,
                               seed=1)
    out = tmp_path / "out"
    assert benchmark(hippocampus_model, out, "--disable_tta", "--no_warmup", "--strategies", "sliding_window",
                     "sliding_window:model=other", "--models", f"other={other}",
                     "--regions", "HIP=1,2", "POST=2") == 0
    data = json.loads((out / "benchmark.json").read_text())
    assert [s["label"] for s in data["summary"]] == ["sliding_window", "sliding_window model=other"]
    metrics = compute_metrics_on_folder(str(SAMPLE / "labelsTs"), str(out / "sliding_window__model=other"), None,
                                        SimpleITKIO(), ".nii.gz", [(1, 2), 2], num_processes=1)
    nnunet = {os.path.basename(c["prediction_file"])[:-len(".nii.gz")]: c["metrics"]
              for c in metrics["metric_per_case"]}
    rows = [r for r in data["rows"] if r["variant"] == "sliding_window__model=other"]
    assert len(rows) == len(CASES)
    for row in rows:
        assert row["model"] == other.name
        for name, region in (("HIP", (1, 2)), ("POST", 2)):
            assert row["region_dice"][name] == pytest.approx(nnunet[row["case"]][region]["Dice"], abs=1e-12)
        assert row["region_dice"]["POST"] == row["dice"]["2"]
    # another model's weights: other labels
    first = {r["case"]: r["region_dice"]["HIP"] for r in data["rows"] if r["variant"] == "sliding_window"}
    assert any(first[r["case"]] != r["region_dice"]["HIP"] for r in rows)
    assert "HIP Dice" in (out / "benchmark.md").read_text()


def test_region_of_a_label_the_model_lacks_is_one_line(hippocampus_model, tmp_path, capsys):
    assert benchmark(hippocampus_model, tmp_path / "out", "--regions", "WT=1,2,3,4") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "WT names label(s) [3, 4]" in err[0]
    assert not (tmp_path / "out").exists()
