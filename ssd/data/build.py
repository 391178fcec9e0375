"""From the config to datasets and data loaders (the only place in ssd/data that reads a cfg).

Batches (docs/contracts.md, "Data loader"):
    images  (N, 3, S, S) float32, mean subtracted
    targets list of N dicts {"boxes_norm": (G_i, 4) float32 in 0..1, "labels": (G_i,) int64}; G_i may be 0
    indices (N,) int64, dataset indices (of the concatenated dataset for several training sets)

Workers: DATA_LOADER.NUM_WORKERS is used as given. Its default (8, lufficc's) suits a GPU machine with many
cores; on a CPU-only laptop 2-4 is plenty and 0 (load in the main process) is easiest to debug. Results do not
depend on the number of workers: every training sample is augmented with its own generator.
"""

from __future__ import annotations

import logging
import multiprocessing
import secrets
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import BatchSampler, ConcatDataset, DataLoader, Dataset

from ssd.config.loading import ConfigError
from ssd.data.datasets.base import DetectionDataset
from ssd.data.datasets.catalog import UnknownDatasetError, get_dataset, register_from_config
from ssd.data.datasets.image_files import DatasetError
from ssd.data.samplers import IterationBatchSampler, ShardedSequentialSampler, distributed_rank_and_size
from ssd.data.split import DetectionSubset, split_for_validation
from ssd.data.transforms import build_transforms
from ssd.data.views import detection_datasets, with_transform

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, list[dict[str, torch.Tensor]], torch.Tensor]


class DetectionConcatDataset(ConcatDataset):
    """Several datasets with the same classes, seen as one (indices run through them in order)."""

    def __init__(self, datasets: Sequence[DetectionDataset]) -> None:
        super().__init__(datasets)
        first = datasets[0]
        for dataset in datasets[1:]:
            if tuple(dataset.class_names) != tuple(first.class_names):
                raise ValueError(
                    f"cannot concatenate datasets with different classes: {first.name} has {first.class_names}, "
                    f"{dataset.name} has {dataset.class_names}"
                )
        self.class_names = first.class_names
        self.contiguous_id_to_dataset_id = first.contiguous_id_to_dataset_id
        self.num_clipped_boxes = sum(d.num_clipped_boxes for d in datasets)
        self.num_dropped_boxes = sum(d.num_dropped_boxes for d in datasets)
        self.num_size_mismatches = sum(getattr(d, "num_size_mismatches", 0) for d in datasets)

    def _locate(self, index: int) -> tuple[DetectionDataset, int]:
        dataset_index = int(np.searchsorted(self.cumulative_sizes, index, side="right"))
        start = self.cumulative_sizes[dataset_index - 1] if dataset_index else 0
        return self.datasets[dataset_index], index - start

    def get_annotation(self, index: int) -> dict[str, Any]:
        dataset, local = self._locate(index)
        return dataset.get_annotation(local)

    def load_image(self, index: int) -> np.ndarray:
        dataset, local = self._locate(index)
        return dataset.load_image(local)

    def get_item(self, index: int, rng: np.random.Generator | None):
        dataset, local = self._locate(index)
        image, target, _ = dataset.get_item(local, rng)
        return image, target, index

    def __getitem__(self, index: int):
        return self.get_item(index, rng=None)


