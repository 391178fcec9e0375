"""Augmentation: the paint test for every transform and the whole pipeline, edge cases, determinism.

Paint test: run a transform twice with the same seed, once on a black image and once with box k painted
white. Geometry never depends on pixel values, so both runs crop / expand / flip identically, and the pixels
that differ are where box k's paint ended up. Their bounding box must equal the transformed box k (within
the interpolation error of a resize) — so a transform that moves pixels and boxes differently fails.
Photometric transforms must leave the paint where the box is.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ssd.data.transforms import (
    PAPER_MIN_IOUS,
    Compose,
    ConvertFromInts,
    Expand,
    NormalizeToTensor,
    PhotometricDistort,
    RandomMirror,
    RandomSampleCrop,
    Resize,
    SubtractMeans,
    ToPercentCoords,
    ToTensor,
    build_transforms,
)

MEAN = (123, 117, 104)
HEIGHT, WIDTH = 120, 160
BOXES = np.array([[10, 12, 50, 60], [70, 20, 150, 44], [30, 80, 100, 116]], dtype=np.float32)
LABELS = np.array([1, 2, 3], dtype=np.int64)  # label k + 1 <-> box k


def _to_hwc(image) -> np.ndarray:
    if isinstance(image, torch.Tensor):
        return image.permute(1, 2, 0).numpy().astype(np.float32)
    return np.asarray(image, dtype=np.float32)


def _painted(k: int | None) -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    if k is not None:
        x1, y1, x2, y2 = BOXES[k].astype(int)
        image[y1:y2, x1:x2] = 255
    return image


def check_paint(transform, seed: int, tolerance: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Run the paint test for one seed; returns the transformed boxes (pixels of the output) and labels."""
    base_image, boxes, labels = transform(_painted(None), BOXES, LABELS, np.random.default_rng(seed))
    base = _to_hwc(base_image)
    height, width = base.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float32)
    if boxes.size and boxes.max() <= 1.0 + 1e-6:  # relative coordinates -> output pixels
        boxes = boxes * np.array([width, height, width, height], np.float32)
    for box, label in zip(boxes, np.asarray(labels), strict=True):
        out_image, _, _ = transform(_painted(int(label) - 1), BOXES, LABELS, np.random.default_rng(seed))
        diff = np.abs(_to_hwc(out_image) - base).max(axis=2)  # (H, W)
        ys, xs = np.nonzero(diff > diff.max() / 2)
        assert len(xs), f"seed {seed}: paint of box {label - 1} vanished"
        painted = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)
        assert np.abs(painted - box).max() <= tolerance, f"seed {seed}: paint at {painted}, box at {box}"
    return boxes, np.asarray(labels)


@pytest.mark.parametrize(
    "transform",
    [
        PhotometricDistort(),
        Expand(MEAN),
        RandomSampleCrop(),
        RandomSampleCrop(min_ious=PAPER_MIN_IOUS),
        RandomMirror(),
        ToPercentCoords(),
        Compose([ToPercentCoords(), Resize(300)]),  # Resize expects relative boxes, as in the pipeline
        ConvertFromInts(),
        SubtractMeans(MEAN),
        ToTensor(),
        NormalizeToTensor(MEAN),
        build_transforms(300, MEAN, is_train=True),
        build_transforms(300, MEAN, is_train=True, augmentation="light"),
        build_transforms(300, MEAN, is_train=False),
    ],
    ids=lambda t: type(t).__name__ if not isinstance(t, Compose) else f"Compose{len(t.transforms)}",
)
def test_paint(transform):
    outcomes = {tuple(map(tuple, check_paint(transform, seed)[0].round(1))) for seed in range(12)}
    random = isinstance(transform, Expand | RandomSampleCrop | RandomMirror) or (
        isinstance(transform, Compose) and len(transform.transforms) > 3
    )
    # A random geometric transform must actually change the boxes for some seeds (else the test is empty).
    assert (len(outcomes) >= 2) == random


