"""Shared fakes for the evaluator tests: the evaluation half of the dataset contract and model outputs."""

from __future__ import annotations

import numpy as np
import torch


class FakeDataset:
    """class_names, len and get_annotation (docs/contracts.md), from a list of (boxes, labels, difficult).

    `difficult` may be None (no difficult boxes); `id_map` sets `contiguous_id_to_dataset_id`.
    """

    def __init__(self, annotations, class_names=("__background__", "cell"), id_map=None, size=(100, 100)):
        self.annotations = annotations
        self.class_names = class_names
        self.size = size  # (height, width) of every image
        if id_map is not None:
            self.contiguous_id_to_dataset_id = id_map

    def __len__(self):
        return len(self.annotations)

    def get_annotation(self, index):
        boxes, labels, difficult = self.annotations[index]
        return {
            "image_id": f"img{index}",
            "file_name": f"img{index}.jpg",
            "height": self.size[0],
            "width": self.size[1],
            "boxes_xyxy": np.asarray(boxes, np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, np.int64),
            "difficult": np.asarray(difficult if difficult is not None else [False] * len(labels), bool),
        }


def prediction(boxes, labels, scores):
    """A model output dict for one image (docs/contracts.md)."""
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.tensor(labels, dtype=torch.int64),
        "scores": torch.tensor(scores, dtype=torch.float32),
    }


def gt(boxes, labels, difficult=None):
    """One image's ground truth as the error breakdown takes it: boxes_xyxy (G, 4), labels (G,), difficult (G,)."""
    return {
        "boxes_xyxy": np.array(boxes, float).reshape(-1, 4),
        "labels": np.array(labels, np.int64),
        "difficult": np.array(difficult or [False] * len(labels), bool),
    }


def pred(boxes, labels, scores):
    """One image's detections as the error breakdown takes them: boxes_xyxy (K, 4), labels (K,), scores (K,)."""
    return {
        "boxes_xyxy": np.array(boxes, float).reshape(-1, 4),
        "labels": np.array(labels, np.int64),
        "scores": np.array(scores, float),
    }
