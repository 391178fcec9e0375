"""VOC metric: hand-computed APs, duplicates, difficult boxes, empty classes, and an independent reference."""

import math

import numpy as np
import pytest
from eval_fakes import FakeDataset, prediction

from ssd.evaluation.voc import PascalVOCEvaluator, average_precision


def run_voc(dataset, predictions, **kwargs):
    evaluator = PascalVOCEvaluator(dataset, **kwargs)
    for index, pred in predictions.items():
        evaluator.process([{"index": index}], [pred])
    return evaluator.evaluate()["voc"]


A, B, C = [0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]
FAR = [60, 60, 70, 70]


def test_perfect_detections_give_100():
    ds = FakeDataset([([A, B], [1, 1], None), ([C], [1], None)])
    res = run_voc(ds, {0: prediction([A, B], [1, 1], [0.9, 0.8]), 1: prediction([C], [1], [0.7])})
    for key in ("mAP50_07", "mAP50_area", "AP", "AP50", "AP75", "AP50-cell"):
        assert res[key] == pytest.approx(100.0), key


def test_one_false_positive_ranked_first():
    # 3 boxes; ranking FP, TP, TP -> precision 0, 1/2, 2/3 at recall 0, 1/3, 2/3.
    # 11-point: recall points 0, .1, ..., .6 (7 of them) reach precision 2/3, points .7 ... 1 reach nothing
    #   -> 7 * (2/3) / 11 = 14/33.
    # Area: recall steps 0 -> 1/3 and 1/3 -> 2/3, each at envelope precision 2/3 -> 2 * (1/3) * (2/3) = 4/9.
    ds = FakeDataset([([A, B, C], [1, 1, 1], None)])
    res = run_voc(ds, {0: prediction([FAR, A, B], [1, 1, 1], [0.9, 0.8, 0.7])})
    assert res["mAP50_07"] == pytest.approx(100 * 14 / 33)
    assert res["mAP50_area"] == pytest.approx(100 * 4 / 9)
    assert res["AP50-cell"] == pytest.approx(100 * 14 / 33)  # use_07_metric=True by default
    res_area = run_voc(ds, {0: prediction([FAR, A, B], [1, 1, 1], [0.9, 0.8, 0.7])}, use_07_metric=False)
    assert res_area["AP50"] == pytest.approx(100 * 4 / 9)


def test_duplicate_detection_is_a_false_positive():
    # 2 boxes; ranking TP(A), duplicate of A (FP), TP(B): precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    # 11-point: points 0 ... .5 (6) -> 1, points .6 ... 1 (5) -> 2/3 -> (6 + 10/3) / 11 = 28/33.
    # Area: 1/2 * 1 + 1/2 * 2/3 = 5/6.
    ds = FakeDataset([([A, B], [1, 1], None)])
    res = run_voc(ds, {0: prediction([A, [0, 0, 10, 11], B], [1, 1, 1], [0.9, 0.8, 0.7])})
    assert res["mAP50_07"] == pytest.approx(100 * 28 / 33)
    assert res["mAP50_area"] == pytest.approx(100 * 5 / 6)


def test_difficult_boxes_are_ignored():
    # B is difficult: a detection on it is neither TP nor FP, and missing it costs no recall.
    ds = FakeDataset([([A, B], [1, 1], [False, True])])
    assert run_voc(ds, {0: prediction([B, A], [1, 1], [0.9, 0.8])})["mAP50_07"] == pytest.approx(100.0)
    assert run_voc(ds, {0: prediction([A], [1], [0.8])})["mAP50_area"] == pytest.approx(100.0)
    # Counted as a normal box, the same detections give a FP first: precision 0 then 1/2.
    ds_plain = FakeDataset([([A, FAR], [1, 1], None)])
    assert run_voc(ds_plain, {0: prediction([B, A], [1, 1], [0.9, 0.8])})["mAP50_area"] < 100


def test_class_without_ground_truth_is_nan_and_left_out_of_the_mean():
    ds = FakeDataset([([A], [1], None)], class_names=("__background__", "cell", "ghost"))
    res = run_voc(ds, {0: prediction([A, B], [1, 2], [0.9, 0.8])})
    assert math.isnan(res["AP50-ghost"])
    assert res["AP50-cell"] == pytest.approx(100.0)
    assert res["mAP50_07"] == pytest.approx(100.0)


def test_no_predictions_at_all():
    ds = FakeDataset([([A], [1], None), ([], [], None)])
    res = run_voc(ds, {})
    assert res["mAP50_07"] == 0.0 and res["AP50-cell"] == 0.0


def test_pixel_convention_matters_at_the_threshold():
    # Boxes of 10 x 10 corners vs 11 x 11 inclusive pixels: a detection shifted by 3 pixels has IoU
    # 49/151 = 0.32 (continuous) vs 64/178 = 0.36 (+1): both below 0.5; shifted by 2: 64/136 = 0.47 vs
    # 81/161 = 0.503 -> a TP only with the devkit's +1 convention.
    ds = FakeDataset([([A], [1], None)])
    shifted = prediction([[2, 2, 12, 12]], [1], [0.9])
    assert run_voc(ds, {0: shifted}, pixel_offset=1.0)["mAP50_07"] == pytest.approx(100.0)
    assert run_voc(ds, {0: shifted}, pixel_offset=0.0)["mAP50_07"] == 0.0


# ----- an independent, straightforward implementation (py-faster-rcnn's loop) on random data ----------------


