"""Priors fitted to the training boxes (MODEL.PRIORS.AUTO): YOLOv5's "autoanchor" idea, done the SSD way.

A ground-truth box learns from the priors it overlaps with IoU >= MODEL.THRESHOLD (SSD paper sec. 2.2); a box
that no prior reaches gets only its single forced best match and is learnt poorly. Hand-picked priors (the
paper's linear ladder of scales, lufficc/SSD's per-config lists) fit VOC and COCO; on other data they can
miss whole classes (on BCCD, lufficc's MobileNet priors reach 1% of the platelets). This module chooses
them from the data instead.

What is fixed and what is chosen:
- The backbone fixes the levels: feature-map sizes f_k and strides s_k at INPUT.IMAGE_SIZE (`feature_map_shapes`).
  A MobileNet may add its stride-8 map as a first level (MODEL.BACKBONE.STRIDE8_MAP); it is added when it
  covers boxes that the stride-16 level cannot (see `fit_priors`).
- Chosen per level: MIN_SIZES, MAX_SIZES and ASPECT_RATIOS (and so BOXES_PER_LOCATION = 2 + 2 * len(ratios)).

Why the stride matters: priors of a level are centred s_k pixels apart, so a box may lie up to s_k / 2 away
from the nearest prior centre in x and in y. A square box of side a offset by (s/2, s/2) from a prior of the
same size has IoU (a - s/2)^2 / (2 a^2 - (a - s/2)^2), which is >= 0.5 only when a >= 2.7 s. So a box is given
to the coarsest level whose stride it is at least `LEVEL_SIDE_PER_STRIDE` (2.5) strides wide (the finest
level takes everything smaller), and each level's priors are fitted to the boxes it was given.

The search (`_fit_levels`) starts each level from quantiles of its boxes (small square at the 25th percentile
of sqrt(w * h), big square at the 75th, aspect ratios from the spread of log(w / h)), then tries neighbouring
sizes and a short list of ratio sets, one level at a time, twice over, and keeps the choice that scores best:
first the share of boxes with a prior at IoU >= the threshold, then the number of such priors per box (each
one is a positive the box learns from), then how well the best prior fits, then fewer priors. Every class
weighs the same in that score, so 200 platelets among 2400 red cells get priors of their own. During the search a box is compared with the
prior nearest its centre on every level, which gives exactly the best IoU of each prior shape (IoU only falls
as the centres move apart) at O(boxes x shapes); the final report (`coverage_report`) uses the real priors
(`make_priors`) and real IoUs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ssd.modeling.priors import make_priors
from ssd.structures.boxes import box_iou, cxcywh_to_xyxy

logger = logging.getLogger(__name__)

LEVEL_SIDE_PER_STRIDE = 2.5  # a box of side >= 2.5 strides can be matched on that level (see the docstring)
RATIO_CHOICES = ((2.0,), (1.5,), (1.3,), (1.3, 2.0), (1.5, 3.0), (2.0, 3.0), (1.3, 2.0, 3.0))
MAX_COUNTED_POSITIVES = 8  # in the search, matching priors per box beyond this count no more
# Side of the big square over the small one, sqrt(MAX_SIZE / MIN_SIZE): the choices of the search. The SSD
# paper's s'_k = sqrt(s_k * s_k+1) and lufficc's configs give 1.2 to 1.35; a wider gap leaves a big square
# that overlaps the level's small objects by IoU 0.3-0.5, a hard negative that looks like the object. On
# BCCD, fitted priors with a 1.64x big square on the platelet level reached platelet val AP50 54.3 at
# iteration 516, where the hand-made recipe's 1.22x had 77.5 at 450 (docs/custom_dataset.md).
SQUARE_RATIOS = (1.1, 1.2, 1.35)
MAX_FIT_BOXES = 20000  # the search uses at most this many boxes (a seeded sample); the report uses all
COVERAGE_WARNING = 0.9  # warn when a class has fewer of its boxes covered
MAX_REPORT_IMAGES = 5000  # the coverage table before training reads at most this many images (seeded sample)


@dataclass
class FittedPriors:
    """The MODEL.PRIORS lists for L levels (sizes in input pixels), and whether the stride-8 map is used."""

    feature_maps: list[int]
    strides: list[float]
    min_sizes: list[float]
    max_sizes: list[float]
    aspect_ratios: list[list[float]]
    stride8_map: bool = False

    def make(self, image_size: int, clip: bool = True) -> torch.Tensor:
        """priors_cxcywh (P, 4) in 0..1, as the model will build them."""
        return make_priors(
            image_size,
            self.feature_maps,
            self.strides,
            self.min_sizes,
            self.max_sizes,
            self.aspect_ratios,
            clip,
        )


def _level_shapes(min_size: float, max_size: float, ratios: Sequence[float]) -> np.ndarray:
    """(A, 2) prior (w, h) of one level in pixels, in `priors._level_sizes` order."""
    shapes = [(min_size, min_size), (math.sqrt(min_size * max_size),) * 2]
    for r in ratios:
        shapes += [
            (min_size * math.sqrt(r), min_size / math.sqrt(r)),
            (min_size / math.sqrt(r), min_size * math.sqrt(r)),
        ]
    return np.asarray(shapes, dtype=np.float64)


def nearest_prior_ious(
    boxes_cxcywh: np.ndarray, shapes_wh: np.ndarray, feature_map: int, stride: float, image_size: int
) -> np.ndarray:
    """IoU of each box with each prior shape of one level, placed at the prior centre nearest the box centre.

    That is the best IoU the shape reaches on the level's grid (IoU only falls as the centres move apart).

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
    shapes = np.minimum(shapes_wh, image_size)  # (A, 2) CLIP clamps w and h to the image
    half_boxes = boxes_cxcywh[:, None, 2:] / 2  # (G, 1, 2)
    half_priors = shapes[None, :, :] / 2  # (1, A, 2)
    low = np.maximum(boxes_cxcywh[:, None, :2] - half_boxes, centres[:, None, :] - half_priors)  # (G, A, 2)
    high = np.minimum(boxes_cxcywh[:, None, :2] + half_boxes, centres[:, None, :] + half_priors)  # (G, A, 2)
    inter = np.prod(np.clip(high - low, 0, None), axis=-1)  # (G, A)
    union = np.prod(boxes_cxcywh[:, None, 2:], axis=-1) + np.prod(shapes, axis=-1)[None, :] - inter  # (G, A)
    return inter / np.maximum(union, 1e-12)


