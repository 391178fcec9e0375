"""Error breakdown (ssd/evaluation/errors.py): each error type and its dAP derived by hand on tiny images.

Boxes are continuous pixels (pixel_offset 0). AP is the VOC2010+ area AP at IoU 0.5: with the ranking
TP, FP, TP over two boxes, precision is 1 up to recall 1/2 and 2/3 at recall 1, so AP = 1/2 * 1 + 1/2 * 2/3.
"""

import numpy as np
import pytest

from ssd.evaluation.errors import (
    ERROR_TYPES,
    class_aps,
    error_breakdown,
    fix_errors,
    label_image_errors,
    size_of,
)

NAMES = ("__background__", "a", "b")
A = [0, 0, 10, 10]  # 100 px^2
B = [50, 50, 60, 60]
C = [80, 0, 90, 10]
NEAR_A = [1, 0, 11, 10]  # IoU with A = 90 / 110 = 0.818
HALF_A = [0, 0, 10, 4]  # IoU with A = 40 / 100 = 0.4 (inside A)
SLIVER_A = [0, 0, 10, 3]  # IoU 0.3
EMPTY = [30, 30, 40, 40]  # touches no box


def gt(boxes, labels, difficult=None):
    return {
        "boxes_xyxy": np.array(boxes, float).reshape(-1, 4),
        "labels": np.array(labels, np.int64),
        "difficult": np.array(difficult or [False] * len(labels), bool),
    }


def pred(boxes, labels, scores):
    return {
        "boxes_xyxy": np.array(boxes, float).reshape(-1, 4),
        "labels": np.array(labels, np.int64),
        "scores": np.array(scores, float),
    }


def breakdown(gts, preds, threshold=0.0):
    summary, labels = error_breakdown(gts, preds, NAMES, score_threshold=threshold)
    return summary, labels


def counts(summary):
    return {k: v["all"] for k, v in summary["counts"].items() if v["all"]}


def test_background_false_positive_above_the_true_positive():
    # a on empty space .95, a on A .9: ranking FP, TP -> precision 1/2 at recall 1 -> AP_a = 0.5.
    # Removing the background FP leaves TP alone: AP_a = 1, dAP = +50 points; nothing else changes AP.
    summary, labels = breakdown([gt([A], [1])], [pred([EMPTY, A], [1, 1], [0.95, 0.9])])
    assert labels[0]["kind"].tolist() == ["background", "tp"]
    assert counts(summary) == {"tp": 1, "background": 1}
    assert summary["AP50"] == {"a": pytest.approx(50.0), "b": None}
    assert summary["dAP"]["background"]["all"] == pytest.approx(50.0)
    assert summary["dAP"]["background"]["per_class"]["a"] == pytest.approx(50.0)
    for error in ERROR_TYPES:
        if error != "background":
            assert summary["dAP"][error]["all"] == pytest.approx(0.0), error


def test_duplicate_between_two_true_positives():
    # Boxes A, B of class a. a on A .9 (TP), a near A .8 (A taken: duplicate), a on B .7 (TP).
    # Ranking TP, FP, TP: AP = 1/2 + 1/2 * 2/3 = 5/6; without the duplicate AP = 1: dAP = 100/6 points.
    summary, labels = breakdown([gt([A, B], [1, 1])], [pred([A, NEAR_A, B], [1, 1, 1], [0.9, 0.8, 0.7])])
    assert labels[0]["kind"].tolist() == ["tp", "duplicate", "tp"]
    assert labels[0]["target"].tolist() == [0, 0, 1]
    assert counts(summary) == {"tp": 2, "duplicate": 1}
    assert summary["AP50"]["a"] == pytest.approx(500 / 6)
    assert summary["dAP"]["duplicate"]["all"] == pytest.approx(100 / 6)
    assert summary["dAP"]["background"]["all"] == pytest.approx(0.0)


