"""Data augmentation and input preparation (SSD paper sec. 2.2 "Data augmentation"), NumPy/OpenCV.

Every transform is called as `t(image, boxes_xyxy, labels, rng)` and returns a new `(image, boxes, labels)`;
inputs are never modified. `image` is (H, W, 3) RGB, `boxes_xyxy` float32 (G, 4) in pixels until
`ToPercentCoords` and in 0..1 after it, `labels` int64 (G,). G may be 0. `rng` is a `np.random.Generator`:
randomness never comes from the global NumPy state, so the loader can seed every sample on its own.

Training order, as lufficc/SSD (`build_transforms(..., is_train=True)`):
    PhotometricDistort -> Expand -> RandomSampleCrop -> RandomMirror -> ToPercentCoords -> Resize
    -> ConvertFromInts + SubtractMeans + ToTensor (fused into `NormalizeToTensor`)
Test: ToPercentCoords -> Resize -> NormalizeToTensor.

Deviations from lufficc/SSD, all for speed (measured by benchmarks/data_pipeline.py) or safety:
- The image stays uint8 until the last step; photometric changes are lookup tables, so values are clipped
  to 0..255 after each change (as the original Caffe SSD does; lufficc works in float32 and never clips).
  Hue/saturation work on OpenCV's 8-bit HSV with the full 0..255 hue range, and the HSV round trip is
  skipped when neither is drawn; both round-trip errors are a few grey levels.
- Degenerate boxes cannot appear (RandomSampleCrop keeps only boxes whose centre is inside the crop), so
  lufficc's `remove_empty_boxes` after every step is not needed.
RandomSampleCrop keeps lufficc's minimum-IoU modes (0.1, 0.3, 0.7, 0.9: no 0.5, although the paper lists
0.5) so results compare with lufficc; `RandomSampleCrop(min_ious=PAPER_MIN_IOUS)` gives the paper's set.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import cv2
import numpy as np
import torch

from ssd.structures.boxes import np_box_iou

Sample = tuple[np.ndarray, np.ndarray, np.ndarray]

# Minimum IoU modes of RandomSampleCrop; None = keep the whole image, -inf = any crop ("None, None").
LUFFICC_MIN_IOUS: tuple[float | None, ...] = (None, 0.1, 0.3, 0.7, 0.9, -np.inf)
PAPER_MIN_IOUS: tuple[float | None, ...] = (None, 0.1, 0.3, 0.5, 0.7, 0.9, -np.inf)

_IDENTITY = np.arange(256, dtype=np.float32)


def _lut(table: np.ndarray) -> np.ndarray:
    """float table (256,) -> uint8 lookup table, rounded and clipped to 0..255."""
    return np.clip(np.rint(table), 0, 255).astype(np.uint8)


class Compose:
    """Apply transforms in order with one generator.

    `rng=None` uses a generator owned by this object and created in the current process (a forked
    DataLoader worker makes its own, so workers never share one stream). The training loader always passes
    a generator seeded per sample instead, which makes results independent of the worker.
    """

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)
        self._rng: tuple[int, np.random.Generator] | None = None  # (pid, generator)

    def __call__(
        self,
        image: np.ndarray,
        boxes_xyxy: np.ndarray,
        labels: np.ndarray,
        rng: np.random.Generator | None = None,
    ):
        if rng is None:
            if self._rng is None or self._rng[0] != os.getpid():
                self._rng = (os.getpid(), np.random.default_rng())
            rng = self._rng[1]
        boxes_xyxy = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        for transform in self.transforms:
            image, boxes_xyxy, labels = transform(image, boxes_xyxy, labels, rng)
        return image, boxes_xyxy, labels

    def __repr__(self) -> str:
        return "Compose(\n" + "".join(f"    {t!r},\n" for t in self.transforms) + ")"


class ConvertFromInts:
    """uint8 image -> float32 image (same values)."""

    def __call__(self, image, boxes, labels, rng=None) -> Sample:
        return image.astype(np.float32), boxes, labels


class PhotometricDistort:
    """Random brightness, contrast, saturation, hue and channel order, as lufficc/SSD (amdegroot) does it.

    1. p 0.5: add U(-brightness_delta, brightness_delta) to every channel.
    2. p 0.5 contrast first, else contrast last; in both: p 0.5 each of
       contrast x U(contrast_range), saturation x U(saturation_range), hue + U(-hue_delta, hue_delta) degrees.
    3. p 0.5: permute the RGB channels (one of the 6 orders, the identity included).
    Boxes are unchanged. Works on uint8 images (see the module docstring).
    """

    _PERMUTATIONS = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))

    def __init__(
        self,
        brightness_delta: float = 32,
        contrast_range: tuple[float, float] = (0.5, 1.5),
        saturation_range: tuple[float, float] = (0.5, 1.5),
        hue_delta: float = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = contrast_range
        self.saturation_range = saturation_range
        self.hue_delta = hue_delta

    def __call__(self, image, boxes, labels, rng) -> Sample:
        if image.dtype != np.uint8:
            raise TypeError(f"PhotometricDistort expects a uint8 image, got {image.dtype}")
        table = _IDENTITY
        if rng.random() < 0.5:  # brightness
            table = table + rng.uniform(-self.brightness_delta, self.brightness_delta)
        contrast_first = rng.random() < 0.5
        contrast = rng.uniform(*self.contrast_range) if rng.random() < 0.5 else None
        saturation = rng.uniform(*self.saturation_range) if rng.random() < 0.5 else None
        hue = rng.uniform(-self.hue_delta, self.hue_delta) if rng.random() < 0.5 else None

        if contrast is not None and contrast_first:
            table = np.clip(table, 0, 255) * contrast  # brightness and contrast fuse into one table
        if table is not _IDENTITY:
            image = cv2.LUT(image, _lut(table))
        if saturation is not None or hue is not None:
            image = self._saturation_hue(image, saturation, hue)
        if contrast is not None and not contrast_first:
            image = cv2.LUT(image, _lut(_IDENTITY * contrast))
        if rng.random() < 0.5:
            permutation = self._PERMUTATIONS[rng.integers(len(self._PERMUTATIONS))]
            # A 3x3 permutation matrix through cv2.transform: ~10x faster than numpy fancy indexing.
            image = cv2.transform(image, np.eye(3, dtype=np.float32)[list(permutation)])
        return image, boxes, labels

    @staticmethod
    def _saturation_hue(image: np.ndarray, saturation: float | None, hue: float | None) -> np.ndarray:
        # 8-bit HSV "FULL": hue 0..255 for 0..360 degrees, so one degree is 256/360 steps.
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)
        hue_table = np.arange(256, dtype=np.int64)
        if hue is not None:
            hue_table = (hue_table + int(round(hue * 256 / 360))) % 256  # hue is an angle: wrap around
        saturation_table = _IDENTITY * saturation if saturation is not None else _IDENTITY
        table = np.stack([hue_table.astype(np.float32), saturation_table, _IDENTITY], axis=-1)  # (256, 3)
        hsv = cv2.LUT(hsv, _lut(table)[None])  # (1, 256, 3): one table per channel
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


class Expand:
    """Zoom out (SSD paper sec. 2.2, "zoom out" / sec. 3.6): with probability p put the image on a canvas
    `ratio` times larger (ratio ~ U(1, max_ratio)) filled with the mean, at a random position."""

    def __init__(self, mean: Sequence[float], max_ratio: float = 4.0, p: float = 0.5) -> None:
        self.mean = tuple(float(m) for m in mean)
        self.max_ratio = max_ratio
        self.p = p

    def __call__(self, image, boxes, labels, rng) -> Sample:
        if rng.random() >= self.p:
            return image, boxes, labels
        height, width = image.shape[:2]
        ratio = rng.uniform(1, self.max_ratio)
        left = int(rng.uniform(0, width * ratio - width))
        top = int(rng.uniform(0, height * ratio - height))
        right = int(width * ratio) - width - left
        bottom = int(height * ratio) - height - top
        fill = tuple(round(m) for m in self.mean) if image.dtype == np.uint8 else self.mean
        # copyMakeBorder allocates and fills the canvas in one pass (numpy's broadcast fill is ~50x slower).
        canvas = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=fill)
        return canvas, boxes + np.array([left, top, left, top], dtype=np.float32), labels


class RandomSampleCrop:
    """Crop a random patch (SSD paper sec. 2.2): pick a mode from `min_ious`; `None` keeps the image; else
    try up to `max_trials` patches of side U(0.3, 1) x the image side and aspect in [0.5, 2] until one has
    IoU >= min_iou with at least one box and contains the centre of at least one box. Boxes whose centre is
    inside are kept, clamped to the patch and shifted into it; the others are dropped."""

    def __init__(self, min_ious: Sequence[float | None] = LUFFICC_MIN_IOUS, max_trials: int = 50) -> None:
        self.min_ious = tuple(min_ious)
        self.max_trials = max_trials

    def __call__(self, image, boxes, labels, rng) -> Sample:
        if len(boxes) == 0:
            return image, boxes, labels
        height, width = image.shape[:2]
        centres = (boxes[:, :2] + boxes[:, 2:]) / 2  # (G, 2)
        trials = self.max_trials
        while True:  # ends: the `None` mode is drawn with probability 1/len(min_ious) each round
            min_iou = self.min_ious[rng.integers(len(self.min_ious))]
            if min_iou is None:
                return image, boxes, labels
            # All trials of a round are drawn at once and the first acceptable one is used: the same
            # distribution as trying them one after another, without a Python loop of 50 IoU calls.
            w = rng.uniform(0.3 * width, width, trials)  # (T,)
            h = rng.uniform(0.3 * height, height, trials)  # (T,)
            left = rng.uniform(0, 1, trials) * (width - w)
            top = rng.uniform(0, 1, trials) * (height - h)
            patches = np.stack([left, top, left + w, top + h], axis=1).astype(np.int64)  # (T, 4), truncated
            patches = patches.astype(np.float32)
            aspect_ok = (h / w >= 0.5) & (h / w <= 2)  # (T,)
            iou_ok = np_box_iou(patches, boxes).max(axis=1) >= min_iou  # (T,)
            inside = np.all(
                (centres[None] > patches[:, None, :2]) & (centres[None] < patches[:, None, 2:]), axis=2
            )  # (T, G): box centre strictly inside the patch
            accepted = np.flatnonzero(aspect_ok & iou_ok & inside.any(axis=1))
            if len(accepted) == 0:
                continue
            patch, keep = patches[accepted[0]], inside[accepted[0]]
            x1, y1, x2, y2 = (int(v) for v in patch)
            kept = boxes[keep]
            kept = np.concatenate(
                [np.maximum(kept[:, :2], patch[:2]), np.minimum(kept[:, 2:], patch[2:])], axis=1
            )
            kept -= np.tile(patch[:2], 2)
            return image[y1:y2, x1:x2], kept.astype(np.float32), labels[keep]


class RandomMirror:
    """Flip horizontally with probability p: x1' = W - x2, x2' = W - x1."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image, boxes, labels, rng) -> Sample:
        if rng.random() >= self.p:
            return image, boxes, labels
        width = image.shape[1]
        flipped = boxes[:, [2, 1, 0, 3]] * np.array([-1, 1, -1, 1], dtype=np.float32)
        return cv2.flip(image, 1), flipped + np.array([width, 0, width, 0], dtype=np.float32), labels