def test_paint_test_catches_a_broken_transform():
    def mirror_image_only(image, boxes, labels, rng):
        return RandomMirror(p=1.0)(image, boxes, labels, rng)[0], boxes, labels

    with pytest.raises(AssertionError, match="paint at"):
        check_paint(mirror_image_only, seed=0)


def test_photometric_distort_changes_colours_not_boxes():
    image = np.random.default_rng(0).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    distort = PhotometricDistort()
    changed = 0
    for seed in range(20):
        out, boxes, labels = distort(image, BOXES, LABELS, np.random.default_rng(seed))
        assert out.dtype == np.uint8 and out.shape == image.shape
        assert boxes is BOXES and labels is LABELS
        changed += not np.array_equal(out, image)
    assert changed >= 15  # every step is skipped with probability 1/2, all of them rarely


@pytest.mark.parametrize("is_train", [True, False])
def test_pipeline_output_types_and_zero_boxes(is_train):
    pipeline = build_transforms(64, MEAN, is_train)
    image = np.full((HEIGHT, WIDTH, 3), 200, np.uint8)
    for boxes, labels in ((BOXES, LABELS), (np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))):
        for seed in range(10):
            image_t, boxes_t, labels_t = pipeline(image, boxes, labels, rng=np.random.default_rng(seed))
            assert image_t.shape == (3, 64, 64) and image_t.dtype == torch.float32 and image_t.is_contiguous()
            assert boxes_t.dtype == torch.float32 and boxes_t.shape == (len(labels_t), 4)
            assert labels_t.dtype == torch.int64 and len(labels_t) <= len(labels)
            if len(boxes_t):
                assert boxes_t.min() >= 0 and boxes_t.max() <= 1
                assert torch.all(boxes_t[:, 2:] > boxes_t[:, :2])
    # Test pipeline: value of a flat image is exactly the colour minus the mean; boxes only rescaled.
    image_t, boxes_t, _ = build_transforms(64, MEAN, False)(image, BOXES, LABELS)
    assert torch.allclose(image_t[:, 0, 0], torch.tensor([77.0, 83.0, 96.0]))
    assert torch.allclose(boxes_t, torch.from_numpy(BOXES / [WIDTH, HEIGHT, WIDTH, HEIGHT]).float())


def test_pipeline_is_deterministic_given_rng_and_never_mutates_inputs():
    pipeline = build_transforms(96, MEAN, is_train=True)
    image = np.random.default_rng(1).integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    image_copy, boxes_copy, labels_copy = image.copy(), BOXES.copy(), LABELS.copy()
    a = pipeline(image, BOXES, LABELS, rng=np.random.default_rng(5))
    b = pipeline(image, BOXES, LABELS, rng=np.random.default_rng(5))
    c = pipeline(image, BOXES, LABELS, rng=np.random.default_rng(6))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    np.testing.assert_array_equal(image, image_copy)
    np.testing.assert_array_equal(BOXES, boxes_copy)
    np.testing.assert_array_equal(LABELS, labels_copy)


def test_expand_fills_with_the_mean_and_crop_keeps_centred_boxes():
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for seed in range(30):
        out, boxes, _ = Expand(MEAN, p=1.0)(image, BOXES, LABELS, np.random.default_rng(seed))
        assert out.shape[0] >= HEIGHT and out.shape[1] >= WIDTH
        corner = out[0, 0] if boxes[:, 0].min() > 20 and boxes[:, 1].min() > 20 else None
        if corner is not None:
            assert corner.tolist() == list(MEAN)
        cropped, kept, labels = RandomSampleCrop()(image, BOXES, LABELS, np.random.default_rng(seed))
        assert len(kept) >= 1 and kept.min() >= 0
        assert np.all(kept[:, 2] <= cropped.shape[1]) and np.all(kept[:, 3] <= cropped.shape[0])


