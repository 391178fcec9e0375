"""Error breakdown (ssd/evaluation/errors.py): each error type, each fix and its dAP derived by hand on tiny images.

Boxes are continuous pixels. TIDE's AP is COCO's 101-point AP: precision made non-increasing down the ranking,
read at recall 0, 0.01, ..., 1 at the first detection reaching that recall (0 beyond the last), averaged.
Two rankings come back often:
- one box, FP then TP: precision 0, then 1/2 at recall 1; made monotone 1/2, 1/2; all 101 points read 1/2: AP 50.
- two boxes, TP, FP, TP: recall 1/2, 1/2, 1 with precision 1, 1/2, 2/3, monotone 1, 2/3, 2/3; the 51 points up
  to recall 0.5 read 1, the 50 above read 2/3: AP = (51 + 100/3) / 101 = 253/303.
A class with detections but no box has AP 0 and counts in the mAP; a class with neither is left out (None).
"""

import numpy as np
import pytest
from eval_fakes import gt, pred

from ssd.evaluation.error_oracle import coco_101_point_ap
from ssd.evaluation.errors import ERROR_TYPES, error_breakdown, label_image_errors, size_of
from ssd.evaluation.voc import average_precision, match_detections_voc, precision_recall

NAMES = ("__background__", "a", "b")
A = [0, 0, 10, 10]  # 100 px^2
B = [50, 50, 60, 60]
C = [80, 0, 90, 10]
D = [0, 50, 10, 60]
NEAR_A = [1, 0, 11, 10]  # IoU with A = 90 / 110 = 0.818
LEFT_OF_NEAR_A = [-4, 0, 6, 10]  # IoU with NEAR_A = 50 / 150 = 1/3
HALF_A = [0, 0, 10, 4]  # IoU with A = 40 / 100 = 0.4 (inside A)
SLIVER_A = [0, 0, 10, 3]  # IoU 0.3
TALL_A = [0, 0, 10, 23.3]  # IoU with A = 100 / 233 = 0.43, covers 0.43 of itself with A
EMPTY = [30, 30, 40, 40]  # touches no box
EMPTY2 = [30, 0, 40, 10]


def breakdown(gts, preds, threshold=0.0, rules="tide"):
    return error_breakdown(gts, preds, NAMES, score_threshold=threshold, rules=rules)


def counts(summary, key="error_counts"):
    return {k: v["all"] for k, v in summary[key].items() if v["all"]}


def daps(summary):
    return {k: v["all"] for k, v in summary["dAP"].items()}


def test_101_point_ap_of_the_two_rankings_in_the_docstring():
    assert 100 * coco_101_point_ap(np.array([False, True]), 1) == pytest.approx(50.0)
    assert coco_101_point_ap(np.array([True, False, True]), 2) == pytest.approx(253 / 303)
    assert coco_101_point_ap(np.array([True]), 0) == 0.0  # no box: AP 0, as TIDE


def test_background_false_positive_above_the_true_positive():
    # a on empty space .95, a on A .9: FP, TP over one box: AP_a = 50. Removing the background FP: AP_a = 100.
    # Special false_positive: the TP scored 1, the FP 0: TP first, AP 100 (+50). b has no box and no detection.
    summary, labels = breakdown([gt([A], [1])], [pred([EMPTY, A], [1, 1], [0.95, 0.9])])
    assert labels[0]["kind"].tolist() == ["background", "tp"]
    assert counts(summary) == {"background": 1}
    assert counts(summary, "counts") == {"tp": 1, "background": 1}
    assert summary["AP"] == {"a": pytest.approx(50.0), "b": None}
    assert daps(summary) == {
        **dict.fromkeys(ERROR_TYPES, 0.0),
        "background": pytest.approx(50.0),
        "false_positive": pytest.approx(50.0),
        "false_negative": 0.0,
    }
    assert summary["dAP"]["background"]["per_class"] == {"a": pytest.approx(50.0), "b": None}