class ToPercentCoords:
    """Boxes in pixels -> boxes relative to the image size (0..1)."""

    def __call__(self, image, boxes, labels, rng=None) -> Sample:
        height, width = image.shape[:2]
        return image, boxes / np.array([width, height, width, height], dtype=np.float32), labels


class Resize:
    """Resize to size x size with bilinear interpolation (aspect ratio not kept); relative boxes unchanged."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __call__(self, image, boxes, labels, rng=None) -> Sample:
        image = cv2.resize(image, (self.size, self.size), interpolation=cv2.INTER_LINEAR)
        return image, boxes, labels


class SubtractMeans:
    """float32 image minus the per-channel mean (no division by a std, see INPUT.PIXEL_MEAN)."""

    def __init__(self, mean: Sequence[float]) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)

    def __call__(self, image, boxes, labels, rng=None) -> Sample:
        return image.astype(np.float32) - self.mean, boxes, labels


class ToTensor:
    """(H, W, 3) image -> (3, H, W) float32 tensor; boxes -> float32 tensor, labels -> int64 tensor."""

    def __call__(self, image, boxes, labels, rng=None):
        image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
        return image_t, torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(labels.astype(np.int64))


class NormalizeToTensor:
    """ConvertFromInts + SubtractMeans + ToTensor in one pass over the small, resized image."""

    def __init__(self, mean: Sequence[float]) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, image, boxes, labels, rng=None):
        image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)  # (3, S, S), a view
        image_t = image_t.to(torch.float32, memory_format=torch.contiguous_format).sub_(self.mean)
        return image_t, torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(labels.astype(np.int64))


AUGMENTATIONS = ("ssd", "crop", "light", "none")
# INPUT.AUGMENTATION may also be "auto": train.py replaces it by "ssd" or "crop" from the training boxes
# (ssd.engine.recipe.choose_augmentation) before any pipeline is built.


def build_transforms(
    image_size: int, pixel_mean: Sequence[float], is_train: bool, augmentation: str = "ssd"
) -> Compose:
    """The training or test pipeline.

    Args:
        augmentation: training augmentation (INPUT.AUGMENTATION). "ssd": the paper's pipeline (sec. 2.2
            "Data augmentation"; photometric distortion, zoom-out, IoU-constrained crop, mirror), which is what
            reaches the published accuracy over long schedules. "crop": the same without the zoom-out, for
            datasets of small objects, which a zoom-out of up to 4x shrinks below the smallest priors (the
            BCCD recipe's platelets). "light": photometric distortion and mirror
            only; the geometry of the objects is kept, so a short run from scratch learns much faster (the
            embedded default). "none": the test pipeline. Ignored when `is_train` is False.

    Returns:
        callable `(image uint8 (H, W, 3) RGB, boxes_xyxy float32 (G, 4) pixels, labels (G,)[, rng])` ->
        `(image (3, S, S) float32, boxes_norm float32 (G, 4), labels int64 (G,))`, S = image_size.
    """
    resize_and_normalize = [ToPercentCoords(), Resize(image_size), NormalizeToTensor(pixel_mean)]
    if not is_train:
        return Compose(resize_and_normalize)
    if augmentation not in AUGMENTATIONS:
        hint = (
            " ('auto' is resolved from the training boxes by train.py first)"
            if augmentation == "auto"
            else ""
        )
        raise ValueError(f"INPUT.AUGMENTATION must be one of {AUGMENTATIONS}, got {augmentation!r}{hint}")
    if augmentation == "none":
        return Compose(resize_and_normalize)
    if augmentation == "light":
        return Compose([PhotometricDistort(), RandomMirror(), *resize_and_normalize])
    if augmentation == "crop":
        return Compose([PhotometricDistort(), RandomSampleCrop(), RandomMirror(), *resize_and_normalize])
    return Compose(
        [PhotometricDistort(), Expand(pixel_mean), RandomSampleCrop(), RandomMirror(), *resize_and_normalize]
    )