def test_augmentation_levels_pick_the_steps():
    def steps(augmentation):
        return [type(t).__name__ for t in build_transforms(64, MEAN, True, augmentation).transforms]

    assert steps("ssd")[:4] == ["PhotometricDistort", "Expand", "RandomSampleCrop", "RandomMirror"]
    assert steps("crop")[:3] == ["PhotometricDistort", "RandomSampleCrop", "RandomMirror"]
    assert steps("light")[:2] == ["PhotometricDistort", "RandomMirror"]
    assert steps("none") == [type(t).__name__ for t in build_transforms(64, MEAN, False).transforms]
    with pytest.raises(ValueError, match="INPUT.AUGMENTATION"):
        build_transforms(64, MEAN, True, "heavy")


def coordinate_image() -> np.ndarray:
    """(HEIGHT, WIDTH, 3) uint8 whose pixel (y, x) holds (x, y, 0): a crop's top-left pixel names its origin."""
    ys, xs = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([xs, ys, np.zeros_like(xs)], axis=2).astype(np.uint8)  # WIDTH, HEIGHT <= 256


def crop_patch(cropped: np.ndarray) -> np.ndarray:
    """The patch [x1, y1, x2, y2] (pixels of the input) that a crop of `coordinate_image()` cut out."""
    x1, y1 = int(cropped[0, 0, 0]), int(cropped[0, 0, 1])
    return np.array([x1, y1, x1 + cropped.shape[1], y1 + cropped.shape[0]], np.float32)


def iou_with(patch: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy patch with each xyxy box (G,), written out here rather than taken from the package."""
    w = np.clip(np.minimum(patch[2], boxes[:, 2]) - np.maximum(patch[0], boxes[:, 0]), 0, None)
    h = np.clip(np.minimum(patch[3], boxes[:, 3]) - np.maximum(patch[1], boxes[:, 1]), 0, None)
    patch_area = (patch[2] - patch[0]) * (patch[3] - patch[1])
    box_areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (G,)
    return w * h / (patch_area + box_areas - w * h)


def test_crop_patch_overlaps_some_box_by_at_least_the_drawn_min_iou():
    # SSD paper sec. 2.2: "sample a patch so that the minimum jaccard overlap with the objects is 0.1, 0.3, 0.5,
    # 0.7 or 0.9". With 0.7 as the only mode, every patch must overlap the large box by IoU >= 0.7; without the
    # rule most patches that merely contain a box centre fall below it (measured: 24 of 30 seeds).
    boxes = np.array([[20, 20, 140, 100], [120, 90, 150, 115]], np.float32)
    labels = np.array([1, 2], np.int64)
    crop = RandomSampleCrop(min_ious=(0.7,))
    ious = []
    for seed in range(30):
        cropped, _, _ = crop(coordinate_image(), boxes, labels, np.random.default_rng(seed))
        ious.append(iou_with(crop_patch(cropped), boxes).max())
    assert min(ious) >= 0.7, [round(float(v), 2) for v in ious]
    assert len({round(float(v), 3) for v in ious}) > 10  # different patches, not one fixed crop


def test_crop_keeps_exactly_the_boxes_whose_centre_is_inside_clamped_and_shifted():
    crop = RandomSampleCrop(min_ious=(0.1,))
    centres = (BOXES[:, :2] + BOXES[:, 2:]) / 2  # (G, 2)
    dropped = 0
    for seed in range(30):
        cropped, kept, labels = crop(coordinate_image(), BOXES, LABELS, np.random.default_rng(seed))
        patch = crop_patch(cropped)
        inside = np.all((centres > patch[:2]) & (centres < patch[2:]), axis=1)  # (G,)
        expected = np.concatenate(
            [np.maximum(BOXES[:, :2], patch[:2]), np.minimum(BOXES[:, 2:], patch[2:])], 1
        )
        expected = (expected - np.tile(patch[:2], 2))[inside]
        np.testing.assert_array_equal(labels, LABELS[inside], err_msg=f"seed {seed}, patch {patch}")
        np.testing.assert_allclose(kept, expected, err_msg=f"seed {seed}, patch {patch}")
        dropped += int((~inside).sum())
    assert dropped >= 10  # the rule was exercised: many boxes had their centre outside the patch
