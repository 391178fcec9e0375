"""Training data pipeline throughput on one core: decode + augment + target tensors, BCCD 640x480 -> 300x300.

    .venv/bin/python benchmarks/data_pipeline.py [--root ../shared/data/BCCD] [--num-images 300] [--repeats 3]
                                                 [--results results/bench_data_pipeline.json]

Times `ssd.data` (uint8 OpenCV pipeline, see ssd/data/transforms.py) against a peer written below, "the
reference pipeline as lufficc/SSD does it": PIL decoding, float32 from the first step, the same augmentations
in the same order with the same parameters, numpy global RNG, degenerate-box removal after every step.
Prior matching is not timed in either: here it happens inside the model's forward (docs/contracts.md).
The two run in turns (ours over all images, the reference over all images, `--repeats` rounds after a warm-up
round, common.interleaved_times), so a load that comes and goes hits both; images/s from the median and from
the best round of each.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common  # benchmarks/common.py: the script's folder is on sys.path
import cv2
import numpy as np
import record  # benchmarks/record.py
import torch
from PIL import Image

from ssd.data.datasets import VOCDataset
from ssd.data.transforms import build_transforms
from ssd.structures.boxes import np_box_iou

MEAN = (123, 117, 104)
BCCD_CLASSES = ("RBC", "WBC", "Platelets")


# ----- the reference: lufficc/SSD's pipeline, float32 everywhere ---------------------------------------------


def _remove_empty(boxes, labels):
    keep = (boxes[:, 2] - boxes[:, 0] > 0) & (boxes[:, 3] - boxes[:, 1] > 0)
    return boxes[keep], labels[keep]


def _reference_photometric(image):
    image = image.copy()
    rand = np.random
    if rand.randint(2):
        image += rand.uniform(-32, 32)

    def contrast(img):
        return img * rand.uniform(0.5, 1.5) if rand.randint(2) else img

    def saturation_hue(img):
        hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV)  # float32: H in [0, 360], S in [0, 1]
        if rand.randint(2):
            hsv[:, :, 1] *= rand.uniform(0.5, 1.5)
        if rand.randint(2):
            hsv[:, :, 0] += rand.uniform(-18, 18)
            hsv[:, :, 0][hsv[:, :, 0] > 360.0] -= 360.0
            hsv[:, :, 0][hsv[:, :, 0] < 0.0] += 360.0
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    if rand.randint(2):
        image = saturation_hue(contrast(image))
    else:
        image = contrast(saturation_hue(image))
    if rand.randint(2):
        perms = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))
        image = image[:, :, perms[rand.randint(len(perms))]]
    return image


def _reference_expand(image, boxes):
    if np.random.randint(2):
        return image, boxes
    height, width, depth = image.shape
    ratio = np.random.uniform(1, 4)
    left, top = np.random.uniform(0, width * ratio - width), np.random.uniform(0, height * ratio - height)
    canvas = np.zeros((int(height * ratio), int(width * ratio), depth), dtype=image.dtype)
    canvas[:, :, :] = MEAN
    canvas[int(top) : int(top + height), int(left) : int(left + width)] = image
    return canvas, boxes + np.array([int(left), int(top), int(left), int(top)], np.float32)


def _reference_crop(image, boxes, labels):
    if len(boxes) == 0:
        return image, boxes, labels
    height, width, _ = image.shape
    modes = (None, 0.1, 0.3, 0.7, 0.9, float("-inf"))
    while True:
        min_iou = modes[np.random.randint(len(modes))]
        if min_iou is None:
            return image, boxes, labels
        for _ in range(50):
            w, h = np.random.uniform(0.3 * width, width), np.random.uniform(0.3 * height, height)
            if h / w < 0.5 or h / w > 2:
                continue
            left, top = np.random.uniform(width - w), np.random.uniform(height - h)
            rect = np.array([int(left), int(top), int(left + w), int(top + h)])
            if np_box_iou(boxes, rect[None].astype(np.float32)).max() < min_iou:
                continue
            centres = (boxes[:, :2] + boxes[:, 2:]) / 2.0
            mask = np.all((rect[:2] < centres) & (centres < rect[2:]), axis=1)
            if not mask.any():
                continue
            crop = image[rect[1] : rect[3], rect[0] : rect[2], :].copy()
            kept = boxes[mask].copy()
            kept[:, :2] = np.maximum(kept[:, :2], rect[:2]) - rect[:2]
            kept[:, 2:] = np.minimum(kept[:, 2:], rect[2:]) - rect[:2]
            return crop, kept, labels[mask]


def reference_pipeline(path: str, boxes: np.ndarray, labels: np.ndarray, size: int = 300):
    """PIL decode -> float32 -> photometric -> expand -> crop -> mirror -> percent -> resize -> mean -> tensor."""
    image = np.array(Image.open(path).convert("RGB")).astype(np.float32)
    image = _reference_photometric(image)
    boxes, labels = _remove_empty(boxes, labels)
    image, boxes = _reference_expand(image, boxes)
    boxes, labels = _remove_empty(boxes, labels)
    image, boxes, labels = _reference_crop(image, boxes, labels)
    boxes, labels = _remove_empty(boxes, labels)
    if np.random.randint(2):
        width = image.shape[1]
        image = image[:, ::-1]
        boxes = boxes.copy()
        boxes[:, 0::2] = width - boxes[:, 2::-2]
    height, width, _ = image.shape
    boxes = boxes / np.array([width, height, width, height], np.float32)
    image = cv2.resize(image, (size, size))
    image = image.astype(np.float32) - np.array(MEAN, np.float32)
    image_t = torch.from_numpy(image).permute(2, 0, 1)
    return image_t, torch.from_numpy(boxes.astype(np.float32)), torch.from_numpy(labels)


# ----- timing ------------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[2] / "shared/data/BCCD"))
    parser.add_argument("--num-images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds over all images, each pipeline")
    parser.add_argument("--results", metavar="PATH", help="also write every printed number as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    results = record.start(threads=1)
    results |= {"num_images": args.num_images, "repeats": args.repeats}
    print(record.machine_line(1))

    dataset = VOCDataset(
        args.root, "trainval", BCCD_CLASSES, transform=build_transforms(300, MEAN, True), is_train=True
    )
    indices = [i % len(dataset) for i in range(args.num_images)]
    np.random.seed(0)

    def run_ours():
        for i in indices:
            dataset.get_item(i, rng=np.random.default_rng([0, i]))

    def run_reference():
        for i in indices:
            a = dataset.get_annotation(i)
            reference_pipeline(a["file_name"], a["boxes_xyxy"], a["labels"])

    # warm-up round first: file cache, lazy imports
    times = common.interleaved_times(
        {"ssd.data (uint8, OpenCV)": run_ours, "reference (lufficc-style float32)": run_reference},
        args.repeats,
    )
    rates = {}
    for name, seconds in times.items():
        rates[name] = {
            "images_per_s_median": len(indices) / common.median(seconds),
            "images_per_s_best": len(indices) / min(seconds),
        }
        print(
            f"{name:36s} {rates[name]['images_per_s_median']:7.1f} images/s median, "
            f"{rates[name]['images_per_s_best']:7.1f} best (1 thread, {args.repeats} rounds x {len(indices)} images)"
        )
    ours, reference = (rate["images_per_s_median"] for rate in rates.values())
    batch_ms = 8 / ours * 1e3
    print(
        f"speed-up: {ours / reference:.2f}x (medians); one batch of 8 images: {batch_ms:.1f} ms with ssd.data"
    )
    results |= {"pipelines": rates, "speedup": ours / reference, "batch_of_8_ms": batch_ms}
    print(record.machine_line(1))
    record.write(args.results, results)


if __name__ == "__main__":
    main()
