"""Dice of label unions (``benchmark --regions``), on hand-made label maps."""

import math

import numpy as np
import pytest

from nnunet_efficient.benchmark.regions import check_regions, mean_region_dice, parse_regions, region_dice
from nnunet_efficient.benchmark.report import markdown_table, summarize, write_csv
from nnunet_efficient.errors import EfficientError


def test_parse_keeps_order_and_drops_repeated_labels():
    assert parse_regions(["WT=1,2,3,4", "TC=1,3,4", "ET=4", "X=2,2"]) == {
        "WT": (1, 2, 3, 4), "TC": (1, 3, 4), "ET": (4,), "X": (2,)}
    assert list(parse_regions(["ET=4", "WT=1,2"])) == ["ET", "WT"]


@pytest.mark.parametrize("specs, message", [
    (["WT"], "is not NAME=LABEL"), (["WT=1,a"], "is not NAME=LABEL"), (["WT=0,1"], "labels >= 1"),
    (["1x=1"], "is not NAME=LABEL"), (["WT="], "is not NAME=LABEL"), (["A=1", "A=2"], "given twice")])
def test_bad_region_specs_are_user_errors(specs, message):
    with pytest.raises(EfficientError, match=message):
        parse_regions(specs)


def test_region_labels_must_be_labels_of_the_model():
    check_regions({"WT": (1, 2, 3, 4)}, [1, 2, 3, 4], "model")
    with pytest.raises(EfficientError, match=r"WT names label\(s\) \[5\] that model does not predict"):
        check_regions({"WT": (1, 5)}, [1, 2, 3, 4], "model")
    with pytest.raises(EfficientError, match="region-based"):
        check_regions({"WT": (1,)}, [1], "model", region_based=True)


def test_region_dice_scores_the_union_by_hand():
    # reference: 1 1 2 2 4 0 ; prediction: 2 1 2 0 4 4
    reference = np.array([1, 1, 2, 2, 4, 0])
    prediction = np.array([2, 1, 2, 0, 4, 4])
    scores = region_dice(prediction, reference, {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,), "NE": (3,)})
    # WT: pred {0,1,2,4,5}, ref {0..4}: tp 4, fp 1, fn 1 -> 8/10
    # TC: pred {1,4,5}, ref {0,1,4}: tp 2, fp 1, fn 1 -> 4/6
    # ET: pred {4,5}, ref {4}: tp 1, fp 1 -> 2/3 ; NE: absent from both -> NaN
    assert scores["WT"] == pytest.approx(0.8) and scores["TC"] == pytest.approx(4 / 6)
    assert scores["ET"] == pytest.approx(2 / 3) and math.isnan(scores["NE"])
    assert list(scores) == ["WT", "TC", "ET", "NE"]
    assert mean_region_dice(scores) == pytest.approx((0.8 + 4 / 6 + 2 / 3) / 3)


def test_region_dice_leaves_ignore_label_voxels_out():
    reference = np.array([1, 9, 0])
    prediction = np.array([1, 1, 0])
    assert region_dice(prediction, reference, {"A": (1,)}, ignore_label=9) == {"A": 1.0}
    assert region_dice(prediction, reference, {"A": (1,)})["A"] == pytest.approx(2 / 3)


def test_report_shows_region_dice_next_to_label_dice(tmp_path):
    rows = [
        {"case": "a", "strategy": "sliding_window", "options": {}, "dice": {1: 0.8, 2: 0.6},
         "region_dice": {"WT": 0.9, "ET": 0.5}, "total_seconds": 10},
        {"case": "a", "strategy": "nmsw", "options": {"k": 5}, "dice": {1: 0.7, 2: 0.6},
         "region_dice": {"WT": 0.88, "ET": 0.46}, "total_seconds": 1},
    ]
    summary = {s["label"]: s for s in summarize(rows)}
    nmsw = summary["nmsw k=5"]
    assert nmsw["mean_region_dice"] == pytest.approx(0.67)  # derived from region_dice when not given
    assert nmsw["region_dice_diff_points"] == pytest.approx(-3.0)
    assert nmsw["dice_diff_points"] == pytest.approx(-5.0)
    table = markdown_table(list(summary.values())).splitlines()
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:9] == ["Strategy", "Options", "Cases", "Mean Dice", "ΔDice (pts)", "WT Dice", "ET Dice",
                          "Mean region Dice", "ΔRegion (pts)"]
    cells = [c.strip() for c in table[3].strip("|").split("|")]
    assert cells[5:9] == ["0.8800", "0.4600", "0.6700", "-3.00"]
    write_csv(rows, tmp_path / "rows.csv")
    columns = (tmp_path / "rows.csv").read_text().splitlines()[0].split(",")
    assert {"dice_1", "dice_2", "region_dice_WT", "region_dice_ET"} <= set(columns)


def test_report_without_regions_keeps_its_columns():
    rows = [{"case": "a", "strategy": "sliding_window", "options": {}, "dice": {1: 0.8}, "total_seconds": 10}]
    header = markdown_table(summarize(rows)).splitlines()[0]
    assert "region" not in header.lower()
