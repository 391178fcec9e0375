"""COCO evaluator: perfect detections, difficult boxes as crowd, empty classes, maxDets, and pycocotools parity."""

import contextlib
import functools
import io
import json
import math
import sys

import numpy as np
import pytest
from eval_fakes import FakeDataset as BaseFakeDataset
from eval_fakes import prediction
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssd.evaluation.coco import COCOEvaluator, dataset_to_coco_dict, evaluate_coco_detections

# 200 x 300 images: big enough for COCO's small / medium / large boxes below.
FakeDataset = functools.partial(BaseFakeDataset, size=(200, 300))


def run_coco(dataset, predictions, output_dir=None, **kwargs):
    evaluator = COCOEvaluator(dataset, output_dir=output_dir, **kwargs)
    for index, pred in predictions.items():
        evaluator.process([{"index": index}], [pred])
    with contextlib.redirect_stdout(io.StringIO()):
        return evaluator.evaluate()["bbox"]


SMALL, MEDIUM, LARGE = [0, 0, 20, 20], [50, 50, 100, 100], [100, 0, 250, 150]


def test_perfect_detections_give_100(tmp_path):
    ds = FakeDataset([([SMALL, MEDIUM], [1, 2], None), ([LARGE], [1], None)], ("__background__", "a", "b"))
    res = run_coco(ds, {0: prediction([SMALL, MEDIUM], [1, 2], [0.9, 0.8]), 1: prediction([LARGE], [1], [0.7])},
                   output_dir=tmp_path)  # fmt: skip
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AP-a", "AP-b"):
        assert res[key] == pytest.approx(100.0), key
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert written[0] == {"image_id": "img0", "category_id": 1, "bbox": [0.0, 0.0, 20.0, 20.0],
                          "score": pytest.approx(0.9)}  # fmt: skip
    assert (tmp_path / "ground_truth_coco_format.json").is_file()


def test_category_ids_follow_the_dataset_map(tmp_path):
    ds = FakeDataset([([MEDIUM, LARGE], [1, 2], None)], ("__background__", "a", "b"), id_map={1: 7, 2: 3})
    res = run_coco(ds, {0: prediction([MEDIUM, LARGE], [1, 2], [0.9, 0.8])}, output_dir=tmp_path)
    assert res["AP-a"] == pytest.approx(100.0) and res["AP-b"] == pytest.approx(100.0)
    written = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert [d["category_id"] for d in written] == [7, 3]
    gt = json.loads((tmp_path / "ground_truth_coco_format.json").read_text())
    assert gt["categories"] == [{"id": 7, "name": "a"}, {"id": 3, "name": "b"}]


def test_difficult_boxes_become_crowd_and_are_ignored():
    ds = FakeDataset([([MEDIUM, LARGE], [1, 1], [False, True])])
    assert dataset_to_coco_dict(ds)["annotations"][1]["iscrowd"] == 1
    # A detection on the difficult box (ranked first) is not a FP; missing it costs nothing.
    res = run_coco(ds, {0: prediction([LARGE, MEDIUM], [1, 1], [0.9, 0.8])})
    assert res["AP"] == pytest.approx(100.0)
    assert run_coco(ds, {0: prediction([MEDIUM], [1], [0.8])})["AP"] == pytest.approx(100.0)
    # The same detections against a non-difficult box elsewhere: the first one is a FP.
    plain = FakeDataset([([MEDIUM, SMALL], [1, 1], None)])
    assert run_coco(plain, {0: prediction([LARGE, MEDIUM], [1, 1], [0.9, 0.8])})["AP50"] < 100


def test_class_without_ground_truth_is_nan():
    ds = FakeDataset([([MEDIUM], [1], None)], ("__background__", "cell", "ghost"))
    res = run_coco(ds, {0: prediction([MEDIUM, LARGE], [1, 2], [0.9, 0.8])})
    assert math.isnan(res["AP-ghost"])
    assert res["AP-cell"] == pytest.approx(100.0)
    assert res["AP"] == pytest.approx(100.0)  # the summary averages only classes with ground truth
    assert math.isnan(res["APs"]) and math.isnan(res["APl"])  # no ground truth in those area ranges


