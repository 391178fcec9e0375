"""The report's galleries checked against values derived here: thumbnail pixels against crops cut in the test
from the source image, box colours at the places of the prediction and of the ground truth, `data-score` against
the scores given, and the size caps (issue 19's audit: none of these was checked)."""

from __future__ import annotations

import base64
import re

import cv2
import numpy as np

from ssd.evaluation.report import build_report

NAMES = ("__background__", "cat", "dog")
SIDE = 160  # gallery.THUMBNAIL_SIDE, restated: the test derives the geometry itself


class PictureDataset:
    """Images of 200 x 200 pixels, each different: red grows with x, green with y, blue is 40 + 70 * index."""

    def __init__(self, annotations):
        self.annotations = annotations  # per image (boxes_xyxy, labels)
        self.class_names = NAMES

    def __len__(self):
        return len(self.annotations)

    def get_annotation(self, index):
        boxes, labels = self.annotations[index]
        return {
            "image_id": index + 1,
            "file_name": f"pic{index}.jpg",
            "height": 200,
            "width": 200,
            "boxes_xyxy": np.asarray(boxes, np.float32).reshape(-1, 4),
            "labels": np.asarray(labels, np.int64),
            "difficult": np.zeros(len(labels), bool),
        }

    def load_image(self, index):
        y, x = np.mgrid[0:200, 0:200]
        blue = np.full((200, 200), 40 + 70 * index)
        return np.stack([x, y, blue], axis=-1).astype(np.uint8)  # (200, 200, 3) RGB


def prediction(boxes, labels, scores):
    return {
        "boxes_xyxy": np.asarray(boxes, np.float64).reshape(-1, 4),
        "labels": np.asarray(labels, np.int64),
        "scores": np.asarray(scores, np.float64),
    }


FIGURE = re.compile(
    r"<figure class=item data-class='([^']*)' data-score='([^']*)' data-file='([^']*)'>"
    r"<img src='data:image/jpeg;base64,([^']*)' alt='([^']*)'>"
)


def figures(page: str) -> list[dict]:
    """Every gallery entry of the page: class, score, file, the decoded thumbnail (RGB) and the caption."""
    found = []
    for cls, score, file, data, caption in FIGURE.findall(page):
        bgr = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
        found.append(
            {"class": cls, "score": score, "file": file, "thumb": bgr[:, :, ::-1], "caption": caption}
        )
    return found


