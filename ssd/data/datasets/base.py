"""What every detection dataset shares: the annotation cache, box checks, image decoding, `__getitem__`.

A subclass only parses its annotation format into a list of records (one dict per image, see
`DetectionDataset.get_annotation`) and hands it to `DetectionDataset.__init__`. Everything the rest of the
package relies on (docs/contracts.md, "Datasets") is implemented here once:

- boxes outside the image are clipped to it, zero-area and inverted boxes are dropped; both are counted
  (`num_clipped_boxes`, `num_dropped_boxes`) and reported once per dataset with one logging.warning;
- training datasets (`is_train=True`) drop `difficult` boxes before the transform; evaluation keeps them
  (with the flag), so the VOC metric can ignore them;
- every image file is checked when the dataset is built, from its header only (cheap): a missing or unreadable
  file stops construction with one `DatasetError` naming every bad file; an image whose annotated size differs
  from the file's is given the file's size (boxes are kept as written, in pixels of the file), and the
  mismatches are counted (`num_size_mismatches`) and reported with one logging.warning. `verify_images()`
  decodes every image in full, for the rarer damage a header does not show (DATASETS.CHECK_IMAGES);
- `check_image_pixels(max_pixels)` (called by build_dataset with INPUT.MAX_IMAGE_PIXELS) refuses, with one
  DatasetError naming every such file and its size, images whose header gives more pixels than the limit;
  `load_image` checks the header again before each decode (the file may have changed since);
- images are decoded with OpenCV into uint8 (H, W, 3) RGB; an unreadable file raises an error naming it.

Reading image files (decoding, header sizes, keeping annotation paths inside the dataset folder) and the
errors about bad data live in `image_files.py`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ssd.data.datasets.image_files import (
    DEFAULT_MAX_IMAGE_PIXELS,
    MAX_IMAGE_PIXELS_KEY,
    DatasetError,
    image_size_from_file,
    read_image_rgb,
)
from ssd.data.datasets.records import RecordTable

logger = logging.getLogger(__name__)

_MAX_NAMED = 5  # files named in one error or warning message

BACKGROUND = "__background__"

# (image uint8 (H, W, 3), boxes_xyxy float32 (G, 4) pixels, labels int64 (G,))
#   -> (image (3, S, S) float32, boxes_norm (G, 4) float32, labels (G,) int64)
Transform = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def make_record(
    image_id: int | str,
    file_name: str | Path,
    height: int,
    width: int,
    boxes_xyxy: Sequence[Sequence[float]] | np.ndarray,
    labels: Sequence[int] | np.ndarray,
    difficult: Sequence[bool] | np.ndarray | None = None,
) -> dict[str, Any]:
    """One image's annotation as plain arrays, before the box checks (see `DetectionDataset`)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float32).reshape(-1, 4)  # (G, 4)
    labels_arr = np.asarray(labels, dtype=np.int64).reshape(-1)  # (G,)
    if difficult is None:
        difficult_arr = np.zeros(len(labels_arr), dtype=np.bool_)
    else:
        difficult_arr = np.asarray(difficult, dtype=np.bool_).reshape(-1)
    return {
        "image_id": image_id,
        "file_name": str(file_name),
        "height": int(height),
        "width": int(width),
        "boxes_xyxy": boxes,
        "labels": labels_arr,
        "difficult": difficult_arr,
    }


