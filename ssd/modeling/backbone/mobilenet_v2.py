"""MobileNetV2 + four inverted-residual extra layers: the SSDLite backbone (MobileNetV2 paper sec. 6.2).

The module layout is torchvision's `mobilenet_v2().features`, so torchvision's ImageNet state dict loads
into `features` key for key (`features.13.conv.1.0.weight` is the same tensor in both). lufficc/SSD uses
the same layout, including its `extras`, so its checkpoints need no renaming in the backbone.

Feature maps for a 320 x 320 input, width 1.0:

    features[13] output      96 x 20 x 20   (stride 16; the block output, not its 576-channel expansion)
    features[18] output    1280 x 10 x 10   (stride 32; the last 1x1 conv)
    extras[0]               512 x  5 x  5
    extras[1]               256 x  3 x  3
    extras[2]               256 x  2 x  2
    extras[3]                64 x  1 x  1

With `stride8_map=True` a seventh map comes first: features[6] output, 32 x 40 x 40 (stride 8, the last
block before the stride-16 stage), for objects smaller than about two stride-16 cells (a new option).
"""

from __future__ import annotations

from torch import Tensor, nn

from ssd.modeling import weights
from ssd.modeling.layers import FreezableTrunk
from ssd.modeling.registry import BACKBONES


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of `divisor`, never going below 90% of `value`.

    This is the rounding of the MobileNet reference implementations; with width 1.0 it returns the
    published channel counts unchanged.
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class ConvBNReLU6(nn.Sequential):
    """Conv (no bias) + BatchNorm + ReLU6; keys `0.weight`, `1.*` as in torchvision."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, groups: int = 1
    ):
        super().__init__(
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                (kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """MobileNetV2 block (paper sec. 3.3, Table 1): 1x1 expand -> 3x3 depthwise -> 1x1 linear projection.

    The expansion is skipped when expand_ratio == 1. The input is added to the output when the block keeps
    the resolution and the width (the "inverted residual").

    Args:
        in_channels, out_channels: block input / output width.
        stride: of the depthwise conv, 1 or 2.
        expand_ratio: t in the paper; hidden width = round(in_channels * t). lufficc's extra layers use t < 1
            (e.g. 0.2: 1280 -> 256 hidden), which makes them bottlenecks rather than expansions.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: float):
        super().__init__()
        hidden = int(round(in_channels * expand_ratio))
        self.use_residual = stride == 1 and in_channels == out_channels
        self.hidden_channels = hidden
        self.expansion_layers = 1 if expand_ratio != 1 else 0  # leading `conv` modules of the 1x1 expansion
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvBNReLU6(in_channels, hidden, kernel_size=1))  # pointwise expansion
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),  # depthwise 3x3
            nn.Conv2d(hidden, out_channels, 1, bias=False),  # pointwise linear projection (no ReLU)
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


# MobileNetV2 paper Table 2: (expansion t, output channels c, repeats n, first stride s).
_BLOCKS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)
# Extra layers after features[18] (lufficc/SSD): (output channels, expand ratio), each with stride 2.
_EXTRAS = ((512, 0.2), (256, 0.25), (256, 0.5), (64, 0.25))


class MobileNetV2SSD(FreezableTrunk):
    """MobileNetV2 features + 4 extra inverted residuals; emits 6 feature maps (strides 16 .. 320 at 320).

    Args:
        width_mult: scales every width (the "width multiplier" of the paper); the last 1x1 conv keeps at
            least 1280 channels, as in torchvision. The extra layers are scaled too (a choice made here;
            lufficc/SSD has width 1.0 only). ImageNet weights exist for 1.0 only.
        stride8_map: also emit a stride-8 map as the first of 7 maps. Adds no parameters.
        stride8_source: which stride-8 map: "block", the output of features[6] (32 channels at width 1.0, the
            last stride-8 block), or "expansion", the 1x1 expansion inside features[7] (192 channels, ReLU6),
            computed at stride 8 before that block's stride-2 depthwise conv, as torchvision's SSDLite taps
            its stride-16 level.
    """

    def __init__(self, width_mult: float = 1.0, stride8_map: bool = False, stride8_source: str = "block"):
        super().__init__()
        in_channels = make_divisible(32 * width_mult)
        last_channels = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU6(3, in_channels, stride=2)]  # features[0]
        for t, c, n, s in _BLOCKS:
            out_channels = make_divisible(c * width_mult)
            for i in range(n):
                layers.append(InvertedResidual(in_channels, out_channels, s if i == 0 else 1, t))
                in_channels = out_channels
        layers.append(ConvBNReLU6(in_channels, last_channels, kernel_size=1))  # features[18]
        self.features = nn.Sequential(*layers)
        # Blocks whose output is a prediction source besides the last layer: the last stride-16 block (96
        # channels at width 1.0), preceded with `stride8_map` by the last stride-8 block (32 channels) or, with
        # stride8_source "expansion", by the 1x1 expansion of the first stride-16 block (192 channels).
        self.tap_indices, self.expansion_tap = stride8_taps(stride8_map, stride8_source, 6, 13)

        self.extras = nn.ModuleList()
        in_channels = last_channels
        for c, t in _EXTRAS:
            out_channels = make_divisible(c * width_mult)
            self.extras.append(InvertedResidual(in_channels, out_channels, stride=2, expand_ratio=t))
            in_channels = out_channels
        self.out_channels = tapped_channels(self.features, self.tap_indices, self.expansion_tap)
        self.out_channels += [last_channels] + [block.conv[-1].num_features for block in self.extras]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out) convs, BN weight 1 / bias 0, as torchvision and lufficc/SSD."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> list[Tensor]:
        """(N, 3, S, S) -> 6 (7) feature maps (N, out_channels[l], f_l, f_l), largest first."""
        return tapped_forward(self.features, self.extras, self.tap_indices, images, self.expansion_tap)


