"""Priors fitted to the training boxes (MODEL.PRIORS.AUTO, ssd/modeling/prior_fitting.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ssd.config import ConfigError, load_config
from ssd.data.build import build_dataset, build_fit_dataset
from ssd.modeling import build_detection_model
from ssd.modeling.prior_coverage import coverage_report, nearest_prior_iou
from ssd.modeling.prior_fitting import (
    choose_augmentation,
    fit_priors,
    resolve_auto_priors,
    resolve_priors_for_inference,
)
from ssd.modeling.priors import level_sizes, make_priors
from ssd.structures.boxes import box_iou, cxcywh_to_xyxy

REPO_ROOT = Path(__file__).resolve().parents[1]
FINETUNE = REPO_ROOT / "configs" / "finetune_ssdlite320.yaml"


def test_nearest_prior_iou_equals_the_best_over_the_whole_grid():
    """The search's shortcut against brute force: IoU with every prior of the level (make_priors, box_iou)."""
    rng = np.random.default_rng(0)
    size, feature_map, stride = 96, 6, 16
    centres = rng.uniform(0, size, (200, 2))
    sides = rng.uniform(5, 90, (200, 2))
    boxes_cxcywh = np.concatenate((centres, sides), axis=1)  # (200, 4) pixels
    shortcut = nearest_prior_iou(
        boxes_cxcywh, np.asarray(level_sizes(20, 45, [2.0])), feature_map, stride, size
    )
    priors = make_priors(size, [feature_map], [stride], [20], [45], [[2.0]], clip=True).double()  # (P, 4)
    boxes_xyxy = cxcywh_to_xyxy(torch.from_numpy(boxes_cxcywh / size))
    brute = box_iou(boxes_xyxy, cxcywh_to_xyxy(priors)).max(dim=1).values.numpy()
    np.testing.assert_allclose(shortcut, brute, atol=1e-6)  # make_priors rounds to float32


def test_coverage_report_on_a_hand_made_case():
    """One level, 2x2 cells of stride 50 on a 100 px image, one 50 px square prior per cell (max = min)."""
    priors = make_priors(100, [2], [50], [50], [50], [[]], clip=True)  # 4 priors x 2 squares (both 50 px)
    boxes = np.array(
        [
            [0.0, 0.0, 0.5, 0.5],  # exactly the top-left prior (twice: both squares): covered, 2 positives
            [0.25, 0.25, 0.75, 0.75],  # centred between four priors: IoU 1/7 with each, not covered, forced 1
        ]
    )
    rows = coverage_report(priors, [(boxes, np.array([1, 2]))], ("__background__", "a", "b"), 0.5)
    by_name = {row.name: row for row in rows}
    assert (by_name["a"].boxes, by_name["a"].covered, by_name["a"].positives) == (1, 1.0, 2.0)
    assert (by_name["b"].boxes, by_name["b"].covered, by_name["b"].positives) == (1, 0.0, 1.0)
    assert by_name["all"].covered == 0.5


def covered_share(fitted, boxes_norm, image_size):
    priors = fitted.make(image_size)
    best = box_iou(torch.from_numpy(boxes_norm), cxcywh_to_xyxy(priors).double()).max(dim=1).values
    return float((best >= 0.5).double().mean())


def random_boxes(rng, count, side_px, image_size, ratio=1.0):
    centres = rng.uniform(side_px, image_size - side_px, (count, 2))
    w = side_px * np.sqrt(ratio) * rng.uniform(0.9, 1.1, count)
    h = side_px / np.sqrt(ratio) * rng.uniform(0.9, 1.1, count)
    boxes = np.stack(
        (centres[:, 0] - w / 2, centres[:, 1] - h / 2, centres[:, 0] + w / 2, centres[:, 1] + h / 2), 1
    )
    return boxes / image_size


MOBILENET_320 = [(20, 16.0), (10, 32.0), (5, 64.0), (3, 107.0), (2, 160.0), (1, 320.0)]


def test_small_objects_get_the_stride8_level_and_large_ones_do_not():
    rng = np.random.default_rng(1)
    small = random_boxes(rng, 300, 20, 320)  # 20 px: between two stride-16 centres no prior reaches 0.5
    large = random_boxes(rng, 300, 120, 320, ratio=0.5)
    labels = np.array([1] * 300 + [2] * 300)
    with_small = fit_priors(
        np.concatenate((small, large)), labels, 320, MOBILENET_320, stride8_level=(40, 8.0)
    )
    assert with_small.stride8_map and with_small.feature_maps[0] == 40 and with_small.strides[0] == 8.0
    assert covered_share(with_small, small, 320) >= 0.98
    assert covered_share(with_small, large, 320) >= 0.98
    only_large = fit_priors(large, np.ones(300), 320, MOBILENET_320, stride8_level=(40, 8.0))
    assert not only_large.stride8_map and len(only_large.feature_maps) == 6
    # The lufficc priors this replaces: 60 px and larger, so the 20 px boxes are out of reach.
    lufficc = make_priors(320, [f for f, _ in MOBILENET_320], [s for _, s in MOBILENET_320],
                          [60, 105, 150, 195, 240, 285], [105, 150, 195, 240, 285, 330], [[2, 3]] * 6)  # fmt: skip
    best = box_iou(torch.from_numpy(small), cxcywh_to_xyxy(lufficc).double()).max(dim=1).values
    assert float((best >= 0.5).double().mean()) < 0.05


