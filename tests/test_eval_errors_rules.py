"""The error labelling of ssd/evaluation/errors.py against its module docstring read literally.

`label_image_errors` works on whole arrays (one loop only over detections that can match); the reference here
follows the docstring's rules one detection at a time, in score order, as plain Python. Random images with
crowded, overlapping, difficult and equal-score boxes, more than 100 detections, under both rule sets.
"""

import numpy as np
import pytest
from eval_fakes import gt, pred

from ssd.evaluation.errors import MAX_DETECTIONS, label_image_errors
from ssd.evaluation.voc import box_iou_pixels

FG, BG = 0.5, 0.1


def best_of(row, mask):
    """The highest IoU among `mask` (first of equals) and its box; (-1, -1.0) if the mask is empty."""
    j, v = -1, -1.0
    for g, allowed in enumerate(mask):
        if allowed and row[g] > v:
            j, v = g, float(row[g])
    return j, v


def reference_labels(g, p, rules):
    """The module docstring's steps, one detection at a time (continuous coordinates)."""
    boxes, labels, scores = p["boxes_xyxy"], p["labels"], p["scores"]
    real = ~g["difficult"]
    num_dets, num_gt = len(labels), len(g["labels"])
    iou = box_iou_pixels(boxes, g["boxes_xyxy"], 0.0) if num_dets and num_gt else np.zeros((num_dets, num_gt))
    order = sorted(
        range(num_dets), key=lambda k: -scores[k]
    )  # Python's sort is stable: ties keep input order
    if rules == "tide":
        order = order[:MAX_DETECTIONS]
    kind, target, overlap = ["dropped"] * num_dets, [-1] * num_dets, [0.0] * num_dets
    in_ap, found = [False] * num_dets, [False] * num_gt
    for k in order:  # step 2
        in_ap[k] = True
        same = [labels[k] == g["labels"][j] for j in range(num_gt)]
        if rules == "tide":
            j, v = best_of(iou[k], [same[i] and real[i] and not found[i] for i in range(num_gt)])
            if v < FG:
                for i in range(num_gt):  # inside a difficult box of its class: intersection / own area
                    if same[i] and not real[i]:
                        x1, y1 = np.maximum(boxes[k, :2], g["boxes_xyxy"][i, :2])
                        x2, y2 = np.minimum(boxes[k, 2:], g["boxes_xyxy"][i, 2:])
                        own = (boxes[k, 2] - boxes[k, 0]) * (boxes[k, 3] - boxes[k, 1])
                        if max(x2 - x1, 0) * max(y2 - y1, 0) / own > FG:
                            in_ap[k] = False
        else:
            j, v = best_of(iou[k], same)
            if v >= FG and not real[j]:
                kind[k], target[k], overlap[k], in_ap[k] = "ignored", j, v, False
                continue
            if v >= FG and found[j]:
                v = -1.0
        if v >= FG:
            kind[k], target[k], overlap[k], found[j] = "tp", j, v, True
        else:
            kind[k] = ""
    repairs, usable = [False] * num_dets, [False] * num_gt
    for k in order:  # step 3, then the repairs
        if kind[k] != "":
            continue
        same = [labels[k] == g["labels"][j] for j in range(num_gt)]
        if not real.any():
            kind[k], target[k], overlap[k] = "background", -1, 0.0
            continue
        j, v = best_of(iou[k], [same[i] and real[i] for i in range(num_gt)])
        if BG <= v <= FG:
            kind[k], target[k], overlap[k] = "localisation", j, v
        else:
            j, v = best_of(iou[k], [not same[i] and real[i] for i in range(num_gt)])
            if v >= FG:
                kind[k], target[k], overlap[k] = "classification", j, v
            else:
                j, v = best_of(iou[k], [same[i] and real[i] and found[i] for i in range(num_gt)])
                if v >= FG:
                    kind[k], target[k], overlap[k] = "duplicate", j, v
                else:
                    j, v = best_of(iou[k], real)
                    kind[k], target[k], overlap[k] = ("background", -1, v) if v <= BG else ("both", j, v)
        if kind[k] in ("classification", "localisation") and not found[target[k]]:
            repairs[k] = not usable[target[k]]
            usable[target[k]] = True
    missed = [bool(real[j] and not found[j] and not usable[j]) for j in range(num_gt)]
    return {"kind": kind, "target": target, "iou": overlap, "in_ap": in_ap, "repairs": repairs,
            "found": found, "missed": missed}  # fmt: skip


def random_image(rng, num_gt, num_dets):
    """Boxes of 3 classes, some difficult; detections jittered from them (some relabelled, some duplicated)
    and random ones, with scores on a coarse grid so that ties happen."""
    xy = rng.uniform(0, 150, (num_gt, 2))
    boxes = np.hstack([xy, xy + rng.uniform(8, 80, (num_gt, 2))])
    labels = rng.integers(1, 4, num_gt)
    source = rng.integers(0, max(num_gt, 1), num_dets)
    jittered = boxes[source] + rng.normal(0, 6, (num_dets, 4)) if num_gt else np.zeros((num_dets, 4))
    corner = rng.uniform(0, 150, (num_dets, 2))
    random = np.hstack([corner, corner + rng.uniform(8, 80, (num_dets, 2))])
    use_random = rng.random(num_dets) < 0.3 if num_gt else np.ones(num_dets, bool)
    det_boxes = np.where(use_random[:, None], random, jittered)
    det_boxes[:, 2:] = np.maximum(det_boxes[:, 2:], det_boxes[:, :2] + 1)
    det_labels = np.where(
        rng.random(num_dets) < 0.25, rng.integers(1, 4, num_dets), labels[source] if num_gt else 1
    )
    return (
        gt(boxes, labels, (rng.random(num_gt) < 0.15).tolist()),
        pred(det_boxes, det_labels, np.round(rng.random(num_dets), 1)),
    )


@pytest.mark.parametrize("rules", ["tide", "voc"])
def test_whole_array_labelling_follows_the_rules_one_detection_at_a_time(rules):
    rng = np.random.default_rng(23)
    sizes = [(0, 5), (4, 0), (0, 0), (1, 1)] + [
        (int(rng.integers(1, 12)), int(rng.integers(1, 40))) for _ in range(60)
    ]
    sizes.append((10, 130))  # more than MAX_DETECTIONS
    seen = set()
    for num_gt, num_dets in sizes:
        g, p = random_image(rng, num_gt, num_dets)
        got = label_image_errors(g, p, FG, BG, rules)
        expected = reference_labels(g, p, rules)
        for key, value in expected.items():
            assert got[key].tolist() == pytest.approx(value), (key, num_gt, num_dets)
        seen.update(expected["kind"])
    # the random images exercise every outcome of these rules
    outcomes = {"tp", "localisation", "classification", "duplicate", "background", "both"}
    assert outcomes | ({"dropped"} if rules == "tide" else {"ignored"}) <= seen
