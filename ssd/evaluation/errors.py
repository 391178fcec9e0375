"""Why detections fail: every false positive gets one error type, every box nobody found is "missed", and each
type gets the AP it would add if it were fixed (the idea of the TIDE toolbox, Bolya et al., ECCV 2020, and of
the COCO `analyze()` plots; the rules below are ours and stated in full).

Matching is the VOC rule of `ssd.evaluation.voc` at IoU >= `fg_iou` (0.5): image by image, detections in
descending score; a detection's *best box* is the ground-truth box of its class with the highest IoU. If that
IoU >= fg_iou, the detection is a TP when the box is still free, *ignored* when the box is difficult, and
otherwise a **duplicate** (a higher-scoring detection already took the box). Any other detection is a false
positive explained by its overlaps with the non-difficult boxes of the image, the mildest explanation first:

    classification  IoU >= fg_iou with a box of another class           (right place, wrong class)
    localisation    bg_iou <= IoU < fg_iou with a box of its own class   (right class, poor box)
    both            bg_iou <= IoU < fg_iou with a box of another class
    background      IoU < bg_iou (0.1) with every box

A non-difficult box is **missed** when no TP took it and no classification or localisation error points at it
(those found the object, only badly). False positives count against the predicted class, misses against the
box's class.

"dAP if fixed": each error type is repaired alone, over the whole dataset, and AP50 (VOC2010+ area, the
`AP_area` of analysis.json) is computed again; dAP = fixed AP - AP, in AP points (0-100). Repairs:

    classification  relabel to the box's class       } unless a TP or a higher-scoring repaired detection
    localisation    move onto the box                } already has that box: then remove the detection
    both, duplicate, background                        remove the detection
    missed          add the box as a detection scoring above every other detection

The types overlap (repairing two at once can add more or less than the sum), as in TIDE.

Object sizes follow COCO: small area < 32^2, medium 32^2 <= area < 96^2, large >= 96^2 pixels (box area in the
original image). COCO's own ranges share their end points; here each box has exactly one size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ssd.evaluation.voc import average_precision, box_iou_pixels, match_detections_voc, precision_recall

FALSE_POSITIVE_TYPES = ("classification", "localisation", "both", "duplicate", "background")
ERROR_TYPES = (*FALSE_POSITIVE_TYPES, "missed")
SIZE_NAMES = ("small", "medium", "large")
SIZE_LIMITS = (32.0**2, 96.0**2)  # COCO's area limits, pixels


def size_of(boxes_xyxy: np.ndarray) -> np.ndarray:
    """(B, 4) xyxy pixels -> (B,) index into SIZE_NAMES by box area (see the module docstring)."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return np.searchsorted(np.array(SIZE_LIMITS), area, side="right")  # < 32^2 -> 0, < 96^2 -> 1, else 2


def label_image_errors(
    gt: Mapping[str, np.ndarray],
    pred: Mapping[str, np.ndarray],
    fg_iou: float = 0.5,
    bg_iou: float = 0.1,
    pixel_offset: float = 0.0,
) -> dict[str, np.ndarray]:
    """One image: the outcome of every detection and of every ground-truth box (rules in the module docstring).

    Args:
        gt: {"boxes_xyxy" (G, 4), "labels" (G,), "difficult" (G,)}.
        pred: {"boxes_xyxy" (K, 4), "labels" (K,), "scores" (K,)}, any order.
        fg_iou, bg_iou: the foreground and background IoU thresholds.
        pixel_offset: 0 for continuous coordinates, 1 for the VOC devkit's inclusive pixels.

    Returns:
        {"kind": (K,) str, "tp", "ignored" or a FALSE_POSITIVE_TYPES name;
         "target": (K,) int, the box each detection is judged against (-1 for background);
         "iou": (K,) float, IoU with that box (background: the highest IoU with any box, 0 without boxes);
         "found": (G,) bool, taken by a TP; "missed": (G,) bool}.
        The arguments are not modified.
    """
    boxes, labels, scores = pred["boxes_xyxy"], pred["labels"], pred["scores"]
    gt_boxes, gt_labels, difficult = gt["boxes_xyxy"], gt["labels"], gt["difficult"]
    num_dets, num_gt = len(labels), len(gt_labels)
    iou = (
        box_iou_pixels(boxes, gt_boxes, pixel_offset) if num_dets and num_gt else np.zeros((num_dets, num_gt))
    )  # (K, G)
    same_class = labels[:, None] == gt_labels[None, :]  # (K, G)
    kind = np.full(num_dets, "", dtype=object)
    target = np.full(num_dets, -1, np.int64)
    overlap = np.zeros(num_dets)
    found = np.zeros(num_gt, bool)
    explained = np.zeros(num_gt, bool)  # pointed at by a classification or localisation error

    def best(mask: np.ndarray, k: int) -> tuple[int, float]:
        candidates = np.where(mask, iou[k], -1.0)  # (G,)
        j = int(candidates.argmax()) if num_gt else -1
        return j, (float(candidates[j]) if j >= 0 else -1.0)

    for k in np.argsort(-scores, kind="stable"):  # as the VOC ranking: ties keep the input order
        j, best_iou = best(same_class[k], k)
        if best_iou >= fg_iou:
            if difficult[j]:
                kind[k] = "ignored"
            elif found[j]:
                kind[k] = "duplicate"
            else:
                kind[k], found[j] = "tp", True
            target[k], overlap[k] = j, best_iou
            continue
        same_j, same_iou = best(same_class[k] & ~difficult, k)
        other_j, other_iou = best(~same_class[k] & ~difficult, k)
        if other_iou >= fg_iou:
            kind[k], target[k], overlap[k] = "classification", other_j, other_iou
            explained[other_j] = True
        elif same_iou >= bg_iou:
            kind[k], target[k], overlap[k] = "localisation", same_j, same_iou
            explained[same_j] = True
        elif other_iou >= bg_iou:
            kind[k], target[k], overlap[k] = "both", other_j, other_iou
        else:
            kind[k], overlap[k] = "background", (float(iou[k].max()) if num_gt else 0.0)
    return {
        "kind": kind,
        "target": target,
        "iou": overlap,
        "found": found,
        "missed": ~found & ~explained & ~difficult,
    }


