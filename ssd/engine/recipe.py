"""The recipe step: a few-line config and the training data in, a concrete run out (issue 22).

`train.py` calls `prepare_run` once, before it builds the model; nothing in ssd/ calls it (tools/fit_priors.py
borrows its fit, as a preview). The start-up, step by step:

    1. parse DATASETS.TRAIN once, annotations only, no image decoded  (data/build.py: build_dataset)
    2. hold out the validation images                                 (data/build.py: hold_out_validation)
    3. read every training box from the packed records at once       (data/views.py: training_boxes)
    4. MODEL.PRIORS.AUTO -> fitted MODEL.PRIORS and backbone keys      (`fit_config_priors`, whose algorithm
                                                                        is modeling/prior_fitting.py)
    5. INPUT.AUGMENTATION "auto" -> "crop" or "ssd"                     (`choose_augmentation`)
    6. two views of the one parse: training pipeline, test pipeline   (data/build.py: build_train_val_datasets)
    7. SOLVER.EPOCHS (at least MIN_ITER) -> MAX_ITER, EVAL_PERIOD, ...  (solver.py: resolve_epoch_schedule)
    8. SOLVER.WARMUP_ITERS capped to a share of MAX_ITER                (`cap_warmup`)
    9. the coverage table of the chosen priors on the training boxes   (`log_prior_coverage`)

Each decision is logged with its reason. The result, `Recipe.cfg`, holds no AUTO, no "auto" and no value
left to derive: it is what OUTPUT_DIR/config.yaml and every checkpoint store, so test.py, demo.py and the
tools build the same network from it without the training data.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from yacs.config import CfgNode

from ssd.config import ConfigError, check_config
from ssd.data.build import build_dataset, build_train_val_datasets, check_num_classes, hold_out_validation
from ssd.data.views import training_boxes
from ssd.modeling.build import backbone_feature_shapes
from ssd.modeling.prior_coverage import ClassCoverage, coverage_report, format_coverage_table
from ssd.modeling.prior_fitting import FittedPriors, fit_priors
from ssd.modeling.prior_search import LEVEL_SIDE_PER_STRIDE
from ssd.modeling.priors import make_priors
from ssd.solver import resolve_epoch_schedule

logger = logging.getLogger(__name__)

COVERAGE_WARNING = 0.9  # warn when a class has fewer of its training boxes covered
# The coverage table compares every box with all P priors ((boxes, P) IoU): on more images than this it uses
# the boxes of a seeded sample of them. On the 118k COCO-shaped set (17k priors) 5000 images took a minute of
# start-up; 500 (about 3,600 boxes) take seconds, enough to tell a class at 40 % from one at 90 %.
MAX_REPORT_IMAGES = 500
REPORT_CHUNK = 512  # boxes compared with all P priors at once in the coverage table ((chunk, P) IoU)
MAX_WARMUP_SHARE = 0.1  # the warmup takes at most this share of MAX_ITER (see SOLVER.WARMUP_ITERS)
ZOOM_OUT_TYPICAL = (
    2.0  # the zoom-out ("Expand", ratio uniform in [1, 4]) shrinks a box by 2x or more half the time
)
SMALL_CLASS_SHARE = 0.5  # "crop" when this share of some class's boxes would drop out of reach


@dataclass
class Recipe:
    """What `prepare_run` decided: the concrete config and the datasets it built (one parse)."""

    cfg: CfgNode
    train_dataset: object
    val_dataset: object | None
    seconds: dict[str, float] = field(default_factory=dict)  # step -> wall time, also in the log


def prepare_run(cfg: CfgNode, world_size: int = 1) -> Recipe:
    """Steps 1-9 of the module docstring. `cfg` is not changed; the returned config is frozen if it was."""
    seconds: dict[str, float] = {}
    clock = time.perf_counter()

    def step(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[name] = now - clock
        logger.info("Recipe step %r took %.2f s", name, seconds[name])
        clock = now

    parsed = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True, annotations_only=True)
    check_num_classes(cfg.MODEL.NUM_CLASSES, parsed.class_names, ", ".join(cfg.DATASETS.TRAIN))
    step("parse DATASETS.TRAIN")
    parts = hold_out_validation(cfg, parsed)
    step("hold out validation")
    boxes_norm, labels, image = training_boxes(parts[0])
    step("read training boxes")
    if cfg.MODEL.PRIORS.AUTO:
        cfg = fit_config_priors(cfg, boxes_norm, labels, num_images=len(parts[0]))
        step("fit priors")
    if cfg.INPUT.AUGMENTATION == "auto":
        cfg = decide_augmentation(cfg, boxes_norm, labels, parsed.class_names)
    train_dataset, val_dataset = build_train_val_datasets(cfg, parts=parts)
    if val_dataset is not None:
        name = getattr(val_dataset, "name", "validation")
        check_num_classes(cfg.MODEL.NUM_CLASSES, val_dataset.class_names, name)
    step("training and validation views")
    cfg = cap_warmup(resolve_epoch_schedule(cfg, len(train_dataset), world_size))
    log_prior_coverage(cfg, boxes_norm, labels, image, parsed.class_names, len(parts[0]))
    step("coverage table")
    return Recipe(cfg, train_dataset, val_dataset, seconds)


def _changed(cfg: CfgNode, **values) -> CfgNode:
    """A copy of `cfg` with `values` set ("MODEL__PRIORS__AUTO" names MODEL.PRIORS.AUTO), frozen as it was."""
    resolved = cfg.clone()
    resolved.defrost()
    for key, value in values.items():
        *path, leaf = key.split("__")
        node = resolved
        for part in path:
            node = node[part]
        node[leaf] = value
    if cfg.is_frozen():
        resolved.freeze()
    return resolved


# ----- MODEL.PRIORS.AUTO --------------------------------------------------------------------------------


def backbone_levels(cfg: CfgNode, stride8_map: bool) -> list[tuple[int, int]]:
    """(channels, feature-map size) of each map the configured backbone emits at INPUT.IMAGE_SIZE."""
    return [(c, h) for c, h, _ in backbone_feature_shapes(cfg, stride8_map)]


def _strides_for(cfg: CfgNode, feature_maps: Sequence[int]) -> list[float]:
    """The config's STRIDES when its FEATURE_MAPS are the backbone's, else S / f (rounded like lufficc: 107)."""
    if list(cfg.MODEL.PRIORS.FEATURE_MAPS) == list(feature_maps):
        return [float(s) for s in cfg.MODEL.PRIORS.STRIDES]
    return [float(round(cfg.INPUT.IMAGE_SIZE / f)) for f in feature_maps]


def fit_config_priors(cfg: CfgNode, boxes_norm: np.ndarray, labels: np.ndarray, num_images: int) -> CfgNode:
    """MODEL.PRIORS.AUTO True -> a copy of `cfg` with fitted MODEL.PRIORS lists (AUTO then False).

    Also sets MODEL.BACKBONE.OUT_CHANNELS (and STRIDE8_MAP when the stride-8 level is chosen) to what the
    backbone emits, and FEATURE_MAPS / STRIDES / BOXES_PER_LOCATION to match. Deterministic: the same boxes
    and config give the same priors.

    Args:
        boxes_norm: (B, 4) xyxy in 0..1, the training boxes (`training_boxes`), difficult ones left out.
        labels: (B,) their classes.
        num_images: the training images they come from (for the error message).
    """
    if len(boxes_norm) == 0:
        raise ConfigError(
            f"MODEL.PRIORS.AUTO: the training images (DATASETS.TRAIN {tuple(cfg.DATASETS.TRAIN)}, "
            f"{num_images} images) hold no boxes to fit priors to; check the annotations, or set "
            "MODEL.PRIORS.AUTO False to use the configured priors"
        )
    image_size = cfg.INPUT.IMAGE_SIZE
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
    # The one call of the fitting algorithm (modeling/prior_fitting.py). The config's own priors go in too:
    # the fit keeps them where they already cover the boxes at least as well.
    fitted = fit_priors(
        boxes_norm, labels, image_size, list(zip([f for _, f in maps], strides, strict=True)),
        threshold=cfg.MODEL.THRESHOLD, stride8_level=stride8_level, seed=max(cfg.SEED, 0),
        configured=configured_priors(cfg, maps, with_stride8),
    )  # fmt: skip
    for note in fitted.notes:
        logger.info("MODEL.PRIORS.AUTO: %s", note)
    if fitted.stride8_map:
        maps = with_stride8
        fitted.strides[0] = round(fitted.strides[0], 3)
    resolved = _changed(
        cfg,
        MODEL__PRIORS__AUTO=False,
        MODEL__PRIORS__FEATURE_MAPS=fitted.feature_maps,
        MODEL__PRIORS__STRIDES=fitted.strides,
        MODEL__PRIORS__MIN_SIZES=fitted.min_sizes,
        MODEL__PRIORS__MAX_SIZES=fitted.max_sizes,
        MODEL__PRIORS__ASPECT_RATIOS=fitted.aspect_ratios,
        MODEL__PRIORS__BOXES_PER_LOCATION=[],
        MODEL__BACKBONE__STRIDE8_MAP=user_stride8 or fitted.stride8_map,
        MODEL__BACKBONE__OUT_CHANNELS=tuple(c for c, _ in maps),
    )
    check_config(resolved)
    p = resolved.MODEL.PRIORS
    logger.info(
        "MODEL.PRIORS.AUTO -> fitted to %d training boxes: FEATURE_MAPS %s, STRIDES %s, MIN_SIZES %s, "
        "MAX_SIZES %s, ASPECT_RATIOS %s, STRIDE8_MAP %s",
        len(boxes_norm), list(p.FEATURE_MAPS), list(p.STRIDES), list(p.MIN_SIZES), list(p.MAX_SIZES),
        [list(r) for r in p.ASPECT_RATIOS], resolved.MODEL.BACKBONE.STRIDE8_MAP,
    )  # fmt: skip
    return resolved


def configured_priors(cfg: CfgNode, maps: list, with_stride8: list | None) -> FittedPriors | None:
    """The config's own MODEL.PRIORS as a FittedPriors when they are lists for the backbone's maps (`maps`, or
    `with_stride8` when the config already has the stride-8 level), else None (nothing to compare with)."""
    p = cfg.MODEL.PRIORS
    feature_maps = [int(f) for f in p.FEATURE_MAPS]
    lists = (p.STRIDES, p.MIN_SIZES, p.MAX_SIZES, p.ASPECT_RATIOS)
    if any(len(values) != len(feature_maps) for values in lists):
        return None
    for levels, stride8 in ((maps, False), (with_stride8, True)):
        if levels is not None and feature_maps == [f for _, f in levels]:
            return FittedPriors(
                feature_maps, [float(s) for s in p.STRIDES], [float(m) for m in p.MIN_SIZES],
                [float(m) for m in p.MAX_SIZES], [[float(r) for r in level] for level in p.ASPECT_RATIOS],
                stride8_map=stride8,
            )  # fmt: skip
    return None


def log_prior_coverage(
    cfg: CfgNode,
    boxes_norm: np.ndarray,
    labels: np.ndarray,
    image: np.ndarray,
    class_names: Sequence[str],
    num_images: int,
) -> list[ClassCoverage]:
    """Log the per-class coverage table of the config's priors on the training boxes; warn on poor classes.

    Args:
        boxes_norm, labels, image: (B, 4) xyxy in 0..1, (B,), (B,) image index (`training_boxes`).
        num_images: N, the training images (some may have no box). On more than MAX_REPORT_IMAGES, the
            boxes of a seeded sample of that many images are used.
    """
    priors = cfg.MODEL.PRIORS
    priors_cxcywh = make_priors(
        cfg.INPUT.IMAGE_SIZE, priors.FEATURE_MAPS, priors.STRIDES, priors.MIN_SIZES, priors.MAX_SIZES,
        priors.ASPECT_RATIOS, priors.CLIP,
    )  # fmt: skip
    sampled = ""
    if num_images > MAX_REPORT_IMAGES:  # COCO-sized sets: a seeded sample keeps this to seconds
        pick = np.random.default_rng(max(cfg.SEED, 0)).choice(num_images, MAX_REPORT_IMAGES, replace=False)
        chosen = np.isin(image, pick)
        boxes_norm, labels = boxes_norm[chosen], labels[chosen]
        sampled = f", {MAX_REPORT_IMAGES} of the {num_images} images sampled"
    chunks = [
        (boxes_norm[i : i + REPORT_CHUNK], labels[i : i + REPORT_CHUNK])
        for i in range(0, len(boxes_norm), REPORT_CHUNK)
    ]  # coverage_report compares each chunk with all priors; a box's result does not depend on its chunk
    rows = coverage_report(priors_cxcywh, chunks, class_names, cfg.MODEL.THRESHOLD)
    logger.info(
        "Priors on the training boxes (%d priors%s; a box learns from the priors with IoU >= %g):\n%s",
        priors_cxcywh.shape[0], sampled, cfg.MODEL.THRESHOLD, format_coverage_table(rows, cfg.MODEL.THRESHOLD),
    )  # fmt: skip
    warn_on_poor_coverage(rows)
    return rows


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


# ----- INPUT.AUGMENTATION "auto" and the schedule ----------------------------------------------------------


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


def decide_augmentation(
    cfg: CfgNode, boxes_norm: np.ndarray, labels: np.ndarray, class_names: Sequence[str]
) -> CfgNode:
    """INPUT.AUGMENTATION "auto" -> `choose_augmentation` with the finest stride of the (fitted) priors."""
    finest_stride = min(cfg.MODEL.PRIORS.STRIDES)
    choice, shares = choose_augmentation(boxes_norm, labels, cfg.INPUT.IMAGE_SIZE, finest_stride)
    logger.info(
        "INPUT.AUGMENTATION auto -> %r: share of each class's boxes that a 2x zoom-out would shrink below "
        "%.0f px (what priors of stride %g reach): %s",
        choice, LEVEL_SIDE_PER_STRIDE * finest_stride, finest_stride,
        ", ".join(f"{class_names[c]} {100 * v:.0f}%" for c, v in shares.items()),
    )  # fmt: skip
    return _changed(cfg, INPUT__AUGMENTATION=choice)


def cap_warmup(cfg: CfgNode) -> CfgNode:
    """SOLVER.WARMUP_ITERS -> at most MAX_WARMUP_SHARE of SOLVER.MAX_ITER (rounded down).

    A warmup tuned for a long run (500 iterations of lufficc's 120k) would be the whole of a short one: a
    2-image run of SOLVER.EPOCHS 40 has MAX_ITER 10 and would never reach SOLVER.LR.
    """
    solver = cfg.SOLVER
    cap = int(MAX_WARMUP_SHARE * solver.MAX_ITER)
    if solver.WARMUP_ITERS <= cap:
        return cfg
    logger.info(
        "SOLVER.WARMUP_ITERS %d -> %d: the warmup takes at most %d%% of the run's MAX_ITER %d",
        solver.WARMUP_ITERS, cap, round(100 * MAX_WARMUP_SHARE), solver.MAX_ITER,
    )  # fmt: skip
    return _changed(cfg, SOLVER__WARMUP_ITERS=cap)
