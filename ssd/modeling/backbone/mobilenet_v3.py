"""MobileNetV3-Large + four SE/h-swish extra layers: lufficc/SSD's "mobilenet_v3" SSDLite backbone.

The module layout is that of d-li14/mobilenetv3.pytorch (whose ImageNet weights lufficc/SSD loads), so
block keys read `features.N.conv.K`, with squeeze-and-excitation at `conv.5.fc.{0,2}`. The last 1x1 conv is
`features[16]` here and in lufficc/SSD, but `conv` in d-li14's file; `weights.py` renames it.

Feature maps for a 320 x 320 input, width 1.0:

    features[12] output     112 x 20 x 20   (stride 16)
    features[16] output     960 x 10 x 10   (stride 32; the last 1x1 conv)
    extras[0..3]            512 x 5, 256 x 3, 256 x 2, 64 x 1

With `stride8_map=True` a seventh map comes first: features[6] output, 40 x 40 x 40 (stride 8).
"""

from __future__ import annotations

from torch import Tensor, nn

from ssd.modeling import weights
from ssd.modeling.backbone.mobilenet_v2 import make_divisible, stride8_taps, tapped_channels, tapped_forward
from ssd.modeling.layers import FreezableTrunk
from ssd.modeling.registry import BACKBONES


def _conv_bn_hswish(in_channels: int, out_channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    """Conv (no bias) + BatchNorm + h-swish; keys `0.weight`, `1.*`."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, (kernel_size - 1) // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.Hardswish(),
    )


class SqueezeExcite(nn.Module):
    """Channel attention (MobileNetV3 paper sec. 5.3): global pool -> FC/4 -> ReLU -> FC -> h-sigmoid -> scale."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        squeezed = make_divisible(channels // reduction)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(
            nn.Linear(channels, squeezed),
            nn.ReLU(inplace=True),
            nn.Linear(squeezed, channels),
            nn.Hardsigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[:2]
        scale = self.fc(self.pool(x).view(n, c)).view(n, c, 1, 1)  # (N, C) -> (N, C, 1, 1)
        return x * scale


class InvertedResidualV3(nn.Module):
    """MobileNetV3 bneck (paper Fig. 4): [1x1 expand] -> kxk depthwise -> [SE] -> 1x1 linear projection.

    Index layout of `conv` (d-li14): without expansion (hidden == in) [dw, BN, act, SE, pw, BN];
    with expansion [pw, BN, act, dw, BN, SE, act, pw, BN], i.e. SE sits before the second activation.
    A layer that is switched off (no SE) is an `nn.Identity`, so the indices never shift.

    Args:
        in_channels, hidden_channels, out_channels: widths before, inside and after the block.
        kernel_size: of the depthwise conv (3 or 5).
        stride: of the depthwise conv, 1 or 2.
        use_se: squeeze-and-excitation after the depthwise conv.
        use_hswish: h-swish instead of ReLU.
    """

    def __init__(
        self,
        in_channels: int,
        hidden_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        use_se: bool,
        use_hswish: bool,
    ):
        super().__init__()
        self.use_residual = stride == 1 and in_channels == out_channels
        self.hidden_channels = hidden_channels
        # leading `conv` modules of the 1x1 expansion (conv, BN, activation); 0 without an expansion
        self.expansion_layers = 3 if in_channels != hidden_channels else 0

        def act() -> nn.Module:
            return nn.Hardswish() if use_hswish else nn.ReLU(inplace=True)

        depthwise = nn.Conv2d(
            hidden_channels,
            hidden_channels,
            kernel_size,
            stride,
            (kernel_size - 1) // 2,
            groups=hidden_channels,
            bias=False,
        )
        se = SqueezeExcite(hidden_channels) if use_se else nn.Identity()
        project = nn.Conv2d(hidden_channels, out_channels, 1, bias=False)
        if in_channels == hidden_channels:
            layers = [
                depthwise,
                nn.BatchNorm2d(hidden_channels),
                act(),
                se,
                project,
                nn.BatchNorm2d(out_channels),
            ]
        else:
            layers = [
                nn.Conv2d(in_channels, hidden_channels, 1, bias=False),  # pointwise expansion
                nn.BatchNorm2d(hidden_channels),
                act(),
                depthwise,
                nn.BatchNorm2d(hidden_channels),
                se,
                act(),
                project,
                nn.BatchNorm2d(out_channels),
            ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# MobileNetV3-Large, paper Table 1: (kernel, expansion t, out channels, SE, h-swish, stride).
_BLOCKS = (
    (3, 1, 16, False, False, 1),
    (3, 4, 24, False, False, 2),
    (3, 3, 24, False, False, 1),
    (5, 3, 40, True, False, 2),
    (5, 3, 40, True, False, 1),
    (5, 3, 40, True, False, 1),
    (3, 6, 80, False, True, 2),
    (3, 2.5, 80, False, True, 1),
    (3, 2.3, 80, False, True, 1),
    (3, 2.3, 80, False, True, 1),
    (3, 6, 112, True, True, 1),
    (3, 6, 112, True, True, 1),  # features[12]: the last stride-16 block, first prediction source
    (5, 6, 160, True, True, 2),
    (5, 6, 160, True, True, 1),
    (5, 6, 160, True, True, 1),
)
# Extra layers after features[16] (lufficc/SSD): (hidden, out channels), each 3x3 stride 2 with SE and h-swish.
_EXTRAS = ((192, 512), (128, 256), (128, 256), (64, 64))


class MobileNetV3SSD(FreezableTrunk):
    """MobileNetV3-Large features + 4 extra bnecks; emits 6 feature maps (strides 16 .. 320 at 320).

    Args:
        width_mult: scales every width as d-li14's implementation does; the extra layers are scaled too
            (a choice made here; lufficc/SSD has width 1.0 only). ImageNet weights exist for 1.0 only.
        stride8_map: also emit a stride-8 map as the first of 7 maps. Adds no parameters.
        stride8_source: "block", the output of features[6] (40 channels), or "expansion", the 1x1 expansion
            inside features[7] (240 channels, h-swish), as in MobileNetV2SSD.
    """

    def __init__(self, width_mult: float = 1.0, stride8_map: bool = False, stride8_source: str = "block"):
        super().__init__()
        in_channels = make_divisible(16 * width_mult)
        layers: list[nn.Module] = [_conv_bn_hswish(3, in_channels, 3, 2)]  # features[0]
        for kernel, t, c, use_se, use_hswish, stride in _BLOCKS:
            out_channels = make_divisible(c * width_mult)
            hidden = make_divisible(in_channels * t)
            layers.append(
                InvertedResidualV3(in_channels, hidden, out_channels, kernel, stride, use_se, use_hswish)
            )
            in_channels = out_channels
        last_channels = hidden  # 960 at width 1.0: the expansion width of the last block
        layers.append(_conv_bn_hswish(in_channels, last_channels, 1, 1))  # features[16]
        self.features = nn.Sequential(*layers)
        # Blocks whose output is a prediction source besides the last layer: the last stride-16 block (112
        # channels at width 1.0), preceded by the last stride-8 block (40 channels) with `stride8_map`.
        # "expansion" taps the 1x1 expansion of features[7] instead (240 channels; see MobileNetV2SSD).
        self.tap_indices, self.expansion_tap = stride8_taps(stride8_map, stride8_source, 6, 12)

        self.extras = nn.ModuleList()
        in_channels = last_channels
        for hidden, c in _EXTRAS:
            out_channels = make_divisible(c * width_mult)
            self.extras.append(
                InvertedResidualV3(
                    in_channels, make_divisible(hidden * width_mult), out_channels, 3, 2, True, True
                )
            )
            in_channels = out_channels
        self.out_channels = tapped_channels(self.features, self.tap_indices, self.expansion_tap)
        self.out_channels += [last_channels] + [block.conv[-1].num_features for block in self.extras]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Convs N(0, sqrt(2 / (k * k * out))), BN 1 / 0, Linear N(0, 0.01): d-li14's and lufficc/SSD's init."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, std=(2.0 / fan_out) ** 0.5)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> list[Tensor]:
        """(N, 3, S, S) -> 6 (7) feature maps (N, out_channels[l], f_l, f_l), largest first."""
        return tapped_forward(self.features, self.extras, self.tap_indices, images, self.expansion_tap)


@BACKBONES.register("mobilenet_v3")
def build_mobilenet_v3(
    image_size: int,
    pretrained: bool,
    width_mult: float = 1.0,
    stride8_map: bool = False,
    stride8_source: str = "block",
) -> MobileNetV3SSD:
    """MobileNetV3-Large SSDLite backbone; `pretrained` loads d-li14's ImageNet weights into `features`.

    Args:
        image_size: unused (the network is fully convolutional); kept for the common builder signature.
        pretrained: load `weights.PRETRAINED_URLS["mobilenet_v3"]` through the torch hub cache.
        width_mult: MobileNet width multiplier; pretrained weights need 1.0.
        stride8_map: MODEL.BACKBONE.STRIDE8_MAP; emit the stride-8 map first (7 maps).
        stride8_source: MODEL.BACKBONE.STRIDE8_SOURCE, "block" or "expansion" (see MobileNetV2SSD).
    """
    if pretrained and width_mult != 1.0:
        raise ValueError(
            f"ImageNet MobileNetV3 weights exist for MODEL.BACKBONE.WIDTH_MULT 1.0 only, got {width_mult}; "
            "set MODEL.BACKBONE.PRETRAINED False"
        )
    backbone = MobileNetV3SSD(width_mult, stride8_map, stride8_source)
    if pretrained:
        weights.load_pretrained_backbone(backbone, "mobilenet_v3")
    return backbone
