"""Why detections fail, with TIDE's definitions (Bolya et al., "TIDE: A General Toolbox for Identifying Object
Detection Errors", ECCV 2020; the authors' package `tidecv`). Every detection that is not a true positive gets
one error type, every object nobody found is "missed", and each type gets dAP: the AP the detector would gain
if every error of that type were fixed. tests/test_tide_parity.py runs `tidecv` on the same detections.

Rules (`rules="tide"`, the default), image by image:

1. Detections in descending score (ties keep their input order); only the 100 best of an image count (TIDE's and
   COCO's max_dets). Difficult boxes are TIDE's *ignore regions* (COCO's crowd boxes); the others are "boxes".
2. Matching at t_f = `fg_iou` (0.5): each detection takes the box of its class with the highest IoU among the
   boxes not yet taken; IoU >= t_f makes it a TP. A detection that is not a TP and covers more than t_f of its
   own area with a difficult box of its class is left out of the AP (it still gets an error type below).
3. Every other detection is tested in this order; the first test that holds gives its type (t_b = `bg_iou`, 0.1):

       localisation    t_b <= IoU <= t_f with the best box of its class, taken boxes included
       classification  IoU >= t_f with a box of another class
       duplicate       IoU >= t_f with a box of its class taken by a TP (a higher-scoring detection)
       background      IoU <= t_b with every box (always so in an image without boxes)
       both            everything else (TIDE's catch-all "Both" / "Other")

4. A box is **missed** when no TP took it and no classification or localisation error points at it while it is
   free (those found the object, only badly).

The oracle ("dAP if fixed"), one error type at a time over the whole dataset; dAP = max(0, fixed mAP - mAP):

    classification, localisation  the highest-scoring such error on a free box becomes a TP (classification:
                                  of the box's class); every other one of the type is removed. "Highest" counts
                                  both types: a box claimed by a classification error at .9 and a localisation
                                  error at .8 is repaired only when classification is fixed.
    both, duplicate, background   the detections are removed
    missed                        the box is removed from the ground truth (fewer objects to find)

and TIDE's two special errors, not clamped: **false_positive** (every TP scores 1, everything else 0: perfect
precision at today's recall) and **false_negative** (every box no TP took is removed from the ground truth).

AP: COCO's 101-point AP at t_f, as `tidecv` computes it: per class, detections ranked by score, the precision
made monotone, read at recall 0, 0.01, ..., 1 (the first ranked detection reaching that recall; 0 beyond the
last) and averaged; mAP is the mean over the classes that have boxes or detections (a class with detections and
no box has AP 0). At equal scores, a repaired run ranks the untouched TPs after the other detections: `tidecv`
builds a repaired run from its error list first and stable-sorts it, and we keep that order so ties give the
same numbers.

`rules="voc"`: the same types and oracle on top of the VOC devkit's matching and AP (`ssd.evaluation.voc`), so
the base mAP equals the VOC evaluator's `mAP50_area`: every detection counts (no 100 limit); a detection takes
the box of its class with the highest IoU, taken or not; if IoU >= t_f it is *ignored* when that box is
difficult (no error type), a TP when the box is free, and not a TP otherwise; AP is the VOC2010+ area AP and
mAP the mean over the classes with boxes.

Remaining differences from `tidecv` 1.0.1, on purpose: per-class dAP (TIDE reports dAP of the mean only; ours
is the class's AP change, clamped at 0, None where the class has no AP before or after); counts at a score
threshold (TIDE counts every detection; we give both); `pixel_offset` (TIDE uses continuous coordinates, the
default here). TIDE's AP over IoU 0.5:0.95 (`evaluate_range`) is not repeated: the report's COCO table has it.

Object sizes follow COCO: small area < 32^2, medium 32^2 <= area < 96^2, large >= 96^2 pixels (box area in the
original image). COCO's own ranges share their end points; here each box has exactly one size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ssd.evaluation.error_oracle import AP_METRICS, oracle_aps, oracle_layout
from ssd.evaluation.voc import box_iou_pixels

FALSE_POSITIVE_TYPES = ("classification", "localisation", "both", "duplicate", "background")
ERROR_TYPES = (*FALSE_POSITIVE_TYPES, "missed")  # TIDE's six main errors, in TIDE's order
SPECIAL_ERROR_TYPES = ("false_positive", "false_negative")
RULES = ("tide", "voc")
MAX_DETECTIONS = 100  # per image, under rules="tide"
SIZE_NAMES = ("small", "medium", "large")
SIZE_LIMITS = (32.0**2, 96.0**2)  # COCO's area limits, pixels
REFERENCE = "TIDE (Bolya et al., ECCV 2020), as computed by the tidecv package"
# step 3's tests in order, then the catch-all
_KINDS_BY_TEST = np.array(["localisation", "classification", "duplicate", "background", "both"], dtype=object)


def size_of(boxes_xyxy: np.ndarray) -> np.ndarray:
    """(B, 4) xyxy pixels -> (B,) index into SIZE_NAMES by box area (see the module docstring)."""
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    return np.searchsorted(np.array(SIZE_LIMITS), area, side="right")  # < 32^2 -> 0, < 96^2 -> 1, else 2


def _check_rules(rules: str) -> None:
    if rules not in RULES:
        raise ValueError(f"unknown error rules {rules!r}; choose from {RULES}")


def _best(iou: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., G) IoU and bool mask -> along the last axis, the box with the highest IoU among the mask (the first
    of equals) and that IoU: (...,) int and (...,) float, -1 and -1.0 where the mask is empty."""
    if iou.shape[-1] == 0:
        return np.full(mask.shape[:-1], -1, np.int64), np.full(mask.shape[:-1], -1.0)
    masked = np.where(mask, iou, -1.0)  # IoU >= 0, so a masked box always wins over -1
    j = masked.argmax(axis=-1)
    v = np.take_along_axis(masked, j[..., None], axis=-1)[..., 0]  # -1 exactly where the mask is empty
    return np.where(v >= 0, j, -1), v


