"""COCO-style box AP (faster-coco-eval when installed, else pycocotools), for any dataset of docs/contracts.md.

Backends: pycocotools is the reference implementation; faster-coco-eval (`pip install faster-coco-eval`, in the
`extras` and `dev` extras) is a maintained drop-in with the matching in C++ that gives the same numbers (tested
to 1e-4) several times faster and with less memory on COCO-sized sets (BENCHMARKS.md). Used when installed
and the image ids are integers (it cannot take string ids, which VOC and CSV datasets have).

Ground truth: a COCO dataset (one with a `coco_ground_truth()` method giving the boxes of its JSON without the
segmentation, or a `json_file` attribute naming its annotation file) is evaluated against its own JSON and ids.
Any other dataset (VOC, CSV, synthetic) is converted on the fly by `dataset_to_coco_dict`:
- image ids are the dataset's `image_id` values (ints or strings; pycocotools accepts both), so a Detectron2
  `coco_instances_results.json` of the same dataset can be scored against the same file;
- category ids are `dataset.contiguous_id_to_dataset_id[label]`, or the label itself (1..C-1) without that map;
- `area` is the box area in pixels (COCO uses the mask area; boxes are all we have), which sets the
  small / medium / large split (32^2 and 96^2 pixels);
- **difficult boxes become `iscrowd=1`.** pycocotools then neither counts them as objects to find nor counts a
  detection that lands on them as an error, which is what the VOC metric does with difficult boxes. One
  difference remains: for a crowd box pycocotools measures the overlap as intersection / detection area, so a
  detection lying inside a difficult box is ignored even when it is much smaller than the box.

Neither the ground truth nor the detections are deep-copied for the evaluator: both backends only add keys to
the ground-truth entries (`ignore` and `_ignore`, recomputed on every run). The detections' COCO object is built
here rather than by `COCO.loadRes`, with the keys loadRes would add (`id` from 1, `area` = w * h, `iscrowd` 0) but
without the box-shaped `segmentation` polygon it also makes, which box AP never reads: at 500,000 detections
(5,000 COCO images, benchmarks/scale.py) loadRes took about 40 % as long as faster-coco-eval's evaluation.

The evaluator keeps each image's detections as arrays until `evaluate`, then makes one result entry per
detection (`coco_result_entries`). They are written to `coco_instances_results.json` as `{"image_id",
"category_id", "bbox": [x, y, w, h] (pixels), "score"}`, the format of Detectron2 and of the COCO test server.

A class without ground truth in the evaluated images gets AP = NaN (pycocotools returns -1 there), as do metrics
with no objects in their area range (often APs).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from ssd.evaluation.evaluator import (
    NumpyPredictionsEvaluator,
    cyclic_gc_paused,
    gather_predictions,
    load_ground_truth,
)
from ssd.evaluation.tables import create_small_table, per_category_table

logger = logging.getLogger(__name__)

SUMMARY_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def category_id_map(dataset) -> dict[int, int]:
    """Contiguous label (1..C-1) -> the dataset's own category id (identity when the dataset has no map)."""
    mapping = getattr(dataset, "contiguous_id_to_dataset_id", None)
    if mapping:
        return {int(k): int(v) for k, v in mapping.items()}
    return {label: label for label in range(1, len(dataset.class_names))}


def dataset_to_coco_dict(dataset) -> dict:
    """The dataset's ground truth as a COCO instances dict (see the module docstring for the choices)."""
    to_category = category_id_map(dataset)
    images, annotations = [], []
    for index in range(len(dataset)):
        ann = load_ground_truth(dataset, index)
        images.append(
            {
                "id": ann["image_id"],
                "file_name": str(ann.get("file_name", "")),
                "height": int(ann["height"]),
                "width": int(ann["width"]),
            }
        )
        for box, label, difficult in zip(ann["boxes_xyxy"], ann["labels"], ann["difficult"], strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,  # COCO annotation ids start at 1 (0 is falsy in pycocotools)
                    "image_id": ann["image_id"],
                    "category_id": to_category[int(label)],
                    "bbox": [x1, y1, w, h],
                    "area": max(w, 0.0) * max(h, 0.0),
                    "iscrowd": int(bool(difficult)),
                }
            )
    ids = [img["id"] for img in images]
    if len(set(ids)) != len(ids):
        raise ValueError(
            f"{type(dataset).__name__}: image_id values are not unique; COCO evaluation needs them"
        )
    categories = [{"id": to_category[c], "name": dataset.class_names[c]} for c in sorted(to_category)]
    return {"images": images, "annotations": annotations, "categories": categories}


