"""Convert another project's SSD weights into a checkpoint of this package.

    python tools/convert_weights.py torchvision ssd300_vgg16_coco-b556d3b4.pth out.pth \
        --config-file configs/vgg_ssd300_coco_trainval35k.yaml
    python tools/convert_weights.py lufficc vgg_ssd300_voc0712.pth out.pth --config-file configs/vgg_ssd300_voc0712.yaml

The converted state dict is loaded strictly into the model the config builds (so a wrong config or file
fails here, naming the key), then saved as {"model": state_dict}, which `test.py`, `demo.py` and
MODEL.WEIGHTS accept.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run from any folder without installing the package

from ssd.config import ConfigError, load_config  # noqa: E402
from ssd.modeling import build_detection_model  # noqa: E402
from ssd.modeling.weights import (  # noqa: E402
    WeightsError,
    convert_lufficc,
    convert_torchvision_ssd300_vgg16,
    load_matching,
    read_state_dict,
)

CONVERTERS = {"torchvision": convert_torchvision_ssd300_vgg16, "lufficc": convert_lufficc}


def convert(source: str, src: str, dst: str, config_file: str, opts: list[str] = ()) -> str:
    """Convert `src` (a `source` checkpoint) to `dst`; returns a one-line summary. Raises WeightsError."""
    state_dict = CONVERTERS[source](read_state_dict(src))
    cfg = load_config(config_file, [*opts, "MODEL.BACKBONE.PRETRAINED", "False"])
    model = build_detection_model(cfg)
    report = load_matching(model, state_dict, src)
    if report.shape_mismatch or report.missing or report.unexpected:
        raise WeightsError(f"converted {src} does not fit the model of {config_file}:\n{report.summary()}")
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, dst)
    return f"converted {len(report.loaded)} tensors from {src} ({source}) to {dst}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", choices=sorted(CONVERTERS), help="which project the weights come from")
    parser.add_argument("src", help="the file to convert (state dict or checkpoint with 'model')")
    parser.add_argument("dst", help="where to write the converted checkpoint")
    parser.add_argument("--config-file", required=True, help="config of the model the weights are for")
    parser.add_argument("opts", nargs="*", help="config overrides: KEY VALUE ...")
    args = parser.parse_intermixed_args(argv)
    try:
        print(convert(args.source, args.src, args.dst, args.config_file, args.opts))
    except (WeightsError, ConfigError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
