"""Box predictors: per level, a conv for class scores and a conv for box offsets (SSD paper sec. 2.1).

"For a feature layer of size m x n with p channels, the basic element for predicting parameters of a
potential detection is a 3 x 3 x p small kernel that produces either a score for a category, or a shape
offset relative to the default box coordinates" (SSD paper sec. 2.1, "Convolutional predictors").

Registered builders (`MODEL.BOX_HEAD.PREDICTOR`), all with the signature
`builder(in_channels: list[int], boxes_per_location: list[int], num_classes: int) -> BoxPredictor`:

    "SSDBoxPredictor"      3x3 conv per level (SSD).
    "SSDLiteBoxPredictor"  depthwise 3x3 + BN + ReLU6 + pointwise 1x1 per level, a plain 1x1 conv on the
                           last level (SSDLite, MobileNetV2 paper sec. 6.2; last level as lufficc/SSD).

Output order: level -> row (y) -> column (x) -> anchor, which is the order of `priors.make_priors`.
The A * C output channels of a level are read as anchor-major: channel a * C + c is class c of anchor a.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ssd.modeling.layers import SeparableConv2d
from ssd.modeling.registry import BOX_PREDICTORS


class BoxPredictor(nn.Module):
    """Runs one classification and one regression head per level and flattens them into prior order.

    Args:
        cls_heads: L modules, head l maps (N, in_channels[l], H, W) -> (N, A_l * C, H, W).
        reg_heads: L modules, head l maps (N, in_channels[l], H, W) -> (N, A_l * 4, H, W).
        num_classes: C, background included.
    """

    def __init__(self, cls_heads: Sequence[nn.Module], reg_heads: Sequence[nn.Module], num_classes: int):
        super().__init__()
        if len(cls_heads) != len(reg_heads):
            raise ValueError(f"{len(cls_heads)} classification heads but {len(reg_heads)} regression heads")
        self.num_classes = num_classes
        self.cls_heads = nn.ModuleList(cls_heads)
        self.reg_heads = nn.ModuleList(reg_heads)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-uniform weights and zero biases for every conv (depthwise ones included), as lufficc/SSD."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
        """Predict class logits and box offsets for every prior.

        Args:
            features: L maps (N, in_channels[l], f_l, f_l), in level order.

        Returns:
            cls_logits: (N, P, C), P = sum_l f_l^2 * A_l, in prior order.
            offsets: (N, P, 4) encoded box offsets (see `box_coder.encode`), same order.
        """
        if len(features) != len(self.cls_heads):
            raise ValueError(
                f"box predictor has {len(self.cls_heads)} levels but got {len(features)} feature maps"
            )
        n = features[0].shape[0]
        cls_levels, reg_levels = [], []
        for x, cls_head, reg_head in zip(features, self.cls_heads, self.reg_heads, strict=True):
            # NCHW -> NHWC puts the channels (anchor-major a * C + c) last, so a flat reshape walks
            # row -> column -> anchor -> class, the prior order.
            cls = cls_head(x).permute(0, 2, 3, 1)  # (N, H, W, A * C)
            reg = reg_head(x).permute(0, 2, 3, 1)  # (N, H, W, A * 4)
            cls_levels.append(cls.reshape(n, -1, self.num_classes))  # (N, H * W * A, C)
            reg_levels.append(reg.reshape(n, -1, 4))  # (N, H * W * A, 4)
        return torch.cat(cls_levels, dim=1), torch.cat(reg_levels, dim=1)  # (N, P, C), (N, P, 4)


def _check_levels(in_channels: Sequence[int], boxes_per_location: Sequence[int], num_classes: int) -> None:
    if len(in_channels) != len(boxes_per_location):
        raise ValueError(
            f"in_channels has {len(in_channels)} levels but boxes_per_location has {len(boxes_per_location)}"
        )
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background and must be >= 2, got {num_classes}")


@BOX_PREDICTORS.register("SSDBoxPredictor")
def build_ssd_predictor(
    in_channels: Sequence[int], boxes_per_location: Sequence[int], num_classes: int
) -> BoxPredictor:
    """SSD: a 3x3 conv (padding 1) per level for the scores and another for the offsets."""
    _check_levels(in_channels, boxes_per_location, num_classes)
    cls_heads = [
        nn.Conv2d(c, a * num_classes, 3, padding=1)
        for c, a in zip(in_channels, boxes_per_location, strict=True)
    ]
    reg_heads = [
        nn.Conv2d(c, a * 4, 3, padding=1) for c, a in zip(in_channels, boxes_per_location, strict=True)
    ]
    return BoxPredictor(cls_heads, reg_heads, num_classes)


@BOX_PREDICTORS.register("SSDLiteBoxPredictor")
def build_ssdlite_predictor(
    in_channels: Sequence[int], boxes_per_location: Sequence[int], num_classes: int
) -> BoxPredictor:
    """SSDLite: separable convs on every level but the last, where a 1x1 conv sees a 1x1 map anyway."""
    _check_levels(in_channels, boxes_per_location, num_classes)
    last = len(in_channels) - 1

    def head(level: int, out_channels: int) -> nn.Module:
        if level == last:
            return nn.Conv2d(in_channels[level], out_channels, kernel_size=1)
        return SeparableConv2d(in_channels[level], out_channels)

    cls_heads = [head(level, a * num_classes) for level, a in enumerate(boxes_per_location)]
    reg_heads = [head(level, a * 4) for level, a in enumerate(boxes_per_location)]
    return BoxPredictor(cls_heads, reg_heads, num_classes)
