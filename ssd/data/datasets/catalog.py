"""Dataset names -> dataset objects: the built-in names, and the user's own registrations.

Built-in names (resolved under a data root, see `resolve_data_root`):
    voc_{2007,2012}_{train,val,trainval,test}         ROOT/VOC2007/... (or ROOT/VOCdevkit/VOC2007/...)
    coco_2014_{train,val,minival,valminusminival}     ROOT/annotations/instances_<split>2014.json, ROOT/train2014/
    coco_2017_{train,val}                             ROOT/annotations/instances_<split>2017.json, ROOT/val2017/
    shapes_{train,val,test}                           synthetic shapes (1000 / 200 / 200 images), no files
$VOC_ROOT and $COCO_ROOT, when set, replace ROOT for their family (as in lufficc/SSD); COCO is also looked
for under ROOT/coco.

Your own data, from Python (a factory is called as `factory(transform=..., is_train=...)`)::

    register_voc("bccd_train", "../shared/data/BCCD", "train", class_names=("RBC", "WBC", "Platelets"))
    register_coco_instances("mine_val", "ann/val.json", "images/val")
    register_dataset("custom", lambda transform, is_train: MyDataset(..., transform=transform))

or from the config, DATASETS.REGISTER = ("bccd_train:voc:../shared/data/BCCD:train", ...) with the class
names in DATASETS.CLASS_NAMES (see `register_from_config`; ':' separates fields, so paths cannot hold one).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from ssd.data.datasets.base import DetectionDataset, Transform
from ssd.data.datasets.coco import COCODataset
from ssd.data.datasets.csv_dataset import COORDINATE_CONVENTIONS, CSVDataset
from ssd.data.datasets.image_files import DatasetError, DatasetFileNotFoundError
from ssd.data.datasets.synthetic import SyntheticShapesDataset
from ssd.data.datasets.voc import VOC_CLASSES, VOCDataset
from ssd.data.datasets.xml_folder import XMLFolderDataset

DatasetFactory = Callable[..., DetectionDataset]  # factory(transform=..., is_train=...) -> dataset


class UnknownDatasetError(DatasetError, KeyError):
    """A dataset name that is neither registered nor built in (also a KeyError, as a failed look-up)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


_REGISTERED: dict[str, DatasetFactory] = {}

_VOC_SPLITS = {
    f"voc_{year}_{split}": (year, split)
    for year in (2007, 2012)
    for split in ("train", "val", "trainval", "test")
}
_COCO_SPLITS = {  # name -> (image folder, annotation file stem)
    "coco_2014_train": ("train2014", "instances_train2014"),
    "coco_2014_val": ("val2014", "instances_val2014"),
    "coco_2014_minival": ("val2014", "instances_minival2014"),
    "coco_2014_valminusminival": ("val2014", "instances_valminusminival2014"),
    "coco_2017_train": ("train2017", "instances_train2017"),
    "coco_2017_val": ("val2017", "instances_val2017"),
}
_SHAPES = {"shapes_train": (1000, 1), "shapes_val": (200, 2), "shapes_test": (200, 3)}  # (images, seed)

REGISTER_FORMATS = {
    "voc": "voc:ROOT:SPLIT",
    "xml_folder": "xml_folder:DIR",
    "coco": "coco:JSON:IMAGE_DIR",
    "csv": "csv:CSV:IMAGE_DIR[:zero_based|one_based]",
    "synthetic": "synthetic:NUM_IMAGES:SEED[:IMAGE_SIZE]",
}


def resolve_data_root(data_root: str | Path | None = None) -> Path:
    """The folder built-in names live under: the argument, else $SSD_DATA_ROOT, else "datasets"."""
    return Path(data_root or os.environ.get("SSD_DATA_ROOT") or "datasets")


def register_dataset(name: str, factory: DatasetFactory) -> None:
    """Make `name` usable in DATASETS.TRAIN / TEST; a later registration of the same name replaces it."""
    _REGISTERED[name] = factory


# `follow_symlinks` (DATASETS.FOLLOW_SYMLINKS): accept image and annotation files that are symbolic links
# leading outside the dataset's folders (refused by default, see image_files.image_path_inside).


def register_voc(
    name: str,
    root: str | Path,
    split: str,
    class_names: Sequence[str] = VOC_CLASSES,
    follow_symlinks: bool = False,
) -> None:
    """A VOC-layout folder (Annotations/, JPEGImages/, ImageSets/Main/<split>.txt)."""
    register_dataset(
        name, partial(VOCDataset, root, split, tuple(class_names), follow_symlinks=follow_symlinks)
    )


def register_coco_instances(
    name: str, json_file: str | Path, image_root: str | Path, follow_symlinks: bool = False
) -> None:
    """A COCO instances JSON file and the folder its image file names are relative to."""
    register_dataset(name, partial(_coco, json_file, image_root, follow_symlinks=follow_symlinks))


def register_xml_folder(
    name: str, folder: str | Path, class_names: Sequence[str] | None = None, follow_symlinks: bool = False
) -> None:
    """A folder of images, each with a VOC XML file beside it."""
    register_dataset(
        name,
        partial(XMLFolderDataset, folder, tuple(class_names or ()) or None, follow_symlinks=follow_symlinks),
    )


def register_csv(
    name: str,
    csv_file: str | Path,
    image_dir: str | Path,
    class_names: Sequence[str] | None = None,
    one_based: bool = False,
    follow_symlinks: bool = False,
):
    """A CSV file `filename,width,height,class,xmin,ymin,xmax,ymax` and an image folder; `one_based` for
    corners copied from VOC XML (1-based pixel indices), see csv_dataset.py."""
    register_dataset(
        name,
        partial(
            CSVDataset,
            csv_file,
            image_dir,
            tuple(class_names or ()) or None,
            one_based=one_based,
            follow_symlinks=follow_symlinks,
        ),
    )