def class_aps(
    gts: Sequence[Mapping],
    preds: Sequence[Mapping],
    num_classes: int,
    fg_iou: float = 0.5,
    pixel_offset: float = 0.0,
) -> np.ndarray:
    """(C,) VOC2010+ area AP (0-1) per class at IoU `fg_iou`; NaN for background and classes without boxes."""
    aps = np.full(num_classes, np.nan)
    for c, m in match_detections_voc(gts, preds, num_classes, (fg_iou,), pixel_offset).items():
        if m["num_positives"] > 0:
            recall, precision = precision_recall(m["tp"][0], m["fp"][0], m["num_positives"])
            aps[c] = average_precision(recall, precision, use_07_metric=False)
    return aps


def fix_errors(
    gts: Sequence[Mapping], preds: Sequence[Mapping], labels: Sequence[Mapping], error: str
) -> list[dict[str, np.ndarray]]:
    """New predictions with every error of one type repaired (module docstring); the inputs are not modified.

    Args:
        gts, preds: per image, as for `label_image_errors`.
        labels: per image, `label_image_errors(gt, pred)` of these predictions.
        error: one of ERROR_TYPES.
    """
    if error not in ERROR_TYPES:
        raise ValueError(f"unknown error type {error!r}; choose from {ERROR_TYPES}")
    top_score = max([1.0] + [float(p["scores"].max()) for p in preds if len(p["scores"])])
    fixed = []
    for gt, pred, lab in zip(gts, preds, labels, strict=True):
        boxes, classes, scores = pred["boxes_xyxy"].copy(), pred["labels"].copy(), pred["scores"].copy()
        keep = np.ones(len(classes), bool)
        if error == "missed":
            missed = np.flatnonzero(lab["missed"])
            boxes = np.concatenate([boxes.reshape(-1, 4), gt["boxes_xyxy"][missed]])
            classes = np.concatenate([classes, gt["labels"][missed]])
            scores = np.concatenate([scores, np.full(len(missed), top_score + 1.0)])
            keep = np.ones(len(classes), bool)
        elif error in ("classification", "localisation"):
            taken = lab["found"].copy()  # boxes that already have a detection
            for k in np.argsort(-scores, kind="stable"):
                if lab["kind"][k] != error:
                    continue
                j = lab["target"][k]
                if taken[j]:
                    keep[k] = False
                    continue
                taken[j] = True
                if error == "classification":
                    classes[k] = gt["labels"][j]
                else:
                    boxes[k] = gt["boxes_xyxy"][j]
        else:
            keep = lab["kind"] != error
        fixed.append({"boxes_xyxy": boxes[keep], "labels": classes[keep], "scores": scores[keep]})
    return fixed


def _per_class(values: np.ndarray, class_names: Sequence[str]) -> dict[str, float | None]:
    return {
        class_names[c]: (None if np.isnan(values[c]) else float(values[c]))
        for c in range(1, len(class_names))
    }


def _nanmean(values: np.ndarray) -> float | None:
    valid = values[~np.isnan(values)]
    return float(valid.mean()) if valid.size else None


