"""The worked example of docs/architecture.md as an importable module: a tiny backbone and a 1x1-conv box
predictor, registered under new names. tests/test_docs.py checks that the doc shows this code unchanged.

    python -c "import sys; sys.path.insert(0, 'tests/docs_examples'); import tiny_parts, train; sys.exit(train.main())" \
        --config-file tests/docs_examples/tiny_shapes.yaml
"""

from __future__ import annotations

from torch import Tensor, nn

from ssd.modeling.box_predictor import BoxPredictor
from ssd.modeling.registry import BACKBONES, BOX_PREDICTORS


class TinyBackbone(nn.Module):
    """A stride-4 stem, then four stride-2 stages: L = 4 maps of side S/8, S/16, S/32, S/64."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(width if i == 0 else 2 * width, 2 * width, 3, 2, 1), nn.ReLU(inplace=True)
            )
            for i in range(4)
        )
        self.out_channels = [2 * width] * 4  # read by build_detection_model's check

    def forward(self, images: Tensor) -> list[Tensor]:
        x = self.stem(images)  # (N, w, S/4, S/4)
        features = []
        for stage in self.stages:
            x = stage(x)  # (N, 2w, S/8, S/8), then S/16, S/32, S/64
            features.append(x)
        return features


@BACKBONES.register("tiny")
def build_tiny(image_size: int, pretrained: bool, width_mult: float = 1.0) -> TinyBackbone:
    if pretrained:
        raise ValueError("the tiny backbone has no ImageNet weights: set MODEL.BACKBONE.PRETRAINED False")
    return TinyBackbone(width=round(16 * width_mult))


@BOX_PREDICTORS.register("OneByOnePredictor")
def build_one_by_one(in_channels: list[int], boxes_per_location: list[int], num_classes: int) -> BoxPredictor:
    """A 1x1 conv per level instead of SSD's 3x3; BoxPredictor flattens the outputs into prior order."""
    pairs = list(zip(in_channels, boxes_per_location, strict=True))
    cls_heads = [nn.Conv2d(c, a * num_classes, kernel_size=1) for c, a in pairs]
    reg_heads = [nn.Conv2d(c, a * 4, kernel_size=1) for c, a in pairs]
    return BoxPredictor(cls_heads, reg_heads, num_classes)