def test_max_dets_per_image_limits_recall():
    # 3 boxes, 3 perfect detections, at most 2 kept: precision 1 up to recall 2/3, then nothing.
    # COCO samples precision at recall 0, 0.01, ..., 1: points 0 ... 0.66 (67 of 101) have precision 1.
    ds = FakeDataset([([SMALL, MEDIUM, LARGE], [1, 1, 1], None)])
    preds = {0: prediction([SMALL, MEDIUM, LARGE], [1, 1, 1], [0.9, 0.8, 0.7])}
    assert run_coco(ds, preds, max_dets_per_image=2)["AP50"] == pytest.approx(100 * 67 / 101)
    assert run_coco(ds, preds)["AP50"] == pytest.approx(100.0)


def test_no_detections_gives_nan():
    ds = FakeDataset([([MEDIUM], [1], None)])
    res = run_coco(ds, {0: prediction([], [], [])})
    assert math.isnan(res["AP"]) and math.isnan(res["AP-cell"])


class IntegerIdDataset(BaseFakeDataset):
    """FakeDataset with COCO's integer image ids (faster-coco-eval takes only those)."""

    def get_annotation(self, index):
        return {**super().get_annotation(index), "image_id": 1000 + index}


def random_set(dataset_class=FakeDataset):
    rng = np.random.default_rng(0)
    names = ("__background__", "a", "b", "c")
    annotations, preds = [], {}
    for i in range(15):
        g = int(rng.integers(1, 6))
        xy = rng.uniform(0, 200, (g, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(4, 120, (g, 2))], 1)
        labels = rng.integers(1, 4, g)
        annotations.append((boxes, labels, rng.random(g) < 0.1))
        det = np.concatenate(
            [boxes + rng.normal(0, 4, boxes.shape), rng.uniform(0, 150, (3, 4)) + [0, 0, 40, 40]]
        )
        det_labels = np.concatenate([labels, rng.integers(1, 4, 3)])
        preds[i] = prediction(det.tolist(), det_labels.tolist(), rng.random(len(det)).tolist())
    return dataset_class(annotations, names, size=(200, 300)), preds