def error_breakdown(
    gts: Sequence[Mapping],
    preds: Sequence[Mapping],
    class_names: Sequence[str],
    score_threshold: float = 0.5,
    fg_iou: float = 0.5,
    bg_iou: float = 0.1,
    pixel_offset: float = 0.0,
) -> tuple[dict, list[dict[str, np.ndarray]]]:
    """Error counts at `score_threshold`, dAP if fixed (all scores) and the per-size breakdown.

    Args:
        gts, preds: per image (same order), as for `label_image_errors`.
        class_names: C names, background first.
        score_threshold: counts, misses and sizes use the detections scoring at least this (the operating point,
            as the confusion matrix); AP and dAP use every detection (AP is a ranking measure).

    Returns:
        (summary, labels): summary is JSON-ready, AP values in points (0-100):
            {"AP50": {class: AP}, "mAP50", "dAP": {error: {"all", "per_class": {class: dAP}}},
             "counts": {"tp" and each error: {"all", "per_class"}}, "sizes": {size: {"ground_truth", "found",
             "missed", "recall", "false_positives"}}, "recall_by_size": {class: {size: recall}}, thresholds};
        labels: per image, `label_image_errors` of the detections at or above `score_threshold`.
    """
    num_classes = len(class_names)
    all_labels = [
        label_image_errors(g, p, fg_iou, bg_iou, pixel_offset) for g, p in zip(gts, preds, strict=True)
    ]
    base = class_aps(gts, preds, num_classes, fg_iou, pixel_offset)
    dap = {}
    for error in ERROR_TYPES:
        fixed = class_aps(gts, fix_errors(gts, preds, all_labels, error), num_classes, fg_iou, pixel_offset)
        delta = 100.0 * (fixed - base)  # (C,)
        mean_fixed, mean_base = _nanmean(fixed), _nanmean(base)
        dap[error] = {
            "all": None if mean_base is None else 100.0 * (mean_fixed - mean_base),
            "per_class": _per_class(delta, class_names),
        }

    kept = []
    for p in preds:
        keep = p["scores"] >= score_threshold
        kept.append({k: v[keep] for k, v in p.items()})
    labels = [label_image_errors(g, p, fg_iou, bg_iou, pixel_offset) for g, p in zip(gts, kept, strict=True)]
    counts = {kind: np.zeros(num_classes, np.int64) for kind in ("tp", *ERROR_TYPES)}
    size_rows = {
        name: dict.fromkeys(("ground_truth", "found", "missed", "false_positives"), 0) for name in SIZE_NAMES
    }
    gt_by_size = np.zeros((num_classes, len(SIZE_NAMES)), np.int64)
    found_by_size = np.zeros_like(gt_by_size)
    for gt, pred, lab in zip(gts, kept, labels, strict=True):
        for kind, label in zip(lab["kind"], pred["labels"], strict=True):
            if kind in counts:
                counts[kind][label] += 1
        np.add.at(counts["missed"], gt["labels"][lab["missed"]], 1)
        real = ~gt["difficult"]
        gt_size = size_of(gt["boxes_xyxy"])
        np.add.at(gt_by_size, (gt["labels"][real], gt_size[real]), 1)
        np.add.at(found_by_size, (gt["labels"][lab["found"]], gt_size[lab["found"]]), 1)
        det_size = size_of(pred["boxes_xyxy"])
        is_fp = np.isin(lab["kind"], FALSE_POSITIVE_TYPES)  # (K,)
        for s, name in enumerate(SIZE_NAMES):
            size_rows[name]["ground_truth"] += int(np.sum(real & (gt_size == s)))
            size_rows[name]["found"] += int(np.sum(lab["found"] & (gt_size == s)))
            size_rows[name]["missed"] += int(np.sum(lab["missed"] & (gt_size == s)))
            size_rows[name]["false_positives"] += int(np.sum(is_fp & (det_size == s)))
    for row in size_rows.values():
        row["recall"] = row["found"] / row["ground_truth"] if row["ground_truth"] else None
    with np.errstate(invalid="ignore", divide="ignore"):
        recall_by_size = found_by_size / gt_by_size  # (C, 3), NaN where a class has no box of that size
    summary = {
        "score_threshold": score_threshold,
        "fg_iou": fg_iou,
        "bg_iou": bg_iou,
        "AP50": _per_class(100.0 * base, class_names),
        "mAP50": None if _nanmean(base) is None else 100.0 * _nanmean(base),
        "dAP": dap,
        "counts": {
            kind: {
                "all": int(v[1:].sum()),
                "per_class": {class_names[c]: int(v[c]) for c in range(1, num_classes)},
            }
            for kind, v in counts.items()
        },
        "sizes": size_rows,
        "recall_by_size": {
            class_names[c]: {
                name: (None if np.isnan(recall_by_size[c, s]) else float(recall_by_size[c, s]))
                for s, name in enumerate(SIZE_NAMES)
            }
            for c in range(1, num_classes)
        },
    }
    return summary, labels
