"""The recipe step (ssd/engine/recipe.py): one parse of DATASETS.TRAIN, every automatic value decided, a
concrete config out; and inference, which builds only from concrete configs (ssd/config/stored.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import ssd.data.build as data_build
import ssd.engine.recipe as recipe
from ssd.config import ConfigError, load_config
from ssd.config.stored import concrete_priors
from ssd.data.build import DetectionConcatDataset, build_dataset, hold_out_validation
from ssd.data.datasets.base import DetectionDataset, make_record
from ssd.data.split import DetectionSubset
from ssd.data.views import training_boxes, with_transform
from ssd.engine.recipe import cap_warmup, choose_augmentation, fit_config_priors, prepare_run
from ssd.modeling import build_detection_model
from ssd.modeling.prior_coverage import coverage_report
from ssd.modeling.priors import make_priors
from ssd.solver import build_schedule_factor

REPO_ROOT = Path(__file__).resolve().parents[1]
FINETUNE = REPO_ROOT / "configs" / "finetune_ssdlite320.yaml"


class ThreeImages(DetectionDataset):
    """Image 0 (200 x 100 px): a box and a difficult box; image 1: no box; image 2 (100 x 100): one box."""

    reads_image_files = False

    def __init__(self, transform=None, is_train: bool = False) -> None:
        records = [
            make_record(0, "a.png", 100, 200, [[0, 0, 50, 50], [10, 10, 20, 40]], [1, 2], [False, True]),
            make_record(1, "b.png", 50, 50, np.zeros((0, 4)), []),
            make_record(2, "c.png", 100, 100, [[50, 0, 100, 25]], [1]),
        ]
        super().__init__(records, ("__background__", "a", "b"), transform, is_train, name="three")

    def load_image(self, index: int) -> np.ndarray:
        record = self.get_annotation(index)
        return np.zeros((record["height"], record["width"], 3), dtype=np.uint8)


def test_training_boxes_by_hand_through_subsets_and_concatenations():
    """Boxes over their image's width and height, difficult ones left out, in image order."""
    boxes, labels, image = training_boxes(ThreeImages())
    np.testing.assert_allclose(boxes, [[0, 0, 0.25, 0.5], [0.5, 0, 1, 0.25]])  # 50/200, 50/100; image 2
    assert labels.tolist() == [1, 1] and image.tolist() == [0, 2]
    subset = DetectionSubset(ThreeImages(), [2, 0])  # subset image 0 is image 2
    boxes, labels, image = training_boxes(subset)
    np.testing.assert_allclose(boxes, [[0.5, 0, 1, 0.25], [0, 0, 0.25, 0.5]])
    assert image.tolist() == [0, 1]
    _, _, image = training_boxes(DetectionConcatDataset([ThreeImages(), ThreeImages()]))
    assert image.tolist() == [0, 2, 3, 5]


def test_views_share_the_records_and_differ_in_difficult_boxes():
    base = ThreeImages()
    train = with_transform(DetectionSubset(base, [0, 2]), None, is_train=True)
    val = with_transform(DetectionSubset(base, [0, 2]), None, is_train=False)
    assert train.dataset._records is base._records and val.dataset._records is base._records  # one parse
    assert not base.is_train and train.indices == [0, 2]
    assert len(train.get_item(0, None)[1]["labels"]) == 1  # training drops the difficult box
    assert len(val.get_item(0, None)[1]["labels"]) == 2  # evaluation keeps it, flagged


def synthetic_cfg(*opts, base=FINETUNE):
    return load_config(
        base,
        ["MODEL.BACKBONE.PRETRAINED", "False", "MODEL.NUM_CLASSES", "4", "DATASETS.REGISTER",
         "('fit_train:synthetic:24:3:200',)", "DATASETS.TRAIN", "('fit_train',)", *opts],
    )  # fmt: skip


def boxes_of_the_training_split(cfg, held_out: set[str]):
    """The training boxes read apart from the recipe: every image whose file name is not in `held_out` (the
    split itself is tested in test_split.py), its non-difficult boxes over its image size."""
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True, annotations_only=True)
    records = [dataset.get_annotation(i) for i in range(len(dataset))]
    boxes, labels = [], []
    for r in records:
        if r["file_name"] not in held_out:
            keep = ~r["difficult"]
            boxes.append(r["boxes_xyxy"][keep] / np.array([r["width"], r["height"]] * 2, dtype=np.float64))
            labels.append(r["labels"][keep])
    return np.concatenate(boxes), np.concatenate(labels), len(records) - len(held_out)