def nearest_prior_iou(
    boxes_cxcywh: np.ndarray, shapes_wh: np.ndarray, feature_map: int, stride: float, image_size: int
) -> np.ndarray:
    """(G,) best IoU of each box with the priors of one level (`nearest_prior_ious`, best shape)."""
    return nearest_prior_ious(boxes_cxcywh, shapes_wh, feature_map, stride, image_size).max(axis=1)


def _initial_level(sides: np.ndarray, log_ratios: np.ndarray) -> tuple[float, float, tuple[float, ...]]:
    """Quantile start for one level: (min_size, max_size, ratios) from its boxes' sides and log(w / h)."""
    small, big = np.percentile(sides, [25, 75])
    big = float(np.clip(big, SQUARE_RATIOS[0] * small, SQUARE_RATIOS[-1] * small))
    spread = float(np.exp(np.percentile(np.abs(log_ratios), 90)))
    ratios = (2.0, 3.0) if spread > 2.5 else (1.3, 2.0) if spread < 1.6 else (2.0,)
    return float(small), float(big * big / small), ratios


def _ladder(min_sizes: list[float | None], strides: Sequence[float], image_size: int) -> list[float]:
    """Fill levels without boxes: keep sizes increasing, at least LEVEL_SIDE_PER_STRIDE strides on coarse levels."""
    filled: list[float] = []
    for k, size in enumerate(min_sizes):
        if size is None:
            below = filled[-1] * 1.4 if filled else LEVEL_SIDE_PER_STRIDE * strides[k]
            size = min(max(below, LEVEL_SIDE_PER_STRIDE * strides[k]), 0.9 * image_size)
        filled.append(float(size))
    for k in range(len(filled) - 2, -1, -1):  # a fitted level below an empty one keeps the order
        filled[k] = min(filled[k], filled[k + 1])
    return filled