def build_dataset(
    cfg, names: Sequence[str], is_train: bool, annotations_only: bool = False
) -> DetectionDataset | DetectionConcatDataset:
    """The datasets called `names` (DATASETS.REGISTER entries registered first) with the pipeline of
    `build_transforms`; several names give one `DetectionConcatDataset` (same classes required).
    `annotations_only`: no transform and no DATASETS.CHECK_IMAGES decoding (for reading boxes, e.g. to fit
    priors, before INPUT is settled; the training dataset built afterwards decodes them).

    Raises:
        DatasetError: a dataset is empty, holds images above INPUT.MAX_IMAGE_PIXELS, or
            (DATASETS.CHECK_IMAGES) holds images that cannot be decoded.
    """
    follow_symlinks = cfg.DATASETS.FOLLOW_SYMLINKS
    register_from_config(cfg.DATASETS.REGISTER, cfg.DATASETS.CLASS_NAMES, follow_symlinks)
    if isinstance(names, str):
        names = [names]
    if not names:
        raise ValueError(
            f"no dataset names given ({'DATASETS.TRAIN' if is_train else 'DATASETS.TEST'} is empty)"
        )
    transform = None
    if not annotations_only:
        transform = build_transforms(
            cfg.INPUT.IMAGE_SIZE, cfg.INPUT.PIXEL_MEAN, is_train, cfg.INPUT.AUGMENTATION
        )
    data_root = cfg.DATASETS.DATA_ROOT or None
    key = "DATASETS.TRAIN" if is_train else "DATASETS.TEST / DATASETS.VAL"
    try:
        datasets = [get_dataset(name, transform, is_train, data_root, follow_symlinks) for name in names]
    except UnknownDatasetError as error:
        raise UnknownDatasetError(f"{key}: {error}") from None
    for name, dataset in zip(names, datasets, strict=True):
        if len(dataset) == 0:
            raise DatasetError(
                f"dataset {name!r} ({key}) is empty: {getattr(dataset, 'name', name)} has no images; "
                "check its annotation file or split"
            )
        if hasattr(dataset, "check_image_pixels"):  # header sizes, read when the dataset was built
            dataset.check_image_pixels(cfg.INPUT.MAX_IMAGE_PIXELS)
        if cfg.DATASETS.CHECK_IMAGES and not annotations_only and hasattr(dataset, "verify_images"):
            dataset.verify_images()
    return datasets[0] if len(datasets) == 1 else DetectionConcatDataset(datasets)


def check_num_classes(num_classes: int, class_names: Sequence[str], dataset_name: str) -> None:
    """Refuse a model whose MODEL.NUM_CLASSES differs from its dataset's classes (background included).

    Fewer outputs than classes fail deep inside the loss ("Target 3 is out of bounds") and more outputs
    silently train and predict classes that never occur; both are a config slip, named here.
    """
    if len(class_names) != num_classes:
        shown = ", ".join(class_names[:6]) + (", ..." if len(class_names) > 6 else "")
        raise ConfigError(
            f"MODEL.NUM_CLASSES is {num_classes}, but dataset {dataset_name!r} has {len(class_names)} classes "
            f"with background ({shown}): set MODEL.NUM_CLASSES {len(class_names)}"
        )


def collate_batch(samples: list[tuple[torch.Tensor, dict[str, torch.Tensor], int]]) -> Batch:
    """[(image (3,S,S), target, index)] * N -> (images (N,3,S,S), targets list of N dicts, indices (N,))."""
    images = torch.stack([sample[0] for sample in samples])  # (N, 3, S, S)
    targets = [sample[1] for sample in samples]  # box counts differ per image: kept as a list
    indices = torch.tensor([sample[2] for sample in samples], dtype=torch.int64)  # (N,)
    return images, targets, indices


class _SeededSamples(Dataset):
    """Training-loader view of a dataset: item (index, position) is augmented with a generator seeded by
    (seed, position, index), so it does not depend on the worker that loads it (see samplers.py).

    An image that cannot be read although it passed the start-up check (damaged or deleted since, when
    DATASETS.CHECK_IMAGES is off) is skipped: the next image of the dataset takes its place in the batch and
    a warning names the file. Skips are counted over all the loader's processes (a shared counter); the one
    after `max_unreadable` (DATASETS.MAX_UNREADABLE_IMAGES) stops the run with a DatasetError naming the file
    and the option: a few bad files should not end a long run, a failing disk should.
    """

    def __init__(
        self,
        dataset: DetectionDataset | DetectionConcatDataset | DetectionSubset,
        seed: int,
        max_unreadable: int = 0,
    ) -> None:
        self.dataset, self.seed, self.max_unreadable = dataset, seed, max_unreadable
        self.num_unreadable = multiprocessing.Value("i", 0)  # shared with the worker processes

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.dataset.class_names

    def __getitem__(self, item: tuple[int, int]):
        index, position = item
        rng = np.random.default_rng([self.seed, position, index])
        for offset in range(len(self.dataset)):
            candidate = (index + offset) % len(self.dataset)
            try:
                return self.dataset.get_item(candidate, rng=rng)
            except OSError as error:  # FileNotFoundError included; one line naming the file
                with self.num_unreadable.get_lock():
                    self.num_unreadable.value += 1
                    count = self.num_unreadable.value
                if count > self.max_unreadable:
                    raise DatasetError(
                        f"{error}: {count} image reads failed during training, more than "
                        f"DATASETS.MAX_UNREADABLE_IMAGES {self.max_unreadable} (the earlier ones are in the log); "
                        "replace or remove the files (DATASETS.CHECK_IMAGES True finds them all at start-up), "
                        "or raise the option"
                    ) from None
                logger.warning(
                    "Skipped an unreadable training image (%d of at most %d, DATASETS.MAX_UNREADABLE_IMAGES), "
                    "the next image takes its place: %s", count, self.max_unreadable, error,
                )  # fmt: skip
        raise DatasetError(f"no image of {getattr(self.dataset, 'name', 'the training set')} can be read")