def test_recipe_parses_once_and_returns_a_concrete_config(monkeypatch, caplog):
    cfg = synthetic_cfg(
        "SOLVER.EPOCHS", "5", "SOLVER.MIN_ITER", "0", "SOLVER.BATCH_SIZE", "4", "DATASETS.VAL_FRACTION", "0.2"
    )
    assert cfg.MODEL.PRIORS.AUTO and cfg.INPUT.AUGMENTATION == "auto"
    parses = []
    real_get_dataset = data_build.get_dataset
    monkeypatch.setattr(
        data_build, "get_dataset", lambda *a, **k: parses.append(a[0]) or real_get_dataset(*a, **k)
    )
    with caplog.at_level("INFO"):
        result = prepare_run(cfg)
    assert parses == ["fit_train"]  # DATASETS.TRAIN parsed once for the fit, training and validation
    concrete = result.cfg
    assert not concrete.MODEL.PRIORS.AUTO and concrete.INPUT.AUGMENTATION in ("ssd", "crop")
    val = result.val_dataset
    held_out = {val.get_annotation(i)["file_name"] for i in range(len(val))}
    boxes_norm, labels, num_train = boxes_of_the_training_split(cfg, held_out)
    assert (len(result.train_dataset), len(result.val_dataset)) == (num_train, 24 - num_train) == (19, 5)
    assert concrete.SOLVER.MAX_ITER == 24  # ceil(5 epochs * 19 images / 4 per iteration)
    assert concrete.SOLVER.WARMUP_ITERS == 2  # the base's 50, capped at 10 % of 24
    expected = fit_config_priors(cfg, boxes_norm, labels, num_train)  # the fit on the same boxes, read apart
    assert concrete.MODEL.PRIORS.dump() == expected.MODEL.PRIORS.dump()
    assert concrete.MODEL.BACKBONE.dump() == expected.MODEL.BACKBONE.dump()
    assert (
        result.train_dataset.dataset._records is result.val_dataset.dataset._records
    )  # one parse, two views
    assert result.train_dataset.dataset.is_train and not result.val_dataset.dataset.is_train
    build_detection_model(concrete)  # the fitted lists agree with the backbone (checked at build)
    for decision in (
        "MODEL.PRIORS.AUTO ->",
        "INPUT.AUGMENTATION auto ->",
        "SOLVER.EPOCHS 5",
        "WARMUP_ITERS 50 -> 2",
    ):
        assert decision in caplog.text


def test_a_two_image_run_of_epochs_is_not_all_warmup():
    """2 images, 8 per batch, 40 epochs: MAX_ITER ceil(40 * 2 / 8) = 10; the default 500-iteration warmup is
    capped to 10 % of it, 1 iteration, so from iteration 1 on only the cosine decay scales SOLVER.LR."""
    cfg = load_config(
        opts=["DATASETS.REGISTER", "('two:synthetic:2:1:96',)", "DATASETS.TRAIN", "('two',)",
              "DATASETS.VAL_FRACTION", "0.0", "SOLVER.EPOCHS", "40", "SOLVER.BATCH_SIZE", "8", "MODEL.NUM_CLASSES", "4",
              "SOLVER.LR_SCHEDULER", "cosine",
              "MODEL.BACKBONE.PRETRAINED", "False"],
    )  # fmt: skip
    concrete = prepare_run(cfg).cfg
    assert (concrete.SOLVER.MAX_ITER, concrete.SOLVER.WARMUP_ITERS) == (10, 1)
    factor = build_schedule_factor(concrete)
    assert factor(0) == pytest.approx(1 / 3)  # WARMUP_FACTOR x cosine(0) = 1/3 x 1
    assert factor(1) == pytest.approx(0.5 * (1 + math.cos(math.pi / 10)))  # warmup over: cosine only
    # Long runs keep their warmup; the cap rounds down.
    long_run = load_config(opts=["SOLVER.MAX_ITER", "120000", "SOLVER.WARMUP_ITERS", "500"])
    assert cap_warmup(long_run) is long_run
    assert (
        cap_warmup(
            load_config(opts=["SOLVER.MAX_ITER", "59", "SOLVER.WARMUP_ITERS", "50"])
        ).SOLVER.WARMUP_ITERS
        == 5
    )


