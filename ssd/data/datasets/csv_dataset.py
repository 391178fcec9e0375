"""A CSV file of boxes plus a folder of images.

Format: a header `filename,width,height,class,xmin,ymin,xmax,ymax`, then one row per box; `filename` is
relative to the image folder. An image without objects is a row whose `class` and coordinates are empty.
Images appear in the order of their first row.

Coordinates: by default 0-based pixel corners, used as they are. Many CSV files are converted from VOC XML
(labelImg, Roboflow and the popular `xml_to_csv` scripts copy the XML numbers), and so keep VOC's 1-based
pixel indices; say so with `one_based=True` (`"name:csv:CSV:IMAGE_DIR:one_based"` in DATASETS.REGISTER) and
1 is subtracted from all four numbers, exactly as the VOC reader does, so the CSV gives the same boxes as
the XML files it came from.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from ssd.data.datasets.base import DetectionDataset, Transform, make_record
from ssd.data.datasets.voc import class_maps

CSV_COLUMNS = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")
COORDINATE_CONVENTIONS = ("zero_based", "one_based")  # the optional last field of a DATASETS.REGISTER entry


class CSVDataset(DetectionDataset):
    """Boxes from a CSV file, images from a folder.

    Args:
        csv_file: the annotation file (header `filename,width,height,class,xmin,ymin,xmax,ymax`).
        image_dir: folder the file names are relative to.
        class_names: classes without background in label order; None = the sorted names in the file.
        transform, is_train: see `DetectionDataset`.
        one_based: the corners are VOC's 1-based pixel indices (1 is subtracted); False = 0-based corners.
    """

    def __init__(
        self,
        csv_file: str | Path,
        image_dir: str | Path,
        class_names: Sequence[str] | None = None,
        transform: Transform | None = None,
        is_train: bool = False,
        one_based: bool = False,
    ) -> None:
        self.csv_file, self.image_dir = Path(csv_file), Path(image_dir)
        if not self.csv_file.is_file():
            raise FileNotFoundError(f"CSV annotation file not found: {self.csv_file}")
        if not self.image_dir.is_dir():
            raise FileNotFoundError(f"CSV image folder not found: {self.image_dir}")
        with self.csv_file.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = tuple(name.strip() for name in reader.fieldnames or ())
            if header != CSV_COLUMNS:
                raise ValueError(
                    f"{self.csv_file}: header must be {','.join(CSV_COLUMNS)}, got {','.join(header)}"
                )
            rows = [{key.strip(): (value or "").strip() for key, value in row.items()} for row in reader]

        if not class_names:
            class_names = sorted({row["class"] for row in rows if row["class"]})
        all_names, class_to_label = class_maps(class_names)
        images: dict[str, dict] = {}  # file name -> {"size": (h, w), "boxes": [...], "labels": [...]}
        for line, row in enumerate(rows, start=2):
            try:
                image = images.setdefault(
                    row["filename"],
                    {"size": (int(row["height"]), int(row["width"])), "boxes": [], "labels": []},
                )
                if not row["class"]:
                    continue
                if row["class"] not in class_to_label:
                    raise ValueError(
                        f"unknown class {row['class']!r}; known classes: {', '.join(class_to_label)}"
                    )
                shift = 1.0 if one_based else 0.0  # VOC's 1-based pixel indices -> 0-based corners
                image["boxes"].append([float(row[key]) - shift for key in ("xmin", "ymin", "xmax", "ymax")])
                image["labels"].append(class_to_label[row["class"]])
            except ValueError as error:
                raise ValueError(f"{self.csv_file}, line {line}: {error}") from None
        records = [
            make_record(name, self.image_dir / name, *image["size"], image["boxes"], image["labels"])
            for name, image in images.items()
        ]
        super().__init__(records, all_names, transform, is_train, name=f"CSV {self.csv_file}")
