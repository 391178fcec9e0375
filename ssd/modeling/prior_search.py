"""The level-by-level search of the prior fit (`prior_fitting.fit_priors` calls `fit_levels`).

Which level a box belongs to: priors are centred s_k pixels apart, so a box may lie up to s_k / 2 away from the
nearest centre in x and in y. Shifted so, a w x h box keeps (1 - s/2w)(1 - s/2h) of its area on a prior of its
own shape; a box goes to the coarsest level where it keeps KEPT_AREA (0.64) of it. For a square that is a side
of LEVEL_SIDE_PER_STRIDE (2.5) strides (where IoU 0.5 is reached: (a - s/2)^2 / (2a^2 - (a - s/2)^2) >= 0.5
needs a >= 2.7 s); a 10:1 box needs its short side, not its mean side, to be about 3 strides.

The search (`fit_levels`) starts each level from quantiles of its boxes (small square at the 25th percentile
of sqrt(w * h), big square at the 75th), then tries neighbouring sizes, three gaps between the squares and a
list of ratio sets (fixed ones, plus ratios read from the quantiles of |log(w / h)| of the level's boxes and
of each class in it, beyond 3:1 when the boxes are that long), one level at a time, twice over, and keeps the
choice that scores best: first the share of boxes with a prior at IoU >= the threshold, then how well the
best prior fits and how many priors match (each is a positive the box learns from), then fewer priors. Every
class weighs the same in that score, and every level that owns a box is searched, so 90 boxes of a rare class
among 20,000 get priors of their own. Levels that own no box keep the sizes `_ladder` gives them (they have
been trained that way in every measured recipe; moving them onto other levels' boxes is not measured). IoUs come from `nearest_prior_ious` (the best IoU of each shape on the grid, at
O(boxes x shapes)); tests check the result with the real priors and box_iou.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ssd.modeling.prior_coverage import nearest_prior_ious
from ssd.modeling.priors import level_sizes

LEVEL_SIDE_PER_STRIDE = 2.5  # a square of side >= 2.5 strides is owned by that level (see the docstring)
KEPT_AREA = (1 - 0.5 / LEVEL_SIDE_PER_STRIDE) ** 2  # 0.64: that rule for boxes of any shape
RATIO_CHOICES = ((2.0,), (1.5,), (1.3,), (1.3, 2.0), (1.5, 3.0), (2.0, 3.0), (1.3, 2.0, 3.0))
MAX_COUNTED_POSITIVES = 8  # in the search, matching priors per box beyond this count no more
# Side of the big square over the small one, sqrt(MAX_SIZE / MIN_SIZE): the choices of the search. The SSD
# paper's s'_k = sqrt(s_k * s_k+1) and lufficc's configs give 1.2 to 1.35; a wider gap leaves a big square
# that overlaps the level's small objects by IoU 0.3-0.5, a hard negative that looks like the object. On
# BCCD, fitted priors with a 1.64x big square on the platelet level reached platelet val AP50 54.3 at
# iteration 516, where the hand-made recipe's 1.22x had 77.5 at 450 (docs/custom_dataset.md).
SQUARE_RATIOS = (1.1, 1.2, 1.35)
SIZE_STEPS = (0.8, 0.9, 1.0, 1.12, 1.25)  # small-square sizes tried around the current one
MIN_IOU_IN_SEARCH = 0.2  # boxes whose area keeps every candidate prior of a level below this IoU are skipped


def assign_levels(boxes_wh: np.ndarray, strides: Sequence[float]) -> np.ndarray:
    """(G,) index of the coarsest level on which each box, shifted half a stride in x and y, keeps KEPT_AREA of
    its area (the finest level when none does). boxes_wh: (G, 2) in pixels; strides finest first."""
    half = np.asarray(strides, dtype=np.float64)[None, :] / 2  # (1, L)
    kept = np.clip(1 - half / boxes_wh[:, :1], 0, None) * np.clip(
        1 - half / boxes_wh[:, 1:], 0, None
    )  # (G, L)
    wide_enough = kept >= KEPT_AREA - 1e-9
    coarsest = len(strides) - 1 - np.argmax(wide_enough[:, ::-1], axis=1)  # (G,)
    return np.where(wide_enough.any(axis=1), coarsest, 0)


def _ratio_sets(abs_log_ratios: np.ndarray, labels: np.ndarray) -> list[tuple[float, ...]]:
    """Ratio sets to try on a level: RATIO_CHOICES and ratios read from its boxes' |log(w / h)|.

    The data ratios are the 50th, 80th and 95th percentiles of the level's boxes and each class's median (a
    long class among square ones); they are tried alone, beside 2 (and 3), and in pairs.
    """
    if len(abs_log_ratios) == 0:
        return list(RATIO_CHOICES)
    values = [*np.percentile(abs_log_ratios, [50, 80, 95])]
    values += [np.median(abs_log_ratios[labels == c]) for c in np.unique(labels)]
    data: list[float] = []
    for ratio in sorted(float(np.exp(v)) for v in values):
        if ratio >= 1.2 and (not data or ratio > 1.1 * data[-1]):  # ratios within 10% are one ratio
            data.append(round(ratio, 1))
    sets = set(RATIO_CHOICES)
    for i, ratio in enumerate(data):
        sets.add((ratio,))
        if ratio > 2.4:
            sets.add((2.0, ratio))
        if ratio > 3.6:
            sets.add((2.0, 3.0, ratio))
        sets.update((other, ratio) for other in data[:i])
    return sorted(sets, key=lambda s: (len(s), s))


def _ladder(min_sizes: list[float | None], strides: Sequence[float], image_size: int) -> list[float]:
    """Sizes for levels without boxes: 1.4x the level below and >= LEVEL_SIDE_PER_STRIDE strides; the empty
    levels above the last one with boxes are spread evenly (geometrically) between it and 0.95 x the image, so
    that no two levels get the same priors."""
    filled: list[float] = []
    for k, size in enumerate(min_sizes):
        if size is None:
            below = filled[-1] * 1.4 if filled else 0.0
            size = min(max(below, LEVEL_SIDE_PER_STRIDE * strides[k]), 0.9 * image_size)
        filled.append(float(size))
    last = max(k for k, size in enumerate(min_sizes) if size is not None)  # fit_priors has >= 1 box
    top, trailing = 0.95 * image_size, len(min_sizes) - 1 - last
    base = min(filled[last], 0.7 * image_size)
    for j in range(1, trailing + 1):
        filled[last + j] = base * (top / base) ** (j / trailing)
    return filled


def search_score(best, count, weights, threshold: float) -> float:
    """Covered boxes first; then how well the best prior fits, and positives (a box learns from every prior it
    matches: 0.002 per matching prior, up to MAX_COUNTED_POSITIVES). Each class's boxes weigh 1 / C in all."""
    return float(
        weights @ (best >= threshold)
        + 0.002 * weights @ np.minimum(count, MAX_COUNTED_POSITIVES)
        + 0.1 * weights @ best
    )


