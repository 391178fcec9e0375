"""VGG16 with reduced fc layers plus the SSD extra layers: the network of the SSD paper (sec. 2.2, Fig. 2).

Layer names follow the paper and Caffe SSD, so the state-dict keys read like the figure:
`backbone.vgg.conv4_3.weight`, `backbone.vgg.conv6.weight` (fc6 as a dilated conv), `backbone.extras.conv8_2`.

Feature maps for a 300 x 300 input (512 x 512 in brackets), SSD paper Fig. 2 and the SSD512 footnote:

    conv4_3 (L2-normalised)  512 x 38 x 38    (64)
    fc7 (conv7)             1024 x 19 x 19    (32)
    conv8_2                  512 x 10 x 10    (16)
    conv9_2                  256 x  5 x  5    (8)
    conv10_2                 256 x  3 x  3    (4)
    conv11_2                 256 x  1 x  1    (2)
    conv12_2 (SSD512 only)   256 x  1 x  1

lufficc/SSD keeps the layers in index-numbered lists (`backbone.vgg.21` is conv4_3); `ssd/modeling/weights.py`
maps those indices to the names used here.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from ssd.modeling import weights
from ssd.modeling.layers import FreezableTrunk, L2Norm
from ssd.modeling.registry import BACKBONES

# VGG16 configuration D (Simonyan & Zisserman), conv1_1 .. conv5_3: (name, out_channels) or a pool name.
_VGG16_LAYERS = (
    ("conv1_1", 64), ("conv1_2", 64), "pool1",
    ("conv2_1", 128), ("conv2_2", 128), "pool2",
    ("conv3_1", 256), ("conv3_2", 256), ("conv3_3", 256), "pool3",
    ("conv4_1", 512), ("conv4_2", 512), ("conv4_3", 512), "pool4",
    ("conv5_1", 512), ("conv5_2", 512), ("conv5_3", 512),
)  # fmt: skip

# Extra layers (SSD paper Fig. 2): (name, out_channels, kernel, stride, padding). Each pair is a 1x1 reduction
# followed by a 3x3 conv whose output is a prediction source. The values are those of Caffe SSD.
_EXTRAS = {
    300: (
        ("conv8_1", 256, 1, 1, 0), ("conv8_2", 512, 3, 2, 1),     # 19 -> 10
        ("conv9_1", 128, 1, 1, 0), ("conv9_2", 256, 3, 2, 1),     # 10 -> 5
        ("conv10_1", 128, 1, 1, 0), ("conv10_2", 256, 3, 1, 0),   # 5 -> 3
        ("conv11_1", 128, 1, 1, 0), ("conv11_2", 256, 3, 1, 0),   # 3 -> 1
    ),
    512: (
        ("conv8_1", 256, 1, 1, 0), ("conv8_2", 512, 3, 2, 1),     # 32 -> 16
        ("conv9_1", 128, 1, 1, 0), ("conv9_2", 256, 3, 2, 1),     # 16 -> 8
        ("conv10_1", 128, 1, 1, 0), ("conv10_2", 256, 3, 2, 1),   # 8 -> 4
        ("conv11_1", 128, 1, 1, 0), ("conv11_2", 256, 3, 2, 1),   # 4 -> 2
        ("conv12_1", 128, 1, 1, 0), ("conv12_2", 256, 4, 1, 1),   # 2 -> 1 (4x4 kernel, as Caffe SSD512)
    ),
}  # fmt: skip


def _vgg16_reduced_fc() -> nn.Sequential:
    """conv1_1 .. conv7 as one Sequential of named layers (35 modules, in lufficc/SSD's index order)."""
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = 3
    for spec in _VGG16_LAYERS:
        if isinstance(spec, str):
            # pool3 rounds up (75 -> 38 at 300) so conv4_3 is 38 x 38, as in Caffe SSD.
            layers[spec] = nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=spec == "pool3")
            continue
        name, out_channels = spec
        layers[name] = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        layers[name.replace("conv", "relu")] = nn.ReLU(inplace=True)
        in_channels = out_channels
    # SSD paper sec. 3 ("Base network"): pool5 becomes 3x3 stride 1, fc6 and fc7 become convolutions with
    # subsampled weights, and fc6 uses the a trous (dilated) algorithm to keep its receptive field.
    layers["pool5"] = nn.MaxPool2d(kernel_size=3, stride=1, padding=1)
    layers["conv6"] = nn.Conv2d(512, 1024, kernel_size=3, padding=6, dilation=6)  # fc6
    layers["relu6"] = nn.ReLU(inplace=True)
    layers["conv7"] = nn.Conv2d(1024, 1024, kernel_size=1)  # fc7
    layers["relu7"] = nn.ReLU(inplace=True)
    return nn.Sequential(layers)


