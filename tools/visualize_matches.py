"""Show which priors the matching step makes positive for each ground-truth box of one sample.

    python tools/visualize_matches.py --output matches.png                          # synthetic shapes
    python tools/visualize_matches.py --config-file configs/vgg_ssd300_voc0712.yaml \
        --dataset voc_2007_trainval --index 12 --output matches.png

The sample goes through the test pipeline (resize to S x S, no augmentation), then through the same
`box_coder.match` the loss uses (SSD paper sec. 2.2: each box takes its best prior, and every prior with
IoU >= MODEL.THRESHOLD with a box takes it). Each ground-truth box is drawn thick, its positive priors thin
in the same colour; the printout lists, per box, how many priors matched and on which levels. A box with
one match only got just the forced "best prior" match: no prior of the config fits it well.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run from any folder without installing the package

from ssd.config import ConfigError, load_config  # noqa: E402
from ssd.config.stored import concrete_priors  # noqa: E402
from ssd.data.datasets import get_dataset, register_from_config  # noqa: E402
from ssd.data.transforms import build_transforms  # noqa: E402
from ssd.modeling.box_coder import match  # noqa: E402
from ssd.modeling.priors import make_priors, priors_per_location  # noqa: E402
from ssd.structures.boxes import box_iou, cxcywh_to_xyxy  # noqa: E402
from ssd.utils.visualize import color_for_label, draw_boxes, put_title, write_image  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / "configs" / "shapes_mobilenet_v2_ssdlite.yaml"
MIN_CANVAS = 600


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=str(DEFAULT_CONFIG), help="YAML config (default: shapes)")
    parser.add_argument("--dataset", default="shapes_train", help="dataset name (default: shapes_train)")
    parser.add_argument("--index", type=int, default=0, help="sample index in the dataset")
    parser.add_argument("--output", required=True, help="PNG/JPG file to write")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)

    try:
        cfg = concrete_priors(load_config(args.config_file, args.opts))
    except ConfigError as err:  # e.g. an AUTO config: one line naming the file to pass
        raise SystemExit(f"visualize_matches.py: {err}") from None
    register_from_config(cfg.DATASETS.REGISTER, cfg.DATASETS.CLASS_NAMES)
    size = cfg.INPUT.IMAGE_SIZE
    dataset = get_dataset(args.dataset, data_root=cfg.DATASETS.DATA_ROOT or None)
    if not 0 <= args.index < len(dataset):
        parser.error(f"--index {args.index} is outside {args.dataset} ({len(dataset)} images)")
    annotation = dataset.get_annotation(args.index)
    keep = ~annotation["difficult"]  # as in training
    transform = build_transforms(size, cfg.INPUT.PIXEL_MEAN, is_train=False)
    _, gt_boxes_norm, gt_labels = transform(
        dataset.load_image(args.index), annotation["boxes_xyxy"][keep], annotation["labels"][keep]
    )  # (G, 4) xyxy 0..1, (G,)

    p = cfg.MODEL.PRIORS
    priors_cxcywh = make_priors(
        size, p.FEATURE_MAPS, p.STRIDES, p.MIN_SIZES, p.MAX_SIZES, p.ASPECT_RATIOS, p.CLIP
    )
    priors_xyxy = cxcywh_to_xyxy(priors_cxcywh)  # (P, 4) 0..1
    # Matching with labels 1..G instead of the class labels: the label a prior gets is then the index + 1
    # of the box it matched (the class follows from gt_labels[index]).
    box_numbers = torch.arange(1, len(gt_labels) + 1)  # (G,)
    _, matched_numbers = match(gt_boxes_norm, box_numbers, priors_xyxy, cfg.MODEL.THRESHOLD)  # (P,)
    gt_of_prior = matched_numbers - 1  # (P,) index of the matched box, -1 = background
    num_positives = int((gt_of_prior >= 0).sum())

    # Level of each prior: priors are ordered level -> row -> column -> anchor.
    per_level = [f * f * a for f, a in zip(p.FEATURE_MAPS, priors_per_location(p.ASPECT_RATIOS), strict=True)]
    level_of_prior = torch.repeat_interleave(torch.arange(len(per_level)), torch.tensor(per_level))  # (P,)
    iou = (
        box_iou(gt_boxes_norm, priors_xyxy) if len(gt_labels) else torch.zeros(0, len(priors_xyxy))
    )  # (G, P)

    scale = max(1, -(-MIN_CANVAS // size))
    side = size * scale
    image = cv2.resize(dataset.load_image(args.index), (side, side), interpolation=cv2.INTER_LINEAR)
    names = dataset.class_names
    lines = []
    for g in range(len(gt_labels)):
        mine = torch.nonzero(gt_of_prior == g).flatten()
        colour = color_for_label(g + 1)
        image = draw_boxes(image, priors_xyxy[mine].numpy() * side, color=colour, thickness=1, captions=False)
        levels = torch.bincount(level_of_prior[mine], minlength=len(per_level)).tolist()
        image = draw_boxes(
            image,
            gt_boxes_norm[g : g + 1].numpy() * side,
            gt_labels[g : g + 1].numpy(),
            class_names=names,
            color=colour,
            thickness=3,
        )
        lines.append(
            f"box {g} ({names[int(gt_labels[g])]}): {len(mine)} priors, per level {levels}, "
            f"best IoU {float(iou[g].max()):.2f}"
        )
    for line in reversed(lines):
        image = put_title(image, line)
    image = put_title(
        image,
        f"{args.dataset}[{args.index}]: {num_positives} positive priors of {len(priors_xyxy)} "
        f"(IoU >= {cfg.MODEL.THRESHOLD} or best prior)",
    )
    path = write_image(args.output, image)
    print("\n".join(lines))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
