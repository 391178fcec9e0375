"""Backbones: networks that turn (N, 3, S, S) images into L feature maps, one per prior level.

Every builder is registered in `ssd.modeling.registry.BACKBONES` under the name used by
`MODEL.BACKBONE.NAME`, and has the signature

    builder(image_size: int, pretrained: bool, width_mult: float) -> nn.Module

The module returned has `out_channels: list[int]` and `forward(images (N, 3, S, S)) -> list[Tensor]`
of L maps (N, out_channels[l], f_l, f_l), largest first. The imports below register the built-in ones;
to add your own, decorate a builder with `@BACKBONES.register("name")` and import its module.
"""

from ssd.modeling.backbone import mobilenet_v2, mobilenet_v3, vgg

__all__ = ["mobilenet_v2", "mobilenet_v3", "vgg"]
