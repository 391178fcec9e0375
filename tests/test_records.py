"""RecordTable (ssd/data/datasets/records.py): per-image records packed into arrays give the same dicts back."""

import numpy as np
import pytest

from ssd.data.datasets.base import make_record
from ssd.data.datasets.records import RecordTable


def test_records_round_trip_with_ids_names_and_boxes():
    records = [
        make_record(7, "a/é.jpg", 10, 20, [[1, 2, 3, 4], [5, 6, 7, 8]], [1, 2], [False, True]),
        make_record(8, "b.jpg", 30, 40, np.zeros((0, 4)), []),
        make_record(9, "c.jpg", 50, 60, [[0.5, 0.5, 9.5, 9.5]], [3]),
    ]
    table = RecordTable(records)
    assert len(table) == 3
    first, empty, last = table[0], table[1], table[-1]
    assert (first["image_id"], first["file_name"], first["height"], first["width"]) == (7, "a/é.jpg", 10, 20)
    assert type(first["image_id"]) is int
    assert (
        first["boxes_xyxy"].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]
        and first["boxes_xyxy"].dtype == np.float32
    )
    assert first["labels"].tolist() == [1, 2] and first["difficult"].tolist() == [False, True]
    assert (
        empty["boxes_xyxy"].shape == (0, 4)
        and empty["labels"].shape == (0,)
        and empty["difficult"].shape == (0,)
    )
    assert (last["file_name"], last["boxes_xyxy"].tolist(), last["labels"].tolist()) == (
        "c.jpg",
        [[0.5, 0.5, 9.5, 9.5]],
        [3],
    )
    assert table.num_boxes().tolist() == [2, 0, 1]
    with pytest.raises(ValueError):
        first["boxes_xyxy"][0, 0] = 99  # read-only views: nobody changes the table through a record
    with pytest.raises(IndexError):
        table[3]
    picked = table.select([2, 0])
    assert [r["image_id"] for r in picked] == [9, 7] and picked[1]["labels"].tolist() == [1, 2]


def test_string_and_mixed_image_ids_keep_their_type():
    table = RecordTable(
        [make_record("x1", "x1.jpg", 1, 1, [], []), make_record("y22", "y22.jpg", 1, 1, [], [])]
    )
    assert [table[0]["image_id"], table[1]["image_id"]] == ["x1", "y22"]
    mixed = RecordTable([make_record(3, "p.jpg", 1, 1, [], []), make_record("q", "q.jpg", 1, 1, [], [])])
    assert [mixed[0]["image_id"], mixed[1]["image_id"]] == [3, "q"]