def expected_crop(image: np.ndarray, box) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The crop around one box as the module docstring of gallery.py describes it, resized to SIDE:
    (crop, (left, top, scale))."""
    x1, y1, x2, y2 = box
    margin = max(16.0, 0.5 * max(x2 - x1, y2 - y1))
    left, top = int(max(0, np.floor(x1 - margin))), int(max(0, np.floor(y1 - margin)))
    right, bottom = int(min(200, np.ceil(x2 + margin))), int(min(200, np.ceil(y2 + margin)))
    scale = SIDE / max(right - left, bottom - top)
    size = (round((right - left) * scale), round((bottom - top) * scale))
    crop = cv2.resize(image[top:bottom, left:right], size, interpolation=cv2.INTER_AREA)
    return crop, (left, top, scale)


# Three images without objects, one detection each (a false positive on background whatever the rules).
BACKGROUND_BOXES = [[30, 40, 90, 110], [100, 20, 170, 60], [60, 120, 150, 190]]
BACKGROUND_SCORES = [0.61, 0.734, 0.88]


def background_report() -> tuple[PictureDataset, list[dict]]:
    dataset = PictureDataset([([], [])] * 3)
    preds = {
        i: prediction([box], [1], [s])
        for i, (box, s) in enumerate(zip(BACKGROUND_BOXES, BACKGROUND_SCORES, strict=True))
    }
    page, _ = build_report(dataset, preds, {}, "pictures", 0.5)
    return dataset, figures(page)


def test_each_thumbnail_is_cut_from_its_own_image_at_its_box():
    dataset, found = background_report()
    assert sorted(f["file"] for f in found) == ["pic0.jpg", "pic1.jpg", "pic2.jpg"]
    for fig in found:
        index = int(fig["file"][3])
        thumb = fig["thumb"].astype(np.float64)
        crop, (left, top, scale) = expected_crop(dataset.load_image(index), BACKGROUND_BOXES[index])
        assert thumb.shape == crop.shape
        # Compare away from the drawn box: pixels farther than 4 from its edges in thumbnail coordinates.
        x1, y1, x2, y2 = (np.array(BACKGROUND_BOXES[index]) - [left, top, left, top]) * scale
        yy, xx = np.mgrid[0 : thumb.shape[0], 0 : thumb.shape[1]]
        near_x = (np.abs(xx - x1) < 4) | (np.abs(xx - x2) < 4)
        near_y = (np.abs(yy - y1) < 4) | (np.abs(yy - y2) < 4)
        inside_x, inside_y = (xx > x1 - 4) & (xx < x2 + 4), (yy > y1 - 4) & (yy < y2 + 4)
        away = ~((near_x & inside_y) | (near_y & inside_x))
        own = np.abs(thumb - crop)[away].mean()
        assert own < 4, (fig["file"], own)
        for other in {0, 1, 2} - {index}:  # the same place in another image is far off (blue differs by 70)
            other_crop, _ = expected_crop(dataset.load_image(other), BACKGROUND_BOXES[index])
            assert np.abs(thumb - other_crop)[away].mean() > 20


def test_data_score_is_the_score_of_the_detection_shown():
    _, found = background_report()
    by_file = {f["file"]: f["score"] for f in found}
    assert by_file == {f"pic{i}.jpg": f"{s:.4f}" for i, s in enumerate(BACKGROUND_SCORES)}


def redness(pixels: np.ndarray) -> np.ndarray:
    return pixels[..., 0] - pixels[..., 1]


def test_prediction_is_drawn_red_at_its_place_and_the_ground_truth_green_at_its_own():
    gt_box, pred_box = [40, 40, 120, 120], [50, 50, 130, 130]  # IoU 0.62, another class
    dataset = PictureDataset([([gt_box], [1])])
    dataset.load_image = lambda index: np.full((200, 200, 3), 128, np.uint8)  # grey: the colours stand out
    page, _ = build_report(dataset, {0: prediction([pred_box], [2], [0.9])}, {}, "one", 0.5)
    (fig,) = [f for f in figures(page) if f["caption"].startswith("predicted")]
    thumb = fig["thumb"].astype(np.int64)
    # The crop is the union [40, 40, 130, 130] grown by 45 on each side, clipped: [0, 0, 175, 175].
    scale = SIDE / 175

    def patch(x: float, y: float) -> np.ndarray:  # 5 x 5 pixels around a point of the original image
        cx, cy = round(x * scale), round(y * scale)
        return thumb[cy - 2 : cy + 3, cx - 2 : cx + 3].reshape(-1, 3)

    # Top edges at x = 85 (inside both boxes' widths, away from their vertical edges).
    pred_top, gt_top = patch(85, 50), patch(85, 40)
    assert redness(pred_top).max() > 80  # red (230, 20, 20) on the prediction's edge
    assert (gt_top[:, 1] - gt_top[:, 0]).max() > 80  # green (20, 190, 20) on the ground truth's edge
    assert redness(gt_top).max() < 30 and (pred_top[:, 1] - pred_top[:, 0]).max() < 30
    # The prediction's bottom-right corner region (x, y = 129) is outside the ground truth: red only.
    assert redness(patch(129, 100)).max() > 80 and redness(patch(100, 129)).max() > 80


def test_galleries_are_capped_per_kind_round_robin_over_classes():
    from ssd.evaluation.gallery import select_items

    # 40 images, each with one background false positive; classes alternate cat, dog; every cat scores
    # above every dog, so a cap by score alone would show cats only.
    n = 40
    gts = [{"boxes_xyxy": np.zeros((0, 4)), "labels": np.zeros(0, np.int64)} for _ in range(n)]
    kept = [
        prediction([[10, 10, 50, 50]], [1 + i % 2], [(0.9 if i % 2 == 0 else 0.5) - i / 1000])
        for i in range(n)
    ]
    labels = [
        {
            "kind": np.array(["background"]),
            "target": np.array([-1]),
            "iou": np.array([0.0]),
            "missed": np.zeros(0, bool),
        }
    ] * n
    items = select_items(gts, kept, labels, kept, NAMES, per_class=8, per_kind=5)
    assert len(items) == 5
    # Round-robin: ranks 1-2 of both classes (images 0, 1, 2, 3) and then rank 3 of cat (image 4).
    assert sorted(item["image_index"] for item in items) == [0, 1, 2, 3, 4]
    assert [item["score"] for item in items] == sorted((item["score"] for item in items), reverse=True)
    assert len(select_items(gts, kept, labels, kept, NAMES, per_class=8, per_kind=100)) == 16  # 8 per class


def test_report_embeds_the_confusion_matrix_saved_by_the_analysis_instead_of_drawing_it_again(
    tmp_path, monkeypatch
):
    import json

    from ssd.evaluation import report_html
    from ssd.evaluation.analysis import ErrorAnalysisEvaluator
    from ssd.evaluation.report import write_report

    dataset = PictureDataset([([[40, 40, 120, 120]], [1]), ([[10, 10, 60, 60]], [2])])
    preds = {0: prediction([[50, 50, 130, 130]], [2], [0.9]), 1: prediction([[10, 12, 60, 60]], [2], [0.8])}
    analysis = ErrorAnalysisEvaluator(dataset, 0.5, output_dir=tmp_path)
    analysis.reset()
    analysis._predictions = dict(preds)
    analysis.evaluate()  # writes analysis.json, confusion_matrix.png, pr_curves.png
    entries = [
        {"image_id": i + 1, "category_id": int(p["labels"][0]), "score": float(p["scores"][0]),
         "bbox": [x1, y1, x2 - x1, y2 - y1]}
        for i, p in preds.items()
        for x1, y1, x2, y2 in p["boxes_xyxy"].tolist()
    ]  # fmt: skip
    (tmp_path / "coco_instances_results.json").write_text(json.dumps(entries))
    drawn = []
    plots = dict(report_html.PLOT_FILES)
    monkeypatch.setitem(report_html.PLOT_FILES, "confusion_matrix.png", lambda *a: drawn.append(a))
    monkeypatch.setitem(report_html.PLOT_FILES, "pr_curves.png", lambda *a: drawn.append(a))
    page = write_report(tmp_path, dataset, "two", 0.5)["path"].read_text()
    saved = base64.b64encode((tmp_path / "confusion_matrix.png").read_bytes()).decode("ascii")
    assert saved in page and drawn == []
    # At another threshold the saved plots show something else: they are drawn for the report.
    monkeypatch.setitem(report_html.PLOT_FILES, "confusion_matrix.png", plots["confusion_matrix.png"])
    monkeypatch.setitem(report_html.PLOT_FILES, "pr_curves.png", plots["pr_curves.png"])
    page = write_report(tmp_path, dataset, "two", 0.85)["path"].read_text()
    assert saved not in page and "confusion matrix" in page


def test_report_takes_the_detections_and_analysis_of_the_run_it_follows(tmp_path, monkeypatch):
    """test.py hands the report the error analysis' detections and analysis (`last_run`): no JSON is read back
    and the analysis is not made twice, unless it was made at another score threshold."""
    from ssd.evaluation.analysis import ErrorAnalysisEvaluator
    from ssd.evaluation.report import write_report

    dataset = PictureDataset([([[40, 40, 120, 120]], [1]), ([[10, 10, 60, 60]], [2])])
    # Image 0: a dog on the cat box (IoU 70^2 / (2 * 80^2 - 70^2) = 0.62): a confusion; image 1: a dog TP.
    preds = {0: prediction([[50, 50, 130, 130]], [2], [0.9]), 1: prediction([[10, 12, 60, 60]], [2], [0.8])}
    evaluator = ErrorAnalysisEvaluator(dataset, 0.5, output_dir=tmp_path)
    evaluator.reset()
    evaluator._predictions = dict(preds)
    evaluator.evaluate()
    run = evaluator.last_run
    assert run["analysis"]["confusion_matrix"]["counts"] == [[0, 0, 0], [0, 0, 1], [0, 0, 1]]
    made = []
    analyse = ErrorAnalysisEvaluator.analyse
    monkeypatch.setattr(ErrorAnalysisEvaluator, "analyse", lambda self, p: made.append(p) or analyse(self, p))
    assert not (tmp_path / "coco_instances_results.json").exists()  # nothing to read back
    info = write_report(tmp_path, dataset, "two", 0.5, **run)
    assert made == [] and info["gallery"]["classification"] == 1
    write_report(tmp_path, dataset, "two", 0.85, **run)  # the run's analysis is at 0.5: made again
    assert len(made) == 1
    evaluator.reset()
    assert evaluator.last_run is None