STRIDE8_SOURCES = ("block", "expansion")


def stride8_taps(
    stride8_map: bool, stride8_source: str, last_stride8_block: int, last_stride16_block: int
) -> tuple[tuple[int, ...], int | None]:
    """(tap_indices, expansion_tap) of a MobileNet: the blocks whose output is a map, and the block whose
    1x1 expansion output is one (None: none). The expansion tapped is that of the first stride-16 block."""
    if stride8_source not in STRIDE8_SOURCES:
        raise ValueError(
            f"MODEL.BACKBONE.STRIDE8_SOURCE must be one of {STRIDE8_SOURCES}, got {stride8_source!r}"
        )
    if not stride8_map:
        return (last_stride16_block,), None
    if stride8_source == "block":
        return (last_stride8_block, last_stride16_block), None
    return (last_stride16_block,), last_stride8_block + 1


def tapped_channels(
    features: nn.Sequential, tap_indices: tuple[int, ...], expansion_tap: int | None
) -> list[int]:
    """Channels of the maps tapped inside `features`, in level order (an expansion tap comes first)."""
    channels = [features[expansion_tap].hidden_channels] if expansion_tap is not None else []
    return channels + [features[i].conv[-1].num_features for i in tap_indices]


def tapped_forward(
    features: nn.Sequential,
    extras: nn.ModuleList,
    tap_indices: tuple[int, ...],
    images: Tensor,
    expansion_tap: int | None = None,
) -> list[Tensor]:
    """The MobileNet SSD forward (MobileNetV2 and V3): run `features`, keeping the outputs of the blocks in
    `tap_indices` (stride 16, and stride 8 with a stride-8 map) and of the last layer (stride 32), then each
    extra layer's output (strides 64 ..). With `expansion_tap`, that block runs in two parts and the output
    of its 1x1 expansion (still at the stride of its input) is kept too; the block must have no residual
    (a stride-2 block), so the two parts compute what the whole block does.

    Returns:
        len(tap_indices) + 1 + len(extras) (+ 1 with an expansion tap) maps (N, C_l, f_l, f_l), largest first.
    """
    maps = []
    x = images
    for index, layer in enumerate(features):
        if index == expansion_tap:
            expanded = layer.conv[: layer.expansion_layers](x)
            maps.append(expanded)
            x = layer.conv[layer.expansion_layers :](expanded)
        else:
            x = layer(x)
        if index in tap_indices:
            maps.append(x)
    maps.append(x)  # the last layer of `features`
    for block in extras:
        x = block(x)
        maps.append(x)
    return maps


@BACKBONES.register("mobilenet_v2")
def build_mobilenet_v2(
    image_size: int,
    pretrained: bool,
    width_mult: float = 1.0,
    stride8_map: bool = False,
    stride8_source: str = "block",
) -> MobileNetV2SSD:
    """MobileNetV2 SSDLite backbone; `pretrained` loads torchvision's ImageNet weights into `features`.

    Args:
        image_size: unused (the network is fully convolutional); kept for the common builder signature.
        pretrained: load `weights.PRETRAINED_URLS["mobilenet_v2"]` through the torch hub cache.
        width_mult: MobileNet width multiplier; pretrained weights need 1.0.
        stride8_map: MODEL.BACKBONE.STRIDE8_MAP; emit the stride-8 map first (7 maps).
        stride8_source: MODEL.BACKBONE.STRIDE8_SOURCE, "block" or "expansion" (see MobileNetV2SSD).
    """
    if pretrained and width_mult != 1.0:
        raise ValueError(
            f"ImageNet MobileNetV2 weights exist for MODEL.BACKBONE.WIDTH_MULT 1.0 only, got {width_mult}; "
            "set MODEL.BACKBONE.PRETRAINED False"
        )
    backbone = MobileNetV2SSD(width_mult, stride8_map, stride8_source)
    if pretrained:
        weights.load_pretrained_backbone(backbone, "mobilenet_v2")
    return backbone
