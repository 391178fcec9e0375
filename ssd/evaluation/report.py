"""One self-contained HTML page per evaluated dataset: where the detector goes wrong, with pictures.

    write_report(folder, dataset, "bccd_test", score_threshold=0.5)  # -> folder/report.html, folder/errors.json

It reads what test.py leaves in `folder` (coco_instances_results.json, and results.json when present; test.py
itself hands over the detections and the error analysis it has in memory, see `write_report`) and shows:
the COCO and VOC tables; per class AP, TP/FP/FN and precision/recall/F1 at the score threshold; the PR curves and
the confusion matrix of `ssd.evaluation.analysis`; the error breakdown and dAP of `ssd.evaluation.errors` (TIDE's
definitions, Bolya et al., ECCV 2020); recall by object size; and the galleries of `ssd.evaluation.gallery`, which a
few lines of inline JavaScript filter by class and sort (the HTML: `ssd.evaluation.report_html`). Images are inlined
as data URIs, so the file opens from disk, can be mailed, and loads nothing from the network.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ssd.evaluation.analysis import ErrorAnalysisEvaluator
from ssd.evaluation.coco import category_id_map
from ssd.evaluation.errors import ERROR_TYPES, error_breakdown
from ssd.evaluation.evaluator import load_ground_truth
from ssd.evaluation.gallery import add_thumbnails, select_items
from ssd.evaluation.report_html import (
    errors_section,
    esc,
    galleries_section,
    page,
    plots_section,
    sizes_section,
    summary_section,
)

logger = logging.getLogger(__name__)

REPORT_FILE = "report.html"
PREDICTIONS_FILE = "coco_instances_results.json"


def predictions_from_coco_results(entries: Sequence[Mapping], dataset) -> dict[int, dict[str, np.ndarray]]:
    """COCO result entries (image_id, category_id, bbox XYWH, score) -> {dataset index: prediction arrays}.

    Raises ValueError naming the entry when its image or category is not in `dataset`.
    """
    index_of = {load_ground_truth(dataset, i)["image_id"]: i for i in range(len(dataset))}
    label_of = {category: label for label, category in category_id_map(dataset).items()}
    grouped: dict[int, list[tuple[list[float], int, float]]] = {}
    for n, entry in enumerate(entries):
        if entry["image_id"] not in index_of:
            raise ValueError(f"result {n}: image_id {entry['image_id']!r} is not an image of the dataset")
        if entry["category_id"] not in label_of:
            raise ValueError(
                f"result {n}: category_id {entry['category_id']} is not a category of the dataset {sorted(label_of)}"
            )
        x, y, w, h = (float(v) for v in entry["bbox"])
        grouped.setdefault(index_of[entry["image_id"]], []).append(
            ([x, y, x + w, y + h], label_of[entry["category_id"]], float(entry["score"]))
        )
    return {
        i: {
            "boxes_xyxy": np.array([d[0] for d in dets], np.float64).reshape(-1, 4),  # (K, 4)
            "labels": np.array([d[1] for d in dets], np.int64),  # (K,)
            "scores": np.array([d[2] for d in dets], np.float64),  # (K,)
        }
        for i, dets in grouped.items()
    }


def write_report(
    folder: str | Path,
    dataset,
    dataset_name: str = "",
    score_threshold: float = 0.5,
    results: Mapping | None = None,
    predictions_file: str | Path | None = None,
    per_class: int = 8,
    error_rules: str = "tide",
    predictions: Mapping[int, Mapping[str, np.ndarray]] | None = None,
    analysis: Mapping | None = None,
) -> dict:
    """Write folder/report.html and folder/errors.json (the error breakdown) for `dataset`.

    Args:
        folder: test.py's output folder of this dataset (inference/<name>/).
        dataset: the evaluated dataset (docs/contracts.md, with `load_image`).
        dataset_name: the title of the page.
        score_threshold: the operating point of the counts and galleries (TEST.ANALYSIS_SCORE_THRESHOLD).
        results: the metrics {"bbox": ..., "voc": ...}; default: folder/results.json when it exists.
        predictions_file: COCO result entries; default: folder/coco_instances_results.json.
        per_class: gallery entries per error type and class.
        error_rules: "tide" (TIDE's definitions) or "voc" (on the VOC devkit's matching and AP); see
            `ssd.evaluation.errors`.
        predictions: {dataset index: prediction arrays} (`prediction_to_numpy`) already in memory, instead of
            reading `predictions_file` (test.py passes the error analysis evaluator's `last_run`).
        analysis: `ErrorAnalysisEvaluator.analyse` of these predictions, reused when made at this score
            threshold and IoU 0.5 with the dataset's classes (else made again).

    Returns:
        {"path": the HTML file, "gallery": {error type: number of entries}, "summary": the error breakdown}.
    """
    folder = Path(folder)
    if predictions is None:
        predictions_file = Path(predictions_file or folder / PREDICTIONS_FILE)
        if not predictions_file.is_file():
            raise FileNotFoundError(
                f"{predictions_file} not found: the report needs the detections test.py writes there"
            )
        with open(predictions_file) as f:
            predictions = predictions_from_coco_results(json.load(f), dataset)
    if results is None and (folder / "results.json").is_file():
        with open(folder / "results.json") as f:
            results = json.load(f)
    page, info = build_report(
        dataset,
        predictions,
        results or {},
        dataset_name,
        score_threshold,
        per_class,
        error_rules,
        saved_plots=folder,
        analysis=analysis,
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / REPORT_FILE
    path.write_text(page, encoding="utf-8")
    with open(folder / "errors.json", "w") as f:
        json.dump(info["summary"], f, indent=1)
    logger.info(f"Report written to {path} ({path.stat().st_size / 1e6:.1f} MB); open it in a browser")
    return {"path": path, **info}


def _saved_plots(folder: Path | None, analysis: Mapping) -> dict[str, bytes]:
    """{PNG file name: bytes} of the plots in `folder` that show `analysis` (per its saved analysis.json):
    the confusion matrix when the counts, thresholds and classes are the same, the PR curves when the curves
    are (they can differ in the last digits: the report reads the detections back from the COCO JSON)."""
    if folder is None or not (folder / "analysis.json").is_file():
        return {}
    with open(folder / "analysis.json") as f:
        saved = json.load(f)
    current = json.loads(json.dumps(analysis))  # the same types as the saved file (tuples -> lists)
    same_setting = all(
        saved.get(k) == current[k] for k in ("score_threshold", "iou_threshold", "class_names")
    )
    shows = {
        "confusion_matrix.png": same_setting and saved.get("confusion_matrix") == current["confusion_matrix"],
        "pr_curves.png": same_setting and saved.get("pr_curves") == current["pr_curves"],
    }
    return {
        name: (folder / name).read_bytes()
        for name, same in shows.items()
        if same and (folder / name).is_file()
    }


def build_report(
    dataset,
    predictions: Mapping[int, Mapping[str, np.ndarray]],
    results: Mapping,
    dataset_name: str,
    score_threshold: float,
    per_class: int = 8,
    error_rules: str = "tide",
    saved_plots: Path | None = None,
    analysis: Mapping | None = None,
) -> tuple[str, dict]:
    """The HTML page and {"gallery": {error type: entries}, "summary": error breakdown} (see `write_report`).

    `saved_plots`: a folder where the error analysis of test.py saved analysis.json and its PNGs; a PNG is
    embedded instead of being drawn again when it shows this report's analysis (`_saved_plots`).
    `analysis`: the error analysis of these predictions, if already made (see `write_report`).
    """
    class_names = list(dataset.class_names)
    empty = {"boxes_xyxy": np.zeros((0, 4)), "labels": np.zeros(0, np.int64), "scores": np.zeros(0)}
    gts = [load_ground_truth(dataset, i) for i in range(len(dataset))]
    preds = [predictions.get(i, empty) for i in range(len(dataset))]
    summary, labels = error_breakdown(gts, preds, class_names, score_threshold, rules=error_rules)
    kept = [{k: v[p["scores"] >= score_threshold] for k, v in p.items()} for p in preds]
    items = select_items(gts, kept, labels, preds, class_names, per_class)
    add_thumbnails(items, dataset.load_image, [g.get("file_name", f"image {i}") for i, g in enumerate(gts)])
    analyser = ErrorAnalysisEvaluator(dataset, score_threshold)
    same_setting = analysis is not None and (
        analysis["score_threshold"] == score_threshold
        and analysis["iou_threshold"] == analyser.iou_threshold
        and list(analysis["class_names"]) == class_names
    )
    if not same_setting:
        analysis = analyser.analyse(dict(enumerate(preds)))

    sections = [
        summary_section(results, analysis, summary, gts, class_names),
        plots_section(analysis, _saved_plots(saved_plots, analysis)),
        errors_section(summary, class_names),
        sizes_section(summary, results, class_names),
        galleries_section(items, class_names, score_threshold),
    ]
    num_boxes = sum(int((~g["difficult"]).sum()) for g in gts)
    num_dets = sum(len(p["scores"]) for p in preds)
    title = f"Evaluation report: {dataset_name or type(dataset).__name__}"
    header = (
        f"<h1>{esc(title)}</h1><p class=meta>{len(gts)} images, {num_boxes} objects, {num_dets} detections. "
        f"Counts, P/R/F1 and galleries at score ≥ {score_threshold}; AP over all detections; "
        "IoU ≥ 0.5 unless stated.</p>"
    )
    html_page = page(title, header, sections)
    gallery = {kind: sum(item["kind"] == kind for item in items) for kind in ERROR_TYPES}
    return html_page, {"gallery": gallery, "summary": summary}
