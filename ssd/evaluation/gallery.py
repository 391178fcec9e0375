"""The report's galleries: which false positives and missed boxes to show, and their thumbnails.

For each false-positive type of `ssd.evaluation.errors` and each predicted class, the `per_class` highest-scoring
detections at the report's score threshold; for missed boxes, the `per_class` largest of each class (a big box
nobody found is the most telling). A thumbnail is a crop around the detection and the box it was judged against,
with the prediction drawn in red and the ground truth in green; a missed box is drawn with the detection of its
class that overlaps it most, at any score, in orange (often the answer to "why was it missed": found, but below
the threshold).

Size: each kind shows at most `per_kind` entries in all, taken round-robin over the classes (every class's best
entry before any class's second), so an 80-class dataset gives a report of a few MB rather than thousands of
thumbnails (issue 23 measured 2,778 items and 19.2 MB at 5,000 COCO images without this cap).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np

from ssd.evaluation.errors import FALSE_POSITIVE_TYPES
from ssd.evaluation.voc import box_iou_pixels
from ssd.utils.visualize import draw_boxes

PREDICTION_COLOR = (230, 20, 20)  # RGB
GROUND_TRUTH_COLOR = (20, 190, 20)
CLOSEST_COLOR = (255, 150, 0)
THUMBNAIL_SIDE = 160  # pixels, longer side
PER_KIND = 60  # gallery entries per kind, over all classes (about 7 kB each)


def select_items(
    gts: Sequence[Mapping],
    kept: Sequence[Mapping],
    labels: Sequence[Mapping],
    all_preds: Sequence[Mapping],
    class_names: Sequence[str],
    per_class: int = 8,
    per_kind: int = PER_KIND,
) -> list[dict]:
    """The gallery entries, without thumbnails, grouped by kind (FALSE_POSITIVE_TYPES, then "missed").

    Args:
        gts: per image, ground truth {"boxes_xyxy" (G, 4), "labels" (G,), ...}.
        kept: per image, the detections at or above the score threshold {"boxes_xyxy" (K, 4), "labels", "scores"}.
        labels: per image, `label_image_errors(gt, kept)`.
        all_preds: per image, every detection (for the closest detection to a missed box).
        class_names: C names, background first.
        per_class: at most this many entries per kind and class.
        per_kind: at most this many entries per kind, over all classes (round-robin over the classes).

    Returns:
        [{"kind", "class", "image_index", "score", "iou", "boxes": [(xyxy, RGB colour), ...], "caption"}, ...].
    """
    items: list[dict] = []
    for kind in FALSE_POSITIVE_TYPES:
        candidates = [
            (float(pred["scores"][k]), i, int(k))
            for i, (pred, lab) in enumerate(zip(kept, labels, strict=True))
            for k in np.flatnonzero(lab["kind"] == kind)
        ]
        chosen = _top_per_class(candidates, lambda c: int(kept[c[1]]["labels"][c[2]]), per_class, per_kind)
        for score, i, k in chosen:
            pred, lab, gt = kept[i], labels[i], gts[i]
            label, j = int(pred["labels"][k]), int(lab["target"][k])
            boxes = [(pred["boxes_xyxy"][k], PREDICTION_COLOR)]
            caption = f"predicted {class_names[label]} {score:.2f}"
            if j >= 0:
                boxes.append((gt["boxes_xyxy"][j], GROUND_TRUTH_COLOR))
                caption += f" · box {class_names[int(gt['labels'][j])]}, IoU {lab['iou'][k]:.2f}"
            items.append(
                {
                    "kind": kind,
                    "class": class_names[label],
                    "image_index": i,
                    "score": score,
                    "iou": float(lab["iou"][k]),
                    "boxes": boxes,
                    "caption": caption,
                }
            )
    missed = []
    for i, (gt, lab) in enumerate(zip(gts, labels, strict=True)):
        for j in np.flatnonzero(lab["missed"]):
            x1, y1, x2, y2 = gt["boxes_xyxy"][j]
            missed.append(((x2 - x1) * (y2 - y1), i, int(j)))
    for _, i, j in _top_per_class(missed, lambda c: int(gts[c[1]]["labels"][c[2]]), per_class, per_kind):
        gt, pred = gts[i], all_preds[i]
        label = int(gt["labels"][j])
        boxes = [(gt["boxes_xyxy"][j], GROUND_TRUTH_COLOR)]
        caption, score, overlap = f"missed {class_names[label]}", 0.0, 0.0
        same = np.flatnonzero(pred["labels"] == label)
        if len(same):
            iou = box_iou_pixels(pred["boxes_xyxy"][same], gt["boxes_xyxy"][j : j + 1], 0.0)[:, 0]  # (D,)
            if iou.max() > 0:
                k = int(same[iou.argmax()])
                score, overlap = float(pred["scores"][k]), float(iou.max())
                boxes.append((pred["boxes_xyxy"][k], CLOSEST_COLOR))
                caption += f" · closest {class_names[label]}: {score:.2f}, IoU {overlap:.2f}"
        items.append(
            {
                "kind": "missed",
                "class": class_names[label],
                "image_index": i,
                "score": score,
                "iou": overlap,
                "boxes": boxes,
                "caption": caption,
            }
        )
    return items


def _top_per_class(candidates: list[tuple], class_of, per_class: int, per_kind: int) -> list[tuple]:
    """The `per_class` largest candidates (by their first field) of each class, at most `per_kind` in all,
    largest first. Over the cap, every class's largest candidate comes before any class's second, and so on."""
    ranked, taken = [], {}
    for candidate in sorted(candidates, key=lambda c: -c[0]):
        c = class_of(candidate)
        if taken.get(c, 0) < per_class:
            ranked.append((taken.get(c, 0), candidate))  # (its rank within its class, candidate)
            taken[c] = taken.get(c, 0) + 1
    ranked.sort(key=lambda rc: rc[0])  # stable: within one rank, larger candidates first
    return sorted((candidate for _, candidate in ranked[:per_kind]), key=lambda c: -c[0])


def thumbnail(
    image: np.ndarray, boxes: Sequence[tuple[np.ndarray, tuple]], side: int = THUMBNAIL_SIDE
) -> np.ndarray:
    """A crop around `boxes` (xyxy pixels of `image`, each with an RGB colour), scaled to `side`, boxes drawn.

    The crop is the boxes' union grown by half its longer side (at least 16 pixels) on every side, clipped to
    the image, so the thumbnail shows some context. `image` is uint8 (H, W, 3) RGB and is not modified.
    """
    coords = np.array([b for b, _ in boxes], np.float64).reshape(-1, 4)  # (B, 4)
    x1, y1 = coords[:, :2].min(axis=0)
    x2, y2 = coords[:, 2:].max(axis=0)
    margin = max(16.0, 0.5 * max(x2 - x1, y2 - y1))
    height, width = image.shape[:2]
    left, top = int(max(0, np.floor(x1 - margin))), int(max(0, np.floor(y1 - margin)))
    right, bottom = int(min(width, np.ceil(x2 + margin))), int(min(height, np.ceil(y2 + margin)))
    right, bottom = max(right, left + 1), max(bottom, top + 1)  # a degenerate box still gives a crop
    scale = side / max(right - left, bottom - top)
    crop = cv2.resize(
        np.ascontiguousarray(image[top:bottom, left:right]),
        (max(1, round((right - left) * scale)), max(1, round((bottom - top) * scale))),
        interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
    )
    for box, color in boxes:
        shifted = (np.asarray(box, np.float64) - [left, top, left, top]) * scale  # (4,) in thumbnail pixels
        crop = draw_boxes(crop, shifted[None], color=color, captions=False)
    return crop


def add_thumbnails(items: list[dict], load_image, file_names: Sequence[str], quality: int = 85) -> None:
    """Give every item a "thumbnail" (a JPEG data URI) and a "file" name; each image is decoded once.

    Args:
        items: from `select_items`; updated in place (the report owns them).
        load_image: dataset index -> uint8 (H, W, 3) RGB (`dataset.load_image`).
        file_names: per dataset index, the image's file name.
    """
    by_image: dict[int, list[dict]] = {}
    for item in items:
        by_image.setdefault(item["image_index"], []).append(item)
    for index, group in sorted(by_image.items()):
        image = load_image(index)
        for item in group:
            rgb = thumbnail(image, item["boxes"])
            ok, jpeg = cv2.imencode(
                ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality]
            )
            if not ok:
                raise RuntimeError(f"could not encode a thumbnail of {file_names[index]}")
            item["thumbnail"] = "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii")
            item["file"] = Path(str(file_names[index])).name
