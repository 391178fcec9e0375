"""Score several COCO-format prediction files against the same ground truth, side by side.

    python tools/compare.py --gt annotations.json ours/coco_instances_results.json d2/coco_instances_results.json \\
        --names ours detectron2
    python tools/compare.py --config-file configs/bccd.yaml --dataset bccd_test pred1.json pred2.json

Prediction files are lists of {"image_id", "category_id", "bbox": [x, y, w, h], "score"}: what test.py writes
(coco_instances_results.json) and what Detectron2's COCOEvaluator writes. Ground truth is either a COCO
instances JSON (--gt; test.py writes one for non-COCO datasets as ground_truth_coco_format.json) or a dataset
of the catalog (--config-file + --dataset), converted exactly as the COCO evaluator does.

Category ids must be the ground truth's. Detectron2 numbers the classes of non-COCO datasets (VOC, BCCD)
0..K-1 where we use 1..K: pass `--category-offsets 0 1` to add 1 to the second file's ids.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ssd.evaluation.coco import SUMMARY_METRICS, evaluate_coco_detections  # noqa: E402
from ssd.evaluation.tables import pipe_table  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", nargs="+", help="COCO result JSON files (coco_instances_results.json)")
    parser.add_argument("--gt", help="COCO instances JSON with the ground truth")
    parser.add_argument("--config-file", help="config whose dataset catalog provides --dataset")
    parser.add_argument("--dataset", help="dataset name (with --config-file) to take the ground truth from")
    parser.add_argument(
        "--names", nargs="+", help="column titles, one per prediction file (default: file names)"
    )
    parser.add_argument(
        "--category-offsets",
        nargs="+",
        type=int,
        help="integer added to the category ids of each file (default 0)",
    )
    parser.add_argument("--output", help="also write the metrics of every file to this JSON file")
    parser.add_argument("--quiet", action="store_true", help="hide pycocotools' summary lines")
    args = parser.parse_args(argv)
    if bool(args.gt) == bool(args.dataset):
        parser.error("give the ground truth either as --gt FILE or as --config-file CFG --dataset NAME")
    for option in ("names", "category_offsets"):
        values = getattr(args, option)
        if values is not None and len(values) != len(args.predictions):
            parser.error(
                f"--{option.replace('_', '-')} needs one value per prediction file ({len(args.predictions)})"
            )
    return args


def load_ground_truth(args: argparse.Namespace) -> dict:
    if args.gt:
        with open(args.gt) as f:
            return json.load(f)
    from ssd.config import load_config
    from ssd.data.build import build_dataset
    from ssd.evaluation.coco import COCOEvaluator

    cfg = load_config(args.config_file)
    return COCOEvaluator(build_dataset(cfg, [args.dataset], is_train=False)).ground_truth()


def load_predictions(path: str, offset: int, gt: dict) -> list[dict]:
    """Read one result file, shift its category ids, and check that its ids exist in the ground truth."""
    with open(path) as f:
        detections = json.load(f)
    if not isinstance(detections, list):
        raise SystemExit(f"{path}: expected a list of COCO result entries, got {type(detections).__name__}")
    image_ids = {img["id"] for img in gt["images"]}
    category_ids = {c["id"] for c in gt["categories"]}
    for det in detections:
        det["category_id"] += offset
        if det["image_id"] not in image_ids:
            raise SystemExit(f"{path}: image_id {det['image_id']!r} is not an image of the ground truth")
        if det["category_id"] not in category_ids:
            raise SystemExit(
                f"{path}: category_id {det['category_id']} (after offset {offset}) is not a ground-truth category "
                f"{sorted(category_ids)}; Detectron2 files of non-COCO datasets need --category-offsets ... 1"
            )
    return detections


def compare(
    gt: dict, prediction_files: list[str], names: list[str], offsets: list[int], verbose: bool
) -> dict:
    """{column name: metrics dict of `evaluate_coco_detections`} for every prediction file."""
    results = {}
    for name, path, offset in zip(names, prediction_files, offsets, strict=True):
        detections = load_predictions(path, offset, gt)
        with contextlib.redirect_stdout(sys.stdout if verbose else io.StringIO()):
            if verbose:
                print(f"== {name} ({path})")
            results[name] = evaluate_coco_detections(gt, detections, verbose=verbose)
    return results


def side_by_side_table(results: dict[str, dict[str, float]]) -> str:
    """One row per metric (summary first, then per-class AP), one column per prediction file."""
    names = list(results)
    metrics = list(SUMMARY_METRICS) + [k for k in results[names[0]] if k.startswith("AP-")]
    rows = [[metric] + [results[name].get(metric, float("nan")) for name in names] for metric in metrics]
    return pipe_table(rows, ["metric", *names], align="left")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    gt = load_ground_truth(args)
    names = args.names or [Path(p).parent.name + "/" + Path(p).name for p in args.predictions]
    if len(set(names)) != len(names):
        raise SystemExit(f"column names must differ: {names}; pass --names")
    offsets = args.category_offsets or [0] * len(args.predictions)
    results = compare(gt, args.predictions, names, offsets, verbose=not args.quiet)
    print(side_by_side_table(results))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