def register_synthetic(name: str, num_images: int, seed: int, image_size: int = 300) -> None:
    """Generated shapes (see synthetic.py)."""
    register_dataset(name, partial(SyntheticShapesDataset, num_images, seed, image_size))


def _coco(json_file, image_root, transform=None, is_train=False, follow_symlinks=False) -> COCODataset:
    # Training drops images without boxes only when asked (COCODataset(remove_empty=True)); here every image
    # is kept: an image without objects is a valid (negative-only) training sample in this package.
    return COCODataset(
        json_file, image_root, transform=transform, is_train=is_train, follow_symlinks=follow_symlinks
    )


def register_from_config(
    entries: Sequence[str], class_names: Sequence[str] = (), follow_symlinks: bool = False
) -> list[str]:
    """Register DATASETS.REGISTER entries "name:format:args" (formats: `REGISTER_FORMATS`).

    `class_names` (DATASETS.CLASS_NAMES, background excluded) apply to voc, xml_folder and csv entries;
    empty means the VOC classes (voc) or the names found in the files. `follow_symlinks`: see above.
    Returns the registered names.
    """
    names = []
    for entry in entries:
        name, _, rest = entry.partition(":")
        kind, _, args_text = rest.partition(":")
        args = args_text.split(":") if args_text else []
        expected = REGISTER_FORMATS.get(kind)
        arity = {"voc": (2,), "xml_folder": (1,), "coco": (2,), "csv": (2, 3), "synthetic": (2, 3)}.get(
            kind, ()
        )
        if not name or expected is None or len(args) not in arity:
            raise ValueError(
                f"DATASETS.REGISTER entry {entry!r} is not 'name:format:args' with one of the formats "
                + ", ".join(f"'name:{f}'" for f in REGISTER_FORMATS.values())
            )
        if kind == "voc":
            register_voc(name, args[0], args[1], tuple(class_names) or VOC_CLASSES, follow_symlinks)
        elif kind == "xml_folder":
            register_xml_folder(name, args[0], class_names, follow_symlinks)
        elif kind == "coco":
            register_coco_instances(name, args[0], args[1], follow_symlinks)
        elif kind == "csv":
            convention = args[2] if len(args) == 3 else "zero_based"
            if convention not in COORDINATE_CONVENTIONS:
                raise ValueError(
                    f"DATASETS.REGISTER entry {entry!r}: the last field says how the CSV counts pixels and must "
                    f"be one of {', '.join(COORDINATE_CONVENTIONS)}, got {convention!r}"
                )
            register_csv(name, args[0], args[1], class_names, convention == "one_based", follow_symlinks)
        else:
            register_synthetic(name, *(int(a) for a in args))
        names.append(name)
    return names


def list_datasets() -> list[str]:
    """Every name `get_dataset` accepts."""
    return sorted({*_REGISTERED, *_VOC_SPLITS, *_COCO_SPLITS, *_SHAPES})


def get_dataset(
    name: str,
    transform: Transform | None = None,
    is_train: bool = False,
    data_root: str | Path | None = None,
    follow_symlinks: bool = False,
) -> DetectionDataset:
    """Build the dataset called `name` (registered names first, then the built-in ones).

    `follow_symlinks` applies to the built-in VOC and COCO names (a registration carries its own).

    Raises:
        UnknownDatasetError: unknown name (a KeyError; the message lists the known names and the closest).
        FileNotFoundError: the data is not where the name says; the message names the path and layout.
    """
    if name in _REGISTERED:
        return _REGISTERED[name](transform=transform, is_train=is_train)
    if name in _SHAPES:
        num_images, seed = _SHAPES[name]
        return SyntheticShapesDataset(num_images, seed, transform=transform, is_train=is_train)
    root = resolve_data_root(data_root)
    if name in _VOC_SPLITS:
        year, split = _VOC_SPLITS[name]
        base = Path(os.environ.get("VOC_ROOT") or root)
        candidates = [base / f"VOC{year}", base / "VOCdevkit" / f"VOC{year}"]
        folder = _first_existing(
            candidates, f"{name}: VOC{year} folder", f"VOC{year}/{{Annotations,JPEGImages,ImageSets/Main}}"
        )
        return VOCDataset(
            folder, split, transform=transform, is_train=is_train, follow_symlinks=follow_symlinks
        )
    if name in _COCO_SPLITS:
        image_dir, annotation = _COCO_SPLITS[name]
        base = Path(os.environ.get("COCO_ROOT") or root)
        folder = _first_existing(
            [base, base / "coco"],
            f"{name}: COCO folder",
            f"annotations/{annotation}.json and {image_dir}/",
            marker=f"annotations/{annotation}.json",
        )
        json_file = folder / "annotations" / f"{annotation}.json"
        return _coco(json_file, folder / image_dir, transform, is_train, follow_symlinks)
    known = list_datasets()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UnknownDatasetError(
        f"unknown dataset {name!r}: {hint}registered and built-in names: {', '.join(known)} (register your "
        "own with DATASETS.REGISTER)"
    )


def _first_existing(candidates: list[Path], what: str, layout: str, marker: str = "") -> Path:
    for folder in candidates:
        if (folder / marker).exists() if marker else folder.is_dir():
            return folder
    tried = " or ".join(str(folder / marker) if marker else str(folder) for folder in candidates)
    raise DatasetFileNotFoundError(
        f"{what} not found: looked for {tried} (expected layout {layout}; set DATASETS.DATA_ROOT, "
        "$SSD_DATA_ROOT, $VOC_ROOT or $COCO_ROOT)"
    )