def check_against_pycocotools(res, folder, tolerance):
    """`res` equals pycocotools run directly on the two files the evaluator wrote into `folder`."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(folder / "ground_truth_coco_format.json"))
        dt = gt.loadRes(str(folder / "coco_instances_results.json"))
        cocoeval = COCOeval(gt, dt, "bbox")
        cocoeval.evaluate(), cocoeval.accumulate(), cocoeval.summarize()
    for k, key in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
        expected = cocoeval.stats[k] * 100 if cocoeval.stats[k] >= 0 else float("nan")
        assert res[key] == pytest.approx(expected, abs=tolerance, nan_ok=True), key
    for cat_id, name in ((1, "a"), (2, "b"), (3, "c")):
        with contextlib.redirect_stdout(io.StringIO()):
            one = COCOeval(gt, dt, "bbox")
            one.params.catIds = [cat_id]
            one.evaluate(), one.accumulate(), one.summarize()
        assert res[f"AP-{name}"] == pytest.approx(one.stats[0] * 100, abs=tolerance)
    assert 0 < res["AP"] < 100


def test_identical_to_pycocotools_on_random_detections(tmp_path):
    dataset, preds = random_set()
    check_against_pycocotools(run_coco(dataset, preds, output_dir=tmp_path), tmp_path, 1e-12)


def test_faster_coco_eval_gives_the_numbers_of_pycocotools(tmp_path, caplog):
    pytest.importorskip("faster_coco_eval")
    dataset, preds = random_set(IntegerIdDataset)
    with caplog.at_level("INFO", logger="ssd.evaluation.coco"):
        res = run_coco(dataset, preds, output_dir=tmp_path)
    assert "with faster-coco-eval" in caplog.text
    check_against_pycocotools(res, tmp_path, 1e-4)


def test_without_faster_coco_eval_pycocotools_evaluates(tmp_path, caplog, monkeypatch):
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)  # `import faster_coco_eval` raises ImportError
    dataset, preds = random_set(IntegerIdDataset)
    with caplog.at_level("INFO", logger="ssd.evaluation.coco"):
        res = run_coco(dataset, preds, output_dir=tmp_path)
    assert "faster-coco-eval is not installed" in caplog.text and "with pycocotools" in caplog.text
    check_against_pycocotools(res, tmp_path, 1e-12)


def test_evaluation_leaves_the_ground_truth_and_detections_as_given():
    """No deep copies, yet the caller's dicts are not changed (detections go in as shallow copies)."""
    dataset, preds = random_set(IntegerIdDataset)
    gt = dataset_to_coco_dict(dataset)
    detections = [
        {
            "image_id": 1000 + i,
            "category_id": int(label),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "score": float(s),
        }
        for i, p in preds.items()
        for (x1, y1, x2, y2), label, s in zip(p["boxes"].tolist(), p["labels"], p["scores"], strict=True)
    ]
    before, gt_before = json.dumps(detections), json.loads(json.dumps(gt))
    first = evaluate_coco_detections(gt, detections, verbose=False)
    assert json.dumps(detections) == before
    # The ground truth only gains the flags pycocotools recomputes on every run.
    for old, new in zip(gt_before["annotations"], gt["annotations"], strict=True):
        assert {k: v for k, v in new.items() if k not in ("ignore", "_ignore")} == old
    again = evaluate_coco_detections(gt, detections, verbose=False)
    assert again == pytest.approx(first, nan_ok=True)


def test_logs_detectron2_tables(caplog):
    ds = FakeDataset([([MEDIUM], [1], None)])
    with caplog.at_level("INFO", logger="ssd.evaluation.coco"):
        run_coco(ds, {0: prediction([MEDIUM], [1], [0.9])})
    text = caplog.text
    assert "Evaluation results for bbox:\n|   AP    |  AP50   |" in text
    assert "Per-category bbox AP:\n| category   | AP      |" in text


@pytest.mark.parametrize("data", ["bccd", "raccoon"])
def test_real_ground_truth_as_predictions_scores_100(data, request, tmp_path):
    """The real VOC-XML dataset classes (BCCD: VOC layout, 640 x 480; raccoon: an XML folder, mixed sizes),
    their get_annotation, and both metrics: ground truth fed back scores 100."""
    from ssd.config import load_config
    from ssd.data.build import build_dataset
    from ssd.evaluation import build_evaluator, voc_pixel_offset

    if data == "bccd":
        register, classes = (
            f"bccd_eval_test:voc:{request.getfixturevalue('bccd_root')}:test",
            ("Platelets", "RBC", "WBC"),
        )
    else:
        register, classes = (
            f"raccoon_eval_test:xml_folder:{request.getfixturevalue('raccoon_xml_folder')}",
            ("raccoon",),
        )
    cfg = load_config(
        None,
        [
            "DATASETS.REGISTER",
            repr((register,)),
            "DATASETS.CLASS_NAMES",
            repr(classes),
            "MODEL.NUM_CLASSES",
            str(len(classes) + 1),
            "DATASETS.FOLLOW_SYMLINKS",
            "True",
        ],
    )  # FOLLOW_SYMLINKS: the raccoon folder is made of links, see conftest.py
    name = register.split(":")[0]
    dataset = build_dataset(cfg, [name], is_train=False)
    assert voc_pixel_offset(dataset) == 1.0
    evaluator = build_evaluator(cfg, dataset, tmp_path, name, analysis=False)
    for i in range(len(dataset)):
        ann = dataset.get_annotation(i)
        n = len(ann["labels"])
        pred = prediction(ann["boxes_xyxy"].tolist(), ann["labels"].tolist(), np.linspace(1, 0.5, n).tolist())
        evaluator.process([{"index": i}], [pred])
    with contextlib.redirect_stdout(io.StringIO()):
        results = evaluator.evaluate()
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["voc"]["mAP50_07"] == pytest.approx(100.0)
    assert results["voc"]["AP"] == pytest.approx(100.0)


