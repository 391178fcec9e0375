"""PASCAL VOC detection metric: per-class AP at IoU 0.5 (11-point VOC2007 and area VOC2010+), and mAP.

The matching rule is the VOC devkit's (VOCevaldet.m), which lufficc/SSD and Detectron2 re-implement:

1. Detections of one class are sorted by score, highest first, over the whole dataset.
2. Each detection looks only at the ground truth of its own image and class and takes the box with the
   highest IoU (its "best" box), difficult boxes included.
3. If that IoU >= the threshold: a difficult best box makes the detection *ignored* (neither TP nor FP);
   otherwise the first detection to claim the box is a TP and any later one a FP (duplicates are errors).
   If the IoU is below the threshold, the detection is a FP.
4. recall = TP / (number of non-difficult boxes), precision = TP / (TP + FP), cumulated down the ranking.

Pixel convention: the devkit treats coordinates as inclusive pixel indices, so a box from x1 to x2 is
x2 - x1 + 1 pixels wide (`pixel_offset=1`, the default). IoU is unchanged when ground truth and detections are
shifted together, so it does not matter whether the dataset stores the devkit's 1-based corners or lufficc/SSD's
0-based ones (xmin - 1 ... xmax - 1), only that x2 is the *last pixel inside* the box. Use `pixel_offset=0`
for continuous coordinates (x2 = the right edge), as COCO and our synthetic datasets have.

Choices where implementations differ, stated once:
- IoU >= threshold counts as a match (devkit and lufficc/SSD); py-faster-rcnn and Detectron2 use >.
- A class without any non-difficult ground truth has AP = NaN and is left out of mAP (`np.nanmean`).
- The 11 recall points are `np.arange(0, 1.1, 0.1)`, as the devkit's `0:0.1:1`, so the point written 0.3 is
  0.30000000000000004 and a recall of exactly 3/10 does not reach it. Kept for identical numbers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from ssd.evaluation.evaluator import (
    NumpyPredictionsEvaluator,
    gather_predictions,
    load_ground_truth,
)
from ssd.evaluation.tables import create_small_table, per_category_table

logger = logging.getLogger(__name__)

# Detectron2's VOC summary: thresholds 0.50, 0.55, ..., 0.95.
COCO_STYLE_IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


def box_iou_pixels(boxes1_xyxy: np.ndarray, boxes2_xyxy: np.ndarray, pixel_offset: float = 1.0) -> np.ndarray:
    """(A, 4), (B, 4) xyxy -> (A, B) IoU, with sizes x2 - x1 + pixel_offset (see the module docstring)."""
    w1 = np.maximum(boxes1_xyxy[:, 2] - boxes1_xyxy[:, 0] + pixel_offset, 0)  # (A,)
    h1 = np.maximum(boxes1_xyxy[:, 3] - boxes1_xyxy[:, 1] + pixel_offset, 0)
    w2 = np.maximum(boxes2_xyxy[:, 2] - boxes2_xyxy[:, 0] + pixel_offset, 0)  # (B,)
    h2 = np.maximum(boxes2_xyxy[:, 3] - boxes2_xyxy[:, 1] + pixel_offset, 0)
    top_left = np.maximum(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])  # (A, B, 2)
    bottom_right = np.minimum(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])  # (A, B, 2)
    inter_wh = np.maximum(bottom_right - top_left + pixel_offset, 0)  # (A, B, 2)
    inter = inter_wh[..., 0] * inter_wh[..., 1]  # (A, B)
    union = (w1 * h1)[:, None] + (w2 * h2)[None, :] - inter
    return inter / np.maximum(union, np.finfo(np.float64).tiny)


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """Area under a precision/recall curve given down the score ranking.

    Args:
        recall, precision: (D,) cumulative values, one per ranked detection.
        use_07_metric: True = VOC2007 11-point mean of the best precision at recall >= 0, 0.1, ..., 1;
            False = VOC2010+ exact area under the curve made monotone (precision envelope).
    """
    if use_07_metric:
        ap = 0.0
        for t in np.arange(0.0, 1.1, 0.1):  # 11 points; see the module docstring about 0.3
            reached = precision[recall >= t]
            ap += (reached.max() if reached.size else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]  # envelope: best precision at this recall or beyond
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])  # where recall increases
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def match_detections_voc(
    ground_truths: Sequence[Mapping],
    predictions: Sequence[Mapping],
    num_classes: int,
    iou_thresholds: Sequence[float] = (0.5,),
    pixel_offset: float = 1.0,
) -> dict[int, dict[str, np.ndarray]]:
    """Rank every class's detections and mark each TP / FP / ignored at each IoU threshold (VOC rule).

    Args:
        ground_truths: per image {"boxes_xyxy" (G, 4), "labels" (G,), "difficult" (G,)}.
        predictions: per image (same order) {"boxes_xyxy" (K, 4), "labels" (K,), "scores" (K,)}.
        num_classes: C, background included; classes 1..C-1 are evaluated.
        iou_thresholds: T thresholds.
        pixel_offset: 1 for the devkit's inclusive pixels, 0 for continuous coordinates.

    Returns:
        {class: {"num_positives": int (non-difficult boxes), "scores": (D,) descending,
                 "tp": (T, D) bool, "fp": (T, D) bool}}; a detection neither TP nor FP was ignored.
    """
    # Each detection's best box does not depend on the threshold, so it is found once, image by image.
    det_label, det_score, det_best_iou, det_best_gt = [], [], [], []
    gt_labels_all, gt_difficult_all = [], []
    gt_offset = 0
    for gt, pred in zip(ground_truths, predictions, strict=True):
        num_dets = len(pred["labels"])
        if num_dets:
            iou = np.full((num_dets, max(1, len(gt["labels"]))), -1.0)  # (K, G); -1 = another class
            if len(gt["labels"]):
                iou = box_iou_pixels(pred["boxes_xyxy"], gt["boxes_xyxy"], pixel_offset)
                iou[pred["labels"][:, None] != gt["labels"][None, :]] = -1.0
            best = iou.argmax(axis=1)  # (K,) first box among equals, as np.argmax in the reference code
            det_best_iou.append(iou[np.arange(num_dets), best])
            det_best_gt.append(best + gt_offset if len(gt["labels"]) else np.full(num_dets, -1))  # -1: no box
            det_label.append(pred["labels"])
            det_score.append(pred["scores"])
        gt_labels_all.append(gt["labels"])
        gt_difficult_all.append(gt["difficult"])
        gt_offset += len(gt["labels"])

    def cat(parts, dtype):
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    det_label, det_score = cat(det_label, np.int64), cat(det_score, np.float64)
    det_best_iou, det_best_gt = cat(det_best_iou, np.float64), cat(det_best_gt, np.int64)
    gt_labels, gt_difficult = cat(gt_labels_all, np.int64), cat(gt_difficult_all, bool)

    results = {}
    for c in range(1, num_classes):
        sel = np.flatnonzero(det_label == c)
        order = sel[np.argsort(-det_score[sel], kind="stable")]  # (D,) highest score first
        best_iou, best_gt = det_best_iou[order], det_best_gt[order]
        tp = np.zeros((len(iou_thresholds), len(order)), bool)
        fp = np.zeros_like(tp)
        for t, thresh in enumerate(iou_thresholds):
            hit = best_iou >= thresh
            on_difficult = (
                hit & gt_difficult[np.maximum(best_gt, 0)] if len(gt_difficult) else np.zeros_like(hit)
            )
            claims = np.flatnonzero(
                hit & ~on_difficult
            )  # detections claiming a non-difficult box, in rank order
            _, first = np.unique(best_gt[claims], return_index=True)  # the first claim of each box wins
            tp[t, claims[first]] = True
            fp[t] = ~hit
            fp[t, claims] = True
            fp[t, claims[first]] = False  # later claims of a taken box stay FP (duplicates)
        results[c] = {
            "num_positives": int(np.sum((gt_labels == c) & ~gt_difficult)),
            "scores": det_score[order],
            "tp": tp,
            "fp": fp,
        }
    return results


def precision_recall(tp: np.ndarray, fp: np.ndarray, num_positives: int) -> tuple[np.ndarray, np.ndarray]:
    """(D,) TP / FP flags in rank order -> cumulative (recall (D,), precision (D,)); ignored ones repeat."""
    cum_tp, cum_fp = np.cumsum(tp), np.cumsum(fp)
    recall = cum_tp / max(1, num_positives)  # guarded; callers treat num_positives == 0 as AP = NaN
    precision = cum_tp / np.maximum(cum_tp + cum_fp, np.finfo(np.float64).eps)
    return recall, precision


class PascalVOCEvaluator(NumpyPredictionsEvaluator):
    """VOC AP of every class at IoU 0.5, mAP, and Detectron2's VOC summary over IoU 0.50:0.95.

    Results (0-100), under the task "voc":
        mAP50_07    mean over classes of the VOC2007 11-point AP at IoU 0.5 (lufficc/SSD's "mAP").
        mAP50_area  mean over classes of the VOC2010+ area AP at IoU 0.5.
        AP, AP50, AP75  Detectron2's PascalVOCDetectionEvaluator: mAP averaged over IoU 0.50, 0.55, ..., 0.95,
                    at 0.50 and at 0.75, with the metric chosen by `use_07_metric`.
        AP50-<class>  per-class AP at IoU 0.5 with the metric chosen by `use_07_metric` (NaN: no ground truth).
    """

    def __init__(
        self, dataset, use_07_metric: bool = True, pixel_offset: float = 1.0, dataset_name: str = ""
    ):
        self.dataset = dataset
        self.use_07_metric = use_07_metric
        self.pixel_offset = pixel_offset
        self.dataset_name = dataset_name or type(dataset).__name__
        self.class_names = tuple(dataset.class_names)
        self.reset()

    def evaluate(self) -> dict[str, dict[str, float]]:
        predictions = gather_predictions(self._predictions)
        if predictions is None:
            return {}
        metric = "2007 11-point" if self.use_07_metric else "VOC2010+ area"
        logger.info(
            f"Evaluating {self.dataset_name} with the {metric} metric (a re-implementation of the devkit)."
        )
        empty = {"boxes_xyxy": np.zeros((0, 4)), "labels": np.zeros(0, np.int64), "scores": np.zeros(0)}
        indices = range(len(self.dataset))
        gts = [load_ground_truth(self.dataset, i) for i in indices]
        preds = [predictions.get(i, empty) for i in indices]
        matches = match_detections_voc(
            gts, preds, len(self.class_names), COCO_STYLE_IOU_THRESHOLDS, self.pixel_offset
        )

        ap = {"07": {}, "area": {}}  # metric -> class -> (T,) AP per threshold
        for c, m in matches.items():
            for key, use_07 in (("07", True), ("area", False)):
                if m["num_positives"] == 0:
                    ap[key][c] = np.full(len(COCO_STYLE_IOU_THRESHOLDS), np.nan)
                    continue
                curves = [
                    precision_recall(tp, fp, m["num_positives"])
                    for tp, fp in zip(m["tp"], m["fp"], strict=True)
                ]
                ap[key][c] = np.array([average_precision(r, p, use_07) for r, p in curves])
        chosen = ap["07"] if self.use_07_metric else ap["area"]

        def mean_over_classes(per_class: dict[int, np.ndarray], t: int | slice) -> float:
            values = np.array([v[t] for v in per_class.values()], dtype=np.float64).reshape(
                len(per_class), -1
            )
            if values.size == 0 or np.all(np.isnan(values)):
                return float("nan")
            return float(np.nanmean(values, axis=0).mean() * 100)

        i50, i75 = COCO_STYLE_IOU_THRESHOLDS.index(0.5), COCO_STYLE_IOU_THRESHOLDS.index(0.75)
        results = {
            "mAP50_07": mean_over_classes(ap["07"], i50),
            "mAP50_area": mean_over_classes(ap["area"], i50),
            "AP": mean_over_classes(chosen, slice(None)),
            "AP50": mean_over_classes(chosen, i50),
            "AP75": mean_over_classes(chosen, i75),
        }
        per_class = [(self.class_names[c], float(chosen[c][i50] * 100)) for c in sorted(chosen)]
        logger.info("VOC results:\n" + create_small_table(results))
        logger.info("Per-category AP50 (" + metric + "):\n" + per_category_table(per_class, metric="AP50"))
        results.update({f"AP50-{name}": value for name, value in per_class})
        return {"voc": results}