def test_duplicate_between_two_true_positives():
    # Boxes A, B of class a. a on A .9 (TP), a near A .8 (A taken: duplicate), a on B .7 (TP): AP 253/303;
    # without the duplicate AP = 100: dAP = 100 * 50/303.
    summary, labels = breakdown([gt([A, B], [1, 1])], [pred([A, NEAR_A, B], [1, 1, 1], [0.9, 0.8, 0.7])])
    assert labels[0]["kind"].tolist() == ["tp", "duplicate", "tp"]
    assert labels[0]["target"].tolist() == [0, 0, 1]
    assert counts(summary) == {"duplicate": 1}
    assert summary["AP"]["a"] == pytest.approx(100 * 253 / 303)
    assert summary["dAP"]["duplicate"]["all"] == pytest.approx(100 * 50 / 303)
    assert summary["dAP"]["background"]["all"] == 0.0
    _, voc_labels = breakdown(
        [gt([A, B], [1, 1])], [pred([A, NEAR_A, B], [1, 1, 1], [0.9, 0.8, 0.7])], rules="voc"
    )
    assert voc_labels[0]["kind"].tolist() == ["tp", "duplicate", "tp"]


def test_a_taken_box_at_exactly_the_foreground_iou_gives_localisation():
    # TIDE tests t_b <= IoU <= t_f for localisation (both ends included) before duplicate (IoU >= t_f): a second
    # a at IoU 0.5 with A, already taken, is a localisation error; at 0.818 a duplicate.
    _, labels = breakdown([gt([A], [1])], [pred([A, [0, 0, 10, 5], NEAR_A], [1, 1, 1], [0.9, 0.8, 0.7])])
    assert labels[0]["kind"].tolist() == ["tp", "localisation", "duplicate"]
    assert labels[0]["iou"][1] == 0.5


def test_voc_rules_match_the_best_box_even_when_taken():
    # B2 overlaps B (IoU 0.818). a on B .9 takes B; an a at IoU 0.923 with B and 0.887 with B2 at .8 has B as its
    # best box: the VOC rule makes it a FP (duplicate) although B2 is free; TIDE's matching takes B2: TP.
    truth = [gt([B, [51, 50, 61, 60]], [1, 1])]
    dets = [pred([B, [50.4, 50, 60.4, 60]], [1, 1], [0.9, 0.8])]
    _, tide = breakdown(truth, dets)
    _, voc = breakdown(truth, dets, rules="voc")
    assert tide[0]["kind"].tolist() == ["tp", "tp"] and tide[0]["iou"][1] == pytest.approx(94 / 106)
    assert voc[0]["kind"].tolist() == ["tp", "duplicate"] and voc[0]["iou"][1] == pytest.approx(96 / 104)


def test_mislabelled_box_is_a_classification_error_and_not_a_miss():
    # A is an "a", B a "b". b on A .9 (wrong class, IoU 1), b on B .8 (TP of b).
    # AP_a = 0 (a box, no detection), AP_b: FP, TP over one box = 50; mAP 25.
    # Fixed: the detection becomes an a on the free box A: AP_a = AP_b = 100: dAP +100 and +50, mAP +75.
    summary, labels = breakdown([gt([A, B], [1, 2])], [pred([A, B], [2, 2], [0.9, 0.8])])
    assert labels[0]["kind"].tolist() == ["classification", "tp"]
    assert labels[0]["target"].tolist() == [0, 1]
    assert labels[0]["repairs"].tolist() == [True, False]
    assert labels[0]["missed"].tolist() == [False, False]  # A was found, badly
    assert summary["error_counts"]["classification"]["per_class"] == {
        "a": 0,
        "b": 1,
    }  # by the predicted class
    assert summary["mAP"] == pytest.approx(25.0)
    assert summary["dAP"]["classification"]["per_class"] == {
        "a": pytest.approx(100.0),
        "b": pytest.approx(50.0),
    }
    assert summary["dAP"]["classification"]["all"] == pytest.approx(75.0)
    assert summary["dAP"]["missed"]["all"] == 0.0


