"""Synthetic shapes: a detection dataset that needs no download (tests, demos, the bundled model).

Each image is a textured, low-saturation background with 1 to 4 flat, saturated shapes of three classes
(circle, square, triangle); later shapes may cover earlier ones, like objects in a photo. Boxes are exact:
they enclose every pixel the shape paints, as continuous 0-based corners (a shape painting pixel columns
x0..x1 has x1y1x2y2 with x1 = x0 and x2 = x1 + 1).

Everything about item i comes from a generator seeded with (seed, i), so item i is the same whatever the
order, the worker or the process that builds it. The layout (boxes, labels) is computed without drawing,
which keeps `get_annotation` cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ssd.data.datasets.base import BACKGROUND, DetectionDataset, Transform, make_record

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")


def _layout(seed: int, index: int, image_size: int) -> dict[str, Any]:
    """Shapes of image `index`: labels, boxes (G, 4) pixels, colours and triangle apexes; no drawing."""
    rng = np.random.default_rng([seed, index])
    num_shapes = int(rng.integers(1, 5))
    boxes, labels, colours, apexes = [], [], [], []
    for _ in range(num_shapes):
        label = int(rng.integers(1, len(SHAPE_CLASSES) + 1))
        side = int(rng.integers(image_size // 10, image_size * 2 // 5 + 1))
        side += (side + 1) % 2  # odd, so a circle of radius side // 2 spans exactly `side` pixels
        x0 = int(rng.integers(0, image_size - side + 1))
        y0 = int(rng.integers(0, image_size - side + 1))
        hsv = np.array([[[rng.integers(0, 180), rng.integers(180, 256), rng.integers(160, 256)]]], np.uint8)
        colours.append(tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0]))
        apexes.append(x0 + int(rng.integers(0, side)))
        boxes.append([x0, y0, x0 + side, y0 + side])
        labels.append(label)
    return {"boxes": boxes, "labels": labels, "colours": colours, "apexes": apexes}


def render_shapes(seed: int, index: int, image_size: int) -> np.ndarray:
    """uint8 (S, S, 3) RGB image `index` of the synthetic dataset with this seed."""
    layout = _layout(seed, index, image_size)
    rng = np.random.default_rng([seed, index, 1])  # a second stream: the texture never moves the layout
    # Background: a smooth random field (a 6x6 grid upsampled) with a grey base, a faint tint and grain.
    grid = rng.uniform(-40, 40, size=(6, 6, 1)) + rng.uniform(-12, 12, size=(6, 6, 3))
    field = cv2.resize(grid.astype(np.float32), (image_size, image_size), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 6, size=(image_size, image_size, 3)).astype(np.float32)
    image = np.clip(rng.uniform(70, 180) + field + grain, 0, 255).astype(np.uint8)
    for (x0, y0, x1, y1), label, colour, apex in zip(
        layout["boxes"], layout["labels"], layout["colours"], layout["apexes"], strict=True
    ):
        last = x1 - 1  # last painted pixel column / row: boxes end one past the last painted pixel
        if SHAPE_CLASSES[label - 1] == "circle":
            radius = (x1 - x0) // 2
            cv2.circle(image, (x0 + radius, y0 + radius), radius, colour, thickness=-1, lineType=cv2.LINE_8)
        elif SHAPE_CLASSES[label - 1] == "square":
            cv2.rectangle(image, (x0, y0), (last, y1 - 1), colour, thickness=-1)
        else:
            triangle = np.array([[x0, y1 - 1], [last, y1 - 1], [apex, y0]], np.int32)
            cv2.fillPoly(image, [triangle], colour, lineType=cv2.LINE_8)
    return image


class SyntheticShapesDataset(DetectionDataset):
    """`num_images` generated images of side `image_size` with circles, squares and triangles.

    Args:
        num_images: dataset length.
        seed: non-negative; two datasets with different seeds share no images.
        image_size: side of the square images in pixels.
        transform, is_train: see `DetectionDataset`.
    """

    reads_image_files = False  # images are rendered from the seed, there is no file to check

    def __init__(
        self,
        num_images: int = 1000,
        seed: int = 0,
        image_size: int = 300,
        transform: Transform | None = None,
        is_train: bool = False,
    ) -> None:
        if num_images < 0 or seed < 0 or image_size < 20:
            raise ValueError(
                f"need num_images >= 0, seed >= 0, image_size >= 20; got {num_images}, {seed}, {image_size}"
            )
        self.seed, self.image_size = seed, image_size
        records = []
        for index in range(num_images):
            layout = _layout(seed, index, image_size)
            file_name = Path(f"synthetic://shapes/seed{seed}/{index:06d}.png")
            records.append(
                make_record(index, file_name, image_size, image_size, layout["boxes"], layout["labels"])
            )
        super().__init__(
            records, (BACKGROUND, *SHAPE_CLASSES), transform, is_train, name=f"synthetic shapes seed {seed}"
        )

    def load_image(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} synthetic images")
        return render_shapes(self.seed, index, self.image_size)
