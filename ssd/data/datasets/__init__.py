"""Detection datasets (contract: docs/contracts.md, "Datasets") and the name catalog."""

from ssd.data.datasets.base import BACKGROUND, DetectionDataset, make_record
from ssd.data.datasets.catalog import (
    get_dataset,
    list_datasets,
    register_coco_instances,
    register_csv,
    register_dataset,
    register_from_config,
    register_synthetic,
    register_voc,
    register_xml_folder,
)
from ssd.data.datasets.coco import COCODataset
from ssd.data.datasets.csv_dataset import CSVDataset
from ssd.data.datasets.image_files import DatasetError, DatasetFileNotFoundError, read_image_rgb
from ssd.data.datasets.synthetic import SHAPE_CLASSES, SyntheticShapesDataset
from ssd.data.datasets.voc import VOC_CLASSES, VOCDataset
from ssd.data.datasets.xml_folder import XMLFolderDataset

__all__ = [
    "BACKGROUND",
    "COCODataset",
    "CSVDataset",
    "DatasetError",
    "DatasetFileNotFoundError",
    "DetectionDataset",
    "SHAPE_CLASSES",
    "SyntheticShapesDataset",
    "VOCDataset",
    "VOC_CLASSES",
    "XMLFolderDataset",
    "get_dataset",
    "list_datasets",
    "make_record",
    "read_image_rgb",
    "register_coco_instances",
    "register_csv",
    "register_dataset",
    "register_from_config",
    "register_synthetic",
    "register_voc",
    "register_xml_folder",
]