def test_localisation_is_tested_before_classification():
    # The example: an a at IoU 0.82 with a b box (A) and 1/3 with an a box: localisation (TIDE's order),
    # and the b box, which nothing points at while free, is missed. AP_a = 0 (one FP), AP_b = 0 (no detection).
    # Localisation fixed: the a lands on its box: AP_a = 100, mAP 50. Missed fixed: A leaves the ground truth,
    # class b has no box and no detection and leaves the mean: mAP = AP_a = 0, no gain.
    summary, labels = breakdown([gt([A, LEFT_OF_NEAR_A], [2, 1])], [pred([NEAR_A], [1], [0.9])])
    assert labels[0]["kind"].tolist() == ["localisation"]
    assert labels[0]["target"].tolist() == [1] and labels[0]["iou"][0] == pytest.approx(1 / 3)
    assert labels[0]["missed"].tolist() == [True, False]
    assert counts(summary) == {"localisation": 1, "missed": 1}
    assert summary["dAP"]["localisation"]["all"] == pytest.approx(50.0)
    assert summary["dAP"]["classification"]["all"] == 0.0
    assert summary["dAP"]["missed"]["all"] == 0.0


def test_relabelled_detection_on_a_box_already_found_is_removed():
    # a on A .9 (TP), b on A .8 (classification error on a taken box: no repair). AP_a = 100; class b has a
    # detection and no box: AP_b = 0, mAP 50. Fixing classification removes the b: class b leaves the mean, +50.
    summary, labels = breakdown([gt([A], [1])], [pred([A, A], [1, 2], [0.9, 0.8])])
    assert labels[0]["kind"].tolist() == ["tp", "classification"]
    assert labels[0]["repairs"].tolist() == [False, False]
    assert summary["AP"] == {"a": pytest.approx(100.0), "b": 0.0}
    assert summary["dAP"]["classification"]["all"] == pytest.approx(50.0)
    assert summary["dAP"]["classification"]["per_class"] == {"a": 0.0, "b": None}  # b has no AP after the fix


def test_one_repair_per_box_across_classification_and_localisation():
    # A (class a) claimed by a b at .9 (classification) and an a inside it at .8 (localisation). AP_a = 0 (FP over
    # one box), AP_b = 0 (FP, no box). Localisation fixed: the .8 is not the box's repair (the .9 is), so it is
    # removed: AP_a still 0, nothing gained. Classification fixed: the .9 becomes an a on A: TP, FP -> AP_a 100,
    # class b leaves the mean: +100.
    summary, labels = breakdown([gt([A], [1])], [pred([A, HALF_A], [2, 1], [0.9, 0.8])])
    assert labels[0]["kind"].tolist() == ["classification", "localisation"]
    assert labels[0]["repairs"].tolist() == [True, False]
    assert summary["dAP"]["localisation"]["all"] == 0.0
    assert summary["dAP"]["classification"]["all"] == pytest.approx(100.0)


def test_localisation_both_background_by_overlap():
    # a at IoU 0.4 with A (own class): localisation; b at 0.3 with A: both; a at 0: background.
    # AP_a = 0 (two FPs), AP_b = 0 (FP, no box). Localisation fixed: TP, FP -> AP_a 100: mAP 50.
    truth, dets = [gt([A], [1])], [pred([HALF_A, SLIVER_A, EMPTY], [1, 2, 1], [0.9, 0.8, 0.7])]
    summary, labels = breakdown(truth, dets)
    assert labels[0]["kind"].tolist() == ["localisation", "both", "background"]
    assert labels[0]["iou"][:2] == pytest.approx([0.4, 0.3])
    assert labels[0]["missed"].tolist() == [False]  # the localisation error points at A
    assert summary["dAP"]["localisation"]["all"] == pytest.approx(50.0)
    assert summary["dAP"]["both"]["all"] == 0.0  # class b leaves the mean; AP_a is still 0