def test_written_files_match_hand_derived_coco_json(tmp_path):
    """Both files the evaluator writes, value by value, for boxes away from the origin and not square.

    xyxy in pixels -> COCO's [x, y, w, h]. The expected dicts below are written out by hand (not computed with
    the evaluator's helpers), then pycocotools' own COCO / loadRes score the evaluator's results file against a
    ground-truth file built here, independently of `dataset_to_coco_dict`: same AP as the evaluator reports.
    """
    # image 0: a wide box of class a (80 x 30) and a tall box of class b (20 x 100); image 1: one wide box of a.
    ds = FakeDataset(
        [([[30, 40, 110, 70], [150, 20, 170, 120]], [1, 2], None), ([[60, 90, 250, 130]], [1], None)],
        ("__background__", "a", "b"),
        id_map={1: 7, 2: 3},
    )
    preds = {
        0: prediction([[32, 41, 112, 72], [150, 30, 172, 126], [200, 150, 240, 190]], [1, 2, 1], [0.75, 0.5, 0.25]),
        1: prediction([[70, 88, 240, 134]], [1], [0.625]),
    }  # fmt: skip
    res = run_coco(ds, preds, output_dir=tmp_path)

    expected_results = [
        {"image_id": "img0", "category_id": 7, "bbox": [32.0, 41.0, 80.0, 31.0], "score": 0.75},
        {"image_id": "img0", "category_id": 3, "bbox": [150.0, 30.0, 22.0, 96.0], "score": 0.5},
        {"image_id": "img0", "category_id": 7, "bbox": [200.0, 150.0, 40.0, 40.0], "score": 0.25},
        {"image_id": "img1", "category_id": 7, "bbox": [70.0, 88.0, 170.0, 46.0], "score": 0.625},
    ]
    assert json.loads((tmp_path / "coco_instances_results.json").read_text()) == expected_results
    expected_gt = {
        "images": [
            {"id": "img0", "file_name": "img0.jpg", "height": 200, "width": 300},
            {"id": "img1", "file_name": "img1.jpg", "height": 200, "width": 300},
        ],
        "annotations": [
            {"id": 1, "image_id": "img0", "category_id": 7, "bbox": [30.0, 40.0, 80.0, 30.0], "area": 2400.0,
             "iscrowd": 0},
            {"id": 2, "image_id": "img0", "category_id": 3, "bbox": [150.0, 20.0, 20.0, 100.0], "area": 2000.0,
             "iscrowd": 0},
            {"id": 3, "image_id": "img1", "category_id": 7, "bbox": [60.0, 90.0, 190.0, 40.0], "area": 7600.0,
             "iscrowd": 0},
        ],
        "categories": [{"id": 7, "name": "a"}, {"id": 3, "name": "b"}],
    }  # fmt: skip
    assert json.loads((tmp_path / "ground_truth_coco_format.json").read_text()) == expected_gt

    gt_file = tmp_path / "independent_gt.json"
    gt_file.write_text(json.dumps(expected_gt))
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_file))
        dt = gt.loadRes(str(tmp_path / "coco_instances_results.json"))
        cocoeval = COCOeval(gt, dt, "bbox")
        cocoeval.evaluate(), cocoeval.accumulate(), cocoeval.summarize()
    # IoUs of the matches (intersection / union): 2262/2618 = 0.86 (a, image 0), 1800/2312 = 0.78 (b),
    # 6800/8620 = 0.79 (a, image 1); the false positive of class a overlaps nothing and has the lowest score, so
    # AP50 and AP75 are 100 and AP (IoU thresholds up to 0.95) is below.
    assert res["AP50"] == pytest.approx(100.0) and res["AP75"] == pytest.approx(100.0)
    for k, key in enumerate(("AP", "AP50", "AP75")):
        assert res[key] == pytest.approx(cocoeval.stats[k] * 100, abs=1e-12), key
    assert 50 < res["AP"] < 100