# OpenCV single-threaded in every process. Its thread pool is not fork-safe: a DataLoader worker forked after
# the main process ran a parallel OpenCV call (a resize, a decode) hung for good in the worker's first OpenCV
# call (seen in CI, in pthread_cond_destroy). The pipeline runs in parallel across the loader's workers
# instead; a worker inherits this setting.
cv2.setNumThreads(0)


def _worker_init(worker_id: int) -> None:
    # Workers run in parallel already: one torch thread each avoids oversubscribing the cores (OpenCV is
    # single-threaded from the module import above).
    torch.set_num_threads(1)


def _resolve_seed(seed: int) -> int:
    if seed >= 0:
        return seed
    seed = secrets.randbits(31)
    logger.info("SEED is -1: data order and augmentation use the random seed %d", seed)
    return seed


def _holds_out_validation(cfg, num_train_images: int) -> bool:
    """True when DATASETS.VAL is empty and DATASETS.VAL_FRACTION > 0 of the training images can be held out."""
    if cfg.DATASETS.VAL or cfg.DATASETS.VAL_FRACTION <= 0:
        return False
    if num_train_images < 2:
        logger.warning(
            "DATASETS.VAL is empty and the training set has %d image(s), too few to hold any out: "
            "no validation during training", num_train_images,
        )  # fmt: skip
        return False
    return True


def hold_out_validation(cfg, parsed: Dataset) -> tuple[Dataset, Dataset | None]:
    """(training part, held-out validation part or None) of DATASETS.TRAIN, as parsed annotations.

    The held-out part is DATASETS.VAL_FRACTION of the images (`ssd.data.split`) when DATASETS.VAL is empty;
    with DATASETS.VAL named, or nothing to hold out, every image trains and None is returned. `parsed` is
    DATASETS.TRAIN built once (`build_dataset(..., annotations_only=True)`); both parts share its records.
    """
    if cfg.DATASETS.VAL:
        return parsed, None
    if not _holds_out_validation(cfg, len(parsed)):
        if cfg.DATASETS.VAL_FRACTION <= 0:
            logger.info("DATASETS.VAL is empty and DATASETS.VAL_FRACTION is 0: no validation during training")
        return parsed, None
    fraction, max_images = cfg.DATASETS.VAL_FRACTION, cfg.DATASETS.VAL_MAX_IMAGES
    train_part, val_part = split_for_validation(parsed, fraction, max_images)
    capped = max_images and len(val_part) == max_images < round(fraction * len(parsed))
    logger.info(
        "DATASETS.VAL is empty: holding out %d of the %d training images (DATASETS.VAL_FRACTION %g%s, chosen by "
        "a hash of their file names) for validation, model_best.pth and early stopping; training uses the "
        "other %d. DATASETS.TEST is not used before the final evaluation.",
        len(val_part), len(parsed), fraction, f", capped at DATASETS.VAL_MAX_IMAGES {max_images}" if capped else "",
        len(train_part),
    )  # fmt: skip
    return train_part, val_part