def test_auto_priors_must_be_resolved_before_building():
    cfg = load_config(FINETUNE, ["MODEL.BACKBONE.PRETRAINED", "False"])
    with pytest.raises(ConfigError, match="MODEL.PRIORS.AUTO"):
        build_detection_model(cfg)


def shapes_cfg(*opts):
    return load_config(
        FINETUNE,
        ["MODEL.BACKBONE.PRETRAINED", "False", "MODEL.NUM_CLASSES", "4", "DATASETS.REGISTER",
         "('fit_train:synthetic:24:3:200',)", "DATASETS.TRAIN", "('fit_train',)", *opts],
    )  # fmt: skip


def test_resolved_config_builds_and_is_deterministic():
    cfg = shapes_cfg()
    train = build_fit_dataset(cfg)
    first, second = resolve_auto_priors(cfg, train), resolve_auto_priors(cfg, train)
    assert first.dump() == second.dump()
    assert not first.MODEL.PRIORS.AUTO and cfg.MODEL.PRIORS.AUTO  # the input config is not changed
    assert first.MODEL.PRIORS.BOXES_PER_LOCATION == [2 + 2 * len(r) for r in first.MODEL.PRIORS.ASPECT_RATIOS]
    model = build_detection_model(first)  # the fitted lists agree with the backbone (checked at build)
    assert model.priors_cxcywh.shape[0] == sum(
        f * f * a
        for f, a in zip(first.MODEL.PRIORS.FEATURE_MAPS, first.MODEL.PRIORS.BOXES_PER_LOCATION, strict=True)
    )
    # At test time: the stored config wins, else the same fit again from DATASETS.TRAIN.
    assert resolve_priors_for_inference(cfg, first.dump()).MODEL.PRIORS.dump() == first.MODEL.PRIORS.dump()
    assert resolve_priors_for_inference(cfg, None).MODEL.PRIORS.dump() == first.MODEL.PRIORS.dump()


def real_dataset_cfg(register, class_names):
    return load_config(
        FINETUNE,
        ["MODEL.BACKBONE.PRETRAINED", "False", "DATASETS.REGISTER", f"('{register}',)",
         "DATASETS.CLASS_NAMES", class_names, "DATASETS.TRAIN", f"('{register.split(':')[0]}',)",
         "DATASETS.VAL_FRACTION", "0.0"],
    )  # fmt: skip


def fitted_coverage(cfg):
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True, annotations_only=True)
    fitted = resolve_auto_priors(cfg, dataset)
    p = fitted.MODEL.PRIORS
    priors = make_priors(
        cfg.INPUT.IMAGE_SIZE, p.FEATURE_MAPS, p.STRIDES, p.MIN_SIZES, p.MAX_SIZES, p.ASPECT_RATIOS
    )
    from ssd.modeling.prior_fitting import dataset_boxes

    rows = coverage_report(priors, dataset_boxes(dataset), dataset.class_names, 0.5)
    return fitted, {row.name: row for row in rows}


def test_fitted_priors_cover_bccd_training_boxes(bccd_root):
    fitted, rows = fitted_coverage(
        real_dataset_cfg(f"bccd_train:voc:{bccd_root}:train", "('RBC', 'WBC', 'Platelets')")
    )
    assert fitted.MODEL.BACKBONE.STRIDE8_MAP  # the 22 px platelets need the stride-8 level
    assert rows["all"].boxes == 2804 and rows["all"].covered >= 0.98, rows
    assert min(rows[c].covered for c in ("RBC", "WBC", "Platelets")) >= 0.95, rows
    assert rows["Platelets"].positives >= 3


def test_fitted_priors_cover_raccoon_training_boxes(raccoon_root):
    fitted, rows = fitted_coverage(
        real_dataset_cfg(
            f"racc_train:csv:{raccoon_root}/data/train_labels.csv:{raccoon_root}/images:one_based",
            "('raccoon',)",
        )
    )
    assert not fitted.MODEL.BACKBONE.STRIDE8_MAP  # large objects: no stride-8 level
    assert rows["all"].boxes == 173 and rows["all"].covered >= 0.98, rows


