"""Drawing detections and boxes on images with OpenCV: the one place where boxes are drawn.

Images are uint8 (H, W, 3) **RGB** arrays, as the datasets return them; boxes are xyxy in **pixels** of that
image. Every function returns a new image and leaves its input untouched. `write_image` converts to BGR, the
order OpenCV writes files in, so callers never handle BGR themselves.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

Color = tuple[int, int, int]

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def color_for_label(label: int) -> Color:
    """A saturated RGB colour per class label, stable across runs; neighbouring labels differ in hue.

    The golden-ratio step spreads consecutive labels around the hue circle (label 1 and 2 never look alike).
    """
    hue = (label * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _caption(label: int | None, score: float | None, class_names: Sequence[str] | None) -> str:
    parts = []
    if label is not None:
        name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else None
        parts.append(name if name is not None else f"class {label}")
    if score is not None:
        parts.append(f"{score:.2f}")
    return " ".join(parts)


def draw_boxes(
    image: np.ndarray,
    boxes_xyxy: np.ndarray,
    labels: np.ndarray | None = None,
    scores: np.ndarray | None = None,
    class_names: Sequence[str] | None = None,
    color: Color | None = None,
    thickness: int = 2,
    captions: bool = True,
) -> np.ndarray:
    """Draw boxes, each with a "name score" caption in a filled tag above its top-left corner.

    Args:
        image: uint8 (H, W, 3) RGB; not modified.
        boxes_xyxy: (K, 4) xyxy pixels of `image` (float or int); K may be 0.
        labels: (K,) class labels indexing `class_names` (0 = background); None = no class in the caption.
        scores: (K,) confidences in 0..1; None = no score in the caption.
        class_names: label -> name; None or a label outside it writes "class <label>".
        color: one RGB colour for every box; None = one colour per label (`color_for_label`).
        thickness: line width in pixels.
        captions: False draws the rectangles only (e.g. hundreds of priors).

    Returns:
        a new uint8 (H, W, 3) RGB image.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"draw_boxes expects a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(labels)} labels")
    if scores is not None and len(scores) != len(boxes):
        raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
    canvas = np.ascontiguousarray(image).copy()
    height, width = canvas.shape[:2]
    font_scale = max(0.35, min(height, width) / 800)
    for i, box in enumerate(boxes):
        label = int(labels[i]) if labels is not None else None
        score = float(scores[i]) if scores is not None else None
        box_color = color or color_for_label(label if label is not None else 1)
        # Box corners are continuous (x2 is one past the last pixel): the last covered pixel is x2 - 1.
        x1, y1 = int(round(box[0])), int(round(box[1]))
        x2, y2 = int(round(box[2])) - 1, int(round(box[3])) - 1
        cv2.rectangle(canvas, (x1, y1), (max(x1, x2), max(y1, y2)), box_color, thickness, cv2.LINE_AA)
        text = _caption(label, score, class_names) if captions else ""
        if not text:
            continue
        (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, font_scale, 1)
        # The tag sits above the box, or inside it when the box touches the top edge.
        top = y1 - text_h - baseline - 2 if y1 - text_h - baseline - 2 >= 0 else y1
        left = min(max(x1, 0), max(0, width - text_w - 2))
        cv2.rectangle(canvas, (left, top), (left + text_w + 2, top + text_h + baseline + 2), box_color, -1)
        cv2.putText(
            canvas,
            text,
            (left + 1, top + text_h + 1),
            _FONT,
            font_scale,
            _text_color(box_color),
            1,
            cv2.LINE_AA,
        )
    return canvas


def _text_color(background: Color) -> Color:
    """Black on light tags, white on dark ones (ITU-R BT.601 luma)."""
    luma = 0.299 * background[0] + 0.587 * background[1] + 0.114 * background[2]
    return (0, 0, 0) if luma > 140 else (255, 255, 255)


def put_title(image: np.ndarray, title: str, height: int = 22, color: Color = (0, 0, 0)) -> np.ndarray:
    """A new image with a white band holding `title` (in `color`) on top of `image` (uint8 (H, W, 3) RGB)."""
    band = np.full((height, image.shape[1], 3), 255, dtype=np.uint8)
    cv2.putText(band, title, (4, height - 7), _FONT, 0.45, color, 1, cv2.LINE_AA)
    return np.concatenate([band, image], axis=0)


def make_grid(images: Sequence[np.ndarray], columns: int, gap: int = 4) -> np.ndarray:
    """Tile uint8 RGB images row by row on a white canvas; cells take the size of the largest image."""
    if not images:
        raise ValueError("make_grid needs at least one image")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)  # ceil
    cell_h = max(im.shape[0] for im in images)
    cell_w = max(im.shape[1] for im in images)
    grid = np.full((rows * (cell_h + gap) + gap, columns * (cell_w + gap) + gap, 3), 255, dtype=np.uint8)
    for i, im in enumerate(images):
        row, col = divmod(i, columns)
        top, left = gap + row * (cell_h + gap), gap + col * (cell_w + gap)
        grid[top : top + im.shape[0], left : left + im.shape[1]] = im
    return grid


def write_image(path: str | Path, image: np.ndarray) -> Path:
    """Write a uint8 (H, W, 3) RGB image; the format follows the suffix (.png, .jpg, ...).

    Raises:
        OSError: OpenCV could not encode or write the file (unknown suffix, unwritable folder); names the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        ok, encoded = cv2.imencode(path.suffix or ".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    except cv2.error:  # OpenCV raises for a suffix it has no encoder for
        ok = False
    if not ok:
        raise OSError(f"cannot encode an image for {path} (use a .png or .jpg name)")
    encoded.tofile(path)  # np.tofile writes any path, non-ASCII names included (cv2.imwrite may not)
    return path