def test_mislabelled_box_is_a_classification_error_and_not_a_miss():
    # A is an "a", B a "b". b on A .9 (wrong class, IoU 1), b on B .8 (TP of b).
    # AP_a = 0 (no detection of a), AP_b: ranking FP, TP -> 0.5; mAP = 0.25.
    # Fixed: the detection becomes an a on the free box A -> AP_a = 1, AP_b = 1: dAP = +100 and +50, mAP +75.
    # A counts as found badly, not missed.
    summary, labels = breakdown([gt([A, B], [1, 2])], [pred([A, B], [2, 2], [0.9, 0.8])])
    assert labels[0]["kind"].tolist() == ["classification", "tp"]
    assert labels[0]["target"].tolist() == [0, 1]
    assert labels[0]["missed"].tolist() == [False, False]
    assert counts(summary) == {"tp": 1, "classification": 1}
    assert summary["counts"]["classification"]["per_class"] == {"a": 0, "b": 1}  # against the predicted class
    assert summary["mAP50"] == pytest.approx(25.0)
    assert summary["dAP"]["classification"]["per_class"] == {
        "a": pytest.approx(100.0),
        "b": pytest.approx(50.0),
    }
    assert summary["dAP"]["classification"]["all"] == pytest.approx(75.0)
    assert summary["dAP"]["missed"]["all"] == pytest.approx(0.0)


def test_relabelled_detection_on_a_box_already_found_is_removed():
    # a on A .9 (TP), b on A .8 (classification error). Repair: A already has its TP, so the b is removed;
    # AP_a stays 1 and AP_b is NaN (no b boxes), so nothing changes.
    _, labels = breakdown([gt([A], [1])], [pred([A, A], [1, 2], [0.9, 0.8])])
    assert labels[0]["kind"].tolist() == ["tp", "classification"]
    fixed = fix_errors([gt([A], [1])], [pred([A, A], [1, 2], [0.9, 0.8])], labels, "classification")
    assert fixed[0]["labels"].tolist() == [1]


def test_localisation_both_background_by_overlap():
    # a at IoU 0.4 with A (own class) -> localisation; b at IoU 0.3 with A -> both; a at 0 -> background.
    truth = [gt([A], [1])]
    dets = [pred([HALF_A, SLIVER_A, EMPTY], [1, 2, 1], [0.9, 0.8, 0.7])]
    summary, labels = breakdown(truth, dets)
    assert labels[0]["kind"].tolist() == ["localisation", "both", "background"]
    assert labels[0]["iou"][:2] == pytest.approx([0.4, 0.3])
    assert labels[0]["missed"].tolist() == [False]  # the localisation error points at A
    # AP_a = 0; moving the a onto A makes it a TP ranked first: AP_a = 1.
    assert summary["dAP"]["localisation"]["all"] == pytest.approx(100.0)
    fixed = fix_errors(truth, dets, labels, "localisation")
    assert fixed[0]["boxes_xyxy"][0].tolist() == A


def test_missed_boxes_and_their_repair():
    # A and C of class a; only A is detected: AP_a = 1/2. Adding C as a top-scoring detection: AP_a = 1.
    # B of class b is touched only by an a at IoU 0.3 (a "both" error), which does not explain it: missed.
    truth = [gt([A, C, B], [1, 1, 2])]
    dets = [pred([A, [50, 50, 60, 53]], [1, 1], [0.9, 0.8])]
    summary, labels = breakdown(truth, dets)
    assert labels[0]["kind"].tolist() == ["tp", "both"]
    assert labels[0]["missed"].tolist() == [False, True, True]
    assert summary["counts"]["missed"]["per_class"] == {"a": 1, "b": 1}
    # AP_a: TP, FP over 2 boxes -> 1/2; AP_b = 0; mAP = 25. Missed fixed: AP_a = 1, AP_b = 1 -> +75.
    assert summary["mAP50"] == pytest.approx(25.0)
    assert summary["dAP"]["missed"]["all"] == pytest.approx(75.0)


