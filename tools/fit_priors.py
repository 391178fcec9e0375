"""Fit priors to a config's training boxes and print them as a MODEL.PRIORS block to paste into a YAML file.

    python tools/fit_priors.py --config-file configs/examples/raccoon.yaml [KEY VALUE ...]

A preview of the recipe step's fit (ssd/engine/recipe.py, `fit_config_priors`; train.py runs it at start-up
for `MODEL.PRIORS.AUTO True`), on the same images (DATASETS.TRAIN without the held-out validation split).
This tool and train.py are the only callers of the recipe's functions. Prints the coverage table of the
config's own priors and of the fitted ones (per class: boxes, share with a prior at IoU >= MODEL.THRESHOLD,
mean positives per box), then the YAML. Use it to look at what AUTO would choose, or to freeze the choice.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run from any folder without installing the package

from ssd.config import ConfigError, load_config  # noqa: E402
from ssd.data.build import build_dataset, hold_out_validation  # noqa: E402
from ssd.data.views import training_boxes  # noqa: E402
from ssd.engine.recipe import fit_config_priors, log_prior_coverage  # noqa: E402


def priors_yaml(cfg) -> str:
    """The fitted keys as a YAML fragment (MODEL.BACKBONE and MODEL.PRIORS)."""
    priors, backbone = cfg.MODEL.PRIORS, cfg.MODEL.BACKBONE
    return "\n".join(
        [
            "MODEL:",
            "  BACKBONE:",
            f"    STRIDE8_MAP: {backbone.STRIDE8_MAP}",
            f"    OUT_CHANNELS: {tuple(backbone.OUT_CHANNELS)}",
            "  PRIORS:",
            "    AUTO: False",
            f"    FEATURE_MAPS: {list(priors.FEATURE_MAPS)}",
            f"    STRIDES: {list(priors.STRIDES)}",
            f"    MIN_SIZES: {list(priors.MIN_SIZES)}",
            f"    MAX_SIZES: {list(priors.MAX_SIZES)}",
            f"    ASPECT_RATIOS: {[list(r) for r in priors.ASPECT_RATIOS]}",
            f"    BOXES_PER_LOCATION: {list(priors.BOXES_PER_LOCATION)}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = load_config(args.config_file, [*args.opts, "MODEL.BACKBONE.PRETRAINED", "False"], freeze=False)
        parsed = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=True, annotations_only=True)
        train_part, _ = hold_out_validation(cfg, parsed)
        boxes = training_boxes(train_part)  # boxes_norm (B, 4), labels (B,), image (B,)
        names, num_images = parsed.class_names, len(train_part)
        if not cfg.MODEL.PRIORS.AUTO:
            print("The config's own priors:")
            log_prior_coverage(cfg, *boxes, names, num_images)
        cfg.MODEL.PRIORS.AUTO = True
        fitted = fit_config_priors(cfg, boxes[0], boxes[1], num_images)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"fit_priors.py: {err}", file=sys.stderr)
        return 1
    print("Fitted priors:")
    log_prior_coverage(fitted, *boxes, names, num_images)
    print(priors_yaml(fitted))
    return 0


if __name__ == "__main__":
    sys.exit(main())
