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
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ssd.modeling.prior_coverage import (  # noqa: F401  (re-exported: the config part below uses them)
    ClassCoverage,
    coverage_report,
    format_coverage_table,
    nearest_prior_match,
)
from ssd.modeling.prior_search import (
    KEPT_AREA,
    LEVEL_SIDE_PER_STRIDE,
    assign_levels,
    fit_levels,
    search_score,
)
from ssd.modeling.priors import make_priors

logger = logging.getLogger(__name__)

MAX_FIT_BOXES = 20000  # the search uses at most this many boxes (a seeded sample, rare classes kept whole)
COVERAGE_WARNING = 0.9  # warn when a class has fewer of its boxes covered
MAX_REPORT_IMAGES = 5000  # the coverage table before training reads at most this many images (seeded sample)


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


def warn_on_poor_coverage(rows: Sequence[ClassCoverage]) -> list[str]:
    """Log a warning for every class whose coverage is under COVERAGE_WARNING; returns the class names."""
    poor = [row for row in rows if row.name != "all" and row.boxes and row.covered < COVERAGE_WARNING]
    for row in poor:
        logger.warning(
            "class %r: only %.1f%% of its %d training boxes have a prior with IoU >= the matching threshold; "
            "they learn from their single forced match. Try MODEL.PRIORS.AUTO True, a larger INPUT.IMAGE_SIZE "
            "or MODEL.BACKBONE.STRIDE8_MAP for small objects (docs/custom_dataset.md)",
            row.name, 100 * row.covered, row.boxes,
        )  # fmt: skip
    return [row.name for row in poor]


# ----- from the config (the only part of this module that reads a cfg) -----------------------------------


