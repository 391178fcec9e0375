"""The report's error breakdown beside TIDE's own package (`tidecv`) on the same detections, as a results file.

    python test.py --config-file models/bccd_ssdlite.yaml --ckpt models/bccd_ssdlite.pth
    python tools/compare_tide.py --config-file models/bccd_ssdlite.yaml --dataset bccd_test \\
        --results results/tide_bccd.json \\
        --detections-command "python test.py --config-file models/bccd_ssdlite.yaml --ckpt models/bccd_ssdlite.pth" \\
        outputs/bccd_ssdlite/inference/bccd_test/coco_instances_results.json

Both sides get the dataset's ground truth (difficult boxes as TIDE's ignore regions, as its COCO loader does
with crowd boxes) and every detection of the predictions file (test.py's coco_instances_results.json). The
file written holds, rounded to 2 decimals as tidecv prints them: mAP (IoU 0.5), the six main and two special
dAP, and the error counts, under "report" (ssd/evaluation/errors.py) and "tidecv"; plus "command" and
"machine". Options go before the predictions file, config overrides (KEY VALUE ...) after it. Needs tidecv
(`pip install tidecv`, in the dev extra).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shlex
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

SHORT_NAMES = {  # ours -> tidecv's
    "classification": "Cls",
    "localisation": "Loc",
    "both": "Both",
    "duplicate": "Dupe",
    "background": "Bkg",
    "missed": "Miss",
    "false_positive": "FalsePos",
    "false_negative": "FalseNeg",
}
MAIN_ERRORS = tuple(SHORT_NAMES)[:6]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predictions", help="COCO result JSON (test.py's coco_instances_results.json)")
    parser.add_argument(
        "--config-file", required=True, help="config whose dataset catalog provides --dataset"
    )
    parser.add_argument("--dataset", required=True, help="the dataset the predictions were made on")
    parser.add_argument("--results", required=True, help="the JSON file to write (results/<name>.json)")
    parser.add_argument(
        "--detections-command",
        default="",
        help="the command that wrote the predictions, kept in the results file",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    return parser.parse_args(argv)


def run_tidecv(gts, preds) -> dict:
    """tidecv's mAP, dAP and error counts for per-image ground truth and detections (our array format)."""
    import tidecv

    def xywh(box) -> list[float]:
        return [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]

    truth, detections = tidecv.Data("ground truth"), tidecv.Data("detections")
    for i, (g, p) in enumerate(zip(gts, preds, strict=True)):
        truth.add_image(i, str(g.get("file_name", i)))
        for box, label, difficult in zip(g["boxes_xyxy"], g["labels"], g["difficult"], strict=True):
            add = truth.add_ignore_region if difficult else truth.add_ground_truth
            add(i, int(label), xywh(box))
        for box, label, score in zip(p["boxes_xyxy"], p["labels"], p["scores"], strict=True):
            detections.add_detection(i, int(label), float(score), xywh(box))
    tide = tidecv.TIDE(pos_threshold=0.5, background_threshold=0.1)
    run = tide.evaluate(truth, detections, mode=tidecv.TIDE.BOX, name="run")
    errors = tide.get_all_errors()
    dap = {**errors["main"]["run"], **errors["special"]["run"]}
    counts = {error.short_name: n for error, n in run.count_errors().items()}
    return {
        "mAP": run.ap,
        "dAP": {ours: dap[short] for ours, short in SHORT_NAMES.items()},
        "counts": {e: counts[SHORT_NAMES[e]] for e in MAIN_ERRORS},
    }


def machine() -> str:
    from ssd.utils.device import cpu_model

    return f"{cpu_model()}, {len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.2f} when measured"


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    try:
        import tidecv  # noqa: F401
    except ImportError:
        raise SystemExit("compare_tide.py: needs tidecv (pip install tidecv)") from None
    from ssd.config import load_config
    from ssd.data.build import build_dataset
    from ssd.evaluation.errors import error_breakdown
    from ssd.evaluation.evaluator import load_ground_truth
    from ssd.evaluation.report import predictions_from_coco_results

    predictions = Path(args.predictions)
    if not predictions.is_file():
        raise SystemExit(f"compare_tide.py: {predictions} does not exist")
    cfg = load_config(args.config_file, args.opts)
    dataset = build_dataset(cfg, [args.dataset], is_train=False)
    try:
        detections = predictions_from_coco_results(json.loads(predictions.read_text()), dataset)
    except ValueError as error:
        raise SystemExit(f"compare_tide.py: {predictions}: {error}") from None
    empty = {"boxes_xyxy": np.zeros((0, 4)), "labels": np.zeros(0, np.int64), "scores": np.zeros(0)}
    gts = [load_ground_truth(dataset, i) for i in range(len(dataset))]
    preds = [detections.get(i, empty) for i in range(len(dataset))]
    summary, _ = error_breakdown(gts, preds, dataset.class_names, score_threshold=0.0)
    reference = run_tidecv(gts, preds)
    ours = {
        "mAP": summary["mAP"],
        "dAP": {e: summary["dAP"][e]["all"] for e in SHORT_NAMES},
        "counts": {e: summary["error_counts"][e]["all"] for e in MAIN_ERRORS},
    }

    def rounded(side: dict) -> dict:
        return {"mAP": round(side["mAP"], 2), "dAP": {e: round(v, 2) for e, v in side["dAP"].items()},
                "counts": side["counts"]}  # fmt: skip

    out = {
        "command": "python "
        + shlex.join(["tools/compare_tide.py", *(argv if argv is not None else sys.argv[1:])]),
        "detections_command": args.detections_command,
        "machine": machine(),
        "dataset": args.dataset,
        "images": len(dataset),
        "detections": int(sum(len(p["scores"]) for p in preds)),
        "fg_iou": 0.5,
        "bg_iou": 0.1,
        "tidecv_version": importlib.metadata.version("tidecv"),
        "report": rounded(ours),
        "tidecv": rounded(reference),
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out, indent=1) + "\n")
    print(f"{'':>15} {'report':>9} {'tidecv':>9}")
    for key, a, b in (
        [("mAP", out["report"]["mAP"], out["tidecv"]["mAP"])]
        + [(f"dAP {e}", out["report"]["dAP"][e], out["tidecv"]["dAP"][e]) for e in SHORT_NAMES]
        + [(f"n {e}", out["report"]["counts"][e], out["tidecv"]["counts"][e]) for e in MAIN_ERRORS]
    ):
        print(f"{key:>15} {a:>9} {b:>9}")
    print(f"Written to {args.results}")
    return out


if __name__ == "__main__":
    main()
