"""The oracle of the error breakdown: per-class AP with one error type fixed (rules in `ssd.evaluation.errors`).

    labels = [label_image_errors(gt, pred) for ...]              # ssd.evaluation.errors
    base = oracle_aps(gts, preds, labels, C, fix=None, rules="tide")        # (C,) AP 0-1, NaN: no AP
    fixed = oracle_aps(gts, preds, labels, C, fix="localisation", rules="tide")

Every detection is first laid out in TIDE's order: image by image, and inside an image by descending score
(ties keep their input order). A fix changes which detections enter a class's ranking, their class, TP flag or
score, and how many boxes there are to find; the ranking is then sorted by score again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ssd.evaluation.voc import average_precision, precision_recall

AP_METRICS = {"tide": "COCO 101-point", "voc": "VOC2010+ area"}  # the AP of each set of rules
RECALL_POINTS = np.arange(101) / 100  # 0, 0.01, ..., 1 as TIDE writes them (x / 100, not np.linspace)


def coco_101_point_ap(is_tp: np.ndarray, num_positives: int) -> float:
    """(D,) TP flags in rank order -> AP 0-1: the monotone precision read at 101 recall points, averaged.

    At each recall point r the precision is that of the first ranked detection whose recall reaches r (0 when
    none does), after making precision non-increasing down the ranking. No positives: AP 0 (as TIDE).
    """
    if num_positives <= 0 or len(is_tp) == 0:
        return 0.0
    cum_tp = np.cumsum(is_tp)  # (D,)
    precision = cum_tp / np.arange(1, len(is_tp) + 1)  # (D,)
    recall = cum_tp / num_positives  # (D,)
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this rank or below
    first = np.searchsorted(recall, RECALL_POINTS, side="left")  # (101,) first rank reaching each point
    reached = first < len(is_tp)
    return float(np.sum(precision[first[reached]]) / len(RECALL_POINTS))


def voc_area_ap(is_tp: np.ndarray, num_positives: int) -> float:
    """(D,) TP flags in rank order -> VOC2010+ area AP 0-1 (`ssd.evaluation.voc`); no positives: 0."""
    if num_positives <= 0 or len(is_tp) == 0:
        return 0.0
    recall, precision = precision_recall(is_tp, ~is_tp, num_positives)
    return average_precision(recall, precision, use_07_metric=False)


def oracle_layout(
    gts: Sequence[Mapping], preds: Sequence[Mapping], labels: Sequence[Mapping], num_classes: int
) -> dict[str, np.ndarray]:
    """What every fix reads, made once: each detection in TIDE's order (module docstring) as (D,) arrays, and
    per class (C,) the non-difficult boxes, the missed ones and the ones no TP took."""
    parts = {k: [] for k in ("label", "score", "kind", "in_ap", "repairs", "box_label")}
    for gt, pred, lab in zip(gts, preds, labels, strict=True):
        order = np.argsort(-pred["scores"], kind="stable")  # (K,)
        target = lab["target"][order]
        parts["label"].append(pred["labels"][order])
        parts["score"].append(pred["scores"][order])
        parts["kind"].append(lab["kind"][order])
        parts["in_ap"].append(lab["in_ap"][order])
        parts["repairs"].append(lab["repairs"][order])
        box_label = (
            gt["labels"][np.maximum(target, 0)] if len(gt["labels"]) else np.zeros(len(order), np.int64)
        )
        parts["box_label"].append(np.where(target >= 0, box_label, -1))
    dtypes = {"label": np.int64, "score": np.float64, "kind": object, "in_ap": bool, "repairs": bool}
    layout = {k: np.concatenate(v).astype(dtypes.get(k, np.int64)) if v else np.zeros(0, dtypes.get(k, np.int64))
              for k, v in parts.items()}  # fmt: skip

    def per_class(flags: list[np.ndarray]) -> np.ndarray:  # (C,) boxes flagged, by their class
        chosen = [g["labels"][f] for g, f in zip(gts, flags, strict=True)]
        return (
            np.bincount(np.concatenate(chosen), minlength=num_classes)
            if chosen
            else np.zeros(num_classes, np.int64)
        )

    real = [~np.asarray(g["difficult"], bool) for g in gts]
    layout["positives"] = per_class(real)
    layout["missed_boxes"] = per_class([lab["missed"] for lab in labels])
    layout["unfound_boxes"] = per_class([r & ~lab["found"] for r, lab in zip(real, labels, strict=True)])
    return layout


def oracle_aps(
    gts: Sequence[Mapping],
    preds: Sequence[Mapping],
    labels: Sequence[Mapping],
    num_classes: int,
    fix: str | None,
    rules: str = "tide",
    layout: Mapping[str, np.ndarray] | None = None,
) -> np.ndarray:
    """(C,) AP 0-1 per class after fixing every error of type `fix` (None: as detected); NaN: no AP.

    Args:
        gts, preds: per image, as for `ssd.evaluation.errors.label_image_errors`.
        labels: per image, `label_image_errors(gt, pred)` of every detection in `preds`.
        num_classes: C, background included.
        fix: None, an ERROR_TYPES name or a SPECIAL_ERROR_TYPES name of `ssd.evaluation.errors`.
        rules: "tide" (COCO 101-point AP; a class has an AP when it has boxes or detections) or "voc" (VOC2010+
            area AP; a class has an AP when it has non-difficult boxes).
        layout: `oracle_layout(gts, preds, labels, num_classes)`, when the caller runs several fixes.
    """
    d = layout if layout is not None else oracle_layout(gts, preds, labels, num_classes)
    label, score, kind = d["label"].copy(), d["score"].copy(), d["kind"]
    is_tp = kind == "tp"  # (D,)
    keep = d["in_ap"].copy()
    late = np.zeros(len(kind), np.int64)  # rank among equal scores: repaired runs list untouched TPs last
    positives = d["positives"]
    removed = np.zeros(num_classes, np.int64)  # boxes taken out of the ground truth by the fix
    if fix == "missed":
        removed = d["missed_boxes"]
    elif fix == "false_negative":
        removed = d["unfound_boxes"]
    if fix is not None:
        late[is_tp] = 1
    if fix in ("classification", "localisation", "both", "duplicate", "background"):
        hit = kind == fix
        keep[hit] = d["repairs"][hit]  # the repairing error becomes a TP, every other one is removed
        is_tp = is_tp | (hit & d["repairs"])
        if fix == "classification":
            label[hit] = d["box_label"][hit]
    elif fix == "false_positive":
        score = np.where(kind == "tp", 1.0, 0.0)
    elif fix not in (None, "missed", "false_negative"):
        raise ValueError(f"unknown error type {fix!r}")
    if rules not in AP_METRICS:
        raise ValueError(f"unknown error rules {rules!r}; choose from {tuple(AP_METRICS)}")

    aps = np.full(num_classes, np.nan)
    kept = np.flatnonzero(keep)  # (D',) in TIDE's order
    kept = kept[np.argsort(label[kept], kind="stable")]  # grouped by class, TIDE's order inside a class
    bounds = np.searchsorted(
        label[kept], np.arange(num_classes + 1)
    )  # class c: kept[bounds[c]:bounds[c + 1]]
    for c in range(1, num_classes):
        ranked = kept[bounds[c] : bounds[c + 1]]  # (Dc,) in TIDE's order
        if rules == "voc":
            if positives[c] == 0:
                continue
            ap = voc_area_ap
        else:
            if len(ranked) == 0 and positives[c] - removed[c] <= 0:
                continue  # TIDE leaves a class without boxes and detections out of the mean
            ap = coco_101_point_ap
        ranked = ranked[np.lexsort((ranked, late[ranked], -score[ranked]))]  # score, then late, then order
        aps[c] = ap(is_tp[ranked], int(positives[c] - removed[c]))
    return aps
