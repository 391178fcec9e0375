"""Data: datasets and their catalog, augmentation, samplers and loaders (docs/contracts.md)."""

from ssd.data.build import build_dataset, build_test_loader, build_train_loader, collate_batch
from ssd.data.transforms import build_transforms

__all__ = ["build_dataset", "build_test_loader", "build_train_loader", "build_transforms", "collate_batch"]