def coco_from_dict(coco_dict: dict) -> COCO:
    """A pycocotools COCO object built from an in-memory dict (not copied), without its index-building chatter."""
    coco = COCO()
    coco.dataset = coco_dict
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def coco_result_entries(
    image_ids: Sequence,
    labels: np.ndarray,
    boxes_xyxy: np.ndarray,
    scores: np.ndarray,
    to_category: Mapping[int, int],
) -> list[dict]:
    """Detections of many images -> COCO result entries, bbox in XYWH pixels (one dict per detection).

    Args:
        image_ids: (D,) the image id of each detection (ints or strings).
        labels: (D,) contiguous labels 1..C-1.
        boxes_xyxy: (D, 4) pixels.
        scores: (D,).
        to_category: contiguous label -> the dataset's category id (`category_id_map`).

    Built column by column (`tolist` once per column) rather than from NumPy scalars one detection at a time.
    """
    labels = np.asarray(labels, np.int64).reshape(-1)  # (D,)
    known = np.array(sorted(to_category), np.int64)
    unknown = labels[~np.isin(labels, known)]
    if unknown.size:
        raise ValueError(
            f"predicted label {int(unknown[0])} is not a dataset class ({known.min()}..{known.max()})"
        )
    lookup = np.zeros(int(known.max()) + 1, np.int64)
    lookup[known] = [to_category[int(c)] for c in known]
    boxes = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)  # (D, 4) xyxy
    boxes_xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)  # (D, 4)
    categories = lookup[labels].tolist()
    scores = np.asarray(scores, np.float64).tolist()
    columns = zip(image_ids, categories, boxes_xywh.tolist(), scores, strict=True)
    return [
        {"image_id": image_id, "category_id": category, "bbox": bbox, "score": score}
        for image_id, category, bbox, score in columns
    ]


def _results_coco(make_coco: Callable[[dict], Any], coco_gt_dict: dict, detections: Sequence[Mapping]):
    """The detections' COCO object, as `COCO.loadRes` makes it for boxes minus the `segmentation` polygon
    (module docstring). New dicts: the caller's entries are not changed."""
    known = {image["id"] for image in coco_gt_dict["images"]}
    stray = next((d["image_id"] for d in detections if d["image_id"] not in known), None)
    if stray is not None:
        raise ValueError(f"detections name image_id {stray!r}, which is not an image of the ground truth")
    annotations = [
        {
            "id": n,
            "image_id": d["image_id"],
            "category_id": d["category_id"],
            "bbox": d["bbox"],  # shared with the caller's entry; neither backend changes it
            "score": d["score"],
            "area": d["bbox"][2] * d["bbox"][3],
            "iscrowd": 0,
        }
        for n, d in enumerate(detections, start=1)
    ]
    dataset = {"images": coco_gt_dict["images"], "categories": coco_gt_dict["categories"]}
    return make_coco({**dataset, "annotations": annotations})


def _ap_summary(coco_eval: COCOeval) -> dict[str, float]:
    """The six AP numbers of `COCOeval.summarize()` (0-1, -1 = undefined), read from `eval["precision"]`.

    Computed here rather than taken from `stats` because `summarize()` hard-codes maxDets=100 for AP, so it
    reports -1 when `max_dets_per_image` is not 100. Every number uses the last (largest) maxDets entry.
    """
    precision = coco_eval.eval["precision"]  # (T IoUs, R recall points, K classes, A areas, M maxDets)
    iou_thrs = coco_eval.params.iouThrs
    area = {name: i for i, name in enumerate(coco_eval.params.areaRngLbl)}

    def mean_valid(p: np.ndarray) -> float:
        valid = p[p > -1]
        return float(np.mean(valid)) if valid.size else -1.0

    def at_iou(thr: float) -> np.ndarray:
        return precision[np.flatnonzero(np.isclose(iou_thrs, thr))]

    return {
        "AP": mean_valid(precision[:, :, :, area["all"], -1]),
        "AP50": mean_valid(at_iou(0.5)[:, :, :, area["all"], -1]),
        "AP75": mean_valid(at_iou(0.75)[:, :, :, area["all"], -1]),
        "APs": mean_valid(precision[:, :, :, area["small"], -1]),
        "APm": mean_valid(precision[:, :, :, area["medium"], -1]),
        "APl": mean_valid(precision[:, :, :, area["large"], -1]),
    }


