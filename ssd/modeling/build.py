"""`build_detection_model(cfg)`: the one place where the config becomes constructor arguments.

It also checks, before any training starts, that the config describes the network it builds: the
backbone's channels against MODEL.BACKBONE.OUT_CHANNELS and its feature-map sizes against
MODEL.PRIORS.FEATURE_MAPS (a mismatch would otherwise pair predictions with the wrong priors).
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from yacs.config import CfgNode

# Importing these modules registers the built-in backbones and box predictors.
import ssd.modeling.backbone  # noqa: F401
import ssd.modeling.box_predictor  # noqa: F401
from ssd.config.loading import ConfigError
from ssd.modeling.detector import SSDDetector
from ssd.modeling.postprocess import PostProcessor
from ssd.modeling.priors import make_priors, priors_per_location
from ssd.modeling.registry import BACKBONES, BOX_PREDICTORS


def feature_map_shapes(backbone: nn.Module, image_size: int) -> list[tuple[int, int, int]]:
    """(channels, height, width) of each feature map of `backbone` for an S x S input.

    The forward runs on the "meta" device: shapes are computed without allocating or computing any
    value, so this costs nothing even for VGG at 512. The backbone itself is not touched.
    """
    meta_tensors = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in (*backbone.named_parameters(), *backbone.named_buffers())
    }
    images = torch.empty(
        2, 3, image_size, image_size, device="meta"
    )  # 2: BatchNorm needs > 1 value per channel
    with torch.no_grad():
        features = torch.func.functional_call(backbone, meta_tensors, (images,))
    return [tuple(f.shape[1:]) for f in features]


def check_backbone(cfg: CfgNode, shapes: list[tuple[int, int, int]]) -> None:
    """Raise ConfigError naming the key if the backbone's outputs disagree with the config."""
    name, size = cfg.MODEL.BACKBONE.NAME, cfg.INPUT.IMAGE_SIZE
    where = f"backbone {name!r} at INPUT.IMAGE_SIZE {size}"
    feature_maps = list(cfg.MODEL.PRIORS.FEATURE_MAPS)
    if len(shapes) != len(feature_maps):
        raise ConfigError(
            f"{where} produces {len(shapes)} feature maps but MODEL.PRIORS.FEATURE_MAPS has "
            f"{len(feature_maps)} entries: {feature_maps}"
        )
    channels = [c for c, _, _ in shapes]
    if channels != list(cfg.MODEL.BACKBONE.OUT_CHANNELS):
        raise ConfigError(
            f"MODEL.BACKBONE.OUT_CHANNELS = {list(cfg.MODEL.BACKBONE.OUT_CHANNELS)} but {where} "
            f"(WIDTH_MULT {cfg.MODEL.BACKBONE.WIDTH_MULT}) produces {channels}"
        )
    if any(h != w for _, h, w in shapes):
        raise ConfigError(f"{where} produces non-square feature maps {shapes}; priors assume square maps")
    sizes = [h for _, h, _ in shapes]
    if sizes != feature_maps:
        raise ConfigError(
            f"MODEL.PRIORS.FEATURE_MAPS = {feature_maps} but {where} produces maps of size {sizes}"
        )


def build_backbone(cfg: CfgNode, pretrained: bool, stride8_map: bool) -> nn.Module:
    """The backbone named by MODEL.BACKBONE.NAME at INPUT.IMAGE_SIZE (WIDTH_MULT applied).

    Raises:
        ConfigError: `stride8_map` for a backbone that has no stride-8 option.
    """
    backbone_cfg = cfg.MODEL.BACKBONE
    builder = BACKBONES.get_builder(backbone_cfg.NAME)
    # stride8_map is passed only when set, so builders that do not offer it keep the 3-argument signature.
    options = {"stride8_map": True, "stride8_source": backbone_cfg.STRIDE8_SOURCE} if stride8_map else {}
    if options and "stride8_map" not in inspect.signature(builder).parameters:
        raise ConfigError(
            f"MODEL.BACKBONE.STRIDE8_MAP is True but backbone {backbone_cfg.NAME!r} has no stride-8 "
            "option (the MobileNets have; VGG's first map, conv4_3, already has stride 8)"
        )
    return builder(
        image_size=cfg.INPUT.IMAGE_SIZE, pretrained=pretrained, width_mult=backbone_cfg.WIDTH_MULT, **options
    )


