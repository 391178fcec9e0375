"""Evaluation: Detectron2-style evaluators over the dataset / prediction contract of docs/contracts.md.

    COCOEvaluator          COCO box AP (pycocotools) -> {"bbox": {"AP", "AP50", ..., "AP-<class>"}}
    PascalVOCEvaluator     VOC AP at IoU 0.5 (2007 11-point and area) -> {"voc": {"mAP50_07", ...}}
    ErrorAnalysisEvaluator TP/FP/FN, P/R/F1, confusion matrix, PR curves -> {"analysis": {...}} + JSON/PNG
    DatasetEvaluators      several of the above as one

`build_evaluator(cfg, dataset, output_dir)` turns TEST.EVALUATORS into one evaluator.
"""

from __future__ import annotations

from pathlib import Path

from ssd.evaluation.analysis import ErrorAnalysisEvaluator
from ssd.evaluation.coco import COCOEvaluator
from ssd.evaluation.evaluator import DatasetEvaluator, DatasetEvaluators
from ssd.evaluation.tables import copypaste_lines, flatten_results
from ssd.evaluation.voc import PascalVOCEvaluator

EVALUATOR_NAMES = ("coco", "voc", "analysis")


def voc_pixel_offset(dataset) -> float:
    """1 (the devkit's inclusive pixels) for VOC-XML datasets, 0 (continuous corners) for all others.

    VOC XML files hold inclusive pixel indices and `ssd.data.datasets.voc` only shifts them by -1, so the
    devkit's "+1" IoU gives the official VOC numbers (and lufficc/SSD's). COCO, CSV and synthetic boxes are
    continuous corners, for which "+1" would be wrong.
    """
    from ssd.data.datasets.voc import VOCDataset
    from ssd.data.datasets.xml_folder import XMLFolderDataset

    parts = getattr(dataset, "datasets", [dataset])  # a concatenation: all parts must be VOC-XML
    return 1.0 if all(isinstance(d, VOCDataset | XMLFolderDataset) for d in parts) else 0.0


def build_evaluator(
    cfg, dataset, output_dir: str | Path | None = None, dataset_name: str = "", analysis: bool = True
) -> DatasetEvaluators:
    """The evaluators named in TEST.EVALUATORS ("coco", "voc"), plus the error analysis if `analysis`.

    The error analysis runs at TEST.ANALYSIS_SCORE_THRESHOLD. The VOC evaluator uses the 11-point metric (as
    lufficc/SSD) and the pixel convention of `voc_pixel_offset`.
    """
    evaluators: list[DatasetEvaluator] = []
    for name in cfg.TEST.EVALUATORS:
        if name == "coco":
            evaluators.append(COCOEvaluator(dataset, output_dir, max_dets_per_image=cfg.TEST.MAX_PER_IMAGE))
        elif name == "voc":
            evaluators.append(
                PascalVOCEvaluator(
                    dataset,
                    use_07_metric=True,
                    pixel_offset=voc_pixel_offset(dataset),
                    dataset_name=dataset_name,
                )
            )
        elif name != "analysis":
            raise ValueError(f"TEST.EVALUATORS: unknown evaluator {name!r}; choose from {EVALUATOR_NAMES}")
    if analysis or "analysis" in cfg.TEST.EVALUATORS:
        evaluators.append(
            ErrorAnalysisEvaluator(dataset, cfg.TEST.ANALYSIS_SCORE_THRESHOLD, output_dir=output_dir)
        )
    return DatasetEvaluators(evaluators)


__all__ = [
    "COCOEvaluator",
    "DatasetEvaluator",
    "DatasetEvaluators",
    "ErrorAnalysisEvaluator",
    "PascalVOCEvaluator",
    "build_evaluator",
    "copypaste_lines",
    "flatten_results",
]