def _eval_backend(use_fast_impl: bool) -> tuple[Callable[[dict], Any], type, str]:
    """(ground-truth dict -> COCO object, COCOeval class, backend name): faster-coco-eval when asked for and
    installed, else pycocotools."""
    if use_fast_impl:
        try:
            from faster_coco_eval import COCO as FastCOCO  # optional; same numbers, C++ matching
            from faster_coco_eval import COCOeval_faster
        except ImportError:
            logger.info(
                "faster-coco-eval is not installed; evaluating with pycocotools (slower, same numbers)"
            )
        else:
            return FastCOCO, COCOeval_faster, "faster-coco-eval"
    return coco_from_dict, COCOeval, "pycocotools"


def evaluate_coco_detections(
    coco_gt_dict: dict,
    detections: Sequence[Mapping],
    class_names: Mapping[int, str] | None = None,
    img_ids: Sequence | None = None,
    max_dets_per_image: int = 100,
    use_fast_impl: bool = True,
    verbose: bool = True,
) -> dict[str, float]:
    """COCOeval on a ground-truth dict and a list of result entries -> Detectron2's bbox metrics (0-100).

    Args:
        coco_gt_dict: COCO instances dict (images, annotations, categories).
        detections: COCO result entries (image_id, category_id, bbox XYWH, score).
        class_names: category id -> name for the "AP-<name>" entries; default: the dict's category names.
        img_ids: images to evaluate (default: all images of the ground truth).
        max_dets_per_image: detections per image that count: COCOeval's maxDets [1, 10, max_dets_per_image]
            (values above it dropped).
        use_fast_impl: use faster-coco-eval when it is installed (pycocotools otherwise).
        verbose: let pycocotools print its 12 summary lines (only when max_dets_per_image == 100).

    Returns:
        {"AP", "AP50", "AP75", "APs", "APm", "APl", "AP-<class>", ...}; NaN where undefined.
    """
    names = class_names or {c["id"]: c["name"] for c in coco_gt_dict["categories"]}
    cat_ids = sorted(c["id"] for c in coco_gt_dict["categories"])
    if not detections:
        logger.warning("No detections to evaluate; every COCO metric is NaN (as pycocotools gives -1).")
        results = dict.fromkeys(SUMMARY_METRICS, float("nan"))
        results.update({f"AP-{names[c]}": float("nan") for c in cat_ids})
        return results
    # faster-coco-eval needs integer image ids (it converts others with int(), in place); string ids
    # (VOC file stems, say) go to pycocotools.
    integer_ids = all(type(image["id"]) is int for image in coco_gt_dict["images"])
    make_coco, cocoeval_cls, backend = _eval_backend(use_fast_impl and integer_ids)
    logger.info(f"Evaluating {len(detections)} detections with {backend}")
    with contextlib.redirect_stdout(io.StringIO()), cyclic_gc_paused():
        coco_gt = make_coco(coco_gt_dict)
        coco_dt = _results_coco(make_coco, coco_gt_dict, detections)
    coco_eval = cocoeval_cls(coco_gt, coco_dt, "bbox")
    # COCOeval sorts maxDets and evaluates with the last one, so values above the limit are left out.
    coco_eval.params.maxDets = sorted({m for m in (1, 10, max_dets_per_image) if m <= max_dets_per_image})
    if img_ids is not None:
        coco_eval.params.imgIds = list(img_ids)
    with contextlib.redirect_stdout(io.StringIO()), cyclic_gc_paused():
        coco_eval.evaluate()
        coco_eval.accumulate()
    if verbose and max_dets_per_image == 100:
        coco_eval.summarize()  # pycocotools' familiar 12 lines on stdout

    results = {k: (v * 100 if v >= 0 else float("nan")) for k, v in _ap_summary(coco_eval).items()}
    precision = coco_eval.eval["precision"]  # (T, R, K, A, M)
    for k, cat_id in enumerate(coco_eval.params.catIds):
        p = precision[:, :, k, 0, -1]  # all IoUs and recall points, area "all", largest maxDets
        p = p[p > -1]
        results[f"AP-{names[cat_id]}"] = float(np.mean(p) * 100) if p.size else float("nan")
    return results


def log_coco_results(results: Mapping[str, float], task: str = "bbox") -> None:
    """Detectron2's two tables: the summary and the per-category AP in three (category, AP) column pairs."""
    summary = {k: results[k] for k in SUMMARY_METRICS}
    logger.info(f"Evaluation results for {task}:\n" + create_small_table(summary))
    if any(np.isnan(v) for v in summary.values()):
        logger.info("Some metrics cannot be computed and are shown as NaN.")
    per_category = [(k[len("AP-") :], v) for k, v in results.items() if k.startswith("AP-")]
    if per_category:
        logger.info(f"Per-category {task} AP:\n" + per_category_table(per_category))


