"""Describe the SSD a config builds: per-level feature maps and priors, parameter count and FLOPs.

    python tools/describe.py --config-file configs/vgg_ssd300_voc0712.yaml [KEY VALUE ...]

Prints one line per prior level (feature-map size, stride, channels, priors per location, priors), then
`priors: <total>`, the parameter count and the GFLOPs of one forward pass of the network (backbone and box
predictor, batch 1; post-processing excluded). FLOPs count a multiply-add as 2 (torch.utils.flop_counter);
GMACs, the unit torchvision's model tables call "GFLOPS", are half of that.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run from any folder without installing the package

from ssd.config import ConfigError, load_config  # noqa: E402
from ssd.config.stored import concrete_priors  # noqa: E402
from ssd.modeling import build_detection_model  # noqa: E402
from ssd.modeling.build import feature_map_shapes  # noqa: E402
from ssd.modeling.priors import priors_per_location  # noqa: E402


def count_flops(model: torch.nn.Module, image_size: int) -> int:
    """FLOPs of backbone + predictor for one image, counted on the "meta" device (shapes only, no compute)."""
    meta = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in (*model.named_parameters(), *model.named_buffers())
    }

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {name.removeprefix(prefix): t for name, t in meta.items() if name.startswith(prefix)}

    images = torch.empty(1, 3, image_size, image_size, device="meta")
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        features = torch.func.functional_call(model.backbone, part("backbone."), (images,))
        torch.func.functional_call(model.predictor, part("predictor."), (features,))
    return counter.get_total_flops()


def describe(config_file: str | None, opts: list[str]) -> str:
    """The report for a config, as printed by the command line."""
    # Weights do not change shapes or counts; never download ImageNet weights just to describe a model.
    cfg = load_config(config_file, [*opts, "MODEL.BACKBONE.PRETRAINED", "False"])
    cfg = concrete_priors(cfg)  # MODEL.PRIORS.AUTO: a ConfigError naming the file to pass instead
    model = build_detection_model(cfg).eval()
    size = cfg.INPUT.IMAGE_SIZE
    priors = cfg.MODEL.PRIORS
    shapes = feature_map_shapes(model.backbone, size)
    anchors = priors_per_location(priors.ASPECT_RATIOS)

    lines = [
        f"{cfg.MODEL.BACKBONE.NAME} + {cfg.MODEL.BOX_HEAD.PREDICTOR}, input {size}x{size}, "
        f"{cfg.MODEL.NUM_CLASSES} classes (background included)",
        f"{'level':>5} {'map':>7} {'stride':>7} {'channels':>8} {'boxes/loc':>9} {'priors':>7}",
    ]
    for level, ((channels, height, width), stride, per_location) in enumerate(
        zip(shapes, priors.STRIDES, anchors, strict=True)
    ):
        map_size = f"{height}x{width}"
        lines.append(
            f"{level:>5} {map_size:>7} {stride:>7g} {channels:>8} {per_location:>9} {height * width * per_location:>7}"
        )
    lines.append(f"priors: {model.priors_cxcywh.shape[0]}")

    num_params = sum(p.numel() for p in model.parameters())
    flops = count_flops(model, size)
    lines.append(f"parameters: {num_params:,}")
    lines.append(f"GFLOPs: {flops / 1e9:.2f} (GMACs {flops / 2e9:.2f}), one {size}x{size} image")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=None, help="YAML config (default: the built-in defaults)")
    parser.add_argument("opts", nargs="*", help="config overrides: KEY VALUE ...")
    args = parser.parse_intermixed_args(argv)
    try:
        report = describe(args.config_file, args.opts)
    except ConfigError as err:  # e.g. an AUTO config: one line naming the file to pass
        raise SystemExit(f"describe.py: {err}") from None
    print(report)


if __name__ == "__main__":
    main()