def _fit_levels(
    boxes_cxcywh: np.ndarray,
    labels: np.ndarray,
    feature_maps: Sequence[int],
    strides: Sequence[float],
    image_size: int,
    threshold: float,
) -> FittedPriors:
    """Fit sizes and ratios (MIN_SIZES, MAX_SIZES, ASPECT_RATIOS) for fixed levels."""
    classes, class_index, class_count = np.unique(labels, return_inverse=True, return_counts=True)
    box_weights = 1.0 / (class_count[class_index] * len(classes))  # (G,) each class sums to 1 / C
    num_levels = len(feature_maps)
    sides = np.sqrt(boxes_cxcywh[:, 2] * boxes_cxcywh[:, 3])  # (G,)
    log_ratios = np.log(boxes_cxcywh[:, 2] / boxes_cxcywh[:, 3])  # (G,)
    level_of_box = np.zeros(len(sides), dtype=np.int64)
    for k, stride in enumerate(strides):
        level_of_box[sides >= LEVEL_SIDE_PER_STRIDE * stride] = k  # the coarsest level wide enough wins

    min_boxes = max(3, int(0.005 * len(sides)))
    starts: list[tuple[float, float, tuple[float, ...]] | None] = []
    for k in range(num_levels):
        mine = level_of_box == k
        starts.append(_initial_level(sides[mine], log_ratios[mine]) if mine.sum() >= min_boxes else None)
    min_sizes = _ladder([s[0] if s else None for s in starts], strides, image_size)
    max_sizes = [s[1] if s else m * 1.4 * 1.4 for s, m in zip(starts, min_sizes, strict=True)]
    max_sizes = [
        m * float(np.clip(M / m, SQUARE_RATIOS[0] ** 2, SQUARE_RATIOS[-1] ** 2))
        for M, m in zip(max_sizes, min_sizes, strict=True)
    ]
    ratios = [s[2] if s else (2.0,) for s in starts]

    def level_match(k: int, min_size: float, max_size: float, level_ratios) -> tuple[np.ndarray, np.ndarray]:
        """(best IoU (G,), number of shapes at IoU >= threshold (G,)) of level k for every box."""
        shapes = _level_shapes(min_size, max_size, level_ratios)
        ious = nearest_prior_ious(boxes_cxcywh, shapes, feature_maps[k], strides[k], image_size)  # (G, A)
        return ious.max(axis=1), (ious >= threshold).sum(axis=1)

    matches = [level_match(k, min_sizes[k], max_sizes[k], ratios[k]) for k in range(num_levels)]
    per_level = np.stack([best for best, _ in matches])  # (L, G) best IoU per level
    per_level_count = np.stack([count for _, count in matches])  # (L, G) matching shapes per level

    def score(best: np.ndarray, count: np.ndarray, num_shapes: int) -> float:
        # Covered boxes first; then how well the best prior fits, and positives (a box learns from every
        # prior it matches: 0.002 per matching prior, up to MAX_COUNTED_POSITIVES); then fewer priors.
        # Every class weighs the same (box_weights), so a rare class of small objects is not outvoted.
        return float(
            box_weights @ (best >= threshold)
            + 0.002 * box_weights @ np.minimum(count, MAX_COUNTED_POSITIVES)
            + 0.1 * box_weights @ best
            - 0.001 * num_shapes
        )

    for _ in range(2):  # two rounds of coordinate search, one level at a time
        for k in range(num_levels):
            if starts[k] is None:
                continue
            others_best = np.delete(per_level, k, axis=0).max(axis=0, initial=0.0)  # (G,)
            others_count = np.delete(per_level_count, k, axis=0).sum(axis=0)  # (G,)
            best_choice, best_score = None, -math.inf
            for small_factor in (0.85, 1.0, 1.15):
                for square_ratio in SQUARE_RATIOS:
                    small = min_sizes[k] * small_factor
                    large = small * square_ratio
                    for level_ratios in {tuple(ratios[k]), *RATIO_CHOICES}:
                        iou, count = level_match(k, small, large * large / small, level_ratios)
                        value = score(
                            np.maximum(others_best, iou), others_count + count, 2 + 2 * len(level_ratios)
                        )
                        if value > best_score:
                            best_choice, best_score = (
                                (small, large * large / small, level_ratios, iou, count),
                                value,
                            )
            min_sizes[k], max_sizes[k], ratios[k], per_level[k], per_level_count[k] = best_choice

    fitted = FittedPriors(
        feature_maps=[int(f) for f in feature_maps],
        strides=[float(s) for s in strides],
        min_sizes=[round(m, 1) for m in min_sizes],
        max_sizes=[round(M, 1) for M in max_sizes],
        aspect_ratios=[[float(r) for r in level] for level in ratios],
    )
    return fitted