class COCOEvaluator(NumpyPredictionsEvaluator):
    """COCO box AP of model outputs on a dataset; results `{"bbox": {...}}` (0-100, NaN where undefined).

    Args:
        dataset: any dataset of docs/contracts.md (see the module docstring for how ground truth is found).
        output_dir: where `coco_instances_results.json` (and, for converted datasets,
            `ground_truth_coco_format.json`) are written; None = write nothing.
        max_dets_per_image: detections kept per image by COCOeval (its maxDets [1, 10, n]).
        use_fast_impl: use faster-coco-eval when installed (same numbers, faster); False: pycocotools.
    """

    def __init__(
        self,
        dataset,
        output_dir: str | Path | None = None,
        max_dets_per_image: int = 100,
        use_fast_impl: bool = True,
    ):
        self.dataset = dataset
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self.max_dets_per_image = max_dets_per_image
        self.use_fast_impl = use_fast_impl
        self.to_category = category_id_map(dataset)
        self._known_labels = np.array(sorted(self.to_category), np.int64)
        self._gt_dict: dict | None = None
        self.reset()

    def ground_truth(self) -> dict:
        """The COCO ground-truth dict (built once, then cached)."""
        if self._gt_dict is None:
            self._gt_dict = self._load_ground_truth()
        return self._gt_dict

    def _load_ground_truth(self) -> dict:
        coco_ground_truth = getattr(self.dataset, "coco_ground_truth", None)
        if callable(coco_ground_truth):
            return coco_ground_truth()
        json_file = getattr(self.dataset, "json_file", None)
        if json_file:
            with open(json_file) as f:
                return json.load(f)
        gt = dataset_to_coco_dict(self.dataset)
        if self.output_dir is not None:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            with open(self.output_dir / "ground_truth_coco_format.json", "w") as f:
                f.write(json.dumps(gt))  # dumps uses the C encoder, dump does not: 2-3x faster
        return gt

    def process(self, inputs: Sequence[Mapping], outputs: Sequence[Mapping]) -> None:
        super().process(inputs, outputs)  # NumPy arrays by dataset index; entries are made in `evaluate`
        for inp in inputs:
            labels = self._predictions[int(inp["index"])]["labels"]
            unknown = labels[~np.isin(labels, self._known_labels)]
            if unknown.size:  # caught here, at the batch that has it, rather than after the whole dataset
                raise ValueError(
                    f"predicted label {int(unknown[0])} is not a dataset class (1..{max(self.to_category)})"
                )

    def result_entries(self, predictions: Mapping[int, Mapping[str, np.ndarray]]) -> list[dict]:
        """{dataset index: prediction arrays} -> COCO result entries, image by image in index order."""
        indices = sorted(predictions)
        counts = [len(predictions[i]["labels"]) for i in indices]
        ids = [self.dataset.get_annotation(i)["image_id"] for i in indices]
        image_ids = [image_id for image_id, n in zip(ids, counts, strict=True) for _ in range(n)]  # (D,)

        def column(key: str, shape: tuple) -> np.ndarray:
            parts = [predictions[i][key] for i in indices]
            return np.concatenate(parts) if parts else np.zeros(shape)

        labels, boxes_xyxy, scores = (
            column("labels", (0,)),
            column("boxes_xyxy", (0, 4)),
            column("scores", (0,)),
        )
        return coco_result_entries(image_ids, labels, boxes_xyxy, scores, self.to_category)

    def evaluate(self) -> dict[str, dict[str, float]]:
        predictions = gather_predictions(self._predictions)
        if predictions is None:
            return {}
        with cyclic_gc_paused():  # one dict per detection, twice (JSON, COCOeval): see cyclic_gc_paused
            detections = self.result_entries(predictions)
            if self.output_dir is not None:
                self.output_dir.mkdir(parents=True, exist_ok=True)
                path = self.output_dir / "coco_instances_results.json"
                with open(path, "w") as f:
                    f.write(json.dumps(detections))  # the C encoder, as above (500k entries at COCO size)
                logger.info(f"Saving results to {path}")
            gt = self.ground_truth()
            img_ids = [self.dataset.get_annotation(i)["image_id"] for i in range(len(self.dataset))]
            names = {self.to_category[c]: self.dataset.class_names[c] for c in self.to_category}
            results = evaluate_coco_detections(
                gt, detections, names, img_ids, self.max_dets_per_image, self.use_fast_impl
            )
        log_coco_results(results)
        return {"bbox": results}