def dataset_boxes(dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image of a detection dataset: (boxes_norm (G_i, 4) xyxy in 0..1, labels (G_i,)), difficult boxes
    left out (training drops them too). Reads the parsed annotations only, no image is decoded."""
    images = []
    for index in range(len(dataset)):
        annotation = dataset.get_annotation(index)
        keep = ~np.asarray(annotation["difficult"], dtype=bool)
        scale = np.array([annotation["width"], annotation["height"]] * 2, dtype=np.float64)
        images.append(
            (np.asarray(annotation["boxes_xyxy"], dtype=np.float64)[keep] / scale, annotation["labels"][keep])
        )
    return images


def backbone_levels(cfg, stride8_map: bool) -> list[tuple[int, int]]:
    """(channels, feature-map size) of each map the configured backbone emits at INPUT.IMAGE_SIZE."""
    from ssd.modeling.build import backbone_feature_shapes

    return [(c, h) for c, h, _ in backbone_feature_shapes(cfg, stride8_map)]


def resolve_auto_priors(cfg, dataset):
    """MODEL.PRIORS.AUTO True -> a copy of `cfg` with fitted MODEL.PRIORS lists (AUTO then False).

    Also sets MODEL.BACKBONE.OUT_CHANNELS (and STRIDE8_MAP when the stride-8 level is chosen) to what the
    backbone emits, and FEATURE_MAPS / STRIDES / BOXES_PER_LOCATION to match. `cfg` itself is not changed;
    a config with AUTO False is returned as it is. Deterministic: the same data and config give the same
    priors, so test.py can fit them again from DATASETS.TRAIN.

    Args:
        cfg: the config (frozen or not).
        dataset: the training images (the validation split excluded), a detection dataset.
    """
    from ssd.config import ConfigError, check_config

    if not cfg.MODEL.PRIORS.AUTO:
        return cfg
    image_size = cfg.INPUT.IMAGE_SIZE
    boxes = dataset_boxes(dataset)
    boxes_norm = np.concatenate([b for b, _ in boxes]) if boxes else np.zeros((0, 4))
    if len(boxes_norm) == 0:
        raise ConfigError(
            f"MODEL.PRIORS.AUTO: the training images (DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)}, "
            f"{len(dataset)} images) hold no boxes to fit priors to; check the annotations, or set "
            "MODEL.PRIORS.AUTO False to use the configured priors"
        )
    labels = np.concatenate([lab for _, lab in boxes]) if boxes else np.zeros(0, dtype=np.int64)

    user_stride8 = bool(cfg.MODEL.BACKBONE.STRIDE8_MAP)
    stride8_level, with_stride8 = None, None
    if not user_stride8:
        try:  # one shape pass with the stride-8 map: the maps without it are the same minus the first
            with_stride8 = backbone_levels(cfg, True)
        except ValueError:  # this backbone has no stride-8 option (VGG: its first map is stride 8 already)
            with_stride8 = None
    if with_stride8 is not None:
        maps = with_stride8[1:]
        stride8_level = (with_stride8[0][1], image_size / with_stride8[0][1])
    else:
        maps = backbone_levels(cfg, user_stride8)
    strides = _strides_for(cfg, [f for _, f in maps])
    fitted = fit_priors(
        boxes_norm, labels, image_size, list(zip([f for _, f in maps], strides, strict=True)),
        threshold=cfg.MODEL.THRESHOLD, stride8_level=stride8_level, seed=max(cfg.SEED, 0),
    )  # fmt: skip
    if fitted.stride8_map:
        maps = with_stride8
        fitted.strides[0] = round(fitted.strides[0], 3)

    resolved = cfg.clone()
    resolved.defrost()
    priors = resolved.MODEL.PRIORS
    priors.AUTO = False
    priors.FEATURE_MAPS = fitted.feature_maps
    priors.STRIDES = fitted.strides
    priors.MIN_SIZES = fitted.min_sizes
    priors.MAX_SIZES = fitted.max_sizes
    priors.ASPECT_RATIOS = fitted.aspect_ratios
    priors.BOXES_PER_LOCATION = []
    resolved.MODEL.BACKBONE.STRIDE8_MAP = user_stride8 or fitted.stride8_map
    resolved.MODEL.BACKBONE.OUT_CHANNELS = tuple(c for c, _ in maps)
    check_config(resolved)
    if cfg.is_frozen():
        resolved.freeze()
    return resolved


def _strides_for(cfg, feature_maps: Sequence[int]) -> list[float]:
    """The config's STRIDES when its FEATURE_MAPS are the backbone's, else S / f (rounded like lufficc: 107)."""
    if list(cfg.MODEL.PRIORS.FEATURE_MAPS) == list(feature_maps):
        return [float(s) for s in cfg.MODEL.PRIORS.STRIDES]
    return [float(round(cfg.INPUT.IMAGE_SIZE / f)) for f in feature_maps]


def log_prior_coverage(cfg, dataset, class_names: Sequence[str]) -> list[ClassCoverage]:
    """Log the per-class coverage table of the configured priors on `dataset`; warn on poor classes."""
    priors = cfg.MODEL.PRIORS
    priors_cxcywh = make_priors(
        cfg.INPUT.IMAGE_SIZE, priors.FEATURE_MAPS, priors.STRIDES, priors.MIN_SIZES, priors.MAX_SIZES,
        priors.ASPECT_RATIOS, priors.CLIP,
    )  # fmt: skip
    images = dataset_boxes(dataset)
    sampled = ""
    if len(images) > MAX_REPORT_IMAGES:  # COCO-sized sets: a seeded sample keeps this to seconds
        pick = np.random.default_rng(max(cfg.SEED, 0)).choice(len(images), MAX_REPORT_IMAGES, replace=False)
        images = [images[i] for i in sorted(pick)]
        sampled = f", {MAX_REPORT_IMAGES} of the {len(dataset)} images sampled"
    rows = coverage_report(priors_cxcywh, images, class_names, cfg.MODEL.THRESHOLD)
    logger.info(
        "Priors on the training boxes (%d priors%s; a box learns from the priors with IoU >= %g):\n%s",
        priors_cxcywh.shape[0], sampled, cfg.MODEL.THRESHOLD, format_coverage_table(rows, cfg.MODEL.THRESHOLD),
    )  # fmt: skip
    warn_on_poor_coverage(rows)
    return rows


FITTED_KEYS = (
    "MODEL.PRIORS.FEATURE_MAPS", "MODEL.PRIORS.STRIDES", "MODEL.PRIORS.MIN_SIZES", "MODEL.PRIORS.MAX_SIZES",
    "MODEL.PRIORS.ASPECT_RATIOS", "MODEL.PRIORS.BOXES_PER_LOCATION", "MODEL.BACKBONE.STRIDE8_MAP",
    "MODEL.BACKBONE.OUT_CHANNELS",
)  # fmt: skip


def resolve_priors_for_inference(cfg, stored_config_yaml: str | None = None):
    """MODEL.PRIORS.AUTO at test / demo time: the priors the weights were trained with.

    They are taken from the config stored in the checkpoint (train.py stores the fitted values there) when
    there is one, else fitted again from DATASETS.TRAIN (the fit is deterministic, so it gives the training
    run's priors as long as the training data is the same). A config with AUTO False is returned as it is.
    """
    if not cfg.MODEL.PRIORS.AUTO:
        return cfg
    stored = None
    if stored_config_yaml:
        from yacs.config import CfgNode

        stored = CfgNode.load_cfg(stored_config_yaml)
        if stored.get("MODEL", {}).get("PRIORS", {}).get("AUTO", True):
            stored = None
    if stored is None:
        from ssd.data.build import build_fit_dataset

        logger.info(
            "MODEL.PRIORS.AUTO: fitting the priors again from DATASETS.TRAIN %s", tuple(cfg.DATASETS.TRAIN)
        )
        return resolve_auto_priors(cfg, build_fit_dataset(cfg))
    logger.info("MODEL.PRIORS.AUTO: using the fitted priors stored in the checkpoint's config")
    resolved = cfg.clone()
    resolved.defrost()
    for key in FITTED_KEYS:
        node, stored_node = resolved, stored
        *path, leaf = key.split(".")
        for part in path:
            node, stored_node = node[part], stored_node[part]
        node[leaf] = stored_node[leaf]
    resolved.MODEL.PRIORS.AUTO = False
    if cfg.is_frozen():
        resolved.freeze()
    return resolved


ZOOM_OUT_TYPICAL = (
    2.0  # the zoom-out ("Expand", ratio uniform in [1, 4]) shrinks a box by 2x or more half the time
)
SMALL_CLASS_SHARE = 0.5  # "crop" when this share of some class's boxes would drop out of reach


def choose_augmentation(
    boxes_norm: np.ndarray, labels: np.ndarray, image_size: int, finest_stride: float
) -> tuple[str, dict[int, float]]:
    """INPUT.AUGMENTATION "auto": "crop" (the SSD pipeline without its zoom-out) or "ssd".

    The zoom-out places the image on a canvas up to 4x its size, so every box shrinks with it. That teaches
    a detector of mixed-size objects (VOC, COCO) to find small ones, but when the objects of a class are
    already near the smallest size the finest priors can match (LEVEL_SIDE_PER_STRIDE strides, 20 px at
    stride 8), a 2x zoom-out puts them below it, where they can only be learnt through their single forced
    match, and the test images never show them that small. Measured on BCCD (docs/bccd.md): platelets 57.0
    AP50 with the zoom-out, 74.9 without, at the same iteration.

    Returns:
        ("crop" or "ssd", {label: share of its boxes whose side / ZOOM_OUT_TYPICAL is out of reach}).
    """
    boxes_px = np.asarray(boxes_norm, dtype=np.float64).reshape(-1, 4) * image_size
    sides = np.sqrt(
        np.clip(boxes_px[:, 2] - boxes_px[:, 0], 0, None) * np.clip(boxes_px[:, 3] - boxes_px[:, 1], 0, None)
    )
    reach = LEVEL_SIDE_PER_STRIDE * finest_stride
    labels = np.asarray(labels).reshape(-1)
    shares = {
        int(c): float((sides[labels == c] / ZOOM_OUT_TYPICAL < reach).mean()) for c in np.unique(labels)
    }
    return ("crop" if any(v >= SMALL_CLASS_SHARE for v in shares.values()) else "ssd"), shares


def resolve_auto_settings(cfg, dataset):
    """The settings fitted to the training boxes: MODEL.PRIORS.AUTO (`resolve_auto_priors`), then
    INPUT.AUGMENTATION "auto" (`choose_augmentation`, with the finest stride of the fitted priors).
    Returns a copy of `cfg` without "auto" left in it; `cfg` itself is not changed."""
    resolved = resolve_auto_priors(cfg, dataset)
    if cfg.INPUT.AUGMENTATION != "auto":
        return resolved
    boxes = dataset_boxes(dataset)
    boxes_norm = np.concatenate([b for b, _ in boxes]) if boxes else np.zeros((0, 4))
    labels = np.concatenate([lab for _, lab in boxes]) if boxes else np.zeros(0, dtype=np.int64)
    image_size = resolved.INPUT.IMAGE_SIZE
    finest_stride = min(resolved.MODEL.PRIORS.STRIDES)
    choice, shares = choose_augmentation(boxes_norm, labels, image_size, finest_stride)
    names = dataset.class_names
    logger.info(
        "INPUT.AUGMENTATION auto -> %r: share of each class's boxes that a 2x zoom-out would shrink below "
        "%.0f px (what priors of stride %g reach): %s",
        choice, LEVEL_SIDE_PER_STRIDE * finest_stride, finest_stride,
        ", ".join(f"{names[c]} {100 * v:.0f}%" for c, v in shares.items()),
    )  # fmt: skip
    was_frozen = resolved.is_frozen()
    if resolved is cfg:
        resolved = cfg.clone()
    resolved.defrost()
    resolved.INPUT.AUGMENTATION = choice
    if was_frozen:
        resolved.freeze()
    return resolved
