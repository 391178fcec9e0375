"""How well a set of priors reaches the ground-truth boxes: the coverage table and the fit's fast IoU.

A ground-truth box learns from the priors it overlaps with IoU >= MODEL.THRESHOLD (SSD paper sec. 2.2); a box
that no prior reaches gets only its single forced best match. Two ways to measure that here:

- `coverage_report`: the real priors (`make_priors`, (P, 4)) against every box with `box_iou`, per class. This
  is the table train.py logs before training.
- `nearest_prior_ious` / `nearest_prior_match`: each prior shape of a level placed only at the grid centre
  nearest the box centre. IoU only falls as the centres move apart, so this is the best IoU of that shape
  anywhere on the grid, at O(boxes x shapes) instead of O(boxes x P); the prior fit scores thousands of
  candidates with it (tests/test_prior_fitting.py checks it against box_iou on the whole grid). It assumes
  MODEL.PRIORS.CLIP True (sizes clamped to the image), as every shipped config has.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ssd.modeling.priors import level_sizes
from ssd.structures.boxes import box_iou, cxcywh_to_xyxy


def nearest_prior_ious(
    boxes_cxcywh: np.ndarray, shapes_wh: np.ndarray, feature_map: int, stride: float, image_size: int
) -> np.ndarray:
    """IoU of each box with each prior shape of one level, placed at the prior centre nearest the box centre.

    Args:
        boxes_cxcywh: (G, 4) boxes in input pixels.
        shapes_wh: (A, 2) prior sizes of the level in input pixels (clipped to the image, as make_priors does).
        feature_map, stride: the level's grid (centres at (j + 0.5) * stride, j < feature_map).
        image_size: S.

    Returns:
        (G, A) IoU.
    """
    index = np.clip(np.floor(boxes_cxcywh[:, :2] / stride), 0, feature_map - 1)  # (G, 2)
    centres = (index + 0.5) * stride  # (G, 2) nearest prior centre
    half_priors = np.minimum(shapes_wh, image_size) / 2  # (A, 2) CLIP clamps w and h to the image
    inter = np.ones((len(boxes_cxcywh), len(half_priors)))  # (G, A)
    for axis in (0, 1):  # overlap of two segments: min(h_box + h_prior - distance, the shorter one), >= 0
        distance = np.abs(boxes_cxcywh[:, axis] - centres[:, axis])[:, None]  # (G, 1)
        half_box = boxes_cxcywh[:, 2 + axis, None] / 2  # (G, 1)
        half_prior = half_priors[None, :, axis]  # (1, A)
        overlap = np.minimum(half_box + half_prior - distance, 2 * np.minimum(half_box, half_prior))  # (G, A)
        inter *= np.maximum(overlap, 0)
    areas = boxes_cxcywh[:, 2] * boxes_cxcywh[:, 3]  # (G,)
    union = areas[:, None] + 4 * (half_priors[:, 0] * half_priors[:, 1])[None, :] - inter  # (G, A)
    return inter / np.maximum(union, 1e-12)


def nearest_prior_iou(
    boxes_cxcywh: np.ndarray, shapes_wh: np.ndarray, feature_map: int, stride: float, image_size: int
) -> np.ndarray:
    """(G,) best IoU of each box with the priors of one level (`nearest_prior_ious`, best shape)."""
    return nearest_prior_ious(boxes_cxcywh, shapes_wh, feature_map, stride, image_size).max(axis=1)


def nearest_prior_match(
    boxes_cxcywh: np.ndarray,
    levels: Sequence[tuple[int, float, float, float, Sequence[float]]],
    image_size: int,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Best prior IoU of each box over all levels, and how many prior shapes reach `threshold`.

    Args:
        boxes_cxcywh: (G, 4) boxes in input pixels.
        levels: per level (feature-map size, stride, min size, max size, aspect ratios), sizes in pixels.
        image_size: S.
        threshold: MODEL.THRESHOLD.

    Returns:
        best (G,) IoU, count (G,) number of (level, shape) pairs with IoU >= threshold (one per shape: the
        nearest centre; neighbouring centres can add more, so this is a lower bound of the positives).
    """
    best, count = np.zeros(len(boxes_cxcywh)), np.zeros(len(boxes_cxcywh), dtype=np.int64)
    for feature_map, stride, min_size, max_size, ratios in levels:
        shapes = np.asarray(level_sizes(min_size, max_size, ratios), dtype=np.float64)  # (A, 2)
        ious = nearest_prior_ious(boxes_cxcywh, shapes, feature_map, stride, image_size)  # (G, A)
        best = np.maximum(best, ious.max(axis=1))
        count += (ious >= threshold).sum(axis=1)
    return best, count


@dataclass
class ClassCoverage:
    """One row of the coverage table."""

    name: str
    boxes: int
    covered: float  # share of boxes whose best prior has IoU >= threshold
    positives: float  # mean number of priors with IoU >= threshold per box (at least 1: the forced match)


def coverage_report(
    priors_cxcywh: torch.Tensor,
    images: Sequence[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str],
    threshold: float,
) -> list[ClassCoverage]:
    """Per class: how many boxes a prior reaches with IoU >= threshold, and with how many priors.

    Args:
        priors_cxcywh: (P, 4) in 0..1.
        images: per image (boxes_norm (G_i, 4) xyxy in 0..1, labels (G_i,) in 1..C-1).
        class_names: names with the background first.
        threshold: MODEL.THRESHOLD.

    Returns:
        one ClassCoverage per class (background excluded), then one named "all".
    """
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh.double())  # (P, 4)
    best, count, label_list = [], [], []
    for boxes_norm, labels in images:
        if len(boxes_norm) == 0:
            continue
        iou = box_iou(torch.as_tensor(boxes_norm, dtype=torch.float64), priors_xyxy)  # (G_i, P)
        best.append(iou.max(dim=1).values.numpy())
        count.append(np.maximum((iou >= threshold).sum(dim=1).numpy(), 1))  # the forced match counts once
        label_list.append(np.asarray(labels))
    best_all = np.concatenate(best) if best else np.zeros(0)
    count_all = np.concatenate(count) if count else np.zeros(0)
    labels_all = np.concatenate(label_list) if label_list else np.zeros(0, dtype=np.int64)
    rows = []
    for label, name in [*enumerate(class_names[1:], start=1), (None, "all")]:
        mine = labels_all == label if label is not None else np.ones(len(labels_all), dtype=bool)
        n = int(mine.sum())
        rows.append(
            ClassCoverage(
                name=name,
                boxes=n,
                covered=float((best_all[mine] >= threshold).mean()) if n else float("nan"),
                positives=float(count_all[mine].mean()) if n else float("nan"),
            )
        )
    return rows


def format_coverage_table(rows: Sequence[ClassCoverage], threshold: float) -> str:
    """The coverage table as text, one line per class."""
    lines = [f"{'class':<16} {'boxes':>7} {f'prior IoU>={threshold:g}':>15} {'positives/box':>14}"]
    for row in rows:
        lines.append(f"{row.name:<16} {row.boxes:>7d} {100 * row.covered:>14.1f}% {row.positives:>14.1f}")
    return "\n".join(lines)