def fit_priors(
    boxes_norm: np.ndarray,
    labels: np.ndarray,
    image_size: int,
    levels: Sequence[tuple[int, float]],
    threshold: float = 0.5,
    stride8_level: tuple[int, float] | None = None,
    seed: int = 0,
) -> FittedPriors:
    """Choose MODEL.PRIORS for the training boxes.

    Args:
        boxes_norm: (G, 4) xyxy in 0..1 (the network's resize to S x S is a scale of these).
        labels: (G,) class of each box, 1..C-1 (used to decide on the stride-8 level per class).
        image_size: S, INPUT.IMAGE_SIZE.
        levels: (feature-map size, stride in pixels) of each backbone level, finest first.
        threshold: MODEL.THRESHOLD, the IoU a prior needs to count as a match.
        stride8_level: (size, stride) of an optional stride-8 first level (MobileNets), None if unavailable.
            It is used when it raises the share of covered boxes by >= 1 point overall or >= 3 points for
            some class: it costs a 4x larger first grid of priors, so only when the data needs it.
        seed: the sample of MAX_FIT_BOXES boxes for the search on large datasets.

    Returns:
        FittedPriors with one entry per level (the stride-8 level first when it is used).

    Raises:
        ValueError: no boxes, or boxes without area.
    """
    boxes_norm = np.asarray(boxes_norm, dtype=np.float64).reshape(-1, 4)  # (G, 4)
    labels = np.asarray(labels).reshape(-1)  # (G,)
    if len(boxes_norm) == 0:
        raise ValueError("MODEL.PRIORS.AUTO: the training datasets have no boxes to fit priors to")
    keep = (boxes_norm[:, 2] > boxes_norm[:, 0]) & (boxes_norm[:, 3] > boxes_norm[:, 1])
    boxes_norm, labels = boxes_norm[keep], labels[keep]
    if len(boxes_norm) > MAX_FIT_BOXES:
        pick = np.random.default_rng(seed).choice(len(boxes_norm), MAX_FIT_BOXES, replace=False)
        boxes_norm, labels = boxes_norm[pick], labels[pick]
    boxes_px = boxes_norm * image_size
    boxes_cxcywh = np.concatenate(
        ((boxes_px[:, :2] + boxes_px[:, 2:]) / 2, boxes_px[:, 2:] - boxes_px[:, :2]), axis=1
    )  # (G, 4)
    feature_maps = [f for f, _ in levels]
    strides = [s for _, s in levels]
    fitted = _fit_levels(boxes_cxcywh, labels, feature_maps, strides, image_size, threshold)
    if stride8_level is None:
        return fitted
    with_stride8 = _fit_levels(
        boxes_cxcywh,
        labels,
        [stride8_level[0], *feature_maps],
        [stride8_level[1], *strides],
        image_size,
        threshold,
    )
    with_stride8.stride8_map = True
    gain = _coverage_by_class(with_stride8, boxes_norm, labels, image_size, threshold)
    base = _coverage_by_class(fitted, boxes_norm, labels, image_size, threshold)
    overall_gain = gain[0] - base[0]
    class_gain = max((gain[1][c] - base[1][c] for c in base[1]), default=0.0)
    if overall_gain >= 0.01 or class_gain >= 0.03:
        logger.info(
            "MODEL.PRIORS.AUTO: adding the stride-8 level (covered boxes %.1f%% -> %.1f%%, up to +%.1f points "
            "for one class)", 100 * base[0], 100 * gain[0], 100 * class_gain,
        )  # fmt: skip
        return with_stride8
    return fitted


def _coverage_by_class(
    fitted: FittedPriors, boxes_norm: np.ndarray, labels: np.ndarray, image_size: int, threshold: float
) -> tuple[float, dict[int, float]]:
    """(overall, {label: share}) of boxes whose best prior has IoU >= threshold.

    Uses `nearest_prior_iou` on every level, which gives the same best IoU as comparing each box with all
    P priors (tests/test_prior_fitting.py checks this against box_iou) at a fraction of the cost.
    """
    boxes_px = boxes_norm * image_size
    boxes_cxcywh = np.concatenate(
        ((boxes_px[:, :2] + boxes_px[:, 2:]) / 2, boxes_px[:, 2:] - boxes_px[:, :2]), 1
    )
    best = np.zeros(len(boxes_norm))
    for k, (size, stride) in enumerate(zip(fitted.feature_maps, fitted.strides, strict=True)):
        shapes = _level_shapes(fitted.min_sizes[k], fitted.max_sizes[k], fitted.aspect_ratios[k])
        best = np.maximum(best, nearest_prior_iou(boxes_cxcywh, shapes, size, stride, image_size))
    covered = best >= threshold
    return float(covered.mean()), {int(c): float(covered[labels == c].mean()) for c in np.unique(labels)}


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
