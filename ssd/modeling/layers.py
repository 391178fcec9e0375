"""Small layers shared by the backbones and box predictors: L2Norm and the SSDLite separable conv."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn


class L2Norm(nn.Module):
    """Normalise each spatial position of a feature map to unit L2 norm over channels, then scale.

    SSD paper sec. 3.1 ("PASCAL VOC2007"): conv4_3 has a much larger feature scale than the later layers,
    so its features are L2-normalised (ParseNet) and multiplied by a learned per-channel scale, initialised
    to 20.

    Args:
        channels: number of channels of the input feature map.
        scale: initial value of every per-channel scale.
        eps: added to the norm so an all-zero position gives 0, not NaN (lufficc/SSD uses 1e-10).
    """

    def __init__(self, channels: int, scale: float = 20.0, eps: float = 1e-10):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.full((channels,), float(scale)))

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, H, W) -> (N, C, H, W), each (n, :, h, w) vector of norm ~= weight."""
        norm = x.pow(2).sum(dim=1, keepdim=True).sqrt() + self.eps  # (N, 1, H, W)
        return self.weight.view(1, -1, 1, 1) * (x / norm)  # (1, C, 1, 1) * (N, C, H, W)


class SeparableConv2d(nn.Sequential):
    """Depthwise 3x3 conv + BatchNorm + ReLU6, then a pointwise 1x1 conv: the SSDLite prediction layer.

    MobileNetV2 paper sec. 6.2 (SSDLite) replaces every regular 3x3 prediction conv of SSD with this pair,
    which costs about 1/out_channels + 1/9 of the multiply-adds. Both convs have a bias, as in lufficc/SSD
    (its keys `conv.0`, `conv.1`, `conv.3` map to `depthwise`, `bn`, `pointwise` here).

    Args:
        in_channels: channels of the input feature map.
        out_channels: channels of the output (e.g. A * C for a classification head).
        kernel_size, stride, padding: of the depthwise conv.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1, padding: int = 1
    ):
        super().__init__(
            OrderedDict(
                depthwise=nn.Conv2d(
                    in_channels, in_channels, kernel_size, stride=stride, padding=padding, groups=in_channels
                ),
                bn=nn.BatchNorm2d(in_channels),
                relu=nn.ReLU6(inplace=True),
                pointwise=nn.Conv2d(in_channels, out_channels, kernel_size=1),
            )
        )