def test_inference_takes_the_stored_priors_or_says_which_file_to_pass():
    cfg = synthetic_cfg()
    boxes_norm, labels, num_train = boxes_of_the_training_split(cfg, held_out=set())
    fitted = fit_config_priors(cfg, boxes_norm, labels, num_train)
    assert concrete_priors(cfg, fitted.dump()).MODEL.PRIORS.dump() == fitted.MODEL.PRIORS.dump()
    assert concrete_priors(fitted) is fitted  # a concrete config as it is
    # A checkpoint from before MODEL.BACKBONE.STRIDE8_SOURCE existed was trained with the "block" map, also
    # where today's config (the fine-tuning base) says "expansion".
    old_stored = fitted.clone()
    old_stored.defrost()
    del old_stored.MODEL.BACKBONE["STRIDE8_SOURCE"]
    cfg_expansion = cfg.clone()
    cfg_expansion.defrost()
    cfg_expansion.MODEL.BACKBONE.STRIDE8_SOURCE = "expansion"
    assert concrete_priors(cfg_expansion, old_stored.dump()).MODEL.BACKBONE.STRIDE8_SOURCE == "block"
    assert (
        concrete_priors(cfg_expansion, fitted.dump()).MODEL.BACKBONE.STRIDE8_SOURCE
        == fitted.MODEL.BACKBONE.STRIDE8_SOURCE
    )
    for stored in (None, cfg.dump()):  # nothing stored, or a stored config that is not concrete either
        with pytest.raises(ConfigError, match=r"checkpoint x.pth stores none; pass .*OUTPUT_DIR/config.yaml"):
            concrete_priors(cfg, stored, "x.pth")


def test_tools_stop_on_an_auto_config_with_one_line():
    import runpy

    describe = runpy.run_path(str(REPO_ROOT / "tools" / "describe.py"), run_name="describe")
    with pytest.raises(
        SystemExit, match=r"^describe.py: MODEL.PRIORS.AUTO is True.*OUTPUT_DIR/config.yaml"
    ) as e:
        describe["main"](["--config-file", str(FINETUNE)])
    assert "\n" not in str(e.value)


def real_dataset_cfg(register, class_names):
    return load_config(
        FINETUNE,
        ["MODEL.BACKBONE.PRETRAINED", "False", "DATASETS.REGISTER", f"('{register}',)",
         "DATASETS.CLASS_NAMES", class_names, "DATASETS.TRAIN", f"('{register.split(':')[0]}',)",
         "DATASETS.VAL_FRACTION", "0.0"],
    )  # fmt: skip


def fitted_coverage(cfg):
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True, annotations_only=True)
    boxes_norm, labels, _ = training_boxes(dataset)
    fitted = fit_config_priors(cfg, boxes_norm, labels, len(dataset))
    p = fitted.MODEL.PRIORS
    priors = make_priors(
        cfg.INPUT.IMAGE_SIZE, p.FEATURE_MAPS, p.STRIDES, p.MIN_SIZES, p.MAX_SIZES, p.ASPECT_RATIOS
    )
    rows = coverage_report(priors, [(boxes_norm, labels)], dataset.class_names, 0.5)
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


def test_coverage_table_of_a_large_set_reads_a_seeded_sample(monkeypatch):
    cfg = load_config(
        opts=["DATASETS.REGISTER", "('cov_sample:synthetic:12:5:96',)", "INPUT.IMAGE_SIZE", "96"]
    )
    dataset = build_dataset(cfg, ["cov_sample"], is_train=False, annotations_only=True)
    boxes = training_boxes(dataset)
    every = recipe.log_prior_coverage(cfg, *boxes, dataset.class_names, len(dataset))[-1].boxes
    monkeypatch.setattr(recipe, "MAX_REPORT_IMAGES", 3)
    first = recipe.log_prior_coverage(cfg, *boxes, dataset.class_names, len(dataset))[-1].boxes
    again = recipe.log_prior_coverage(cfg, *boxes, dataset.class_names, len(dataset))[-1].boxes
    assert every == sum(len(dataset.get_annotation(i)["labels"]) for i in range(12))
    assert 0 < first < every and first == again  # 3 of the 12 images, the same 3 each time


def test_hold_out_validation_without_images_to_spare():
    cfg = synthetic_cfg("DATASETS.VAL_FRACTION", "0.0")
    parsed = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True, annotations_only=True)
    assert hold_out_validation(cfg, parsed) == (parsed, None)
