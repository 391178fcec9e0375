"""Priors fitted to the training boxes (MODEL.PRIORS.AUTO): YOLOv5's "autoanchor" idea, done the SSD way.

A ground-truth box learns from the priors it overlaps with IoU >= the matching threshold (SSD paper sec. 2.2);
a box that no prior reaches gets only its single forced best match and is learnt poorly. Hand-picked priors
(the paper's linear ladder of scales, lufficc/SSD's per-config lists) fit VOC and COCO; on other data they can
miss whole classes (on BCCD, lufficc's MobileNet priors reach 1% of the platelets). `fit_priors` chooses them
from the boxes: boxes and levels in, prior sizes, ratios and notes out (the coverage table: prior_coverage.py).

What is fixed and what is chosen:
- The backbone fixes the levels (feature-map size f_k, stride s_k). A MobileNet may add its stride-8 map as a
  first level; it is added when it covers boxes that the stride-16 level cannot.
- Chosen per level, in lufficc's form (priors.py): a small square (min size), a big square (sqrt(min * max)) and
  for each aspect ratio r a min*sqrt(r) x min/sqrt(r) prior and its transpose.

The level-by-level search, and why a box belongs to a level: prior_search.py.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ssd.modeling.prior_coverage import nearest_prior_match
from ssd.modeling.prior_search import (
    KEPT_AREA,
    assign_levels,
    fit_levels,
    search_score,
)
from ssd.modeling.priors import make_priors

MAX_FIT_BOXES = 20000  # the search uses at most this many boxes (a seeded sample, rare classes kept whole)


@dataclass
class FittedPriors:
    """The prior lists for L levels (sizes in input pixels), whether the stride-8 map is used, and what the
    fit chose and why, as sentences for the log (`notes`; levels counted from 1, finest first)."""

    feature_maps: list[int]
    strides: list[float]
    min_sizes: list[float]
    max_sizes: list[float]
    aspect_ratios: list[list[float]]
    stride8_map: bool = False
    notes: list[str] = field(default_factory=list)

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

    def levels(self) -> list[tuple[int, float, float, float, list[float]]]:
        """Per level (feature-map size, stride, min size, max size, ratios), for `nearest_prior_match`."""
        return list(
            zip(
                self.feature_maps,
                self.strides,
                self.min_sizes,
                self.max_sizes,
                self.aspect_ratios,
                strict=True,
            )
        )


def _sample(labels: np.ndarray, seed: int) -> np.ndarray:
    """Indices of at most MAX_FIT_BOXES boxes, seeded: the rarest classes are kept whole, the others share
    what is left equally (the score weighs classes alike, so each needs enough boxes of its own)."""
    if len(labels) <= MAX_FIT_BOXES:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(labels, return_counts=True)
    left, picked = MAX_FIT_BOXES, []
    for done, i in enumerate(np.argsort(counts, kind="stable")):
        quota = left // (len(classes) - done)
        mine = np.flatnonzero(labels == classes[i])
        picked.append(mine if len(mine) <= quota else rng.choice(mine, quota, replace=False))
        left -= len(picked[-1])
    return np.sort(np.concatenate(picked))


def _level_list(levels: Sequence[int]) -> str:
    """'level 5', 'levels 5-6' or 'levels 2, 5' (counted from 1, finest first) for level indices."""
    numbers = [k + 1 for k in levels]
    if len(numbers) == 1:
        return f"level {numbers[0]}"
    if numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"levels {numbers[0]}-{numbers[-1]}"
    return "levels " + ", ".join(str(n) for n in numbers)


def _describe_levels(
    fitted: FittedPriors, boxes_cxcywh: np.ndarray, image_size: int, threshold: float
) -> None:
    """Add notes on the levels that no box belongs to: why they stay, and what their priors still reach."""
    owned = set(assign_levels(boxes_cxcywh[:, 2:], fitted.strides).tolist())
    # Even the whole image keeps KEPT_AREA of its area at half a stride only when s <= 0.4 S, so coarser levels
    # can never own a box. They are kept: the backbone emits these maps and build.py's check_backbone wants
    # priors for every one, so the model has heads for them (dropping them would need a backbone option).
    beyond = [k for k, s in enumerate(fitted.strides) if s > 2 * (1 - math.sqrt(KEPT_AREA)) * image_size]
    empty = [k for k in range(len(fitted.strides)) if k not in owned and k not in beyond]
    for group, why in (
        (empty, "{} no box (none has its size); priors of {} px continue the sizes of the levels around"),
        (beyond, f"can own no box at {image_size} px (a box shifted half a stride would lose over a third of it); "
         "{}kept because the backbone emits these maps and the model has a head for each: priors of {} px"),
    ):  # fmt: skip
        if not group:
            continue
        levels = fitted.levels()
        best, _ = nearest_prior_match(boxes_cxcywh, [levels[k] for k in group], image_size, threshold)
        strides = ", ".join(f"{fitted.strides[k]:g}" for k in group)
        sizes = ", ".join(f"{fitted.min_sizes[k]:.0f}" for k in group)
        verb = ("own" if len(group) > 1 else "owns") if group is empty else ""
        fitted.notes.append(
            f"{_level_list(group)} (stride {strides}) {why.format(verb, sizes)}, which still reach "
            f"{int((best >= threshold).sum())} of the {len(best)} boxes at IoU >= {threshold:g}"
        )


def _score(
    fitted: FittedPriors, boxes_cxcywh, weights, image_size: int, threshold: float
) -> tuple[float, float]:
    """(the search's score of a whole set of priors, share of boxes covered)."""
    best, count = nearest_prior_match(boxes_cxcywh, fitted.levels(), image_size, threshold)
    shapes = sum(2 + 2 * len(r) for r in fitted.aspect_ratios)
    return search_score(best, count, weights, threshold) - 0.001 * shapes, float((best >= threshold).mean())


def _class_coverage(fitted, boxes_cxcywh, labels, image_size: int, threshold: float) -> tuple[float, dict]:
    """(overall, {label: share}) of boxes whose best prior has IoU >= threshold."""
    covered = nearest_prior_match(boxes_cxcywh, fitted.levels(), image_size, threshold)[0] >= threshold
    return float(covered.mean()), {int(c): float(covered[labels == c].mean()) for c in np.unique(labels)}


def fit_priors(
    boxes_norm: np.ndarray,
    labels: np.ndarray,
    image_size: int,
    levels: Sequence[tuple[int, float]],
    threshold: float = 0.5,
    stride8_level: tuple[int, float] | None = None,
    seed: int = 0,
    configured: FittedPriors | None = None,
) -> FittedPriors:
    """Choose the priors for the training boxes.

    Args:
        boxes_norm: (G, 4) xyxy in 0..1 (the network's resize to S x S is a scale of these).
        labels: (G,) class of each box, 1..C-1: every class weighs the same in the search.
        image_size: S, the network input side in pixels.
        levels: (feature-map size, stride in pixels) of each backbone level, finest first.
        threshold: the IoU a prior needs to count as a match.
        stride8_level: (size, stride) of an optional stride-8 first level (MobileNets), None if unavailable.
            It is used when it raises the share of covered boxes by >= 1 point overall or >= 3 points for
            some class: it costs a 4x larger first grid of priors, so only when the data needs it.
        seed: the sample of MAX_FIT_BOXES boxes for the search on large datasets.
        configured: the priors the config already has (`levels`, with or without the stride-8 level first),
            or None. They are returned as they are (with a note) when they score at least as well as the fit.

    Returns:
        FittedPriors with one entry per level (the stride-8 level first when it is used); `notes` says what
        was chosen and why.

    Raises:
        ValueError: no boxes with an area, or `configured` on other levels.
    """
    boxes_norm = np.asarray(boxes_norm, dtype=np.float64).reshape(-1, 4)  # (G, 4)
    labels = np.asarray(labels).reshape(-1)  # (G,)
    keep = (boxes_norm[:, 2] > boxes_norm[:, 0]) & (boxes_norm[:, 3] > boxes_norm[:, 1])
    if not keep.any():
        raise ValueError(
            f"fit_priors: none of the {len(boxes_norm)} boxes has an area; nothing to fit priors to"
        )
    pick = _sample(labels[keep], seed)
    boxes_px, labels = boxes_norm[keep][pick] * image_size, labels[keep][pick]
    boxes_cxcywh = np.concatenate(
        ((boxes_px[:, :2] + boxes_px[:, 2:]) / 2, boxes_px[:, 2:] - boxes_px[:, :2]), 1
    )
    classes, class_index, class_count = np.unique(labels, return_inverse=True, return_counts=True)
    weights = 1.0 / (class_count[class_index] * len(classes))  # (G,) each class sums to 1 / C
    feature_maps, strides = [f for f, _ in levels], [float(s) for _, s in levels]

    def fit(maps: list[int], level_strides: list[float]) -> FittedPriors:
        min_sizes, max_sizes, ratios, notes = fit_levels(
            boxes_cxcywh, labels, weights, maps, level_strides, image_size, threshold
        )
        return FittedPriors([int(f) for f in maps], level_strides, min_sizes, max_sizes, ratios, notes=notes)

    fitted = fit(feature_maps, strides)
    if stride8_level is not None:
        with_stride8 = fit([stride8_level[0], *feature_maps], [float(stride8_level[1]), *strides])
        with_stride8.stride8_map = True
        base = _class_coverage(fitted, boxes_cxcywh, labels, image_size, threshold)
        gain = _class_coverage(with_stride8, boxes_cxcywh, labels, image_size, threshold)
        class_gain = max(gain[1][c] - base[1][c] for c in base[1])
        verdict = "added" if gain[0] - base[0] >= 0.01 or class_gain >= 0.03 else "not added"
        if verdict == "added":
            fitted = with_stride8
        fitted.notes.insert(0, (
            f"the stride-8 level {verdict}: covered boxes {100 * base[0]:.1f}% without it, {100 * gain[0]:.1f}% "
            f"with it (up to {100 * class_gain:+.1f} points for one class; it is added from +1 overall or +3 "
            "for a class)"
        ))  # fmt: skip
    _describe_levels(fitted, boxes_cxcywh, image_size, threshold)
    if configured is None:
        return fitted
    if feature_maps not in (list(configured.feature_maps), list(configured.feature_maps[1:])):
        raise ValueError(
            f"fit_priors: the configured priors are for feature maps {list(configured.feature_maps)}, the "
            f"backbone's levels are {feature_maps}; they cannot be compared"
        )
    mine, mine_share = _score(fitted, boxes_cxcywh, weights, image_size, threshold)
    theirs, their_share = _score(configured, boxes_cxcywh, weights, image_size, threshold)
    if theirs >= mine:
        note = (
            f"kept the configured priors: {100 * their_share:.1f}% covered vs {100 * mine_share:.1f}% fitted"
        )
        kept = dataclasses.replace(configured, notes=[note])
        _describe_levels(kept, boxes_cxcywh, image_size, threshold)
        return kept
    fitted.notes.insert(0, (
        f"replaced the configured priors: {100 * mine_share:.1f}% covered vs {100 * their_share:.1f}% with the "
        "configured ones"
    ))  # fmt: skip
    return fitted
