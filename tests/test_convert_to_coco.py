"""tools/convert_to_coco.py: any registered dataset as a COCO instances file, read back unchanged."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from ssd.data.datasets import COCODataset, CSVDataset

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOL = REPO_ROOT / "tools" / "convert_to_coco.py"


def convert(config: Path, dataset: str, output: Path, *opts: str) -> str:
    result = subprocess.run(
        [sys.executable, str(TOOL), "--config-file", str(config), "--dataset", dataset, "--output", str(output),
         *opts], capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_hand_made_csv_gives_the_hand_derived_coco_file(tmp_path):
    """Boxes away from the origin and not square; 1-based CSV corners: (11, 21, 41, 31) -> x 10, y 20, w 30, h 10."""
    import cv2

    images = tmp_path / "images"
    images.mkdir()
    for name, (h, w) in {"a.png": (40, 60), "b.png": (50, 50)}.items():
        cv2.imwrite(str(images / name), np.zeros((h, w, 3), np.uint8))
    (tmp_path / "boxes.csv").write_text(
        "filename,width,height,class,xmin,ymin,xmax,ymax\n"
        "a.png,60,40,dog,11,21,41,31\na.png,60,40,cat,2,3,6,13\nb.png,50,50,,,,,\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        f"DATASETS:\n  REGISTER: ('hand:csv:{tmp_path / 'boxes.csv'}:{images}:one_based',)\n"
        "  CLASS_NAMES: ('cat', 'dog')\n"
    )
    out = tmp_path / "hand.json"
    assert "2 images, 2 boxes, 2 classes" in convert(config, "hand", out)
    coco = json.loads(out.read_text())
    assert coco["categories"] == [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in coco["images"]] == [
        (1, "a.png", 40, 60), (2, "b.png", 50, 50),
    ]  # fmt: skip
    boxes = {a["category_id"]: (a["image_id"], a["bbox"], a["area"]) for a in coco["annotations"]}
    assert boxes == {2: (1, [10.0, 20.0, 30.0, 10.0], 300.0), 1: (1, [1.0, 2.0, 4.0, 10.0], 40.0)}
    # pycocotools' own reader takes it, and our COCO reader gives back the CSV's boxes.
    back = COCODataset(out, images)
    csv = CSVDataset(tmp_path / "boxes.csv", images, ("cat", "dog"), one_based=True)
    for index in range(2):
        assert np.array_equal(
            back.get_annotation(index)["boxes_xyxy"], csv.get_annotation(index)["boxes_xyxy"]
        )
        assert np.array_equal(back.get_annotation(index)["labels"], csv.get_annotation(index)["labels"])


def test_raccoon_round_trip(tmp_path, raccoon_root):
    RACCOON = raccoon_root
    out = tmp_path / "raccoon.json"
    convert(REPO_ROOT / "configs" / "examples" / "raccoon.yaml", "raccoon_train", out)
    source = CSVDataset(
        RACCOON / "data" / "train_labels.csv", RACCOON / "images", ("raccoon",), one_based=True
    )
    back = COCODataset(out, RACCOON / "images")
    assert len(back) == len(source) == 160 and back.class_names == source.class_names
    for index in range(len(source)):
        a, b = source.get_annotation(index), back.get_annotation(index)
        assert Path(a["file_name"]).name == Path(b["file_name"]).name
        assert np.allclose(a["boxes_xyxy"], b["boxes_xyxy"]) and np.array_equal(a["labels"], b["labels"])