def test_auto_augmentation_drops_the_zoom_out_only_for_small_objects():
    """Reach of stride-8 priors: 2.5 * 8 = 20 px; a 2x zoom-out puts a box below it when its side < 40 px."""
    boxes = np.array([[0, 0, 30, 30], [0, 0, 36, 36], [0, 0, 50, 50], [0, 0, 100, 100]]) / 320.0
    choice, shares = choose_augmentation(boxes, np.array([1, 1, 2, 2]), 320, finest_stride=8)
    assert choice == "crop" and shares == {1: 1.0, 2: 0.0}
    # With stride-16 priors (reach 40 px, so below 80 px before the zoom-out) the 50 px boxes count too.
    _, shares = choose_augmentation(boxes, np.array([1, 1, 2, 2]), 320, finest_stride=16)
    assert shares == {1: 1.0, 2: 0.5}
    # One class of mixed sizes, a third small: the zoom-out stays.
    choice, _ = choose_augmentation(boxes[1:], np.array([1, 1, 1]), 320, finest_stride=8)
    assert choice == "ssd"


def test_a_rare_class_of_small_objects_is_not_outvoted():
    """30 small boxes (22 px) among 600 larger ones (45 px): the search weighs classes equally, so the small
    class gets a level of its own: stride-8 priors of its size, matching each box with several priors.
    Measured: smallest prior 21.0 px, 7.1 positives per small box; when every box weighs the same, the larger
    class pulls the stride-8 level to 28.4 px and the small boxes get 4.8 positives."""
    rng = np.random.default_rng(3)
    small = random_boxes(rng, 30, 22, 320, ratio=0.8)
    large = random_boxes(rng, 600, 45, 320, ratio=0.8)
    labels = np.array([1] * 30 + [2] * 600)
    fitted = fit_priors(np.concatenate((small, large)), labels, 320, MOBILENET_320, stride8_level=(40, 8.0))
    priors_xyxy = cxcywh_to_xyxy(fitted.make(320)).double()
    iou = box_iou(torch.from_numpy(small), priors_xyxy)  # (30, P)
    assert float((iou.max(dim=1).values >= 0.5).double().mean()) >= 0.95
    assert float((iou >= 0.5).sum(dim=1).double().mean()) >= 6  # positives per small box
    assert abs(fitted.min_sizes[0] - 22) < 3


def test_coverage_table_of_a_large_set_reads_a_seeded_sample(monkeypatch):
    import ssd.modeling.prior_fitting as prior_fitting

    cfg = load_config(
        opts=["DATASETS.REGISTER", "('cov_sample:synthetic:12:5:96',)", "INPUT.IMAGE_SIZE", "96"]
    )
    dataset = build_dataset(cfg, ["cov_sample"], is_train=False, annotations_only=True)
    every = prior_fitting.log_prior_coverage(cfg, dataset, dataset.class_names)[-1].boxes
    monkeypatch.setattr(prior_fitting, "MAX_REPORT_IMAGES", 3)
    first = prior_fitting.log_prior_coverage(cfg, dataset, dataset.class_names)[-1].boxes
    again = prior_fitting.log_prior_coverage(cfg, dataset, dataset.class_names)[-1].boxes
    assert every == sum(len(dataset.get_annotation(i)["labels"]) for i in range(12))
    assert 0 < first < every and first == again  # 3 of the 12 images, the same 3 each time


@pytest.mark.parametrize(
    "others",
    [
        # Alone on the stride-8 level: the 20 px boxes are 0.8 % of all, so the overall share of covered boxes
        # gains under 1 point from that level; only the per-class gain (>= 3 points) can add it.
        ((1200, 100),),
        # Sharing the stride-8 level with 600 boxes of 36 px: counted box by box, those outvote it (measured
        # with every box weighing the same: no stride-8 level, none of the 20 px boxes covered).
        ((600, 36), (600, 110)),
    ],
    ids=["alone-on-its-level", "sharing-its-level"],
)
def test_a_class_under_one_percent_of_the_boxes_gets_the_stride8_level(others):
    """10 boxes of 20 px (2.5 strides of 8: the stride-16 grid cannot reach them, see the module docstring)
    among 1200 larger ones. Measured (seeds 4-6 alone, 4-5 sharing): every 20 px box covered, 4.3-6.2 positives per box."""
    rng = np.random.default_rng(4)
    rare = random_boxes(rng, 10, 20, 320)
    boxes, labels = [rare], [np.ones(10)]
    for label, (count, side) in enumerate(others, start=2):
        boxes.append(random_boxes(rng, count, side, 320, ratio=0.7))
        labels.append(np.full(count, label))
    labels = np.concatenate(labels)
    assert (labels == 1).mean() < 0.01
    fitted = fit_priors(np.concatenate(boxes), labels, 320, MOBILENET_320, stride8_level=(40, 8.0))
    assert fitted.stride8_map
    iou = box_iou(torch.from_numpy(rare), cxcywh_to_xyxy(fitted.make(320)).double())  # (10, P)
    assert float((iou.max(dim=1).values >= 0.5).double().mean()) >= 0.9
    assert float((iou >= 0.5).sum(dim=1).double().mean()) >= 3  # positives per rare box
    for other, count in zip(boxes[1:], (c for c, _ in others), strict=True):  # and the common classes too
        assert covered_share(fitted, other, 320) >= 0.95, count
