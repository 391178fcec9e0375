"""Error analysis at one score threshold: TP / FP / FN, precision, recall, F1, a confusion matrix, PR curves.

Only detections with score >= `score_threshold` take part (except in the PR curves, which sweep all scores).
Matching, image by image, at IoU >= `iou_threshold` (0.5), each step greedy by descending score:

1. Same class: a detection takes the unmatched non-difficult ground-truth box of its class with the highest
   IoU -> a TP.
2. Difficult: an unmatched detection overlapping a difficult box of its class is ignored (as in the VOC metric).
3. Wrong class: an unmatched detection takes the unmatched non-difficult box of *another* class with the
   highest IoU -> a confusion (ground-truth class g predicted as p).
4. Leftovers: a detection still unmatched is a false detection on background; a box still unmatched is missed.

Confusion matrix `M`, (C, C), index 0 = background: **rows are the ground truth, columns the prediction.**
`M[g, p]` counts boxes of class g detected as p; `M[g, 0]` missed boxes of class g; `M[0, p]` detections of
class p on background; `M[0, 0]` is always 0. Hence, for a class c >= 1:
    TP = M[c, c],   FP = column sum - M[c, c],   FN = row sum - M[c, c].
Precision = TP / (TP + FP) and recall = TP / (TP + FN) are NaN when their divisor is 0; F1 is their harmonic
mean (NaN if either is NaN, 0 if both are 0). The "all classes" line sums TP, FP and FN over classes (micro).

PR curves use the VOC ranking of `ssd.evaluation.voc` (all scores, IoU 0.5) and are stored at 101 recall
points (COCO's grid) as the best precision at that recall or beyond.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ssd.evaluation.evaluator import (
    NumpyPredictionsEvaluator,
    gather_predictions,
    load_ground_truth,
)
from ssd.evaluation.tables import nan_to_none, pipe_table
from ssd.evaluation.voc import average_precision, box_iou_pixels, match_detections_voc, precision_recall

logger = logging.getLogger(__name__)

RECALL_GRID = np.linspace(0.0, 1.0, 101)
ANNOTATED_CLASSES = 25  # up to this many classes, the plots name every class (cell counts, legend entries)


def _greedy_match(iou: np.ndarray, allowed: np.ndarray, threshold: float) -> np.ndarray:
    """Detections (rows, already sorted by score) each take their best still-free allowed column.

    Args:
        iou: (K, G) IoU.
        allowed: (K, G) bool, pairs that may match.
    Returns:
        (K,) matched column per detection, -1 if none. Does not modify its arguments.
    """
    match = np.full(iou.shape[0], -1, np.int64)
    free = np.ones(iou.shape[1], bool)
    eligible = allowed & (iou >= threshold)  # (K, G)
    for k in np.flatnonzero(eligible.any(axis=1)):  # rows without any eligible column stay -1
        candidates = np.where(eligible[k] & free, iou[k], -1.0)
        if candidates.max() >= 0:
            j = int(candidates.argmax())
            match[k], free[j] = j, False
    return match


def confusion_matrix_image(
    gt: Mapping[str, np.ndarray], pred: Mapping[str, np.ndarray], num_classes: int, iou_threshold: float = 0.5
) -> np.ndarray:
    """(C, C) confusion counts of one image (rows ground truth, columns prediction; see the module docstring).

    `pred` must already be filtered by the score threshold. Continuous pixel coordinates (no +1).
    """
    matrix = np.zeros((num_classes, num_classes), np.int64)
    order = np.argsort(-pred["scores"], kind="stable")
    boxes, labels = pred["boxes_xyxy"][order], pred["labels"][order]  # (K, 4), (K,) by descending score
    gt_boxes, gt_labels, difficult = gt["boxes_xyxy"], gt["labels"], gt["difficult"]
    if len(labels) == 0 or len(gt_labels) == 0:
        np.add.at(matrix, (gt_labels[~difficult], 0), 1)
        np.add.at(matrix, (0, labels), 1)
        return matrix
    iou = box_iou_pixels(boxes, gt_boxes, pixel_offset=0.0)  # (K, G)
    same_class = labels[:, None] == gt_labels[None, :]  # (K, G)
    # 1. same class, non-difficult boxes
    match = _greedy_match(iou, same_class & ~difficult[None, :], iou_threshold)
    # 2. detections on a difficult box of their class are ignored
    on_difficult = (match < 0) & np.any(same_class & difficult[None, :] & (iou >= iou_threshold), axis=1)
    # 3. another class, on boxes still free
    taken = np.zeros(len(gt_labels), bool)
    taken[match[match >= 0]] = True
    unmatched = (match < 0) & ~on_difficult
    cross = _greedy_match(
        iou, unmatched[:, None] & ~same_class & ~difficult[None, :] & ~taken[None, :], iou_threshold
    )
    taken[cross[cross >= 0]] = True
    same_hit, cross_hit = match >= 0, (match < 0) & (cross >= 0)  # (K,), (K,)
    background = ~same_hit & ~cross_hit & ~on_difficult  # (K,) 4. false detections on background
    np.add.at(matrix, (labels[same_hit], labels[same_hit]), 1)
    np.add.at(matrix, (gt_labels[cross[cross_hit]], labels[cross_hit]), 1)
    np.add.at(matrix, (0, labels[background]), 1)
    np.add.at(matrix, (gt_labels[~taken & ~difficult], 0), 1)  # 4. missed boxes
    return matrix


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else float("nan")


def per_class_counts(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """(C, C) confusion matrix -> TP, FP, FN, precision, recall, F1, each (C,) (index 0 unused: background)."""
    tp = np.diag(matrix).copy()
    fp = matrix.sum(axis=0) - tp
    fn = matrix.sum(axis=1) - tp
    precision = np.array([_ratio(t, t + f) for t, f in zip(tp, fp, strict=True)])
    recall = np.array([_ratio(t, t + f) for t, f in zip(tp, fn, strict=True)])
    f1 = np.array([_f1(p, r) for p, r in zip(precision, recall, strict=True)])
    return {"TP": tp, "FP": fp, "FN": fn, "precision": precision, "recall": recall, "F1": f1}


def _f1(p: float, r: float) -> float:
    if math.isnan(p) or math.isnan(r):
        return float("nan")
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def interpolated_pr_curve(recall: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """(D,), (D,) ranked curve -> (101,) best precision at recall >= each point of RECALL_GRID (0 if unreached)."""
    envelope = np.maximum.accumulate(precision[::-1])[::-1] if precision.size else precision
    idx = np.searchsorted(recall, RECALL_GRID, side="left")  # first rank reaching each recall
    return np.array([envelope[i] if i < len(envelope) else 0.0 for i in idx])


class ErrorAnalysisEvaluator(NumpyPredictionsEvaluator):
    """Per-class TP/FP/FN, precision/recall/F1, confusion matrix and PR curves, as JSON and PNG files.

    Results, under the task "analysis" (0-100 for rates): precision, recall, F1 over all classes (micro), and
    TP, FP, FN totals. Files in `output_dir` (when given): analysis.json, confusion_matrix.png, pr_curves.png.

    After `evaluate` on the main process, `last_run` holds {"predictions": {dataset index: arrays}, "analysis":
    the `analyse` dict}, so that the report (`ssd.evaluation.report.write_report`) reuses both instead of
    reading the detections back from JSON and repeating the analysis; `reset` clears it.
    """

    def __init__(
        self,
        dataset,
        score_threshold: float = 0.5,
        iou_threshold: float = 0.5,
        output_dir: str | Path | None = None,
    ):
        self.dataset = dataset
        self.class_names = tuple(dataset.class_names)
        self.score_threshold = score_threshold
        self.iou_threshold = iou_threshold
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.last_run: dict | None = None

    def analyse(self, predictions: Mapping[int, Mapping[str, np.ndarray]]) -> dict:
        """The full analysis as a JSON-ready dict (see the module docstring)."""
        num_classes = len(self.class_names)
        empty = {"boxes_xyxy": np.zeros((0, 4)), "labels": np.zeros(0, np.int64), "scores": np.zeros(0)}
        gts = [load_ground_truth(self.dataset, i) for i in range(len(self.dataset))]
        preds = [predictions.get(i, empty) for i in range(len(self.dataset))]
        matrix = np.zeros((num_classes, num_classes), np.int64)
        for gt, pred in zip(gts, preds, strict=True):
            keep = pred["scores"] >= self.score_threshold
            kept = {k: v[keep] for k, v in pred.items()}
            matrix += confusion_matrix_image(gt, kept, num_classes, self.iou_threshold)
        counts = per_class_counts(matrix)
        tp, fp, fn = (int(counts[k][1:].sum()) for k in ("TP", "FP", "FN"))
        micro_p, micro_r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)

        ranked = match_detections_voc(gts, preds, num_classes, (self.iou_threshold,), pixel_offset=0.0)
        curves = {}
        for c, m in ranked.items():
            recall, precision = precision_recall(m["tp"][0], m["fp"][0], m["num_positives"])
            has_gt = m["num_positives"] > 0
            curves[self.class_names[c]] = {
                "AP_area": nan_to_none(
                    average_precision(recall, precision, False) if has_gt else float("nan")
                ),
                "precision": interpolated_pr_curve(recall, precision).tolist() if has_gt else None,
                "num_ground_truth": m["num_positives"],
            }
        per_class = {
            self.class_names[c]: {
                k: nan_to_none(float(v[c])) if k in ("precision", "recall", "F1") else int(v[c])
                for k, v in counts.items()
            }
            for c in range(1, num_classes)
        }
        return {
            "score_threshold": self.score_threshold,
            "iou_threshold": self.iou_threshold,
            "class_names": list(self.class_names),
            "confusion_matrix": {
                "rows": "ground truth (0 = background: false detections)",
                "columns": "prediction (0 = background: missed objects)",
                "counts": matrix.tolist(),
            },
            "per_class": per_class,
            "all_classes": {
                "TP": tp,
                "FP": fp,
                "FN": fn,
                "precision": nan_to_none(micro_p),
                "recall": nan_to_none(micro_r),
                "F1": nan_to_none(_f1(micro_p, micro_r)),
            },
            "pr_curves": {"recall": RECALL_GRID.tolist(), "per_class": curves},
        }

    def evaluate(self) -> dict[str, dict[str, float]]:
        predictions = gather_predictions(self._predictions)
        if predictions is None:
            return {}
        report = self.analyse(predictions)
        self.last_run = {"predictions": predictions, "analysis": report}
        a = report["all_classes"]

        def row(name: str, v: Mapping) -> list:
            rates = [float("nan") if v[k] is None else v[k] for k in ("precision", "recall", "F1")]
            return [name, v["TP"], v["FP"], v["FN"], *rates]

        rows = [row(name, v) for name, v in report["per_class"].items()] + [row("(all)", a)]
        table = pipe_table(rows, ["category", "TP", "FP", "FN", "precision", "recall", "F1"], floatfmt=".3f")
        logger.info(
            f"Error analysis at score >= {self.score_threshold} and IoU >= {self.iou_threshold}:\n{table}"
        )
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "analysis.json", "w") as f:
                json.dump(report, f, indent=1)
            plot_confusion_matrix(report, self.output_dir / "confusion_matrix.png")
            plot_pr_curves(report, self.output_dir / "pr_curves.png")
            logger.info(
                f"Error analysis written to {self.output_dir} (analysis.json, confusion_matrix.png, pr_curves.png)"
            )

        def pct(v: float | None) -> float:
            return float("nan") if v is None else 100.0 * v

        return {
            "analysis": {
                "precision": pct(a["precision"]),
                "recall": pct(a["recall"]),
                "F1": pct(a["F1"]),
                "TP": float(a["TP"]),
                "FP": float(a["FP"]),
                "FN": float(a["FN"]),
            }
        }


def _new_figure(width: float, height: float):
    """A matplotlib Figure drawn by the Agg canvas, without pyplot (no global backend, no GUI)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_confusion_matrix(report: Mapping, path: str | Path | BinaryIO) -> None:
    """Save the confusion matrix of `ErrorAnalysisEvaluator.analyse` as a PNG (rows ground truth).

    Up to ANNOTATED_CLASSES classes every cell shows its count; above, the cells are colour only and the figure
    stops growing (80 COCO classes: 6,561 numbers would be unreadable, and drawing them is most of the time).
    """
    counts = np.asarray(report["confusion_matrix"]["counts"])
    names = ["background"] + list(report["class_names"][1:])
    annotated = len(names) <= ANNOTATED_CLASSES + 1
    cell = 0.5 if annotated else 12.0 / len(names)  # inches per class
    side = 2.5 + cell * len(names)
    fig = _new_figure(max(6.0, side + 1.5), max(5.0, side))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax)
    font = 8 if annotated else 5
    ax.set_xticks(
        range(len(names)), labels=names, rotation=45 if annotated else 90, ha="right", fontsize=font
    )
    ax.set_yticks(range(len(names)), labels=names, fontsize=font)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title(f"Confusion matrix (score >= {report['score_threshold']}, IoU >= {report['iou_threshold']})")
    if annotated:
        threshold = counts.max() / 2 if counts.size else 0
        for g in range(counts.shape[0]):
            for p in range(counts.shape[1]):
                color = "white" if counts[g, p] > threshold else "black"
                ax.text(p, g, str(counts[g, p]), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def plot_pr_curves(report: Mapping, path: str | Path | BinaryIO) -> None:
    """Save the per-class precision/recall curves of `ErrorAnalysisEvaluator.analyse` as a PNG."""
    fig = _new_figure(7, 5)
    ax = fig.add_subplot(1, 1, 1)
    recall = report["pr_curves"]["recall"]
    for name, curve in report["pr_curves"]["per_class"].items():
        if curve["precision"] is None:
            continue
        ap = curve["AP_area"]
        ax.plot(recall, curve["precision"], label=f"{name} (AP50 {100 * ap:.1f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title(f"Precision-recall at IoU {report['iou_threshold']}")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0] and len(report["class_names"]) <= ANNOTATED_CLASSES + 1:
        ax.legend(loc="lower left", fontsize=8)  # above, a legend would cover the plot (the table names them)
    fig.tight_layout()
    fig.savefig(path)