class DetectionDataset(torch.utils.data.Dataset):
    """Base class of all datasets: holds the parsed annotations and implements the dataset contract.

    Args:
        records: one dict per image from `make_record` (boxes in pixels, labels 1..C-1).
        class_names: dataset classes with "__background__" first; label i is class_names[i].
        transform: called as `transform(image, boxes_xyxy, labels[, rng=...])`, see `Transform`;
            None returns the decoded uint8 image as a (3, H, W) tensor and relative boxes (for looking at data).
        is_train: training datasets drop `difficult` boxes before the transform.
        name: used in the warnings and errors about this dataset.

    Raises:
        DatasetError: image files are missing or unreadable (`reads_image_files` datasets); all are named.
    """

    # False for datasets whose `load_image` makes images instead of reading `file_name` (synthetic.py).
    reads_image_files = True
    # Images with more pixels are refused before decoding (INPUT.MAX_IMAGE_PIXELS; set by check_image_pixels).
    max_image_pixels = DEFAULT_MAX_IMAGE_PIXELS

    def __init__(
        self,
        records: list[dict[str, Any]],
        class_names: Sequence[str],
        transform: Transform | None = None,
        is_train: bool = False,
        name: str = "",
    ) -> None:
        class_names = tuple(class_names)
        if not class_names or class_names[0] != BACKGROUND:
            raise ValueError(f"class_names must start with {BACKGROUND!r}, got {class_names[:3]}...")
        self.class_names: tuple[str, ...] = class_names
        self.transform = transform
        self.is_train = is_train
        self.name = name or type(self).__name__
        self.num_clipped_boxes = 0
        self.num_dropped_boxes = 0
        self.clipped_box_files: list[str] = []  # files with at least one clipped box
        self.dropped_box_files: list[str] = []  # files with at least one dropped box
        self.num_size_mismatches = 0
        self.size_mismatch_files: list[str] = []  # "file: annotated WxH, file WxH"
        if self.reads_image_files:
            records = self._check_image_files(records)
        # Packed into arrays (records.py): DataLoader workers then share them without copying pages.
        self._records = RecordTable([self._check_boxes(record) for record in records])
        self._report_bad_boxes()

    # ----- the contract -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._records)

    def get_annotation(self, index: int) -> dict[str, Any]:
        """Annotation of image `index` without decoding it (parsed once at construction).

        Returns:
            dict with `image_id`, `file_name`, `height`, `width` (of the original image), `boxes_xyxy`
            float32 (G, 4) pixels, `labels` int64 (G,) in 1..C-1, `difficult` bool (G,). All boxes, difficult
            ones included, already clipped to the image and without degenerate boxes. The arrays are read-only
            views into the dataset's packed records (`records.RecordTable`); the dict is made on each call.
        """
        return self._records[index]

    def box_arrays(self) -> tuple[np.ndarray, ...]:
        """All boxes at once (`RecordTable.box_arrays`): boxes_xyxy (B, 4), labels (B,), difficult (B,),
        image (B,), widths (N,), heights (N,); for statistics over a whole dataset (prior fitting)."""
        return self._records.box_arrays()

    def load_image(self, index: int) -> np.ndarray:
        """uint8 (H, W, 3) RGB image; raises an error naming the file when it cannot be read."""
        return read_image_rgb(
            self._records[index]["file_name"], self.max_image_pixels
        )  # one record made: cheap next to decoding

    @property
    def contiguous_id_to_dataset_id(self) -> dict[int, int]:
        """Label -> id used by the annotation files; identity except for COCO-like datasets."""
        return {label: label for label in range(1, len(self.class_names))}

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        return self.get_item(index, rng=None)

    def get_item(
        self, index: int, rng: np.random.Generator | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        """`__getitem__` with the random generator the augmentation must use (the training loader passes
        one seeded per sample, so a sample does not depend on which worker loads it)."""
        record = self._records[index]
        image = self.load_image(index)
        boxes_xyxy, labels = record["boxes_xyxy"], record["labels"]
        if self.is_train:
            keep = ~record["difficult"]
            boxes_xyxy, labels = boxes_xyxy[keep], labels[keep]
        if self.transform is None:  # raw image, for looking at the data: uint8 (3, H, W), boxes made relative
            height, width = image.shape[:2]
            image_t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))  # (3, H, W) uint8
            boxes_t = torch.from_numpy(
                boxes_xyxy / np.array([width, height, width, height], dtype=np.float32)
            )
            labels_t = torch.from_numpy(labels.copy())
        elif rng is None:
            image_t, boxes_t, labels_t = self.transform(image, boxes_xyxy, labels)
        else:
            image_t, boxes_t, labels_t = self.transform(image, boxes_xyxy, labels, rng=rng)
        return image_t, {"boxes_norm": boxes_t, "labels": labels_t}, index

    def verify_images(self) -> None:
        """Decode every image once; raise one DatasetError naming every file that cannot be decoded.

        The header check at construction finds missing files, files that are not images and wrong sizes;
        this finds damage further inside a file (a truncated PNG, say), which would otherwise stop a run
        when the image is first loaded, possibly hours in. Costs one full decode per image.
        """
        bad = []
        for index in range(len(self)):
            try:
                self.load_image(index)
            except OSError as error:  # FileNotFoundError included
                bad.append(str(error))
        if bad:
            raise self._bad_files_error(bad, len(self), "images cannot be decoded", "Replace these files")

    def check_image_pixels(self, max_pixels: int) -> None:
        """Refuse images above `max_pixels` (INPUT.MAX_IMAGE_PIXELS; <= 0: no limit), from the sizes the
        header check read (nothing is opened again); one DatasetError names every such file and its size.
        `load_image` uses the same limit from then on."""
        self.max_image_pixels = max_pixels
        if max_pixels <= 0 or not self.reads_image_files:
            return
        too_large = [
            f"{Path(r['file_name']).name} {r['width']} x {r['height']}"
            for r in self._records
            if r["height"] * r["width"] > max_pixels
        ]
        if too_large:
            raise self._bad_files_error(
                too_large,
                len(self),
                f"images have more pixels than {MAX_IMAGE_PIXELS_KEY} {max_pixels}",
                f"Downscale them, raise {MAX_IMAGE_PIXELS_KEY} (0 = no limit)",
            )

    # ----- image and box checks -------------------------------------------------------------------------

    def _bad_files_error(self, errors: list[str], total: int, what: str, advice: str) -> DatasetError:
        """One error naming the first _MAX_NAMED bad files (and how many more) and what to do."""
        more = f"; ... ({len(errors) - _MAX_NAMED} more)" if len(errors) > _MAX_NAMED else ""
        return DatasetError(
            f"{self.name}: {len(errors)} of {total} {what}: {'; '.join(errors[:_MAX_NAMED])}{more}. "
            f"{advice}, or remove them from the annotations."
        )

    def _check_image_files(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Read every image's size from its file; the file's size replaces a different annotated one.

        An annotated size of 0 means "not stated" (some labelling tools write <size> 0) and is filled in
        silently. Boxes are kept as written: they are taken to be pixels of the file, as labelling tools
        write them; only the size field (used to clip boxes and to scale detections back) is corrected.
        """
        checked, unreadable = [], []
        for record in records:
            try:
                height, width = image_size_from_file(record["file_name"])
            except OSError as error:  # FileNotFoundError included
                unreadable.append(str(error))
                continue
            annotated = (record["height"], record["width"])
            if annotated != (height, width):
                if annotated != (0, 0) and 0 not in annotated:
                    self.num_size_mismatches += 1
                    self.size_mismatch_files.append(
                        f"{Path(record['file_name']).name}: annotated {annotated[1]}x{annotated[0]}, "
                        f"file {width}x{height}"
                    )
                record = {**record, "height": height, "width": width}
            checked.append(record)
        if unreadable:
            raise self._bad_files_error(
                unreadable, len(records), "image files cannot be read", "Add or replace these files"
            )
        if self.num_size_mismatches:
            logger.warning(
                "%s: %d images have an annotated size (width x height) that differs from the image file; "
                "using the file's size, boxes kept as written. If the images were resized after labelling, "
                "the boxes are wrong too: re-export the annotations. E.g. %s",
                self.name,
                self.num_size_mismatches,
                "; ".join(self.size_mismatch_files[:_MAX_NAMED]),
            )
        return checked

    def _check_boxes(self, record: dict[str, Any]) -> dict[str, Any]:
        """Clip boxes to the image, drop degenerate ones; count both (files kept for the report)."""
        boxes = record["boxes_xyxy"]
        if len(boxes) == 0:
            return record
        height, width = record["height"], record["width"]
        clipped = boxes.copy()
        np.clip(clipped[:, 0::2], 0, width, out=clipped[:, 0::2])
        np.clip(clipped[:, 1::2], 0, height, out=clipped[:, 1::2])
        was_clipped = np.any(clipped != boxes, axis=1)
        # A box entirely outside the image becomes degenerate here and is dropped, not clipped.
        keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        num_clipped = int(np.count_nonzero(was_clipped & keep))
        num_dropped = int(np.count_nonzero(~keep))
        if num_clipped:
            self.num_clipped_boxes += num_clipped
            self.clipped_box_files.append(record["file_name"])
        if num_dropped:
            self.num_dropped_boxes += num_dropped
            self.dropped_box_files.append(record["file_name"])
        if not num_clipped and not num_dropped:
            return record
        return {
            **record,
            "boxes_xyxy": clipped[keep],
            "labels": record["labels"][keep],
            "difficult": record["difficult"][keep],
        }

    def _report_bad_boxes(self) -> None:
        if self.num_clipped_boxes:
            files = self.clipped_box_files
            logger.warning(
                "%s: clipped %d boxes that extend outside their image (in %d files, e.g. %s)",
                self.name,
                self.num_clipped_boxes,
                len(files),
                ", ".join(Path(f).name for f in files[:3]),
            )
        if self.num_dropped_boxes:
            files = self.dropped_box_files
            logger.warning(
                "%s: dropped %d zero-area or inverted boxes (in %d files, e.g. %s)",
                self.name,
                self.num_dropped_boxes,
                len(files),
                ", ".join(Path(f).name for f in files[:3]),
            )
