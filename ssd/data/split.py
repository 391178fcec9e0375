"""A validation split held out of the training images, for when the config names no validation set.

Model selection (model_best.pth) and early stopping need images the model does not train on, and they must
never be the test images, or the reported test numbers are tuned on the test set. When DATASETS.VAL is empty,
`holdout_split` sets aside DATASETS.VAL_FRACTION of the training images, at most DATASETS.VAL_MAX_IMAGES of
them: on a COCO-sized set 20 % would be 23,657 images, every validation would take hours and all of them would
be lost to training (COCO's own val2017, 5,000 images, is what its models are compared on).

Which images are held out depends on their names and classes only: each name is hashed (SHA-1, a fixed
function, unlike Python's salted `hash`) and the images are taken in the order of their hashes. The name is
the file's base name (`relative_names`), or, when two files share a base name, its path below the folder
all the images have in common: never the full path, so the dataset splits the same way under ../shared/data
and /work/shared/data. First, for each class from the rarest up, the first image (in hash order) that holds
it, so that every class present in two images or more is validated; then the others in hash order. An image
is held out only if every class in it keeps a training image. So the split is the same on every run, machine
and process, whatever SEED is and in whatever order the annotation file lists the images.

A held-out split of under MIN_VAL_IMAGES images, or one missing a class, gets a warning: model_best.pth and
early stopping follow its score.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

MIN_VAL_IMAGES = 10  # a held-out split under this many images gets a warning


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


def relative_names(file_paths: Sequence[str]) -> list[str]:
    """What the split hashes: each file's base name ("0001.jpg"); when two files share a base name, each path
    below the folder that all of them have in common ("train/0001.jpg", "val/0001.jpg"), with "/" separators.
    """
    paths = [str(path).replace("\\", "/") for path in file_paths]
    names = [path.rsplit("/", 1)[-1] for path in paths]
    if len(set(names)) == len(names):
        return names
    parts = [[part for part in path.split("/") if part not in ("", ".")] for path in paths]
    common = 0
    while all(len(p) > common + 1 and p[common] == parts[0][common] for p in parts):
        common += 1
    return ["/".join(p[common:]) for p in parts]


def holdout_split(
    file_names: Sequence[str],
    fraction: float,
    max_images: int = 0,
    classes_per_image: Sequence[Sequence[int]] | None = None,
) -> tuple[list[int], list[int]]:
    """Split image indices into (train, val): val is round(fraction * n) images, at least 1 of each.

    Args:
        file_names: one per image (n >= 2), as `relative_names` gives them (the hash is of this string).
        fraction: share of the images to hold out, in (0, 1).
        max_images: at most this many images are held out (0 = no cap); the others stay in training.
        classes_per_image: the labels of each image's boxes (repeats allowed), or None to split by name only.
            Given, every class found in two images or more is held out in one of them first (rarest class
            first, while val has room), and no image is held out whose class would leave training.

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
    if classes_per_image is None:
        val = order[:num_val]
    else:
        val = _stratified(order, [{int(c) for c in labels} for labels in classes_per_image], num_val)
    held = set(val)
    return [i for i in range(n) if i not in held], sorted(val)


def _stratified(order: list[int], classes: list[set[int]], num_val: int) -> list[int]:
    """`num_val` images in `order` (hash order): one per class first, rarest class first; see holdout_split."""
    images_with: dict[int, int] = {}
    for present in classes:
        for c in present:
            images_with[c] = images_with.get(c, 0) + 1
    in_training = dict(images_with)  # training images left that hold each class
    val: list[int] = []
    held: set[int] = set()

    def hold_out(i: int) -> None:
        val.append(i)
        held.add(i)
        for c in classes[i]:
            in_training[c] -= 1

    def keeps_training(i: int) -> bool:
        return i not in held and all(in_training[c] > 1 for c in classes[i])

    validated: set[int] = set()
    for c in sorted(images_with, key=lambda c: (images_with[c], c)):
        if len(val) == num_val or c in validated:
            continue
        pick = next((i for i in order if c in classes[i] and keeps_training(i)), None)
        if pick is not None:
            hold_out(pick)
            validated |= classes[pick]
    for only_spare in (True, False):  # the second pass only when every image left holds a last copy
        for i in order:
            if len(val) == num_val:
                break
            if keeps_training(i) if only_spare else i not in held:
                hold_out(i)
    return val


def split_for_validation(
    dataset, fraction: float, max_images: int = 0, warn: bool = True
) -> tuple[DetectionSubset, DetectionSubset]:
    """`holdout_split` applied to a dataset, by relative names and classes: (train subset, validation subset).

    `warn`: log a warning when the validation split is small or misses a class (train.py splits once).
    """
    annotations = [dataset.get_annotation(i) for i in range(len(dataset))]
    names = relative_names([a["file_name"] for a in annotations])
    classes = [np.asarray(a["labels"]).tolist() for a in annotations]
    train, val = holdout_split(names, fraction, max_images, classes)
    base = getattr(dataset, "name", type(dataset).__name__)
    percent = math.floor(100 * len(val) / len(names) + 0.5)
    if warn:
        _warn_if_small(dataset.class_names, classes, val, len(names), fraction)
    return (
        DetectionSubset(dataset, train, name=f"{base} [train split, {100 - percent}%]"),
        DetectionSubset(dataset, val, name=f"{base} [val split, {percent}%]"),
    )


def _warn_if_small(class_names, classes: list[list[int]], val: list[int], n: int, fraction: float) -> None:
    """One warning when the held-out split has under MIN_VAL_IMAGES images or lacks a class of the data."""
    present = {c for labels in classes for c in labels}
    validated = {c for i in val for c in classes[i]}
    missing = [class_names[c] for c in sorted(present - validated)]
    if len(val) >= MIN_VAL_IMAGES and not missing:
        return
    lacks = f" and no box of {', '.join(repr(m) for m in missing)}" if missing else ""
    logger.warning(
        "The held-out validation split has %d image(s)%s (DATASETS.VAL_FRACTION %g of %d training images): "
        "model_best.pth and early stopping follow its score, which on so few images is mostly noise%s. Give "
        "a validation set with DATASETS.VAL (a registered dataset of your own images), or raise "
        "DATASETS.VAL_FRACTION.",
        len(val), lacks, fraction, n, " and ignores those classes" if missing else "",
    )  # fmt: skip
