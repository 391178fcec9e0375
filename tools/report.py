"""Write the HTML evaluation report (ssd/evaluation/report.py) for detections saved earlier.

    python tools/report.py --config-file configs/mobilenet_v2_ssd320_bccd.yaml --dataset bccd_test \\
        outputs/mobilenet_v2_ssd320_bccd/inference/bccd_test/coco_instances_results.json
    python tools/report.py --config-file configs/mobilenet_v2_ssd320_bccd.yaml --dataset bccd_test \\
        --output-dir outputs/report_d2 --category-offset 1 d2_output/inference/coco_instances_results.json

The predictions file is a list of COCO result entries {"image_id", "category_id", "bbox": [x, y, w, h], "score"}
(test.py's coco_instances_results.json, or Detectron2's: add `--category-offset 1` for its 0-based ids of
non-COCO datasets). The metrics tables come from results.json beside it when present. The report and errors.json
are written to --output-dir (default: the predictions file's folder). Options go before the file; config
overrides (KEY VALUE ...) after it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", help="COCO result JSON (coco_instances_results.json)")
    parser.add_argument(
        "--config-file", required=True, help="config whose dataset catalog provides --dataset"
    )
    parser.add_argument("--dataset", required=True, help="the dataset the predictions were made on")
    parser.add_argument("--output-dir", help="where report.html goes (default: beside the predictions)")
    parser.add_argument("--score-threshold", type=float, help="default: TEST.ANALYSIS_SCORE_THRESHOLD")
    parser.add_argument("--category-offset", type=int, default=0, help="added to every category_id")
    parser.add_argument("--per-class", type=int, default=8, help="gallery entries per error type and class")
    parser.add_argument(
        "--error-rules",
        choices=("tide", "voc"),
        default="tide",
        help="error breakdown: TIDE's definitions, or TIDE's types on the VOC matching and AP (ssd/evaluation/errors.py)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    from ssd.config import load_config
    from ssd.data.build import build_dataset
    from ssd.evaluation.report import write_report
    from ssd.utils.logging import setup_logger

    cfg = load_config(args.config_file, args.opts)
    predictions = Path(args.predictions)
    if not predictions.is_file():
        raise SystemExit(f"report.py: {predictions} does not exist")
    output_dir = Path(args.output_dir) if args.output_dir else predictions.parent
    setup_logger(output_dir)
    dataset = build_dataset(cfg, [args.dataset], is_train=False)
    threshold = cfg.TEST.ANALYSIS_SCORE_THRESHOLD if args.score_threshold is None else args.score_threshold
    with tempfile.TemporaryDirectory() as tmp:
        if args.category_offset:
            entries = json.loads(predictions.read_text())
            for entry in entries:
                entry["category_id"] += args.category_offset
            predictions = Path(tmp) / predictions.name
            predictions.write_text(json.dumps(entries))
        results = None
        beside = Path(args.predictions).parent / "results.json"
        if beside.is_file():
            results = json.loads(beside.read_text())
        try:
            info = write_report(
                output_dir,
                dataset,
                args.dataset,
                threshold,
                results,
                predictions,
                args.per_class,
                args.error_rules,
            )
        except (ValueError, FileNotFoundError) as error:
            raise SystemExit(f"report.py: {args.predictions}: {error}") from None
    print(f"Report: {info['path']}")
    return info


if __name__ == "__main__":
    main()