def test_coco_dataset_is_evaluated_against_its_own_json_without_keeping_it(tmp_path):
    """Crowd boxes, mask areas and annotation ids of the JSON are what COCOeval sees (pycocotools on the file
    itself is the reference), although the dataset no longer holds pycocotools' index."""
    import cv2

    from ssd.data.datasets import COCODataset

    for k in (1, 2):
        cv2.imwrite(str(tmp_path / f"i{k}.png"), np.zeros((200, 300, 3), np.uint8))
    images = [{"id": k, "file_name": f"i{k}.png", "height": 200, "width": 300} for k in (1, 2)]
    square = [[0, 0, 10, 0, 10, 10]]
    annotations = [  # area is a mask area (900: "small") for a 40 x 40 box ("medium" by its box area)
        {"id": 11, "image_id": 1, "category_id": 5, "bbox": [10, 10, 40, 40], "area": 900, "iscrowd": 0,
         "segmentation": square},
        {"id": 12, "image_id": 1, "category_id": 5, "bbox": [100, 20, 120, 100], "area": 9000, "iscrowd": 0,
         "segmentation": square},
        {"id": 13, "image_id": 2, "category_id": 9, "bbox": [50, 50, 150, 120], "area": 15000, "iscrowd": 1,
         "segmentation": square},
        {"id": 14, "image_id": 2, "category_id": 9, "bbox": [5, 5, 30, 30], "area": 700, "iscrowd": 0,
         "segmentation": square},
    ]  # fmt: skip
    categories = [{"id": 5, "name": "cat"}, {"id": 9, "name": "dog"}]
    json_file = tmp_path / "instances.json"
    json_file.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    dataset = COCODataset(json_file, tmp_path)
    assert not hasattr(dataset, "coco")
    preds = {
        0: prediction([[11, 11, 50, 52], [100, 20, 220, 118], [0, 0, 30, 30]], [1, 1, 2], [0.9, 0.8, 0.7]),
        1: prediction([[60, 60, 190, 160], [5, 5, 36, 34]], [2, 2], [0.95, 0.6]),  # the first on the crowd
    }
    res = run_coco(dataset, preds, output_dir=tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(json_file))
        dt = gt.loadRes(str(tmp_path / "coco_instances_results.json"))
        cocoeval = COCOeval(gt, dt, "bbox")
        cocoeval.evaluate(), cocoeval.accumulate(), cocoeval.summarize()
    for k, key in enumerate(("AP", "AP50", "AP75", "APs", "APm", "APl")):
        expected = cocoeval.stats[k] * 100 if cocoeval.stats[k] >= 0 else float("nan")
        assert res[key] == pytest.approx(expected, abs=1e-4, nan_ok=True), key
    assert not math.isnan(res["APs"]) and res["AP"] > 0


def test_detections_of_unknown_images_or_classes_are_refused_by_name():
    dataset = IntegerIdDataset([([MEDIUM], [1], None)], ("__background__", "a"), size=(200, 300))
    stray = {"image_id": 77, "category_id": 1, "bbox": [50.0, 50.0, 50.0, 50.0], "score": 0.9}
    with pytest.raises(ValueError, match="image_id 77, which is not an image of the ground truth"):
        evaluate_coco_detections(dataset_to_coco_dict(dataset), [stray], verbose=False)
    evaluator = COCOEvaluator(dataset)
    with pytest.raises(ValueError, match=r"predicted label 3 is not a dataset class \(1..1\)"):
        evaluator.process([{"index": 0}], [prediction([MEDIUM, MEDIUM], [1, 3], [0.9, 0.8])])
