"""The box sizes of BCCD's training split and how well three prior sets cover them: the tables of docs/bccd.md.

    python tools/bccd_prior_stats.py --results results/bccd_priors.json

Reads only the annotations (no image is decoded; a few seconds on a CPU) of the training images of
configs/mobilenet_v2_ssd320_bccd.yaml (`DATASETS.TRAIN`, `../shared/data/BCCD` from the repository root), then
writes one JSON file with:
- `boxes`: per class, the number of boxes and the 5th / 50th / 95th percentile of their side sqrt(w * h) and of
  their w / h, in input pixels after the resize to INPUT.IMAGE_SIZE (the network sees these sizes);
- `priors`: for each prior set below, the number of priors P and per class (and "all") the share of boxes, in
  percent, whose best prior has IoU >= MODEL.THRESHOLD, and the mean number of priors with IoU >= MODEL.THRESHOLD
  per box (the positives a box trains; at least 1, the forced match), from `coverage_report`
  (ssd/modeling/prior_fitting.py), the table `train.py` logs before training.

The prior sets: the recipe's own; the recipe's first version, whose first level had stride 16 (the config at
commit b87b625, written out in FIRST_RECIPE below); lufficc's VOC priors for MobileNetV2 at 320 px
(configs/mobilenet_v2_ssd320_voc0712.yaml).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # run from any folder without installing the package

from ssd.config import ConfigError, load_config  # noqa: E402
from ssd.data.build import build_dataset, hold_out_validation  # noqa: E402
from ssd.data.datasets.base import DatasetError  # noqa: E402
from ssd.data.views import training_boxes  # noqa: E402
from ssd.modeling.prior_coverage import coverage_report  # noqa: E402
from ssd.modeling.priors import make_priors  # noqa: E402

RECIPE = "configs/mobilenet_v2_ssd320_bccd.yaml"
# The recipe at commit b87b625 (900 iterations, no stride-8 map): its first level has stride 16.
FIRST_RECIPE = [
    "MODEL.BACKBONE.STRIDE8_MAP", "False",
    "MODEL.BACKBONE.OUT_CHANNELS", "(96, 1280, 512, 256, 256, 64)",
    "MODEL.PRIORS.FEATURE_MAPS", "[20, 10, 5, 3, 2, 1]",
    "MODEL.PRIORS.STRIDES", "[16, 32, 64, 107, 160, 320]",
    "MODEL.PRIORS.MIN_SIZES", "[24, 90, 130, 180, 230, 280]",
    "MODEL.PRIORS.MAX_SIZES", "[150, 130, 180, 230, 280, 330]",
    "MODEL.PRIORS.ASPECT_RATIOS", "[[1.3, 2], [1.3, 2], [1.3, 2], [2], [2], [2]]",
    "MODEL.PRIORS.BOXES_PER_LOCATION", "[6, 6, 6, 4, 4, 4]",
]  # fmt: skip
PRIOR_SETS = {
    "this recipe": (RECIPE, []),
    "first recipe": (RECIPE, FIRST_RECIPE),
    "lufficc VOC": ("configs/mobilenet_v2_ssd320_voc0712.yaml", []),
}
PERCENTILES = (5, 50, 95)


def priors_of(cfg):
    """(P, 4) priors_cxcywh in 0..1 of a config's MODEL.PRIORS at its INPUT.IMAGE_SIZE."""
    p = cfg.MODEL.PRIORS
    return make_priors(
        cfg.INPUT.IMAGE_SIZE, p.FEATURE_MAPS, p.STRIDES, p.MIN_SIZES, p.MAX_SIZES, p.ASPECT_RATIOS, p.CLIP
    )


def box_sizes(images, class_names, image_size: int) -> dict:
    """Per class: box count and percentiles of sqrt(w * h) and w / h in input pixels (after the resize)."""
    boxes_px = np.concatenate([boxes for boxes, _ in images]) * image_size  # (G, 4) xyxy, input pixels
    labels = np.concatenate([labels for _, labels in images])  # (G,)
    widths, heights = boxes_px[:, 2] - boxes_px[:, 0], boxes_px[:, 3] - boxes_px[:, 1]  # (G,) each
    table = {}
    for label, name in enumerate(class_names[1:], start=1):
        mine = labels == label
        side = np.percentile(np.sqrt(widths[mine] * heights[mine]), PERCENTILES)
        ratio = np.percentile(widths[mine] / heights[mine], PERCENTILES)
        table[name] = {
            "boxes": int(mine.sum()),
            "side_px": {f"p{q}": round(float(v), 2) for q, v in zip(PERCENTILES, side, strict=True)},
            "w_over_h": {f"p{q}": round(float(v), 3) for q, v in zip(PERCENTILES, ratio, strict=True)},
        }
    return table


def measure(recipe_opts: list[str]) -> dict:
    """The `boxes` and `priors` parts of the results file; `recipe_opts`: KEY VALUE overrides of the recipe."""
    recipe = load_config(str(REPO / RECIPE), recipe_opts)
    parsed = build_dataset(recipe, recipe.DATASETS.TRAIN, is_train=True, annotations_only=True)
    boxes_norm, labels, _ = training_boxes(hold_out_validation(recipe, parsed)[0])
    images = [(boxes_norm, labels)]  # one group: the table and the sizes treat the boxes one by one
    class_names = ["__background__", *recipe.DATASETS.CLASS_NAMES]
    priors = {}
    for name, (config, opts) in PRIOR_SETS.items():
        cfg = load_config(str(REPO / config), opts)
        priors_cxcywh = priors_of(cfg)  # (P, 4)
        rows = coverage_report(priors_cxcywh, images, class_names, recipe.MODEL.THRESHOLD)
        priors[name] = {
            "config": config,
            "overrides": opts,
            "num_priors": int(priors_cxcywh.shape[0]),
            "covered_percent": {row.name: round(100 * row.covered, 2) for row in rows},
            "positives_per_box": {row.name: round(row.positives, 2) for row in rows},
        }
    return {
        "image_size": recipe.INPUT.IMAGE_SIZE,
        "iou_threshold": recipe.MODEL.THRESHOLD,
        "train_boxes": int(sum(len(labels) for _, labels in images)),
        "boxes": box_sizes(images, class_names, recipe.INPUT.IMAGE_SIZE),
        "priors": priors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", required=True, help="JSON file to write, e.g. results/bccd_priors.json")
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides of the recipe (e.g. DATASETS.REGISTER)"
    )
    args = parser.parse_args(argv)
    try:
        measured = measure(args.opts)
    except (ConfigError, DatasetError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    results = {
        "command": " ".join(["python tools/bccd_prior_stats.py", *sys.argv[1:]] if argv is None else argv),
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        **measured,
    }
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