def test_difficult_boxes_are_ignored_not_errors_nor_misses():
    truth = [gt([A, B], [1, 1], [False, True])]
    summary, labels = breakdown(truth, [pred([A, B], [1, 1], [0.9, 0.8])])
    assert labels[0]["kind"].tolist() == ["tp", "ignored"]
    assert labels[0]["missed"].tolist() == [False, False]
    assert counts(summary) == {"tp": 1}


def test_every_detection_gets_exactly_one_outcome_and_base_ap_matches_the_voc_ranking():
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for _ in range(6):
        xy = rng.uniform(0, 200, (5, 2))
        gts.append(gt(np.hstack([xy, xy + rng.uniform(10, 120, (5, 2))]), rng.integers(1, 3, 5)))
        xy = rng.uniform(0, 200, (12, 2))
        preds.append(
            pred(
                np.hstack([xy, xy + rng.uniform(10, 120, (12, 2))]),
                rng.integers(1, 3, 12),
                rng.uniform(0, 1, 12),
            )
        )
    summary, labels = breakdown(gts, preds)
    total = sum(v["all"] for k, v in summary["counts"].items() if k != "missed")
    assert total == sum(len(p["labels"]) for p in preds)  # no detection ignored here, none counted twice
    assert summary["counts"]["tp"]["all"] + summary["counts"]["missed"]["all"] <= sum(
        len(g["labels"]) for g in gts
    )
    copies = [{k: v.copy() for k, v in p.items()} for p in preds]
    label_image_errors(gts[0], preds[0])
    fix_errors(gts, preds, labels, "localisation")
    assert all(
        np.array_equal(p[k], c[k]) for p, c in zip(preds, copies, strict=True) for k in p
    )  # arguments untouched
    base = class_aps(gts, preds, 3)
    assert [summary["AP50"]["a"], summary["AP50"]["b"]] == pytest.approx(list(100 * base[1:]))


def test_images_without_boxes_or_detections():
    summary, labels = breakdown([gt([], []), gt([A], [1])], [pred([A], [2], [0.9]), pred([], [], [])])
    assert labels[0]["kind"].tolist() == ["background"] and labels[1]["missed"].tolist() == [True]
    assert counts(summary) == {"background": 1, "missed": 1}


def test_sizes_follow_coco_area_limits():
    boxes = np.array([[0, 0, 31, 31], [0, 0, 32, 32], [0, 0, 95, 95], [0, 0, 96, 96]], float)
    assert size_of(boxes).tolist() == [0, 1, 1, 2]
    summary, _ = breakdown([gt(boxes, [1, 1, 1, 1])], [pred(boxes[:1], [1], [0.9])], threshold=0.5)
    assert summary["sizes"]["small"] == {
        "ground_truth": 1,
        "found": 1,
        "missed": 0,
        "false_positives": 0,
        "recall": 1.0,
    }
    assert summary["sizes"]["medium"]["missed"] == 2 and summary["sizes"]["large"]["recall"] == 0.0
    assert summary["recall_by_size"]["a"] == {"small": 1.0, "medium": 0.0, "large": 0.0}


def test_score_threshold_applies_to_counts_not_to_ap():
    # The background FP scores .4 (< .5): not counted, but it ranks above the TP, so AP and dAP see it.
    summary, labels = breakdown([gt([A], [1])], [pred([EMPTY, A], [1, 1], [0.4, 0.3])], threshold=0.35)
    assert counts(summary) == {"background": 1, "missed": 1}
    summary, _ = breakdown([gt([A], [1])], [pred([EMPTY, A], [1, 1], [0.95, 0.9])], threshold=0.92)
    assert counts(summary) == {"background": 1, "missed": 1}
    assert summary["dAP"]["background"]["all"] == pytest.approx(50.0)
