"""tools/compare.py: two prediction files (ours and a Detectron2-style one) against one ground truth."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

from ssd.evaluation.coco import evaluate_coco_detections


def load_compare():
    path = Path(__file__).resolve().parents[1] / "tools" / "compare.py"
    spec = importlib.util.spec_from_file_location("ssd_compare_tool", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


GT = {
    "images": [{"id": "a", "height": 200, "width": 200}, {"id": "b", "height": 200, "width": 200}],
    "categories": [{"id": 1, "name": "RBC"}, {"id": 2, "name": "WBC"}],
    "annotations": [
        {"id": 1, "image_id": "a", "category_id": 1, "bbox": [10, 10, 50, 50], "area": 2500, "iscrowd": 0},
        {"id": 2, "image_id": "a", "category_id": 2, "bbox": [100, 100, 80, 60], "area": 4800, "iscrowd": 0},
        {"id": 3, "image_id": "b", "category_id": 1, "bbox": [0, 0, 40, 40], "area": 1600, "iscrowd": 0},
    ],
}
PERFECT = [
    {"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
    for a in GT["annotations"]
]
# Detectron2 numbering (0-based classes); misses the WBC box and adds a confident false RBC.
D2_STYLE = [
    {"image_id": "a", "category_id": 0, "bbox": [10, 10, 50, 50], "score": 0.8},
    {"image_id": "b", "category_id": 0, "bbox": [120, 120, 40, 40], "score": 0.95},
    {"image_id": "b", "category_id": 0, "bbox": [1, 1, 40, 40], "score": 0.7},
]


@pytest.fixture
def files(tmp_path):
    paths = {}
    for name, content in (("gt.json", GT), ("ours.json", PERFECT), ("d2.json", D2_STYLE)):
        paths[name] = tmp_path / name
        paths[name].write_text(json.dumps(content))
    return paths


def test_side_by_side_table(files, capsys, tmp_path):
    compare = load_compare()
    argv = ["--gt", str(files["gt.json"]), str(files["ours.json"]), str(files["d2.json"]), "--names", "ours", "d2",
            "--category-offsets", "0", "1", "--quiet", "--output", str(tmp_path / "out.json")]  # fmt: skip
    results = compare.main(argv)
    table = capsys.readouterr().out
    assert table.splitlines()[0] == "| metric   | ours    | d2     |"
    assert "| AP-RBC   | 100.000 |" in table
    assert results["ours"]["AP"] == pytest.approx(100.0)
    assert results["d2"]["AP-WBC"] == 0.0  # WBC has ground truth but no detection: 0, not NaN
    assert math.isnan(results["d2"]["APs"])  # no small objects
    # the same numbers as evaluating the shifted file directly
    shifted = [{**d, "category_id": d["category_id"] + 1} for d in D2_STYLE]
    direct = evaluate_coco_detections(GT, shifted, verbose=False)
    assert results["d2"] == pytest.approx(direct, nan_ok=True)
    assert 0 < results["d2"]["AP-RBC"] < 100
    assert json.loads((tmp_path / "out.json").read_text())["ours"]["AP50"] == pytest.approx(100.0)


def test_wrong_category_ids_are_explained(files):
    compare = load_compare()
    with pytest.raises(SystemExit, match="category-offsets"):
        compare.main(["--gt", str(files["gt.json"]), str(files["d2.json"]), "--quiet"])