def _covered_fraction(boxes_xyxy: np.ndarray, regions_xyxy: np.ndarray, pixel_offset: float) -> np.ndarray:
    """(K, 4), (R, 4) -> (K, R): intersection / area of the detection (COCO's IoU with a crowd region)."""
    top_left = np.maximum(boxes_xyxy[:, None, :2], regions_xyxy[None, :, :2])  # (K, R, 2)
    bottom_right = np.minimum(boxes_xyxy[:, None, 2:], regions_xyxy[None, :, 2:])  # (K, R, 2)
    inter_wh = np.maximum(bottom_right - top_left + pixel_offset, 0)  # (K, R, 2)
    wh = np.maximum(boxes_xyxy[:, 2:] - boxes_xyxy[:, :2] + pixel_offset, 0)  # (K, 2)
    area = np.maximum(wh[:, 0] * wh[:, 1], np.finfo(np.float64).tiny)  # (K,)
    return inter_wh[..., 0] * inter_wh[..., 1] / area[:, None]


def _error_types(
    iou: np.ndarray, same: np.ndarray, real: np.ndarray, found: np.ndarray, fg_iou: float, bg_iou: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 3 of the module docstring for R detections at once: (R,) type, (R,) box judged against or -1,
    (R,) IoU with it. `iou`, `same`: (R, G); `real`, `found`: (G,)."""
    num = iou.shape[0]
    if not real.any():
        return np.full(num, "background", object), np.full(num, -1, np.int64), np.zeros(num)
    masks = np.stack([same & real, ~same & real, same & real & found, np.broadcast_to(real, iou.shape)])
    best_j, best_v = _best(iou, masks)  # (4, R): its class (taken boxes included), another class, its class
    own_v, other_v, taken_v, any_v = best_v  # taken by a TP, any class
    tests = [(bg_iou <= own_v) & (own_v <= fg_iou), other_v >= fg_iou, taken_v >= fg_iou, any_v <= bg_iou]
    which = np.argmax(np.stack([*tests, np.ones(num, bool)]), axis=0)  # (R,) the first test that holds
    rows = np.arange(num)
    kind = _KINDS_BY_TEST[which]
    target = np.concatenate([best_j[:3], np.full((1, num), -1), best_j[3:]])[which, rows]  # background: -1
    overlap = np.concatenate([best_v, best_v[3:]])[which, rows]  # background and both: the highest IoU
    return kind, target, overlap


def label_image_errors(
    gt: Mapping[str, np.ndarray],
    pred: Mapping[str, np.ndarray],
    fg_iou: float = 0.5,
    bg_iou: float = 0.1,
    rules: str = "tide",
    pixel_offset: float = 0.0,
) -> dict[str, np.ndarray]:
    """One image: the outcome of every detection and of every ground-truth box (rules in the module docstring).

    Args:
        gt: {"boxes_xyxy" (G, 4), "labels" (G,), "difficult" (G,)}.
        pred: {"boxes_xyxy" (K, 4), "labels" (K,), "scores" (K,)}, any order.
        fg_iou, bg_iou: t_f and t_b.
        rules: "tide" or "voc".
        pixel_offset: 0 for continuous coordinates, 1 for the VOC devkit's inclusive pixels.

    Returns:
        {"kind": (K,) str, "tp", a FALSE_POSITIVE_TYPES name, "ignored" (rules="voc": on a difficult box) or
             "dropped" (rules="tide": beyond the image's 100 best);
         "target": (K,) int, the box each detection is judged against (-1: none);
         "iou": (K,) float, IoU with that box (background: the highest IoU with any box, 0 without boxes);
         "in_ap": (K,) bool, the detection enters the AP;
         "repairs": (K,) bool, the classification / localisation error that becomes a TP when its type is fixed;
         "found": (G,) bool, taken by a TP; "missed": (G,) bool}.
        The arguments are not modified.
    """
    _check_rules(rules)
    boxes, labels, scores = pred["boxes_xyxy"], pred["labels"], pred["scores"]
    gt_boxes, gt_labels = gt["boxes_xyxy"], gt["labels"]
    real = ~np.asarray(gt["difficult"], bool)  # (G,)
    num_dets, num_gt = len(labels), len(gt_labels)
    iou = (
        box_iou_pixels(boxes, gt_boxes, pixel_offset) if num_dets and num_gt else np.zeros((num_dets, num_gt))
    )  # (K, G)
    same = labels[:, None] == gt_labels[None, :]  # (K, G)
    order = np.argsort(-scores, kind="stable")  # (K,) ties keep the input order
    kind = np.full(num_dets, "dropped", dtype=object)
    target = np.full(num_dets, -1, np.int64)
    overlap = np.zeros(num_dets)
    in_ap = np.zeros(num_dets, bool)
    found = np.zeros(num_gt, bool)

    # Step 2: matching. Only a detection with a box of its class at IoU >= t_f can become a TP (or, under
    # "voc", be ignored); the others skip straight to step 3.
    if rules == "tide":
        order = order[:MAX_DETECTIONS]
        in_ap[order] = True
        kind[order] = ""
        could_match = (same & real & (iou >= fg_iou)).any(axis=1)  # (K,)
        for k in order[could_match[order]]:  # greedy, highest score first: a TP takes its box from the others
            j, v = _best(iou[k : k + 1], (same[k] & real & ~found)[None])
            if v[0] >= fg_iou:
                kind[k], target[k], overlap[k], found[j[0]] = "tp", j[0], v[0], True
        if not real.all():  # difficult boxes (COCO's crowd regions)
            covered = _covered_fraction(boxes, gt_boxes[~real], pixel_offset)  # (K, D)
            inside = ((covered > fg_iou) & same[:, ~real]).any(axis=1)  # (K,) in a difficult box of its class
            in_ap[order[(kind[order] == "") & inside[order]]] = False
    else:
        in_ap[:] = True
        kind[:] = ""
        best_j, best_v = _best(iou, same)  # (K,) the best box of its class, taken or not
        hit = best_v >= fg_iou
        ignored = hit & ~real[np.maximum(best_j, 0)] if num_gt else np.zeros(num_dets, bool)
        kind[ignored], in_ap[ignored] = "ignored", False
        target[ignored], overlap[ignored] = best_j[ignored], best_v[ignored]
        claims = order[(hit & ~ignored)[order]]  # (M,) in rank order
        _, first = np.unique(best_j[claims], return_index=True)  # the first claim of each box is the TP
        tps = claims[first]
        kind[tps], target[tps], overlap[tps], found[best_j[tps]] = "tp", best_j[tps], best_v[tps], True

    # Step 3: error types of the rest; then, highest score first, the first claim of a free box repairs it.
    rest = order[kind[order] == ""]  # (R,) in rank order
    kind[rest], target[rest], overlap[rest] = _error_types(iou[rest], same[rest], real, found, fg_iou, bg_iou)
    repairs = np.zeros(num_dets, bool)
    fixable = rest[(kind[rest] == "classification") | (kind[rest] == "localisation")]
    fixable = fixable[~found[target[fixable]]]  # (F,) in rank order, on boxes no TP took
    _, first = np.unique(target[fixable], return_index=True)
    repairs[fixable[first]] = True
    usable = np.zeros(num_gt, bool)  # a classification / localisation error points at this free box
    usable[target[fixable]] = True
    return {
        "kind": kind,
        "target": target,
        "iou": overlap,
        "in_ap": in_ap,
        "repairs": repairs,
        "found": found,
        "missed": real & ~found & ~usable,
    }


def _per_class(values: np.ndarray, class_names: Sequence[str]) -> dict[str, float | None]:
    return {
        class_names[c]: (None if np.isnan(values[c]) else float(values[c]))
        for c in range(1, len(class_names))
    }


def _nanmean(values: np.ndarray) -> float | None:
    valid = values[1:][~np.isnan(values[1:])]
    return float(valid.mean()) if valid.size else None


def error_breakdown(
    gts: Sequence[Mapping],
    preds: Sequence[Mapping],
    class_names: Sequence[str],
    score_threshold: float = 0.5,
    fg_iou: float = 0.5,
    bg_iou: float = 0.1,
    rules: str = "tide",
    pixel_offset: float = 0.0,
) -> tuple[dict, list[dict[str, np.ndarray]]]:
    """AP, dAP and error counts over every detection (as TIDE), counts and sizes at `score_threshold`.

    Args:
        gts, preds: per image (same order), as for `label_image_errors`.
        class_names: C names, background first.
        score_threshold: the operating point of "counts" and "sizes" (as the confusion matrix): they label the
            detections scoring at least this on their own. AP, dAP and "error_counts" use every detection.
        rules: "tide" or "voc" (module docstring).

    Returns:
        (summary, labels): summary is JSON-ready, AP values in points (0-100):
            {"rules", "reference", "ap_metric", thresholds, "AP": {class: AP}, "mAP",
             "dAP": {error or special error: {"all", "per_class": {class: dAP}}},
             "error_counts": {error: {"all", "per_class"}} over every detection,
             "counts": {"tp" and each error: {"all", "per_class"}} at the threshold,
             "sizes": {size: {"ground_truth", "found", "missed", "recall", "false_positives"}},
             "recall_by_size": {class: {size: recall}}};
        labels: per image, `label_image_errors` of the detections at or above `score_threshold`.
    """
    _check_rules(rules)
    num_classes = len(class_names)
    all_labels = [
        label_image_errors(g, p, fg_iou, bg_iou, rules, pixel_offset) for g, p in zip(gts, preds, strict=True)
    ]
    layout = oracle_layout(gts, preds, all_labels, num_classes)  # shared by the 9 runs below
    base = oracle_aps(gts, preds, all_labels, num_classes, None, rules, layout)  # (C,)
    base_map = _nanmean(base)
    dap = {}
    for error in (*ERROR_TYPES, *SPECIAL_ERROR_TYPES):
        fixed = oracle_aps(gts, preds, all_labels, num_classes, error, rules, layout)  # (C,)
        delta = 100.0 * (fixed - base)  # (C,) NaN where either is NaN
        fixed_map = _nanmean(fixed)
        total = None if base_map is None or fixed_map is None else 100.0 * (fixed_map - base_map)
        if error in ERROR_TYPES:  # TIDE clamps the main errors at 0 (negative only through binning)
            delta = np.where(np.isnan(delta), np.nan, np.maximum(delta, 0.0))
            total = None if total is None else max(total, 0.0)
        dap[error] = {"all": total, "per_class": _per_class(delta, class_names)}

    kept = [{k: v[p["scores"] >= score_threshold] for k, v in p.items()} for p in preds]
    labels = [
        label_image_errors(g, p, fg_iou, bg_iou, rules, pixel_offset) for g, p in zip(gts, kept, strict=True)
    ]
    summary = {
        "rules": rules,
        "reference": REFERENCE if rules == "tide" else f"{REFERENCE}, on the VOC devkit's matching and AP",
        "ap_metric": AP_METRICS[rules],
        "score_threshold": score_threshold,
        "fg_iou": fg_iou,
        "bg_iou": bg_iou,
        "max_detections": MAX_DETECTIONS if rules == "tide" else None,
        "AP": _per_class(100.0 * base, class_names),
        "mAP": None if base_map is None else 100.0 * base_map,
        "dAP": dap,
        "error_counts": _counts(gts, preds, all_labels, num_classes, class_names, ERROR_TYPES),
        "counts": _counts(gts, kept, labels, num_classes, class_names, ("tp", *ERROR_TYPES)),
        **_sizes(gts, kept, labels, class_names),
    }
    return summary, labels


def _joined(gts, preds, labels) -> dict[str, np.ndarray]:
    """Every image's arrays joined: detections (D,) and boxes (B,), for counting over the whole dataset."""

    def cat(parts: list[np.ndarray], dtype, shape=(0,)) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(shape, dtype)

    return {
        "det_label": cat([p["labels"] for p in preds], np.int64),
        "det_kind": cat([lab["kind"] for lab in labels], object),
        "det_boxes": cat([p["boxes_xyxy"] for p in preds], np.float64, (0, 4)),
        "gt_label": cat([g["labels"] for g in gts], np.int64),
        "gt_real": cat([~np.asarray(g["difficult"], bool) for g in gts], bool),
        "gt_boxes": cat([g["boxes_xyxy"] for g in gts], np.float64, (0, 4)),
        "found": cat([lab["found"] for lab in labels], bool),
        "missed": cat([lab["missed"] for lab in labels], bool),
    }


def _counts(gts, preds, labels, num_classes: int, class_names, kinds) -> dict:
    """{kind: {"all", "per_class"}}: detections by predicted class, missed boxes by their class."""
    d = _joined(gts, preds, labels)
    counts = {
        kind: np.bincount(d["det_label"][d["det_kind"] == kind], minlength=num_classes) for kind in kinds
    }
    counts["missed"] = np.bincount(d["gt_label"][d["missed"]], minlength=num_classes)
    return {
        kind: {
            "all": int(v[1:].sum()),
            "per_class": {class_names[c]: int(v[c]) for c in range(1, num_classes)},
        }
        for kind, v in counts.items()
    }


def _sizes(gts, kept, labels, class_names) -> dict:
    """{"sizes": {size: row}, "recall_by_size": {class: {size: recall}}} at the score threshold."""
    num_classes = len(class_names)
    d = _joined(gts, kept, labels)
    gt_size, det_size = size_of(d["gt_boxes"]), size_of(d["det_boxes"])  # (B,), (D,)
    is_fp = np.isin(d["det_kind"], FALSE_POSITIVE_TYPES)  # (D,)
    size_rows = {}
    for s, name in enumerate(SIZE_NAMES):
        row = {
            "ground_truth": int(np.sum(d["gt_real"] & (gt_size == s))),
            "found": int(np.sum(d["found"] & (gt_size == s))),
            "missed": int(np.sum(d["missed"] & (gt_size == s))),
            "false_positives": int(np.sum(is_fp & (det_size == s))),
        }
        row["recall"] = row["found"] / row["ground_truth"] if row["ground_truth"] else None
        size_rows[name] = row
    gt_by_size = np.zeros((num_classes, len(SIZE_NAMES)), np.int64)
    found_by_size = np.zeros_like(gt_by_size)
    np.add.at(gt_by_size, (d["gt_label"][d["gt_real"]], gt_size[d["gt_real"]]), 1)
    np.add.at(found_by_size, (d["gt_label"][d["found"]], gt_size[d["found"]]), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall_by_size = found_by_size / gt_by_size  # (C, 3), NaN where a class has no box of that size
    return {
        "sizes": size_rows,
        "recall_by_size": {
            class_names[c]: {
                name: (None if np.isnan(recall_by_size[c, s]) else float(recall_by_size[c, s]))
                for s, name in enumerate(SIZE_NAMES)
            }
            for c in range(1, num_classes)
        },
    }