def backbone_feature_shapes(cfg: CfgNode, stride8_map: bool) -> list[tuple[int, int, int]]:
    """(channels, height, width) of each map the configured backbone emits (no weights are loaded)."""
    return feature_map_shapes(build_backbone(cfg, False, stride8_map), cfg.INPUT.IMAGE_SIZE)


def build_detection_model(cfg: CfgNode) -> SSDDetector:
    """Build the SSD described by `cfg` (MODEL.*, INPUT.IMAGE_SIZE, TEST.*).

    ImageNet backbone weights are loaded when MODEL.BACKBONE.PRETRAINED is set. MODEL.WEIGHTS is not read
    here: initialising from a checkpoint is the caller's step (`weights.load_model_weights`).

    Raises:
        ConfigError: backbone outputs that disagree with MODEL.BACKBONE.OUT_CHANNELS or
            MODEL.PRIORS.FEATURE_MAPS; the message names the key.
        KeyError: an unregistered MODEL.BACKBONE.NAME or MODEL.BOX_HEAD.PREDICTOR.
    """
    model_cfg, priors_cfg = cfg.MODEL, cfg.MODEL.PRIORS
    image_size = cfg.INPUT.IMAGE_SIZE
    if priors_cfg.AUTO:
        raise ConfigError(
            "MODEL.PRIORS.AUTO is True: the priors are fitted to the training boxes when train.py starts "
            "(ssd/engine/recipe.py); build from the concrete config it wrote, OUTPUT_DIR/config.yaml, or the "
            "config stored in its checkpoint"
        )
    backbone = build_backbone(cfg, model_cfg.BACKBONE.PRETRAINED, model_cfg.BACKBONE.STRIDE8_MAP)
    check_backbone(cfg, feature_map_shapes(backbone, image_size))
    if model_cfg.BACKBONE.FREEZE_TO_STRIDE:  # >= 0: checked with the other values (config/loading.py)
        backbone.freeze_to_stride(model_cfg.BACKBONE.FREEZE_TO_STRIDE)

    predictor = BOX_PREDICTORS.get_builder(model_cfg.BOX_HEAD.PREDICTOR)(
        in_channels=list(model_cfg.BACKBONE.OUT_CHANNELS),
        boxes_per_location=priors_per_location(priors_cfg.ASPECT_RATIOS),
        num_classes=model_cfg.NUM_CLASSES,
    )
    priors_cxcywh = make_priors(
        image_size=image_size,
        feature_maps=priors_cfg.FEATURE_MAPS,
        strides=priors_cfg.STRIDES,
        min_sizes=priors_cfg.MIN_SIZES,
        max_sizes=priors_cfg.MAX_SIZES,
        aspect_ratios=priors_cfg.ASPECT_RATIOS,
        clip=priors_cfg.CLIP,
    )
    postprocessor = PostProcessor(
        center_variance=model_cfg.CENTER_VARIANCE,
        size_variance=model_cfg.SIZE_VARIANCE,
        score_threshold=cfg.TEST.CONFIDENCE_THRESHOLD,
        nms_threshold=cfg.TEST.NMS_THRESHOLD,
        max_per_class=cfg.TEST.MAX_PER_CLASS,
        max_per_image=cfg.TEST.MAX_PER_IMAGE,
    )
    return SSDDetector(
        backbone=backbone,
        predictor=predictor,
        priors_cxcywh=priors_cxcywh,
        num_classes=model_cfg.NUM_CLASSES,
        iou_threshold=model_cfg.THRESHOLD,
        center_variance=model_cfg.CENTER_VARIANCE,
        size_variance=model_cfg.SIZE_VARIANCE,
        neg_pos_ratio=model_cfg.NEG_POS_RATIO,
        postprocessor=postprocessor,
    )
