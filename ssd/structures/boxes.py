"""The one home of box formats and box geometry.

Formats (the suffix of a variable name says which one it holds):
    xyxy    (x1, y1, x2, y2): top-left and bottom-right corners.
    cxcywh  (cx, cy, w, h):   centre and size; used only for priors and box encoding.
    xywh    (x, y, w, h):     top-left corner and size; COCO JSON files only.
Units: `_norm` means relative to the image side (0..1); otherwise pixels.

Every function takes (..., 4) tensors and returns new tensors; nothing is modified in place.
`np_*` twins work on NumPy arrays for the data pipeline, which runs in NumPy/OpenCV.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


def xyxy_to_cxcywh(boxes_xyxy: Tensor) -> Tensor:
    """(..., 4) corners -> (..., 4) centre and size."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def cxcywh_to_xyxy(boxes_cxcywh: Tensor) -> Tensor:
    """(..., 4) centre and size -> (..., 4) corners."""
    cx, cy, w, h = boxes_cxcywh.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def xyxy_to_xywh(boxes_xyxy: Tensor) -> Tensor:
    """(..., 4) corners -> (..., 4) COCO top-left and size."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    return torch.stack((x1, y1, x2 - x1, y2 - y1), dim=-1)


def box_area(boxes_xyxy: Tensor) -> Tensor:
    """(..., 4) -> (...) area; inverted boxes have area 0, not a negative area."""
    return (boxes_xyxy[..., 2] - boxes_xyxy[..., 0]).clamp(min=0) * (
        boxes_xyxy[..., 3] - boxes_xyxy[..., 1]
    ).clamp(min=0)


def box_iou(boxes1_xyxy: Tensor, boxes2_xyxy: Tensor) -> Tensor:
    """Pairwise intersection over union.

    Args:
        boxes1_xyxy: (A, 4).
        boxes2_xyxy: (B, 4), same unit as boxes1.

    Returns:
        (A, B) IoU in [0, 1]. A pair whose union is empty (two zero-area boxes) has IoU 0.
    """
    area1 = box_area(boxes1_xyxy)  # (A,)
    area2 = box_area(boxes2_xyxy)  # (B,)
    top_left = torch.maximum(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])  # (A, B, 2)
    bottom_right = torch.minimum(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])  # (A, B, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (A, B, 2)
    inter = wh[..., 0] * wh[..., 1]  # (A, B)
    union = area1[:, None] + area2[None, :] - inter  # (A, B)
    # Guarded divisor: an empty union only happens for two empty boxes, whose IoU we define as 0.
    return inter / union.clamp(min=torch.finfo(inter.dtype).tiny)


def clip_boxes_xyxy(boxes_xyxy: Tensor, height: float, width: float) -> Tensor:
    """(..., 4) boxes clamped to the image [0, width] x [0, height]."""
    x1, y1, x2, y2 = boxes_xyxy.unbind(-1)
    return torch.stack(
        (x1.clamp(0, width), y1.clamp(0, height), x2.clamp(0, width), y2.clamp(0, height)), dim=-1
    )


def scale_boxes(boxes_norm: Tensor, height: float, width: float) -> Tensor:
    """(..., 4) xyxy relative to the image (0..1) -> (..., 4) xyxy in pixels of a height x width image."""
    scale = boxes_norm.new_tensor([width, height, width, height])
    return boxes_norm * scale


# ----- NumPy twins for the data pipeline -----------------------------------------------------------


def np_box_area(boxes_xyxy: np.ndarray) -> np.ndarray:
    """(G, 4) -> (G,) area, 0 for inverted boxes."""
    return np.clip(boxes_xyxy[:, 2] - boxes_xyxy[:, 0], 0, None) * np.clip(
        boxes_xyxy[:, 3] - boxes_xyxy[:, 1], 0, None
    )


def np_box_iou(boxes1_xyxy: np.ndarray, boxes2_xyxy: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (A, 4) and (B, 4) arrays -> (A, B); same definition as `box_iou`."""
    top_left = np.maximum(boxes1_xyxy[:, None, :2], boxes2_xyxy[None, :, :2])  # (A, B, 2)
    bottom_right = np.minimum(boxes1_xyxy[:, None, 2:], boxes2_xyxy[None, :, 2:])  # (A, B, 2)
    wh = np.clip(bottom_right - top_left, 0, None)
    inter = wh[..., 0] * wh[..., 1]  # (A, B)
    union = np_box_area(boxes1_xyxy)[:, None] + np_box_area(boxes2_xyxy)[None, :] - inter
    return inter / np.maximum(union, np.finfo(np.float32).tiny)
