"""One parse, several uses: views of a parsed dataset with other pipelines, and all its boxes as arrays.

The recipe step (ssd/engine/recipe.py) parses DATASETS.TRAIN once; the training images (training pipeline)
and the held-out validation images (test pipeline) are views of that one parse (`with_transform`), and the
prior fit and the coverage table read every training box at once from the packed records
(`training_boxes`) instead of one annotation dict per image. Works through `DetectionSubset` (split.py) and
`DetectionConcatDataset` (build.py, a torch `ConcatDataset`).
"""

from __future__ import annotations

import copy

import numpy as np
from torch.utils.data import ConcatDataset, Dataset

from ssd.data.split import DetectionSubset


def with_transform(dataset: Dataset, transform, is_train: bool) -> Dataset:
    """The same parsed images with another pipeline: shallow copies that share the packed records.

    A training view (`is_train` True: difficult boxes dropped, augmentation) and a validation view (test
    pipeline, difficult boxes kept) of one parse cost no second parse and no second copy of the records.
    Works through `DetectionConcatDataset` and `DetectionSubset` (the indices are kept).
    """
    if isinstance(dataset, DetectionSubset):
        inner = with_transform(dataset.dataset, transform, is_train)
        return DetectionSubset(inner, dataset.indices, name=dataset.name)
    if isinstance(dataset, ConcatDataset):  # build.DetectionConcatDataset
        return type(dataset)([with_transform(d, transform, is_train) for d in dataset.datasets])
    view = copy.copy(dataset)  # the records (a RecordTable of arrays) are shared, not copied
    view.transform, view.is_train = transform, is_train
    return view


def detection_datasets(dataset: Dataset) -> list[Dataset]:
    """The `DetectionDataset`s inside subsets and concatenations (each once)."""
    if isinstance(dataset, DetectionSubset):
        return detection_datasets(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return [d for inner in dataset.datasets for d in detection_datasets(inner)]
    return [dataset]


def training_boxes(dataset: Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every box a training run learns from, read from the packed records in a few array operations.

    Difficult boxes are left out (training drops them too); no image is decoded.

    Returns:
        boxes_norm (B, 4) float64 xyxy in 0..1 of its image, labels (B,) int64, image (B,) int64 index of
        the box's image in `dataset`; boxes in image order, then in annotation order.
    """
    if isinstance(dataset, DetectionSubset):
        boxes, labels, image = training_boxes(dataset.dataset)
        position = np.full(len(dataset.dataset), -1, dtype=np.int64)  # parent index -> subset index
        position[np.asarray(dataset.indices, dtype=np.int64)] = np.arange(len(dataset))
        new_image = position[image]  # (B,)
        # Subset indices may be in any order: keep the boxes in the subset's image order.
        order = np.argsort(new_image[new_image >= 0], kind="stable")
        keep = np.flatnonzero(new_image >= 0)[order]
        return boxes[keep], labels[keep], new_image[keep]
    if isinstance(dataset, ConcatDataset):  # build.DetectionConcatDataset: indices run through its parts
        parts = [training_boxes(d) for d in dataset.datasets]
        starts = [0, *dataset.cumulative_sizes[:-1]]
        return (
            np.concatenate([b for b, _, _ in parts]),
            np.concatenate([lab for _, lab, _ in parts]),
            np.concatenate([img + start for (_, _, img), start in zip(parts, starts, strict=True)]),
        )
    if hasattr(dataset, "box_arrays"):
        boxes_xyxy, labels, difficult, image, widths, heights = dataset.box_arrays()
    else:  # a dataset of another kind: one annotation dict per image
        records = [dataset.get_annotation(i) for i in range(len(dataset))]
        counts = [len(r["labels"]) for r in records]
        boxes_xyxy = np.concatenate(
            [np.zeros((0, 4))] + [np.reshape(r["boxes_xyxy"], (-1, 4)) for r in records]
        )
        labels = np.concatenate([np.zeros(0, np.int64)] + [np.asarray(r["labels"]) for r in records])
        difficult = np.concatenate([np.zeros(0, bool)] + [np.asarray(r["difficult"], bool) for r in records])
        image = np.repeat(np.arange(len(records)), counts)
        widths = np.array([r["width"] for r in records], dtype=np.int64)
        heights = np.array([r["height"] for r in records], dtype=np.int64)
    scale = np.stack([widths, heights, widths, heights], axis=1).astype(np.float64)[image]  # (B, 4)
    keep = ~np.asarray(difficult, dtype=bool)
    boxes_norm = np.asarray(boxes_xyxy, dtype=np.float64)[keep] / scale[keep]
    return boxes_norm, np.asarray(labels, dtype=np.int64)[keep], np.asarray(image, dtype=np.int64)[keep]
