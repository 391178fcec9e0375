"""Write a registered dataset (VOC, XML folder, CSV, COCO) as a COCO instances JSON file.

    python tools/convert_to_coco.py --config-file configs/examples/raccoon.yaml --dataset raccoon_train \
        --output outputs/raccoon_train_coco.json

The same images, boxes and classes in the format Detectron2 reads with
`register_coco_instances(name, {}, json_file, image_root)`, so one dataset can be trained and evaluated in both
projects and the results compared (tools/compare.py). The file holds:
- images: ids 1..N in the dataset's order, `file_name` relative to `image_root` (printed, and `--image-root`
  to choose it; default the folder that holds all the images), height and width;
- annotations: `bbox` = [x, y, w, h] in 0-based pixels, exactly the boxes this package trains on (VOC's and
  one-based CSV's 1-based corners are already shifted), `area` = w * h, `iscrowd` = 1 for VOC "difficult"
  boxes (COCO's way to say "neither a hit nor a miss", which is what VOC's difficult means);
- categories: ids 1..K in label order, with the class names.

An existing output file is not replaced unless `--overwrite` is given. File names are made relative to the
image root as written (symbolic links are not resolved), so a folder of links (DATASETS.FOLLOW_SYMLINKS)
converts to names inside that folder.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run from any folder without installing the package

from ssd.config import ConfigError, load_config  # noqa: E402
from ssd.data.build import build_dataset  # noqa: E402
from ssd.evaluation.coco import dataset_to_coco_dict  # noqa: E402


def to_coco_file_dict(dataset, image_root: Path | None = None) -> tuple[dict, Path]:
    """(COCO dict with ids 1..N and file names relative to the image root, the image root)."""
    coco = dataset_to_coco_dict(dataset)
    # abspath, not resolve: a symbolic link keeps its own name (and folder), as the datasets read it.
    files = [Path(os.path.abspath(image["file_name"])) for image in coco["images"]]
    if image_root is None:
        image_root = Path(os.path.commonpath([f.parent for f in files])) if files else Path(".")
    image_root = Path(os.path.abspath(image_root))
    new_ids = {}
    for number, (image, path) in enumerate(zip(coco["images"], files, strict=True), start=1):
        if not path.is_relative_to(image_root):
            raise ValueError(f"image {path} is not inside the image root {image_root} (see --image-root)")
        new_ids[image["id"]] = number
        image["id"] = number
        image["file_name"] = path.relative_to(image_root).as_posix()
    for annotation in coco["annotations"]:
        annotation["image_id"] = new_ids[annotation["image_id"]]
    return coco, image_root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, metavar="FILE", help="the config that registers it")
    parser.add_argument("--dataset", required=True, help="a dataset name (DATASETS.REGISTER or built-in)")
    parser.add_argument("--output", required=True, type=Path, help="the JSON file to write")
    parser.add_argument("--image-root", type=Path, default=None, help="file names are written relative to it")
    parser.add_argument("--overwrite", action="store_true", help="replace --output when it exists")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.output.exists() and not args.overwrite:
        print(f"convert_to_coco.py: {args.output} exists; add --overwrite to replace it", file=sys.stderr)
        return 1
    try:
        cfg = load_config(args.config_file, args.opts)
        dataset = build_dataset(cfg, [args.dataset], is_train=False)
        coco, image_root = to_coco_file_dict(dataset, args.image_root)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as err:
        print(f"convert_to_coco.py: {err}", file=sys.stderr)
        return 1
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(coco))
    print(
        f"{args.output}: {len(coco['images'])} images, {len(coco['annotations'])} boxes, "
        f"{len(coco['categories'])} classes; image_root {image_root}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
