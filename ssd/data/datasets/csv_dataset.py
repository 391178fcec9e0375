"""A CSV file of boxes plus a folder of images.

Format: a header `filename,width,height,class,xmin,ymin,xmax,ymax`, then one row per box; `filename` is
relative to the image folder (absolute paths and `..` are refused). An image without objects is a row whose
`class` and coordinates are all empty; a row with coordinates but no class, or with more or fewer fields than
the header, is an error naming its line. Images appear in the order of their first row.

The file must be UTF-8 (a byte-order mark, as Excel writes, is accepted); another encoding is an error naming
the file and the first undecodable line. The same box row written twice (an exact duplicate, as a merge of two
exports makes) is kept once; the duplicates are counted (`num_duplicate_rows`) and reported with one warning
naming their lines. One image given two different widths or heights on two rows is an error naming both lines
(the rows come from two versions of the image, and the boxes of one of them are in other pixels).

Coordinates: by default 0-based pixel corners, used as they are. Many CSV files are converted from VOC XML
(labelImg, Roboflow and the popular `xml_to_csv` scripts copy the XML numbers), and so keep VOC's 1-based
pixel indices; say so with `one_based=True` (`"name:csv:CSV:IMAGE_DIR:one_based"` in DATASETS.REGISTER) and
1 is subtracted from all four numbers, exactly as the VOC reader does, so the CSV gives the same boxes as
the XML files it came from.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

from ssd.data.datasets.base import DetectionDataset, Transform, make_record
from ssd.data.datasets.image_files import DatasetError, DatasetFileNotFoundError, image_path_inside
from ssd.data.datasets.voc import class_maps

logger = logging.getLogger(__name__)

CSV_COLUMNS = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")
COORDINATE_CONVENTIONS = ("zero_based", "one_based")  # the optional last field of a DATASETS.REGISTER entry


def _float(row: dict[str, str], key: str, source: str) -> float:
    try:
        return float(row[key])
    except ValueError:
        raise DatasetError(f"{source}: {key} is {row[key]!r}, not a number") from None


def _integer(row: dict[str, str], key: str, source: str) -> int:
    """Width or height; empty means "not stated" (0): the dataset reads it from the image file."""
    if not row[key]:
        return 0
    value = _float(row, key, source)
    if not value.is_integer():  # also refuses inf and nan
        raise DatasetError(f"{source}: {key} is {row[key]!r}, not a whole number of pixels")
    return int(value)


class CSVDataset(DetectionDataset):
    """Boxes from a CSV file, images from a folder.

    Args:
        csv_file: the annotation file (header `filename,width,height,class,xmin,ymin,xmax,ymax`).
        image_dir: folder the file names are relative to.
        class_names: classes without background in label order; None = the sorted names in the file.
        transform, is_train: see `DetectionDataset`.
        one_based: the corners are VOC's 1-based pixel indices (1 is subtracted); False = 0-based corners.
        follow_symlinks: accept images that are symbolic links leading outside `image_dir`.
    """

    def __init__(
        self,
        csv_file: str | Path,
        image_dir: str | Path,
        class_names: Sequence[str] | None = None,
        transform: Transform | None = None,
        is_train: bool = False,
        one_based: bool = False,
        follow_symlinks: bool = False,
    ) -> None:
        self.csv_file, self.image_dir = Path(csv_file), Path(image_dir)
        if not self.csv_file.is_file():
            raise DatasetFileNotFoundError(f"CSV annotation file not found: {self.csv_file}")
        if not self.image_dir.is_dir():
            raise DatasetFileNotFoundError(f"CSV image folder not found: {self.image_dir}")
        data = self.csv_file.read_bytes()
        try:
            text = data.decode("utf-8-sig")  # "-sig": a leading byte-order mark is dropped
        except UnicodeDecodeError as error:
            line = data[: error.start].count(b"\n") + 1
            raise DatasetError(
                f"{self.csv_file}, line {line}: not UTF-8 text (byte "
                f"0x{data[error.start]:02x}); save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
            ) from None
        with io.StringIO(text, newline="") as handle:
            reader = csv.DictReader(handle)
            header = tuple(name.strip() for name in reader.fieldnames or ())
            if header != CSV_COLUMNS:
                raise DatasetError(
                    f"{self.csv_file}: header must be {','.join(CSV_COLUMNS)}, got {','.join(header)}"
                )
            rows = []  # (line number in the file, row)
            for row in reader:
                if None in row or None in row.values():  # DictReader's markers of extra / missing fields
                    fields = len(CSV_COLUMNS) + len(row.get(None, ())) - list(row.values()).count(None)
                    raise DatasetError(
                        f"{self.csv_file}, line {reader.line_num}: {fields} fields, the header has "
                        f"{len(CSV_COLUMNS)} ({','.join(CSV_COLUMNS)}); quote values that hold a comma"
                    )
                rows.append((reader.line_num, {key.strip(): value.strip() for key, value in row.items()}))

        if not class_names:
            class_names = sorted({row["class"] for _, row in rows if row["class"]})
        all_names, class_to_label = class_maps(class_names)
        images: dict[str, dict] = {}  # file name -> {"size": (h, w), "boxes": [...], "labels": [...]}
        first_line: dict[tuple[str, ...], int] = {}  # a box row's values -> the line it was first seen on
        duplicates = []  # "line L (= line F)"
        for line, row in rows:
            source = f"{self.csv_file}, line {line}"
            corners = [row[key] for key in ("xmin", "ymin", "xmax", "ymax")]
            size = (_integer(row, "height", source), _integer(row, "width", source))
            if row["filename"] not in images:
                images[row["filename"]] = {
                    "path": image_path_inside(self.image_dir, row["filename"], source, follow_symlinks),
                    "size": size,
                    "line": line,
                    "boxes": [],
                    "labels": [],
                }
            image = images[row["filename"]]
            if 0 not in size and 0 not in image["size"] and size != image["size"]:
                raise DatasetError(
                    f"{source}: {row['filename']} is {size[1]}x{size[0]} (width x height) here but "
                    f"{image['size'][1]}x{image['size'][0]} on line {image['line']}; one image has one size: the "
                    "rows come from two versions of the file, fix the rows of the wrong one"
                )
            values = tuple(row[key] for key in CSV_COLUMNS)
            if row["class"] and values in first_line:
                duplicates.append(f"line {line} (= line {first_line[values]})")
                continue
            first_line.setdefault(values, line)
            if not row["class"]:
                if any(corners):  # a box without a class would be lost silently
                    raise DatasetError(
                        f"{source}: coordinates without a class; write the class, or leave class and all "
                        "four coordinates empty for an image without objects"
                    )
                continue
            if row["class"] not in class_to_label:
                raise DatasetError(
                    f"{source}: unknown class {row['class']!r}; known classes: {', '.join(class_to_label)}"
                )
            shift = 1.0 if one_based else 0.0  # VOC's 1-based pixel indices -> 0-based corners
            image["boxes"].append(
                [_float(row, key, source) - shift for key in ("xmin", "ymin", "xmax", "ymax")]
            )
            image["labels"].append(class_to_label[row["class"]])
        records = [
            make_record(name, image["path"], *image["size"], image["boxes"], image["labels"])
            for name, image in images.items()
        ]
        self.num_duplicate_rows = len(duplicates)
        if duplicates:
            logger.warning(
                "%s: %d box rows repeat an earlier row exactly and are used once: %s%s",
                self.csv_file, len(duplicates), ", ".join(duplicates[:5]), ", ..." if len(duplicates) > 5 else "",
            )  # fmt: skip
        super().__init__(records, all_names, transform, is_train, name=f"CSV {self.csv_file}")