def test_missed_fix_removes_the_boxes_from_the_ground_truth():
    # The example: boxes A, B, C, D of class a; a on A .9, on nothing .8, on B .7, on nothing .6.
    # Ranking TP, FP, TP, FP: recall 1/4, 1/4, 1/2, 1/2, precision monotone 1, 2/3, 2/3, 1/2: 26 points read 1,
    # 25 read 2/3: AP = (26 + 50/3) / 101 = 128/303. Fixing C and D leaves 2 boxes: AP = 253/303: +125/303.
    # With the VOC area AP: 1/4 * 1 + 1/4 * 2/3 = 5/12 before, 1/2 + 1/2 * 2/3 = 5/6 after: +5/12.
    truth = [gt([A, B, C, D], [1, 1, 1, 1])]
    dets = [pred([A, EMPTY, B, EMPTY2], [1, 1, 1, 1], [0.9, 0.8, 0.7, 0.6])]
    summary, labels = breakdown(truth, dets)
    assert labels[0]["missed"].tolist() == [False, False, True, True]
    assert summary["AP"]["a"] == pytest.approx(100 * 128 / 303)
    assert summary["dAP"]["missed"]["all"] == pytest.approx(100 * 125 / 303)
    assert summary["dAP"]["false_negative"]["all"] == pytest.approx(100 * 125 / 303)  # the same boxes here
    voc, _ = breakdown(truth, dets, rules="voc")
    assert voc["AP"]["a"] == pytest.approx(100 * 5 / 12)
    assert voc["dAP"]["missed"]["all"] == pytest.approx(100 * 5 / 12)


def test_special_errors():
    # Boxes A, C; a on A .9, a on nothing .8: TP, FP over two boxes: recall 1/2 at precision 1: 51/101.
    # false_positive: TP scored 1 and FP 0 keeps the ranking: 0. false_negative: C removed: one box, TP first:
    # AP 100, +50/101.
    summary, _ = breakdown([gt([A, C], [1, 1])], [pred([A, EMPTY], [1, 1], [0.9, 0.8])])
    assert summary["AP"]["a"] == pytest.approx(100 * 51 / 101)
    assert summary["dAP"]["false_positive"]["all"] == pytest.approx(0.0)
    assert summary["dAP"]["false_negative"]["all"] == pytest.approx(100 * 50 / 101)


def test_equal_scores_rank_untouched_true_positives_last_in_a_repaired_run():
    # Boxes A, B; a on A .5 (TP) listed before a on nothing .5. As detected: TP, FP: AP = 51/101 (recall 1/2).
    # A repaired run (here: removing every box not found, B) ranks the TP after the FP of the same score, as
    # tidecv does: FP, TP over one box: AP 50: false_negative = 50 - 5100/101, negative and not clamped.
    summary, _ = breakdown([gt([A, B], [1, 1])], [pred([A, EMPTY], [1, 1], [0.5, 0.5])])
    assert summary["AP"]["a"] == pytest.approx(100 * 51 / 101)
    assert summary["dAP"]["false_negative"]["all"] == pytest.approx(50 - 5100 / 101)
    assert summary["dAP"]["localisation"]["all"] == 0.0  # same re-ranking, -25.25, clamped as TIDE does


def test_difficult_boxes_are_ignore_regions():
    # A is difficult. a on A .9 lies inside it: out of the AP, but typed (background: no other box near).
    # a at IoU 0.43 with A covers only 0.43 of itself with it: in the AP, background. a on B .8: TP.
    # AP_a: FP .85, TP .8 over one box = 50; background fixed: 100.
    truth = [gt([A, B], [1, 1], [True, False])]
    dets = [pred([A, TALL_A, B], [1, 1, 1], [0.9, 0.85, 0.8])]
    summary, labels = breakdown(truth, dets)
    assert labels[0]["kind"].tolist() == ["background", "background", "tp"]
    assert labels[0]["in_ap"].tolist() == [False, True, True]
    assert labels[0]["missed"].tolist() == [False, False]
    assert counts(summary) == {"background": 2}
    assert summary["AP"]["a"] == pytest.approx(50.0) and summary["dAP"]["background"]["all"] == pytest.approx(
        50.0
    )
    # VOC rules: the detection whose best box is the difficult A at IoU >= 0.5 is ignored, without a type.
    voc, voc_labels = breakdown(truth, dets, rules="voc")
    assert voc_labels[0]["kind"].tolist() == ["ignored", "background", "tp"]
    assert voc["AP"]["a"] == pytest.approx(50.0)