def reference_voc_ap(gts, preds, cls, iou_thresh, use_07):
    """Loop-per-detection VOC evaluation of one class, written without the evaluator's vectorisation."""
    records = {}
    npos = 0
    for i, (boxes, labels, difficult) in enumerate(gts):
        mask = np.asarray(labels) == cls
        records[i] = {
            "boxes": np.asarray(boxes, float).reshape(-1, 4)[mask],
            "difficult": np.asarray(difficult, bool)[mask],
            "taken": np.zeros(int(mask.sum()), bool),
        }
        npos += int((~records[i]["difficult"]).sum())
    dets = [
        (s, i, b)
        for i, (bs, ls, ss) in preds.items()
        for b, lab, s in zip(bs, ls, ss, strict=True)
        if lab == cls
    ]
    dets.sort(key=lambda d: -d[0])
    tp, fp = [], []
    for _, i, b in dets:
        r = records[i]
        best, jbest = -np.inf, -1
        for j, g in enumerate(r["boxes"]):
            iw = min(b[2], g[2]) - max(b[0], g[0]) + 1
            ih = min(b[3], g[3]) - max(b[1], g[1]) + 1
            inter = max(iw, 0) * max(ih, 0)
            union = (b[2] - b[0] + 1) * (b[3] - b[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - inter
            if inter / union > best:
                best, jbest = inter / union, j
        if best >= iou_thresh:
            if r["difficult"][jbest]:
                tp.append(0), fp.append(0)
            elif not r["taken"][jbest]:
                r["taken"][jbest] = True
                tp.append(1), fp.append(0)
            else:
                tp.append(0), fp.append(1)
        else:
            tp.append(0), fp.append(1)
    if npos == 0:
        return float("nan")
    ctp, cfp = np.cumsum(tp), np.cumsum(fp)
    rec = ctp / npos
    prec = ctp / np.maximum(ctp + cfp, 1e-12)
    if use_07:
        return sum(max(prec[rec >= t], default=0.0) for t in np.arange(0.0, 1.1, 0.1)) / 11
    # area under the envelope written as a sum over ranks: (recall gained at rank i) * best precision from i on
    ap, prev = 0.0, 0.0
    for i in range(len(rec)):
        ap += (rec[i] - prev) * prec[i:].max()
        prev = rec[i]
    return ap


def random_problem(seed, num_images=25, num_classes=4):
    rng = np.random.default_rng(seed)
    gts, preds = [], {}
    for i in range(num_images):
        g = int(rng.integers(0, 5))
        xy = rng.uniform(0, 80, (g, 2))
        wh = rng.uniform(5, 40, (g, 2))
        boxes = np.round(np.concatenate([xy, xy + wh], 1))
        labels = rng.integers(1, num_classes, g)
        difficult = rng.random(g) < 0.15
        gts.append((boxes, labels, difficult))
        jitter = boxes + rng.normal(0, 3, boxes.shape)
        extra = rng.uniform(0, 100, (int(rng.integers(0, 4)), 2))
        extra = np.concatenate([extra, extra + rng.uniform(5, 30, extra.shape)], 1)
        det_boxes = np.concatenate([jitter, jitter[: g // 2] + 1, extra])
        det_labels = np.concatenate([labels, labels[: g // 2], rng.integers(1, num_classes, len(extra))])
        flip = rng.random(len(det_labels)) < 0.1
        det_labels = np.where(flip, rng.integers(1, num_classes, len(det_labels)), det_labels)
        scores = rng.random(len(det_labels))
        preds[i] = (det_boxes, det_labels, scores)
    return gts, preds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_independent_reference_on_random_detections(seed):
    names = ("__background__", "a", "b", "c")
    gts, preds = random_problem(seed, num_classes=len(names))
    ds = FakeDataset(gts, class_names=names)
    torch_preds = {i: prediction(b.tolist(), l.tolist(), s.tolist()) for i, (b, l, s) in preds.items()}
    # float32 round trip of the prediction tensors, so the reference sees the same numbers
    preds32 = {i: (p["boxes"].double().numpy(), p["labels"].numpy(), p["scores"].double().numpy())
               for i, p in torch_preds.items()}  # fmt: skip
    gts32 = [(np.asarray(b, np.float32).astype(float), lab, d) for b, lab, d in gts]
    for use_07 in (True, False):
        res = run_voc(ds, torch_preds, use_07_metric=use_07)
        for thresh, key in ((0.5, "AP50"), (0.75, "AP75")):
            per_class = [reference_voc_ap(gts32, preds32, c, thresh, use_07) for c in range(1, len(names))]
            assert res[key] == pytest.approx(100 * np.nanmean(per_class), abs=1e-9)
            if thresh == 0.5:
                for c, ap in enumerate(per_class, start=1):
                    assert res[f"AP50-{names[c]}"] == pytest.approx(100 * ap, abs=1e-9, nan_ok=True)
        mean_over_thresholds = np.mean(
            [np.nanmean([reference_voc_ap(gts32, preds32, c, t, use_07) for c in range(1, len(names))])
             for t in np.arange(0.5, 0.96, 0.05)]
        )  # fmt: skip
        assert res["AP"] == pytest.approx(100 * mean_over_thresholds, abs=1e-9)


def test_average_precision_of_an_empty_ranking_is_zero():
    assert average_precision(np.zeros(0), np.zeros(0), True) == 0.0
    assert average_precision(np.zeros(0), np.zeros(0), False) == 0.0
