"""COCO-format datasets (official splits or any custom JSON + image folder), read with pycocotools.

- Boxes: COCO's `bbox` is (x, y, w, h) in 0-based continuous pixels; we store x1y1x2y2 = (x, y, x + w, y + h)
  without any shift. Crowd annotations (`iscrowd == 1`) are excluded (as in lufficc/SSD); they are neither
  training targets nor ground truth here.
- Labels: category ids, sorted, map to contiguous labels 1..K (`dataset_id_to_contiguous_id`);
  `contiguous_id_to_dataset_id` maps back, for writing COCO results.
- `remove_empty=True` drops images without any usable box (what lufficc does for training); by default every
  image is kept, because an image without objects is valid input and counts for evaluation.
- `image_id` in `get_annotation` is the COCO image id.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path

from ssd.data.datasets.base import BACKGROUND, DetectionDataset, Transform, make_record


class COCODataset(DetectionDataset):
    """Images of a COCO instances JSON file.

    Args:
        json_file: instances JSON (images, annotations, categories).
        image_root: folder the JSON's `file_name`s are relative to.
        transform, is_train: see `DetectionDataset`.
        remove_empty: drop images that have no usable (non-crowd, non-degenerate) box.
        class_names: optional check: the category names (without background) the caller expects, in order.
    """

    def __init__(
        self,
        json_file: str | Path,
        image_root: str | Path,
        transform: Transform | None = None,
        is_train: bool = False,
        remove_empty: bool = False,
        class_names: Sequence[str] | None = None,
    ) -> None:
        from pycocotools.coco import COCO  # imported here: only COCO users pay for it

        self.json_file, self.image_root = Path(json_file), Path(image_root)
        if not self.json_file.is_file():
            raise FileNotFoundError(f"COCO annotation file not found: {self.json_file}")
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"COCO image folder not found: {self.image_root}")
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            try:
                self.coco = COCO(str(self.json_file))
            except (ValueError, KeyError, TypeError) as error:
                raise ValueError(f"{self.json_file}: not a COCO instances file ({error!r})") from None

        category_ids = sorted(self.coco.getCatIds())
        names = tuple(self.coco.cats[cat_id]["name"] for cat_id in category_ids)
        if class_names and tuple(class_names) != names:
            raise ValueError(
                f"{self.json_file}: categories {names} differ from the expected {tuple(class_names)}"
            )
        self.dataset_id_to_contiguous_id = {
            cat_id: label for label, cat_id in enumerate(category_ids, start=1)
        }
        self._contiguous_to_dataset = {
            label: cat_id for cat_id, label in self.dataset_id_to_contiguous_id.items()
        }

        records = []
        for image_id in sorted(self.coco.imgs):
            info = self.coco.imgs[image_id]
            annotations = [a for a in self.coco.imgToAnns.get(image_id, []) if not a.get("iscrowd", 0)]
            boxes = [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in annotations)]
            labels = [self.dataset_id_to_contiguous_id[a["category_id"]] for a in annotations]
            records.append(
                make_record(
                    image_id,
                    self.image_root / info["file_name"],
                    info["height"],
                    info["width"],
                    boxes,
                    labels,
                )
            )
        super().__init__(records, (BACKGROUND, *names), transform, is_train, name=f"COCO {self.json_file}")
        if remove_empty:
            self._records = [record for record in self._records if len(record["labels"])]

    @property
    def contiguous_id_to_dataset_id(self) -> dict[int, int]:
        return dict(self._contiguous_to_dataset)
