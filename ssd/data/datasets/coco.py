"""COCO-format datasets (official splits or any custom JSON + image folder), read with pycocotools.

- Boxes: COCO's `bbox` is (x, y, w, h) in 0-based continuous pixels; we store x1y1x2y2 = (x, y, x + w, y + h)
  without any shift.
- Crowd annotations (`iscrowd == 1`) are kept as *ignore regions*: recorded with the `difficult` flag, the
  one flag the package has for "neither an object to find nor an error to hit" (VOC's difficult). So they are
  not trained on (training datasets drop flagged boxes, as Detectron2 drops crowd boxes), while the VOC
  evaluator ignores detections on them and the COCO evaluator hands them to pycocotools as `iscrowd=1`
  (its own crowd rule). They are counted (`num_crowd_boxes`) and logged with the file name. (lufficc/SSD
  dropped them everywhere, so detections on a crowd counted as false positives.)
- Labels: category ids, sorted, map to contiguous labels 1..K (`dataset_id_to_contiguous_id`);
  `contiguous_id_to_dataset_id` maps back, for writing COCO results.
- `remove_empty=True` drops images without any usable box (what lufficc does for training); by default every
  image is kept, because an image without objects is valid input and counts for evaluation.
- `image_id` in `get_annotation` is the COCO image id.
- Bad input: a `file_name` that leaves `image_root` (absolute, `..`, or a symbolic link leading outside, see
  `image_files.image_path_inside`), a `category_id` missing from `categories` and a `bbox` that is not 4
  numbers are errors naming the annotation id; a file without `images` or `categories`, and two images or two
  annotations with the same id (pycocotools keeps only the last one under an id, so one image's boxes would
  land on another file), are errors naming the file and the ids; an image without
  `height`/`width` gets its size from the file; annotations of an image id that is not in `images` cannot be
  used: they are counted (`num_orphan_annotations`) and reported with one warning.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssd.data.datasets.base import BACKGROUND, DetectionDataset, Transform, make_record
from ssd.data.datasets.image_files import DatasetError, DatasetFileNotFoundError, image_path_inside

logger = logging.getLogger(__name__)

# The masks ("segmentation": polygons, or an RLE dict) are never used: boxes are. Replaced by an empty list
# before parsing, they cost neither the parse time nor the memory of their numbers (118k COCO-shaped images:
# 15 s and 1.8 GB for the file as written, 5 s and 0.9 GB without them). Only a JSON key can be followed by a
# colon (a string holding '"segmentation":' escapes its quotes), and a mask this pattern does not match
# (deeper nesting) is simply parsed.
_SEGMENTATION = re.compile(rb'"segmentation"\s*:\s*(?:\[(?:[^\[\]]|\[[^\[\]]*\])*\]|\{[^{}]*\})')


class COCODataset(DetectionDataset):
    """Images of a COCO instances JSON file.

    Args:
        json_file: instances JSON (images, annotations, categories).
        image_root: folder the JSON's `file_name`s are relative to.
        transform, is_train: see `DetectionDataset`.
        remove_empty: drop images that have no usable (non-crowd, non-degenerate) box.
        class_names: optional check: the category names (without background) the caller expects, in order.
        follow_symlinks: accept images that are symbolic links leading outside `image_root`.
    """

    def __init__(
        self,
        json_file: str | Path,
        image_root: str | Path,
        transform: Transform | None = None,
        is_train: bool = False,
        remove_empty: bool = False,
        class_names: Sequence[str] | None = None,
        follow_symlinks: bool = False,
    ) -> None:
        from pycocotools.coco import COCO  # imported here: only COCO users pay for it

        self.json_file, self.image_root = Path(json_file), Path(image_root)
        if not self.json_file.is_file():
            raise DatasetFileNotFoundError(f"COCO annotation file not found: {self.json_file}")
        if not self.image_root.is_dir():
            raise DatasetFileNotFoundError(f"COCO image folder not found: {self.image_root}")
        content = self._read_json()
        self.coco = COCO()
        self.coco.dataset = content
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            try:
                self.coco.createIndex()
            except (ValueError, KeyError, TypeError) as error:
                raise DatasetError(f"{self.json_file}: not a COCO instances file ({error!r})") from None

        category_ids = sorted(self.coco.getCatIds())
        names = tuple(self.coco.cats[cat_id]["name"] for cat_id in category_ids)
        if class_names and tuple(class_names) != names:
            raise DatasetError(
                f"{self.json_file}: categories {names} differ from the expected {tuple(class_names)}"
            )
        self.dataset_id_to_contiguous_id = {
            cat_id: label for label, cat_id in enumerate(category_ids, start=1)
        }
        self._contiguous_to_dataset = {
            label: cat_id for cat_id, label in self.dataset_id_to_contiguous_id.items()
        }

        records = []
        crowd_files = []
        image_ids = sorted(self.coco.imgs)
        per_image = [self.coco.imgToAnns.get(image_id, []) for image_id in image_ids]
        checked = self._boxes_and_labels([a for anns in per_image for a in anns])
        start = 0
        for image_id, anns in zip(image_ids, per_image, strict=True):
            info = self.coco.imgs[image_id]
            source = f"{self.json_file}, image id {image_id}"
            crowd = [bool(a.get("iscrowd", 0)) for a in anns]
            if any(crowd):
                crowd_files.append(str(info.get("file_name", "")))
            end = start + len(anns)
            if checked is not None:  # every box and label valid: slices of the arrays checked at once
                boxes, labels = checked[0][start:end], checked[1][start:end]
            else:  # the first bad annotation, in image order, raises its error here
                boxes = [self._box_xyxy(a) for a in anns]
                labels = [self._label(a) for a in anns]
            start = end
            records.append(
                make_record(
                    image_id,
                    image_path_inside(
                        self.image_root, info.get("file_name", ""), f"{source}: file_name", follow_symlinks
                    ),
                    self._size(info, "height", source),  # missing: read from the image file
                    self._size(info, "width", source),
                    boxes,
                    labels,
                    difficult=crowd,  # an ignore region, see the module docstring
                )
            )
        self.num_crowd_boxes = sum(int(r["difficult"].sum()) for r in records)
        if self.num_crowd_boxes:
            logger.log(
                logging.WARNING if is_train else logging.INFO,
                "%s: %d crowd annotations (iscrowd=1) in %d images (e.g. %s) are ignore regions: %s",
                self.json_file, self.num_crowd_boxes, len(crowd_files), ", ".join(crowd_files[:3]),
                "not trained on" if is_train else "detections on them are neither hits nor errors",
            )  # fmt: skip
        orphans = [
            a.get("id") for i, anns in self.coco.imgToAnns.items() if i not in self.coco.imgs for a in anns
        ]
        self.num_orphan_annotations = len(orphans)
        if orphans:
            logger.warning(
                "%s: skipped %d annotations whose image_id is not among the images (annotation ids %s%s); "
                "add those images to 'images' or remove the annotations",
                self.json_file, len(orphans), ", ".join(map(str, orphans[:5])), ", ..." if len(orphans) > 5 else "",
            )  # fmt: skip
        self._ground_truth = self._compact_ground_truth()
        self._categories = [dict(self.coco.cats[cat_id]) for cat_id in category_ids]
        # pycocotools' index holds every polygon (about 2.2 GB for a COCO-sized JSON, issue 23); the records and
        # the compact ground truth are all that is used after this point.
        del self.coco
        super().__init__(records, (BACKGROUND, *names), transform, is_train, name=f"COCO {self.json_file}")
        if remove_empty:  # images with no box left to train on (crowd regions are not trained on)
            keep = [i for i in range(len(self._records)) if (~self._records[i]["difficult"]).any()]
            self._records = self._records.select(keep)

    def _read_json(self) -> dict[str, Any]:
        """The JSON file's dict, checked for what pycocotools would otherwise mishandle without a word."""
        raw = self.json_file.read_bytes()
        try:
            content = json.loads(_SEGMENTATION.sub(b'"segmentation": []', raw))
        except (ValueError, UnicodeDecodeError):
            try:  # the error's line and column in the file as written
                json.loads(raw.decode("utf-8"))
            except (ValueError, UnicodeDecodeError) as error:
                raise DatasetError(f"{self.json_file}: not a JSON file ({error})") from None
            raise
        del raw
        if not isinstance(content, dict):
            raise DatasetError(
                f"{self.json_file}: not a COCO instances file (a JSON {type(content).__name__})"
            )
        for key in ("images", "categories"):
            if not isinstance(content.get(key), list):
                raise DatasetError(
                    f"{self.json_file}: no {key!r} list; a COCO instances file needs 'images', 'annotations' "
                    "and 'categories' (even an empty dataset lists its categories)"
                )
        for key, what in (("images", "image"), ("annotations", "annotation"), ("categories", "category")):
            ids = [entry.get("id") if isinstance(entry, dict) else None for entry in content.get(key, [])]
            repeated = sorted({i for i, n in Counter(ids).items() if n > 1}, key=str)
            if repeated:
                shown = ", ".join(map(str, repeated[:5])) + (", ..." if len(repeated) > 5 else "")
                raise DatasetError(
                    f"{self.json_file}: {len(repeated)} {what} ids appear more than once ({shown}); ids must be "
                    f"unique (pycocotools would keep only the last {what} of each id)"
                )
        return content

    def _compact_ground_truth(self) -> dict[str, np.ndarray]:
        """What COCOeval reads of the annotations of known images, crowd ones included, as arrays (no masks)."""
        annotations = [a for i, anns in self.coco.imgToAnns.items() if i in self.coco.imgs for a in anns]
        boxes = np.zeros((len(annotations), 4), np.float64)  # (A, 4) xywh pixels
        for n, a in enumerate(annotations):
            if a.get("iscrowd", 0):  # crowd boxes are not checked by _box_xyxy: check them here
                x1, y1, x2, y2 = self._box_xyxy(a)
                boxes[n] = (x1, y1, x2 - x1, y2 - y1)
            else:
                boxes[n] = a["bbox"]
        # A missing `area` (pycocotools would stop with a KeyError) is the box area.
        areas = [a.get("area", boxes[n, 2] * boxes[n, 3]) for n, a in enumerate(annotations)]
        return {
            "image_ids": np.array(sorted(self.coco.imgs)),  # (I,)
            "ids": np.array([a.get("id", n + 1) for n, a in enumerate(annotations)]),  # (A,)
            "image_id": np.array([a["image_id"] for a in annotations]),  # (A,)
            "category_id": np.array([a["category_id"] for a in annotations], np.int64),  # (A,)
            "bbox": boxes,
            "area": np.array(areas, np.float64),  # (A,)
            "iscrowd": np.array([int(bool(a.get("iscrowd", 0))) for a in annotations], np.int64),  # (A,)
        }

    def coco_ground_truth(self) -> dict:
        """The JSON's ground truth as the COCO evaluator needs it: a COCO instances dict of every image and
        every box annotation, crowd ones included (`iscrowd` 1, ignored by COCOeval as in the official
        evaluation), `area` as written (the mask area for official COCO), without segmentation. Made from
        compact arrays on each call; the dataset does not keep the JSON."""
        gt = self._ground_truth
        columns = zip(
            gt["ids"].tolist(), gt["image_id"].tolist(), gt["category_id"].tolist(), gt["bbox"].tolist(),
            gt["area"].tolist(), gt["iscrowd"].tolist(), strict=True,
        )  # fmt: skip
        keys = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")
        return {
            "images": [{"id": image_id} for image_id in gt["image_ids"].tolist()],
            "annotations": [dict(zip(keys, values, strict=True)) for values in columns],
            "categories": [dict(c) for c in self._categories],
        }

    def _boxes_and_labels(self, annotations: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray] | None:
        """(boxes_xyxy (A, 4) float64, labels (A,) int64) of every annotation, checked in a few passes (the
        per-annotation checks of `_box_xyxy` and `_label` cost 10 s on 860k COCO boxes); None when any of
        them is bad, so that the per-annotation checks find it and name it."""
        bboxes = [a.get("bbox") for a in annotations]
        if {type(b) for b in bboxes} - {list} or {len(b) for b in bboxes} - {4}:
            return None
        if {type(v) for b in bboxes for v in b} - {int, float}:  # bool is a type of its own: refused
            return None
        xywh = np.array(bboxes, dtype=np.float64).reshape(-1, 4)  # (A, 4)
        if not np.isfinite(xywh).all():
            return None
        try:
            labels = [self.dataset_id_to_contiguous_id[a.get("category_id")] for a in annotations]
        except (KeyError, TypeError):
            return None
        xyxy = np.concatenate((xywh[:, :2], xywh[:, :2] + xywh[:, 2:]), axis=1)  # (A, 4) x1, y1, x + w, y + h
        return xyxy, np.array(labels, dtype=np.int64)

    def _label(self, annotation: dict[str, Any]) -> int:
        category_id = annotation.get("category_id")
        if category_id not in self.dataset_id_to_contiguous_id:
            raise DatasetError(
                f"{self.json_file}, annotation id {annotation.get('id')}: category_id {category_id!r} is not "
                f"among the categories (ids {sorted(self.dataset_id_to_contiguous_id)}); add it to "
                "'categories' or fix the annotation"
            )
        return self.dataset_id_to_contiguous_id[category_id]

    def _box_xyxy(self, annotation: dict[str, Any]) -> list[float]:
        """COCO `bbox` (x, y, w, h) -> [x1, y1, x2, y2] pixels; anything but 4 finite numbers is an error."""
        bbox = annotation.get("bbox")
        numbers = isinstance(bbox, list | tuple) and all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in bbox
        )
        if not numbers or len(bbox) != 4 or not all(math.isfinite(v) for v in bbox):
            raise DatasetError(
                f"{self.json_file}, annotation id {annotation.get('id')}: bbox must be 4 numbers "
                f"[x, y, width, height], got {bbox!r}"
            )
        x, y, w, h = bbox
        return [x, y, x + w, y + h]

    @staticmethod
    def _size(info: dict[str, Any], key: str, source: str) -> int:
        value = info.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
            raise DatasetError(f"{source}: {key} must be a whole number of pixels, got {value!r}")
        return int(value)

    @property
    def contiguous_id_to_dataset_id(self) -> dict[int, int]:
        return dict(self._contiguous_to_dataset)
