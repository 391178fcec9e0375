"""A validation split held out of the training images, for when the config names no validation set.

Model selection (model_best.pth) and early stopping need images the model does not train on, and they must
never be the test images, or the reported test numbers are tuned on the test set. When DATASETS.VAL is empty,
`holdout_split` sets aside DATASETS.VAL_FRACTION of the training images, at most DATASETS.VAL_MAX_IMAGES of
them: on a COCO-sized set 20 % would be 23,657 images, every validation would take hours and all of them would
be lost to training (COCO's own val2017, 5,000 images, is what its models are compared on).

Which images are held out depends only on their file names: each name is hashed (SHA-1, a fixed function,
unlike Python's salted `hash`) and the images with the smallest hashes form the validation split. So the
split is the same on every run, machine and process, whatever SEED is and in whatever order the annotation
file lists the images, and it does not depend on the boxes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


class DetectionSubset(torch.utils.data.Dataset):
    """Some images of a detection dataset, re-indexed 0..len-1; the dataset contract is kept.

    Args:
        dataset: a `DetectionDataset` or `DetectionConcatDataset`.
        indices: the images to keep, as indices of `dataset`.
        name: used in logs ("bccd_train[val split]").
    """

    def __init__(self, dataset, indices: Sequence[int], name: str = "") -> None:
        self.dataset = dataset
        self.indices = [int(i) for i in indices]
        self.name = name or f"{getattr(dataset, 'name', type(dataset).__name__)} subset"
        self.class_names: tuple[str, ...] = tuple(dataset.class_names)
        self.contiguous_id_to_dataset_id = dataset.contiguous_id_to_dataset_id

    def __len__(self) -> int:
        return len(self.indices)

    def get_annotation(self, index: int) -> dict[str, Any]:
        return self.dataset.get_annotation(self.indices[index])

    def load_image(self, index: int) -> np.ndarray:
        return self.dataset.load_image(self.indices[index])

    def get_item(self, index: int, rng: np.random.Generator | None):
        image, target, _ = self.dataset.get_item(self.indices[index], rng)
        return image, target, index

    def __getitem__(self, index: int):
        return self.get_item(index, rng=None)


def _name_hash(file_name: str) -> int:
    return int.from_bytes(hashlib.sha1(str(file_name).encode("utf-8")).digest()[:8], "big")


def holdout_split(
    file_names: Sequence[str], fraction: float, max_images: int = 0
) -> tuple[list[int], list[int]]:
    """Split image indices into (train, val): val is round(fraction * n) images, at least 1 of each.

    Args:
        file_names: one per image (n >= 2), e.g. `dataset.get_annotation(i)["file_name"]`.
        fraction: share of the images to hold out, in (0, 1).
        max_images: at most this many images are held out (0 = no cap); the others stay in training.

    Returns:
        train_indices, val_indices: sorted, disjoint, together every index 0..n-1.

    Raises:
        ValueError: fewer than 2 images, fraction outside (0, 1), or max_images < 0.
    """
    n = len(file_names)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"DATASETS.VAL_FRACTION must be in (0, 1) to hold out images, got {fraction}")
    if n < 2:
        raise ValueError(f"cannot hold out a validation split from {n} training image(s); give DATASETS.VAL")
    if max_images < 0:
        raise ValueError(f"DATASETS.VAL_MAX_IMAGES must be >= 0 (0 = no cap), got {max_images}")
    num_val = min(n - 1, max(1, round(fraction * n)))
    if max_images:
        num_val = min(num_val, max_images)
    # Ties (the same file name twice) are broken by index, so the order is total and deterministic.
    order = sorted(range(n), key=lambda i: (_name_hash(file_names[i]), i))
    val = sorted(order[:num_val])
    held = set(val)
    train = [i for i in range(n) if i not in held]
    return train, val


def split_for_validation(
    dataset, fraction: float, max_images: int = 0
) -> tuple[DetectionSubset, DetectionSubset]:
    """`holdout_split` applied to a dataset: (train subset, validation subset)."""
    names = [dataset.get_annotation(i)["file_name"] for i in range(len(dataset))]
    train, val = holdout_split(names, fraction, max_images)
    base = getattr(dataset, "name", type(dataset).__name__)
    percent = math.floor(100 * len(val) / len(names) + 0.5)
    return (
        DetectionSubset(dataset, train, name=f"{base} [train split, {100 - percent}%]"),
        DetectionSubset(dataset, val, name=f"{base} [val split, {percent}%]"),
    )
