"""Draw the priors (default boxes) of chosen levels and cells, to see what each level can match.

    python tools/visualize_priors.py --config-file configs/vgg_ssd300_voc0712.yaml --levels 0 3 \
        --output priors.png
    python tools/visualize_priors.py --levels 2 --locations 4,4 0,0 --image photo.jpg --output priors.png

Every prior of a chosen cell is drawn (the small square, the big square, then a wide and a tall box per
aspect ratio; see `ssd/modeling/priors.py`) in the colour of its level, with the level's cell grid faintly
behind. By default the centre cell of each level is shown. The image (or a grey canvas) is resized to the
network input S x S and drawn at least 600 pixels wide. Priors are clipped as the model clips them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run from any folder without installing the package

from ssd.config import ConfigError, load_config  # noqa: E402
from ssd.config.stored import concrete_priors  # noqa: E402
from ssd.data.datasets.base import read_image_rgb  # noqa: E402
from ssd.modeling.priors import make_priors, priors_per_location  # noqa: E402
from ssd.structures.boxes import cxcywh_to_xyxy  # noqa: E402
from ssd.utils.visualize import color_for_label, draw_boxes, put_title, write_image  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / "configs" / "shapes_mobilenet_v2_ssdlite.yaml"
MIN_CANVAS = 600


def prior_index(level_offsets: list[int], feature_maps, anchors, level: int, row: int, col: int) -> range:
    """Indices into the (P, 4) priors of the A_l priors of one cell (order level -> row -> column -> anchor)."""
    start = level_offsets[level] + (row * feature_maps[level] + col) * anchors[level]
    return range(start, start + anchors[level])


def parse_cell(text: str) -> tuple[int, int]:
    try:
        row, col = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a cell is ROW,COL (e.g. 3,4), got {text!r}") from None
    return row, col


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=str(DEFAULT_CONFIG), help="YAML config (default: shapes)")
    parser.add_argument("--levels", type=int, nargs="+", default=None, help="levels to draw (default: all)")
    parser.add_argument(
        "--locations", type=parse_cell, nargs="+", default=None, help="cells ROW,COL (default: centre cell)"
    )
    parser.add_argument("--image", default=None, help="draw on this image instead of a grey canvas")
    parser.add_argument("--output", required=True, help="PNG/JPG file to write")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)

    try:
        cfg = concrete_priors(load_config(args.config_file, args.opts))
    except ConfigError as err:  # e.g. an AUTO config: one line naming the file to pass
        raise SystemExit(f"visualize_priors.py: {err}") from None
    p = cfg.MODEL.PRIORS
    size = cfg.INPUT.IMAGE_SIZE
    priors_xyxy = cxcywh_to_xyxy(
        make_priors(size, p.FEATURE_MAPS, p.STRIDES, p.MIN_SIZES, p.MAX_SIZES, p.ASPECT_RATIOS, p.CLIP)
    ).numpy()  # (P, 4) xyxy in 0..1
    feature_maps, anchors = list(p.FEATURE_MAPS), priors_per_location(p.ASPECT_RATIOS)
    level_offsets = np.cumsum([0] + [f * f * a for f, a in zip(feature_maps, anchors, strict=True)]).tolist()
    levels = args.levels if args.levels is not None else list(range(len(feature_maps)))
    for level in levels:
        if not 0 <= level < len(feature_maps):
            parser.error(
                f"--levels: level {level} does not exist (the config has {len(feature_maps)} levels)"
            )

    scale = max(1, -(-MIN_CANVAS // size))  # draw at an integer multiple of S, at least MIN_CANVAS wide
    side = size * scale
    if args.image:
        canvas = cv2.resize(read_image_rgb(args.image), (side, side), interpolation=cv2.INTER_LINEAR)
    else:
        canvas = np.full((side, side, 3), 200, dtype=np.uint8)

    lines = []
    for level in levels:
        f = feature_maps[level]
        colour = color_for_label(level + 1)
        faint = tuple(int(0.6 * c + 0.4 * 255) for c in colour)
        step = p.STRIDES[level] * scale
        for k in range(1, f):  # the level's cell grid
            cv2.line(canvas, (int(k * step), 0), (int(k * step), side), faint, 1)
            cv2.line(canvas, (0, int(k * step)), (side, int(k * step)), faint, 1)
        cells = args.locations or [(f // 2, f // 2)]
        for row, col in cells:
            if not (0 <= row < f and 0 <= col < f):
                parser.error(f"--locations: cell {row},{col} is outside level {level}'s {f}x{f} grid")
            index = prior_index(level_offsets, feature_maps, anchors, level, row, col)
            canvas = draw_boxes(canvas, priors_xyxy[index] * side, color=colour, captions=False)
            cx, cy = (priors_xyxy[index.start, :2] + priors_xyxy[index.start, 2:]) / 2 * side
            cv2.circle(canvas, (int(cx), int(cy)), 4, colour, -1)
        lines.append(
            (
                colour,
                f"level {level}: {f}x{f} cells, stride {p.STRIDES[level]}, {anchors[level]} priors/cell, "
                f"sizes {p.MIN_SIZES[level]}-{p.MAX_SIZES[level]} px",
            )
        )
    for colour, line in reversed(lines):
        canvas = put_title(canvas, line, color=tuple(int(c * 0.7) for c in colour))  # darker: readable
    canvas = put_title(canvas, f"{Path(args.config_file).name}: {len(priors_xyxy)} priors at {size}x{size}")
    path = write_image(args.output, canvas)
    print("\n".join(line for _, line in lines))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
