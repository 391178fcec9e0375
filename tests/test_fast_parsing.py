"""The shortcuts that keep a COCO-sized start-up short give what the plain way gives (issue 22):
image sizes read from JPEG/PNG headers without Pillow, COCO masks skipped before parsing, boxes checked at once."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from ssd.data.datasets import COCODataset
from ssd.data.datasets.image_files import DatasetError, _header_size, _plain_header_size, image_size_from_file


def test_plain_header_sizes_by_hand_and_when_pillow_must_read(tmp_path):
    image = np.zeros((48, 80, 3), np.uint8)  # 48 rows, 80 columns
    cv2.imwrite(str(tmp_path / "a.jpg"), image)
    cv2.imwrite(str(tmp_path / "a.png"), image)
    assert _plain_header_size(tmp_path / "a.jpg") == (48, 80) == _header_size(tmp_path / "a.jpg")
    assert _plain_header_size(tmp_path / "a.png") == (48, 80) == _header_size(tmp_path / "a.png")
    # A comment of 10 kB before the frame header: found past the first 4 kB read.
    Image.fromarray(image).save(tmp_path / "long.jpg", comment=b"x" * 10000)
    assert _plain_header_size(tmp_path / "long.jpg") == (48, 80)
    # EXIF (which may turn the image) and other formats are left to Pillow: the size is the turned one.
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(image).save(tmp_path / "turned.jpg", exif=exif.tobytes())
    Image.fromarray(image).save(tmp_path / "turned.png", exif=exif.tobytes())
    Image.fromarray(image).save(tmp_path / "a.bmp")
    for name in ("turned.jpg", "turned.png", "a.bmp"):
        assert _plain_header_size(tmp_path / name) is None, name
    assert image_size_from_file(tmp_path / "turned.jpg") == (80, 48)
    assert image_size_from_file(tmp_path / "a.bmp") == (48, 80)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "a.jpg").read_bytes()[:20])  # no frame header
    assert _plain_header_size(tmp_path / "cut.jpg") is None


def test_plain_header_sizes_equal_pillows_on_real_images(bccd_root, raccoon_root):
    files = sorted((bccd_root / "JPEGImages").glob("*.jpg"))[:100] + sorted(
        (raccoon_root / "images").glob("*")
    )
    read = [(f, _plain_header_size(f)) for f in files]
    assert sum(size is not None for _, size in read) > 150
    for path, size in read:
        assert size is None or size == _header_size(path), path


def write_coco(path: Path, annotations: list[dict], text: str | None = None) -> Path:
    cv2.imwrite(str(path.parent / "a.png"), np.zeros((100, 120, 3), np.uint8))
    content = {
        "images": [{"id": 1, "file_name": "a.png", "height": 100, "width": 120}],
        "annotations": annotations,
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    path.write_text(text if text is not None else json.dumps(content, indent=1))
    return path


def test_coco_masks_of_every_form_are_skipped_and_boxes_kept(tmp_path):
    masks = [
        [[10.0, 10.0, 30.0, 10.0, 30.0, 40.0]],  # one polygon
        [[1, 1, 2, 2, 3, 1], [5, 5, 6, 6, 7, 5]],  # two polygons
        {"counts": "PPYo0", "size": [100, 120]},  # compressed RLE
        {"counts": [5, 10, 20], "size": [100, 120]},  # uncompressed RLE (crowd)
    ]
    annotations = [
        {"id": n + 1, "image_id": 1, "category_id": 3 if n % 2 else 7, "bbox": [10 + n, 20, 30, 40.5],
         "area": 100.0, "iscrowd": int(n == 3), "segmentation": mask}
        for n, mask in enumerate(masks)
    ]  # fmt: skip
    dataset = COCODataset(write_coco(tmp_path / "a.json", annotations), tmp_path)
    record = dataset.get_annotation(0)
    expected = [[10 + n, 20, 40 + n, 60.5] for n in range(4)]  # x, y, x + w, y + h
    np.testing.assert_allclose(record["boxes_xyxy"], expected)
    assert record["labels"].tolist() == [2, 1, 2, 1] and record["difficult"].tolist() == [0, 0, 0, 1]
    ground_truth = dataset.coco_ground_truth()["annotations"]
    assert [a["bbox"] for a in ground_truth] == [[10 + n, 20, 30, 40.5] for n in range(4)]
    assert all("segmentation" not in a for a in ground_truth)


def test_coco_errors_still_name_the_place(tmp_path):
    good = {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4], "segmentation": [[1, 2, 3, 4]]}
    bad_box = {**good, "id": 2, "bbox": [1, 2, True, 4]}
    with pytest.raises(DatasetError, match=r"annotation id 2: bbox must be 4 numbers"):
        COCODataset(write_coco(tmp_path / "b.json", [good, bad_box]), tmp_path)
    with pytest.raises(DatasetError, match=r"annotation id 2: category_id 5 is not among the categories"):
        COCODataset(write_coco(tmp_path / "c.json", [good, {**good, "id": 2, "category_id": 5}]), tmp_path)
    broken = json.dumps({"images": [], "annotations": [good]}, indent=1)[:-3] + "\n,,}"  # line 24 as written
    with pytest.raises(DatasetError, match=r"d.json: not a JSON file \(.*line 24 column 2"):
        COCODataset(write_coco(tmp_path / "d.json", [], text=broken), tmp_path)
