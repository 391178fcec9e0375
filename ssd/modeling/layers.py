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


class FreezableTrunk(nn.Module):
    """Base of the backbones: the leading layers of the ImageNet trunk can be frozen for fine-tuning.

    A frozen layer keeps its pretrained weights and its BatchNorm statistics: its parameters get no gradient
    and it stays in eval mode when the model is put in train mode. Nothing before it needs a gradient either,
    so autograd records no backward pass through the frozen layers, which saves their backward time (the
    high-resolution early layers are a large share of a training step on a CPU). Detectron2 freezes the stem
    and the stride-4 stage of its ResNets the same way (MODEL.BACKBONE.FREEZE_AT 2). The state dict does not
    change, so checkpoints load into a frozen or an unfrozen model alike.

    A subclass names its trunk (an nn.Sequential run first in `forward`) in `trunk_name`.
    """

    trunk_name = "features"

    def __init__(self) -> None:
        super().__init__()
        self.frozen_layers = 0

    def trunk(self) -> nn.Sequential:
        return getattr(self, self.trunk_name)

    def trunk_output_strides(self, probe_size: int = 64) -> list[int]:
        """Output stride of each trunk layer (its input size over its output size), from a probe forward
        in eval mode (no BatchNorm statistics change)."""
        was_training = self.training
        self.eval()
        strides = []
        with torch.no_grad():
            x = torch.zeros(1, 3, probe_size, probe_size)
            for layer in self.trunk():
                x = layer(x)
                strides.append(probe_size // x.shape[-1])
        self.train(was_training)
        return strides

    def freeze_to_stride(self, max_stride: int) -> int:
        """Freeze the leading trunk layers whose output stride is <= `max_stride`; return how many.

        0 freezes nothing; 4 freezes the stem and the stride-4 blocks (MobileNetV2 `features[0:4]`, VGG16
        conv1_1 .. relu3_3).
        """
        strides = self.trunk_output_strides()
        count = 0
        while count < len(strides) and strides[count] <= max_stride:
            count += 1
        self.frozen_layers = count
        for parameter in self.trunk()[:count].parameters():
            parameter.requires_grad_(False)
        self.train(self.training)
        return count

    def train(self, mode: bool = True) -> FreezableTrunk:
        super().train(mode)
        if self.frozen_layers:
            self.trunk()[: self.frozen_layers].eval()  # frozen BatchNorm keeps its ImageNet statistics
        return self
