"""Error analysis: confusion-matrix counts by hand, P/R/F1, and the JSON / PNG files."""

import json
import math
import struct

import numpy as np
import pytest
import torch
from eval_fakes import FakeDataset

from ssd.evaluation.analysis import ErrorAnalysisEvaluator, confusion_matrix_image, per_class_counts


def box(x):
    return [x, 0, x + 10, 10]


# Classes: 0 background, 1 "a", 2 "b". Ground truth: a1, a2, b1, and a difficult b.
GT = ([box(0), box(20), box(40), box(60)], [1, 1, 2, 2], [False, False, False, True])
# Predictions (label, box, score):
#   a on a1 .90 -> TP a                      a on a1 .80 -> duplicate, a1 taken: background FP of a
#   b on a2 .70 -> confusion (a seen as b)   b on the difficult b .60 -> ignored
#   a on empty space .55 -> background FP    b on b1 .30 -> below the 0.5 threshold: b1 missed
PRED = {
    "boxes": torch.tensor([box(0), box(0), box(20), box(60), box(80), box(40)], dtype=torch.float32),
    "labels": torch.tensor([1, 1, 2, 2, 1, 2]),
    "scores": torch.tensor([0.9, 0.8, 0.7, 0.6, 0.55, 0.3]),
}
EXPECTED_MATRIX = [
    [0, 2, 0],  # background row: false detections of a (2) and b (0)
    [0, 1, 1],  # a: 1 correct, 1 seen as b
    [1, 0, 0],  # b: 1 missed
]


def test_confusion_matrix_by_hand():
    gt = {"boxes_xyxy": np.array(GT[0], float), "labels": np.array(GT[1]), "difficult": np.array(GT[2])}
    keep = PRED["scores"].numpy() >= 0.5
    pred = {
        "boxes_xyxy": PRED["boxes"].numpy()[keep].astype(float),
        "labels": PRED["labels"].numpy()[keep],
        "scores": PRED["scores"].numpy()[keep].astype(float),
    }
    matrix = confusion_matrix_image(gt, pred, num_classes=3)
    assert matrix.tolist() == EXPECTED_MATRIX
    counts = per_class_counts(matrix)
    assert counts["TP"][1:].tolist() == [1, 0]
    assert counts["FP"][1:].tolist() == [2, 1]
    assert counts["FN"][1:].tolist() == [1, 1]
    assert counts["precision"][1] == pytest.approx(1 / 3) and counts["recall"][1] == pytest.approx(1 / 2)
    assert counts["F1"][1] == pytest.approx(0.4)  # 2 * (1/3) * (1/2) / (1/3 + 1/2)
    assert counts["F1"][2] == 0.0  # precision 0 and recall 0


def test_image_without_ground_truth_or_predictions():
    empty_gt = {
        "boxes_xyxy": np.zeros((0, 4)),
        "labels": np.zeros(0, np.int64),
        "difficult": np.zeros(0, bool),
    }
    pred = {"boxes_xyxy": np.array([box(0)], float), "labels": np.array([2]), "scores": np.array([0.9])}
    assert confusion_matrix_image(empty_gt, pred, 3).tolist() == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    counts = per_class_counts(np.zeros((3, 3), np.int64))
    assert math.isnan(counts["precision"][1]) and math.isnan(counts["F1"][1])


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG file"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_evaluator_writes_json_and_plots(tmp_path):
    ds = FakeDataset([GT, ([box(0)], [2], [False])], ("__background__", "a", "b"))
    evaluator = ErrorAnalysisEvaluator(ds, score_threshold=0.5, output_dir=tmp_path)
    evaluator.process([{"index": 0}], [PRED])  # image 1 has no prediction: its b box is missed
    results = evaluator.evaluate()["analysis"]
    # totals: TP 1, FP 3, FN 3 (image 0: a2 confused, b1 missed; image 1: b missed)
    assert (results["TP"], results["FP"], results["FN"]) == (1, 3, 3)
    assert results["precision"] == pytest.approx(25.0) and results["recall"] == pytest.approx(25.0)

    report = json.loads((tmp_path / "analysis.json").read_text())
    assert report["confusion_matrix"]["counts"] == [[0, 2, 0], [0, 1, 1], [2, 0, 0]]
    assert report["per_class"]["b"] == {"TP": 0, "FP": 1, "FN": 2, "precision": 0.0, "recall": 0.0, "F1": 0.0}
    curve_a = report["pr_curves"]["per_class"]["a"]
    assert len(curve_a["precision"]) == 101 and curve_a["num_ground_truth"] == 2
    # class a, all scores, VOC ranking: a1 TP (.9), duplicate FP (.8), FP (.55) -> recall 1/2 at precision 1
    assert curve_a["precision"][50] == pytest.approx(1.0) and curve_a["precision"][51] == 0.0
    assert curve_a["AP_area"] == pytest.approx(0.5)
    for name in ("confusion_matrix.png", "pr_curves.png"):
        width, height = png_size(tmp_path / name)
        assert width >= 300 and height >= 300


def test_every_detection_of_an_image_takes_its_own_box():
    # a on a1 .9 and a on a2 .8: two TPs (the second detection takes a box too); b on a1 .7: a1 is taken, so a
    # false detection of b on background; b1: missed.
    gt = {"boxes_xyxy": np.array([box(0), box(20), box(40)], float), "labels": np.array([1, 1, 2]),
          "difficult": np.zeros(3, bool)}  # fmt: skip
    pred = {"boxes_xyxy": np.array([box(0), box(20), box(1)], float), "labels": np.array([1, 1, 2]),
            "scores": np.array([0.9, 0.8, 0.7])}  # fmt: skip
    assert confusion_matrix_image(gt, pred, 3).tolist() == [[0, 0, 1], [0, 2, 0], [1, 0, 0]]