def _extras(image_size: int) -> nn.Sequential:
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    in_channels = 1024  # fc7
    for name, out_channels, kernel, stride, padding in _EXTRAS[image_size]:
        layers[name] = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding)
        layers[name.replace("conv", "relu")] = nn.ReLU(inplace=True)
        in_channels = out_channels
    return nn.Sequential(layers)


class VGG16SSD(FreezableTrunk):
    """VGG16 (reduced fc) + L2Norm on conv4_3 + extra layers; emits 6 (SSD300) or 7 (SSD512) feature maps.

    Args:
        image_size: 300 or 512; selects the extra layers (the base network is the same).
    """

    trunk_name = "vgg"

    def __init__(self, image_size: int = 300):
        super().__init__()
        if image_size not in _EXTRAS:
            raise ValueError(f"VGG16 SSD supports INPUT.IMAGE_SIZE 300 or 512, got {image_size}")
        self.vgg = _vgg16_reduced_fc()
        # SSD paper sec. 3.1: conv4_3 features are L2-normalised with a learned scale initialised to 20.
        self.l2_norm = L2Norm(512, scale=20.0)
        self.extras = _extras(image_size)
        # Names of the layers whose output is a prediction source, in level order.
        self.vgg_taps = ("relu4_3", "relu7")
        self.extra_taps = tuple(name.replace("conv", "relu") for name, *_ in _EXTRAS[image_size][1::2])
        self.out_channels = [512, 1024] + [spec[1] for spec in _EXTRAS[image_size][1::2]]
        self.reset_extras()

    def reset_extras(self) -> None:
        """Xavier-uniform weights and zero biases for the extra layers (as lufficc/SSD and Caffe SSD).

        The VGG part keeps PyTorch's default init; it is meant to be overwritten by ImageNet weights.
        """
        for module in self.extras.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, images: Tensor) -> list[Tensor]:
        """(N, 3, S, S) -> L feature maps (N, out_channels[l], f_l, f_l), largest first."""
        features = []
        x = images
        for name, layer in self.vgg.named_children():
            x = layer(x)
            if name == "relu4_3":
                features.append(self.l2_norm(x))  # conv4_3, normalised only on the prediction branch
        features.append(x)  # fc7 (relu7)
        for name, layer in self.extras.named_children():
            x = layer(x)
            if name in self.extra_taps:
                features.append(x)  # conv8_2, conv9_2, ...
        return features


@BACKBONES.register("vgg")
def build_vgg(image_size: int, pretrained: bool, width_mult: float = 1.0) -> VGG16SSD:
    """VGG16 SSD backbone; `pretrained` loads amdegroot's ImageNet VGG16 with reduced fc6/fc7.

    Args:
        image_size: 300 or 512.
        pretrained: load conv1_1 .. conv7 from `weights.PRETRAINED_URLS["vgg"]` through the torch hub cache.
        width_mult: accepted so every backbone builder has the same signature; must be 1.0 for VGG.
    """
    if width_mult != 1.0:
        raise ValueError(f"MODEL.BACKBONE.WIDTH_MULT applies to MobileNets only; got {width_mult} for vgg")
    backbone = VGG16SSD(image_size)
    if pretrained:
        weights.load_pretrained_backbone(backbone, "vgg")
    return backbone