def build_train_val_datasets(
    cfg, parsed: Dataset | None = None, parts: tuple[Dataset, Dataset | None] | None = None
) -> tuple[Dataset, Dataset | None]:
    """(training images, validation images or None) as train.py uses them, with their pipelines.

    Validation is DATASETS.VAL (its first name) when given. Otherwise DATASETS.VAL_FRACTION of the training
    images are held out (`hold_out_validation`): the training set is then the rest, and the validation set
    the same images with the test-time pipeline (no augmentation, difficult boxes kept). DATASETS.TEST is
    never used for validation. VAL empty and VAL_FRACTION 0: no validation.

    Args:
        parsed: DATASETS.TRAIN already built with `annotations_only=True` (parsed here when None).
        parts: `hold_out_validation(cfg, parsed)` when already made (the recipe fits priors on its first).
    """
    if parts is None:
        if parsed is None:
            parsed = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True, annotations_only=True)
        parts = hold_out_validation(cfg, parsed)
    train_part, val_part = parts
    size, mean, augmentation = cfg.INPUT.IMAGE_SIZE, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.AUGMENTATION
    train = with_transform(train_part, build_transforms(size, mean, True, augmentation), is_train=True)
    if cfg.DATASETS.CHECK_IMAGES:  # skipped by the annotations-only parse; the held-out images too
        for dataset in detection_datasets(train_part):
            if hasattr(dataset, "verify_images"):
                dataset.verify_images()
    if cfg.DATASETS.VAL:
        names = tuple(cfg.DATASETS.VAL)
        if len(names) > 1:
            logger.warning("Validating on %s only (the first of DATASETS.VAL %s)", names[0], names)
        return train, build_dataset(cfg, [names[0]], is_train=False)
    if val_part is None:
        return train, None
    return train, with_transform(val_part, build_transforms(size, mean, False, augmentation), is_train=False)


def build_train_loader(cfg, start_iter: int = 0, dataset: Dataset | None = None) -> DataLoader:
    """Endless training loader: yields SOLVER.MAX_ITER - start_iter batches of SOLVER.BATCH_SIZE images.

    Deterministic given SEED (whatever DATA_LOADER.NUM_WORKERS is), and resuming at `start_iter` continues
    the data order of an uninterrupted run. In distributed mode every process gets its own share.
    `dataset`: the training images (default: all of DATASETS.TRAIN; train.py passes the images left after
    the validation split, `build_train_val_datasets`). `loader.dataset.dataset` is the detection dataset
    (`loader.dataset.class_names` is forwarded).
    """
    if dataset is None:
        dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True)
    seed = _resolve_seed(cfg.SEED)
    rank, world_size = distributed_rank_and_size()
    batch_sampler = IterationBatchSampler(
        len(dataset), cfg.SOLVER.BATCH_SIZE, seed, cfg.SOLVER.MAX_ITER, start_iter, rank, world_size
    )
    return DataLoader(
        _SeededSamples(dataset, seed, cfg.DATASETS.MAX_UNREADABLE_IMAGES),
        batch_sampler=batch_sampler,
        num_workers=cfg.DATA_LOADER.NUM_WORKERS,
        collate_fn=collate_batch,
        pin_memory=cfg.DATA_LOADER.PIN_MEMORY and torch.cuda.is_available(),
        worker_init_fn=_worker_init,
    )


def build_test_loader(
    cfg, dataset_name_or_dataset: str | Dataset, batch_size: int | None = None
) -> DataLoader:
    """Sequential loader over one dataset (a name, or a dataset built with the test transforms), batches of
    `batch_size` or TEST.BATCH_SIZE; in distributed mode each process gets every W-th image, indices kept.
    `loader.dataset` is the detection dataset."""
    if isinstance(dataset_name_or_dataset, str):
        dataset = build_dataset(cfg, [dataset_name_or_dataset], is_train=False)
    else:
        dataset = dataset_name_or_dataset
    rank, world_size = distributed_rank_and_size()
    sampler = ShardedSequentialSampler(len(dataset), rank, world_size)
    return DataLoader(
        dataset,
        batch_sampler=BatchSampler(sampler, batch_size or cfg.TEST.BATCH_SIZE, drop_last=False),
        num_workers=cfg.DATA_LOADER.NUM_WORKERS,
        collate_fn=collate_batch,
        pin_memory=cfg.DATA_LOADER.PIN_MEMORY and torch.cuda.is_available(),
        worker_init_fn=_worker_init,
    )
