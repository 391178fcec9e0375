"""Every image's annotation packed into a few NumPy arrays, one per field, instead of one dict per image.

    table = RecordTable(records)      # records: one `make_record` dict per image
    table[i]                          # the same dict back: image_id, file_name, height, width,
                                      # boxes_xyxy (G, 4) float32, labels (G,) int64, difficult (G,) bool

Why: a list of 118k dicts holding 350k small arrays is about a million Python objects. DataLoader workers are
forked from the main process and share its memory until a page is written; Python writes to an object's page
whenever it touches its reference count, and a full garbage collection in a worker visits every object. So a
worker's private memory slowly becomes a copy of all the records (issue 23 measured 5.3-5.9 s and ~495 MB per
worker for one full `gc.collect()` on a COCO-sized set of dicts). Here the records are a dozen arrays of plain numbers, which
neither reference counting nor the garbage collector ever touches; the per-image dict is made on request, its
arrays being read-only views into the shared buffers.

Layout: image i's boxes are rows `box_start[i]:box_start[i + 1]` of `boxes_xyxy` (N + 1 offsets for N images);
file names (and string image ids) are UTF-8 bytes in one buffer, cut the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _offsets(lengths: Sequence[int]) -> np.ndarray:
    """(N + 1,) int64 start offsets: item i spans [offsets[i], offsets[i + 1])."""
    return np.concatenate([[0], np.cumsum(np.asarray(lengths, np.int64))]).astype(np.int64)


class _Strings:
    """N strings as one UTF-8 byte buffer (uint8) and N + 1 offsets."""

    def __init__(self, strings: Sequence[str]) -> None:
        encoded = [s.encode("utf-8") for s in strings]
        self.starts = _offsets([len(b) for b in encoded])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()

    def __getitem__(self, index: int) -> str:
        return self.buffer[self.starts[index] : self.starts[index + 1]].tobytes().decode("utf-8")


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


class RecordTable:
    """Read-only table of per-image records (see the module docstring); `table[i]` gives record i's dict.

    Args:
        records: one dict per image with the keys of `make_record`; image ids are kept as given when they
            are all integers or all strings (anything else is kept in an object array).
    """

    def __init__(self, records: Sequence[Mapping[str, Any]]) -> None:
        ids = [r["image_id"] for r in records]
        self._int_ids: np.ndarray | None = None
        self._str_ids: _Strings | None = None
        self._object_ids: np.ndarray | None = None
        if all(_is_int(i) for i in ids):
            self._int_ids = np.array(ids, dtype=np.int64)
        elif all(isinstance(i, str) for i in ids):
            self._str_ids = _Strings(ids)
        else:  # a rare mix: kept as Python objects
            self._object_ids = np.empty(len(ids), dtype=object)
            self._object_ids[:] = ids
        self._file_names = _Strings([str(r["file_name"]) for r in records])
        self._heights = np.array([r["height"] for r in records], dtype=np.int64)  # (N,)
        self._widths = np.array([r["width"] for r in records], dtype=np.int64)  # (N,)
        self._box_starts = _offsets([len(r["labels"]) for r in records])  # (N + 1,)
        self._boxes = np.concatenate(
            [np.zeros((0, 4), np.float32)]
            + [np.asarray(r["boxes_xyxy"], np.float32).reshape(-1, 4) for r in records]
        )  # (sum G, 4)
        self._labels = np.concatenate(
            [np.zeros(0, np.int64)] + [np.asarray(r["labels"], np.int64).reshape(-1) for r in records]
        )  # (sum G,)
        self._difficult = np.concatenate(
            [np.zeros(0, np.bool_)] + [np.asarray(r["difficult"], np.bool_).reshape(-1) for r in records]
        )  # (sum G,)
        for array in (self._boxes, self._labels, self._difficult):
            array.flags.writeable = False  # the records hand out views: nobody may change the table

    def __len__(self) -> int:
        return len(self._heights)

    def image_id(self, index: int) -> int | str | Any:
        if self._int_ids is not None:
            return int(self._int_ids[index])
        if self._str_ids is not None:
            return self._str_ids[index]
        return self._object_ids[index]  # type: ignore[index]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = range(len(self))[index]  # negative indices as in a list; IndexError past the end
        start, end = self._box_starts[index], self._box_starts[index + 1]
        return {
            "image_id": self.image_id(index),
            "file_name": self._file_names[index],
            "height": int(self._heights[index]),
            "width": int(self._widths[index]),
            "boxes_xyxy": self._boxes[start:end],  # (G, 4) float32 pixels, read-only view
            "labels": self._labels[start:end],  # (G,) int64
            "difficult": self._difficult[start:end],  # (G,) bool
        }

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def num_boxes(self) -> np.ndarray:
        """(N,) int64 number of boxes of each image (without building the records)."""
        return np.diff(self._box_starts)

    def box_arrays(self) -> tuple[np.ndarray, ...]:
        """Every box of every image at once, as the table holds them (read-only views, no dict per image).

        Returns:
            boxes_xyxy (B, 4) float32 pixels, labels (B,) int64, difficult (B,) bool, image (B,) int64 index
            of each box's image, widths (N,) int64, heights (N,) int64.
        """
        image = np.repeat(np.arange(len(self), dtype=np.int64), self.num_boxes())  # (B,)
        return self._boxes, self._labels, self._difficult, image, self._widths, self._heights

    def select(self, indices: Sequence[int]) -> RecordTable:
        """A new table of the records at `indices`, in that order."""
        return RecordTable([self[int(i)] for i in indices])
