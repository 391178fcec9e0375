"""Follow one training sample through every step of the training pipeline, boxes drawn after each step.

    python tools/visualize_augmentations.py --output aug.png                      # synthetic shapes
    python tools/visualize_augmentations.py --config-file CFG --dataset voc_2007_trainval --index 5 \
        --seed 3 --output aug.png

The steps are those of `build_transforms(..., is_train=True)` (see `ssd/data/transforms.py`), each applied
on its own with one random generator, so the grid shows exactly what the data loader would produce for this
generator. Most steps act with probability 0.5: a step that left the sample unchanged says "(no change)";
try other `--seed` values. The last panel is the network input turned back into an image (mean added).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run from any folder without installing the package

from ssd.config import load_config  # noqa: E402
from ssd.data.datasets import get_dataset, register_from_config  # noqa: E402
from ssd.data.transforms import ToPercentCoords, build_transforms  # noqa: E402
from ssd.utils.visualize import draw_boxes, make_grid, put_title, write_image  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / "configs" / "shapes_mobilenet_v2_ssdlite.yaml"
PANEL = 260  # side of each panel in pixels


def to_display(image, boxes: np.ndarray, relative: bool, pixel_mean) -> tuple[np.ndarray, np.ndarray]:
    """A step's image (uint8 HWC, or the final (3, S, S) float tensor) -> uint8 RGB and boxes in its pixels."""
    if isinstance(image, torch.Tensor):  # NormalizeToTensor: undo the mean subtraction and the CHW layout
        image = (image.permute(1, 2, 0).numpy() + np.asarray(pixel_mean, np.float32)).clip(0, 255)
    image = np.asarray(image).astype(np.uint8)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if relative:
        height, width = image.shape[:2]
        boxes = boxes * np.array([width, height, width, height], dtype=np.float32)
    return image, boxes


def panel(image: np.ndarray, boxes: np.ndarray, labels, class_names, title: str) -> np.ndarray:
    """Fit the image into PANEL x PANEL (aspect kept), draw the boxes, add a title."""
    height, width = image.shape[:2]
    scale = PANEL / max(height, width)
    resized = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))))
    drawn = draw_boxes(resized, boxes * scale, np.asarray(labels), class_names=class_names)
    return put_title(drawn, title)


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=str(DEFAULT_CONFIG), help="YAML config (default: shapes)")
    parser.add_argument("--dataset", default="shapes_train", help="dataset name (default: shapes_train)")
    parser.add_argument("--index", type=int, default=0, help="sample index in the dataset")
    parser.add_argument("--seed", type=int, default=0, help="seed of the augmentation's random generator")
    parser.add_argument("--output", required=True, help="PNG/JPG file to write")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)

    cfg = load_config(args.config_file, args.opts)
    register_from_config(cfg.DATASETS.REGISTER, cfg.DATASETS.CLASS_NAMES)
    dataset = get_dataset(args.dataset, data_root=cfg.DATASETS.DATA_ROOT or None)
    if not 0 <= args.index < len(dataset):
        parser.error(f"--index {args.index} is outside {args.dataset} ({len(dataset)} images)")
    annotation = dataset.get_annotation(args.index)
    keep = ~annotation["difficult"]  # training drops difficult boxes before the transforms
    image, boxes, labels = (
        dataset.load_image(args.index),
        annotation["boxes_xyxy"][keep],
        annotation["labels"][keep],
    )
    names = dataset.class_names

    # Every step of the paper's pipeline, whatever INPUT.AUGMENTATION the config trains with.
    pipeline = build_transforms(cfg.INPUT.IMAGE_SIZE, cfg.INPUT.PIXEL_MEAN, is_train=True, augmentation="ssd")
    rng = np.random.default_rng(args.seed)
    relative = False
    panels = [panel(image, boxes, labels, names, f"0 input {image.shape[1]}x{image.shape[0]}")]
    for step, transform in enumerate(pipeline.transforms, start=1):
        before = (image, boxes)
        image, boxes, labels = transform(image, boxes, labels, rng)
        relative = relative or isinstance(transform, ToPercentCoords)
        unchanged = (
            isinstance(image, np.ndarray)
            and image.shape == before[0].shape
            and np.array_equal(image, before[0])
            and np.array_equal(boxes, before[1])
        )
        shown, shown_boxes = to_display(image, boxes, relative, cfg.INPUT.PIXEL_MEAN)
        title = f"{step} {type(transform).__name__}" + (" (no change)" if unchanged else "")
        panels.append(panel(shown, shown_boxes, labels, names, title))
        print(f"{title}: image {shown.shape[1]}x{shown.shape[0]}, {len(shown_boxes)} boxes")
    grid = put_title(make_grid(panels, columns=4), f"{args.dataset}[{args.index}], seed {args.seed}")
    path = write_image(args.output, grid)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