def fit_levels(
    boxes_cxcywh: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    feature_maps: Sequence[int],
    strides: Sequence[float],
    image_size: int,
    threshold: float,
) -> tuple[list[float], list[float], list[list[float]], list[str]]:
    """Fit the prior sizes and ratios of fixed levels (see the module docstring).

    Args:
        boxes_cxcywh: (G, 4) boxes in input pixels.
        labels: (G,) class of each box (for the ratio candidates of each class).
        weights: (G,) weight of each box in the score (each class's boxes sum to 1 / C).
        feature_maps, strides: the levels, finest first.
        image_size: S.
        threshold: the IoU a prior needs to count as a match.

    Returns:
        min_sizes, max_sizes (pixels, rounded to 0.1), aspect_ratios per level, and one note per level that
        owns boxes ("level 3 (stride 32): priors ... fitted to 412 boxes up to 6.0:1").
    """
    num_levels = len(feature_maps)
    wh = boxes_cxcywh[:, 2:]  # (G, 2)
    areas, abs_log = wh[:, 0] * wh[:, 1], np.abs(np.log(wh[:, 0] / wh[:, 1]))  # (G,) each
    level_of_box = assign_levels(wh, strides)  # (G,)
    starts: list[float | None] = [None] * num_levels
    max_sizes = [0.0] * num_levels
    candidates = []
    for k in range(num_levels):
        mine = level_of_box == k
        candidates.append(_ratio_sets(abs_log[mine], labels[mine]))
        if mine.any():
            small, big = np.percentile(np.sqrt(areas[mine]), [25, 75])
            big = float(np.clip(big, SQUARE_RATIOS[0] * small, SQUARE_RATIOS[-1] * small))
            starts[k], max_sizes[k] = float(small), big * big / small
    min_sizes = _ladder(starts, strides, image_size)
    max_sizes = [
        M if s is not None else m * 1.2**2 for s, M, m in zip(starts, max_sizes, min_sizes, strict=True)
    ]
    ratios: list[tuple[float, ...]] = [(2.0,)] * num_levels

    def ious_of(k: int, shapes: list[tuple[float, float]], rows=slice(None)) -> np.ndarray:
        shapes_wh = np.asarray(shapes, dtype=np.float64)  # (A, 2)
        return nearest_prior_ious(boxes_cxcywh[rows], shapes_wh, feature_maps[k], strides[k], image_size)

    per_level = np.zeros((num_levels, len(areas)))  # (L, G) best IoU per level
    per_level_count = np.zeros((num_levels, len(areas)), dtype=np.int64)  # (L, G) matching shapes per level
    for k in range(num_levels):
        ious = ious_of(k, level_sizes(min_sizes[k], max_sizes[k], ratios[k]))  # (G, A)
        per_level[k], per_level_count[k] = ious.max(axis=1), (ious >= threshold).sum(axis=1)

    for _ in range(2):  # two rounds of coordinate search, one level at a time
        for k in [k for k in range(num_levels) if starts[k] is not None]:  # every level that owns a box
            # Boxes whose area keeps every candidate of this level under IoU MIN_IOU_IN_SEARCH are left out:
            # they score the same whatever is chosen here (up to the 0.1 x best-IoU term).
            low = (min_sizes[k] * SIZE_STEPS[0]) ** 2 * MIN_IOU_IN_SEARCH
            high = (min_sizes[k] * SIZE_STEPS[-1] * SQUARE_RATIOS[-1]) ** 2 / MIN_IOU_IN_SEARCH
            rows = np.flatnonzero((areas >= low) & (areas <= high))
            others_best = np.delete(per_level[:, rows], k, axis=0).max(axis=0, initial=0.0)  # (g,)
            others_count = np.delete(per_level_count[:, rows], k, axis=0).sum(axis=0)  # (g,)
            distinct = sorted({r for s in candidates[k] for r in s})
            column = {r: 4 + 2 * i for i, r in enumerate(distinct)}  # wide prior of ratio r; tall one next
            best_value, choice = -math.inf, None
            for step in sorted(SIZE_STEPS, key=lambda v: abs(math.log(v))):  # ties keep the current size
                small = min_sizes[k] * step
                shapes = [(small, small), *[(small * q, small * q) for q in SQUARE_RATIOS]]
                for r in distinct:
                    shapes += [
                        (small * math.sqrt(r), small / math.sqrt(r)),
                        (small / math.sqrt(r), small * math.sqrt(r)),
                    ]
                ious = ious_of(k, shapes, rows)  # (g, 4 + 2R)
                hits = ious >= threshold
                for q_index, square in enumerate(SQUARE_RATIOS):
                    for level_ratios in candidates[k]:
                        columns = [0, 1 + q_index, *[column[r] + j for r in level_ratios for j in (0, 1)]]
                        best = np.maximum(others_best, ious[:, columns].max(axis=1))
                        count = others_count + hits[:, columns].sum(axis=1)
                        value = search_score(best, count, weights[rows], threshold) - 0.001 * len(columns)
                        if value > best_value:
                            best_value, choice = value, (small, square, level_ratios)
            small, square, ratios[k] = choice
            min_sizes[k], max_sizes[k] = small, small * square * square
            ious = ious_of(k, level_sizes(small, max_sizes[k], ratios[k]))  # (G, A) the choice, on every box
            per_level[k], per_level_count[k] = ious.max(axis=1), (ious >= threshold).sum(axis=1)

    notes = []
    for k in range(num_levels):
        mine = level_of_box == k
        if mine.any():
            notes.append(
                f"level {k + 1} (stride {strides[k]:g}): priors {min_sizes[k]:.0f} and "
                f"{math.sqrt(min_sizes[k] * max_sizes[k]):.0f} px, ratios {', '.join(f'{r:g}' for r in ratios[k])}, "
                f"fitted to {int(mine.sum())} boxes up to {float(np.exp(abs_log[mine].max())):.1f}:1"
            )
    return (
        [round(m, 1) for m in min_sizes],
        [round(M, 1) for M in max_sizes],
        [[float(r) for r in level] for level in ratios],
        notes,
    )