def test_only_the_100_best_detections_of_an_image_count():
    # 100 background FPs at .9 and the TP at .5: the TP is the 101st and is dropped: AP 0, A missed.
    # The VOC rules keep it: precision 1/101 at recall 1.
    dets = [pred([EMPTY] * 100 + [A], [1] * 101, [0.9] * 100 + [0.5])]
    summary, labels = breakdown([gt([A], [1])], dets)
    assert labels[0]["kind"][-1] == "dropped" and labels[0]["missed"].tolist() == [True]
    assert summary["AP"]["a"] == 0.0 and counts(summary) == {"background": 100, "missed": 1}
    voc, _ = breakdown([gt([A], [1])], dets, rules="voc")
    assert voc["AP"]["a"] == pytest.approx(100 / 101)


def test_voc_rules_give_the_voc_evaluator_map_and_every_detection_one_outcome():
    rng = np.random.default_rng(0)
    gts, preds = [], []
    for _ in range(6):
        xy = rng.uniform(0, 200, (5, 2))
        gts.append(gt(np.hstack([xy, xy + rng.uniform(10, 120, (5, 2))]), rng.integers(1, 3, 5)))
        xy = rng.uniform(0, 200, (12, 2))
        boxes = np.hstack([xy, xy + rng.uniform(10, 120, (12, 2))])
        preds.append(pred(boxes, rng.integers(1, 3, 12), rng.uniform(0, 1, 12)))
    expected = []  # ssd.evaluation.voc's own matching and area AP
    for m in match_detections_voc(gts, preds, 3, (0.5,), 0.0).values():
        expected.append(
            100 * average_precision(*precision_recall(m["tp"][0], m["fp"][0], m["num_positives"]), False)
        )
    copies = [{k: v.copy() for k, v in p.items()} for p in preds]
    for rules in ("tide", "voc"):
        summary, labels = breakdown(gts, preds, rules=rules)
        total = sum(v["all"] for k, v in summary["counts"].items() if k != "missed")
        assert total == sum(len(p["labels"]) for p in preds)  # nothing ignored here, nothing counted twice
    assert [summary["AP"]["a"], summary["AP"]["b"]] == pytest.approx(expected)  # the voc run
    label_image_errors(gts[0], preds[0])
    assert all(np.array_equal(p[k], c[k]) for p, c in zip(preds, copies, strict=True) for k in p)  # untouched


def test_images_without_boxes_or_detections():
    summary, labels = breakdown([gt([], []), gt([A], [1])], [pred([A], [2], [0.9]), pred([], [], [])])
    assert labels[0]["kind"].tolist() == ["background"] and labels[1]["missed"].tolist() == [True]
    assert counts(summary) == {"background": 1, "missed": 1}


def test_unknown_rules_are_refused():
    with pytest.raises(ValueError, match="unknown error rules 'coco'"):
        breakdown([gt([A], [1])], [pred([A], [1], [0.9])], rules="coco")


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
    # The background FP scores .4: counted at threshold .35 with the TP (.3) left out, so A is missed; AP and
    # dAP use both detections (FP, TP: AP 50, background +50), as do the error counts over every detection.
    summary, _ = breakdown([gt([A], [1])], [pred([EMPTY, A], [1, 1], [0.4, 0.3])], threshold=0.35)
    assert counts(summary, "counts") == {"background": 1, "missed": 1}
    assert counts(summary) == {"background": 1}
    assert summary["dAP"]["background"]["all"] == pytest.approx(50.0)
