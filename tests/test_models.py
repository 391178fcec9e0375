"""Networks and the detector: one smoke test per registered backbone x box predictor (generated from the
registries), the output order of the predictors, the model API of docs/contracts.md, and build-time checks."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from ssd.config import ConfigError, load_config
from ssd.modeling import build_detection_model
from ssd.modeling.box_predictor import BoxPredictor, build_ssdlite_predictor
from ssd.modeling.build import feature_map_shapes
from ssd.modeling.layers import L2Norm, SeparableConv2d
from ssd.modeling.registry import BACKBONES, BOX_PREDICTORS

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# The config each registered backbone is smoke-tested with. A backbone registered without an entry here
# fails `test_every_backbone_has_a_smoke_config`, so new backbones cannot go untested.
SMOKE_CONFIGS = {
    "vgg": "vgg_ssd300_voc0712.yaml",
    "mobilenet_v2": "mobilenet_v2_ssd320_voc0712.yaml",
    "mobilenet_v3": "mobilenet_v3_ssd320_voc0712.yaml",
}


# MobileNets are fully convolutional, so tests run them on 128 x 128 inputs to save CPU time; the priors
# config then has to describe the smaller maps (8, 4, 2, 1, 1, 1; the last extras keep a 1x1 map).
SMALL_MOBILENET = (
    "INPUT.IMAGE_SIZE", "128",
    "MODEL.PRIORS.FEATURE_MAPS", "[8, 4, 2, 1, 1, 1]",
    "MODEL.PRIORS.STRIDES", "[16, 32, 64, 128, 128, 128]",
)  # fmt: skip


def small_opts(backbone: str) -> tuple[str, ...]:
    return () if backbone == "vgg" else SMALL_MOBILENET


def build(config_name: str, *opts: str) -> nn.Module:
    torch.manual_seed(0)
    cfg = load_config(CONFIGS / config_name, ["MODEL.BACKBONE.PRETRAINED", "False", *opts])
    return build_detection_model(cfg)


def one_box_target(label: int = 3) -> dict[str, torch.Tensor]:
    return {"boxes_norm": torch.tensor([[0.1, 0.2, 0.5, 0.7]]), "labels": torch.tensor([label])}


def no_box_target() -> dict[str, torch.Tensor]:
    return {"boxes_norm": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}


def test_every_backbone_has_a_smoke_config():
    assert set(BACKBONES) == set(SMOKE_CONFIGS)
    assert {"SSDBoxPredictor", "SSDLiteBoxPredictor"} <= set(BOX_PREDICTORS)


@pytest.mark.parametrize(
    ("backbone", "predictor"), list(itertools.product(sorted(BACKBONES), sorted(BOX_PREDICTORS)))
)
def test_smoke_forward_backward(backbone, predictor):
    """Every backbone with every predictor: a training step gives finite losses and a gradient for every
    parameter (a layer built but never used would have none)."""
    opts = ("MODEL.BOX_HEAD.PREDICTOR", predictor, *small_opts(backbone))
    model = build(SMOKE_CONFIGS[backbone], *opts).train()
    image_size = load_config(CONFIGS / SMOKE_CONFIGS[backbone], opts).INPUT.IMAGE_SIZE
    # BatchNorm on a 1x1 map needs more than one image in training mode; VGG has no BN, and is slow on CPU.
    batch = 1 if backbone == "vgg" else 2
    images = torch.randn(batch, 3, image_size, image_size) * 50
    losses = model(images, [one_box_target(label=i + 1) for i in range(batch)])
    assert set(losses) == {"reg_loss", "cls_loss"}
    assert all(v.ndim == 0 and torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None]
    assert no_grad == []


def test_eval_output_format_in_original_pixels():
    model = build("mobilenet_v2_ssd320_voc0712.yaml", *SMALL_MOBILENET).eval()
    sizes = [(480, 640), (200, 150)]
    with torch.no_grad():
        detections = model(torch.randn(2, 3, 128, 128) * 50, image_sizes=sizes)
    assert len(detections) == 2
    for det, (height, width) in zip(detections, sizes, strict=True):
        assert set(det) == {"boxes", "labels", "scores"}
        k = det["boxes"].shape[0]
        assert 0 < k <= 100
        assert det["boxes"].shape == (k, 4) and det["boxes"].dtype == torch.float32
        assert det["labels"].shape == (k,) and det["labels"].dtype == torch.int64
        assert det["scores"].shape == (k,) and det["scores"].dtype == torch.float32
        assert ((det["labels"] >= 1) & (det["labels"] <= 20)).all()
        assert (det["scores"][:-1] >= det["scores"][1:]).all()
        boxes = det["boxes"]
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= height).all()
    # The default image size is the network input.
    with torch.no_grad():
        (det,) = model(torch.randn(1, 3, 128, 128) * 50)
    assert det["boxes"].max() <= 128


def test_zero_box_images_in_a_batch():
    """An image without boxes is valid: it adds nothing to the loss, and a batch of only such images gives
    zero (not NaN) losses that still backpropagate."""
    model = build("mobilenet_v2_ssd320_voc0712.yaml", *SMALL_MOBILENET)
    images = torch.randn(2, 3, 128, 128) * 50
    mixed = model(images, [one_box_target(), no_box_target()])
    # BatchNorm in train mode mixes the batch, so compare in eval mode (the validation-loss path).
    model.eval()
    with torch.no_grad():
        mixed_eval = model(images, [one_box_target(), no_box_target()])
        alone_eval = model(images[:1], [one_box_target()])
    assert all(torch.isfinite(v) and v > 0 for v in mixed.values())
    torch.testing.assert_close(mixed_eval, alone_eval)

    model.train()
    empty = model(images, [no_box_target(), no_box_target()])
    assert all(v.item() == 0 for v in empty.values())
    sum(empty.values()).backward()


def test_losses_and_detections_are_those_of_the_parts_from_one_pass():
    """Validation's one pass: the loss and the detections equal those computed from the network's outputs
    with the matching, the loss and the post-processor called by hand."""
    from ssd.modeling.box_coder import match_and_encode_batch

    model = build("mobilenet_v2_ssd320_voc0712.yaml", *SMALL_MOBILENET).eval()
    images, sizes = torch.randn(2, 3, 128, 128) * 50, [(480, 640), (200, 150)]
    targets = [one_box_target(3), no_box_target()]
    with torch.no_grad():
        losses, detections = model.losses_and_detections(images, targets, image_sizes=sizes)
        cls_logits, offsets = model.predict_raw(images)
        target_offsets, target_labels = match_and_encode_batch(
            targets, model.priors_cxcywh, model.iou_threshold, model.center_variance, model.size_variance
        )
        expected_losses = model.loss(cls_logits, offsets, target_labels, target_offsets)
        expected_detections = model.postprocessor(cls_logits, offsets, model.priors_cxcywh, sizes)
    torch.testing.assert_close(losses, expected_losses)
    torch.testing.assert_close(detections, expected_detections)
    assert losses["reg_loss"] > 0 and len(detections) == 2


def test_model_api():
    model = build("mobilenet_v3_ssd320_voc0712.yaml", *SMALL_MOBILENET).eval()
    num_priors = (8 * 8 + 4 * 4 + 2 * 2 + 1 + 1 + 1) * 6
    assert model.priors_cxcywh.shape == (num_priors, 4)
    assert "priors_cxcywh" not in model.state_dict()  # non-persistent: rebuilt from the config
    assert "priors_cxcywh" in dict(model.named_buffers())  # but moved by .to(device)
    with torch.no_grad():
        cls_logits, offsets = model.predict_raw(torch.randn(2, 3, 128, 128))
    assert cls_logits.shape == (2, num_priors, 21) and offsets.shape == (2, num_priors, 4)
    with pytest.raises(ValueError, match="INPUT.IMAGE_SIZE"), torch.no_grad():
        model.predict_raw(torch.randn(1, 3, 160, 160))


class _Constant(nn.Module):
    """A stand-in head that returns a fixed (1, A * K, H, W) tensor whatever its input."""

    def __init__(self, value: torch.Tensor):
        super().__init__()
        self.register_buffer("value", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value


def test_predictor_output_order_is_level_row_column_anchor():
    """Golden layout: channel a * K + k at (y, x) of level l is row (offset_l + (y * W + x) * A + a), column k."""
    num_classes, levels = 3, [(2, 3), (1, 2)]  # (H == W side, anchors A)
    cls_heads, reg_heads, expected_cls, expected_reg = [], [], [], []
    for level, (side, anchors) in enumerate(levels):
        y, x, a, k = torch.meshgrid(
            torch.arange(side),
            torch.arange(side),
            torch.arange(anchors),
            torch.arange(num_classes),
            indexing="ij",
        )
        code = 1000 * level + 100 * y + 10 * x + a + k / 10  # (H, W, A, K), unique per entry
        cls_heads.append(_Constant(code.reshape(1, side, side, anchors * num_classes).permute(0, 3, 1, 2)))
        expected_cls.append(code.reshape(-1, num_classes))
        reg_code = code[..., :1].expand(-1, -1, -1, 4) + torch.arange(4) / 100  # (H, W, A, 4)
        reg_heads.append(_Constant(reg_code.reshape(1, side, side, anchors * 4).permute(0, 3, 1, 2)))
        expected_reg.append(reg_code.reshape(-1, 4))
    predictor = BoxPredictor(cls_heads, reg_heads, num_classes)
    cls_logits, offsets = predictor([torch.zeros(1, 1, s, s) for s, _ in levels])
    assert cls_logits.shape == (1, 2 * 2 * 3 + 1 * 1 * 2, num_classes)
    torch.testing.assert_close(cls_logits[0], torch.cat(expected_cls))
    torch.testing.assert_close(offsets[0], torch.cat(expected_reg))


def test_ssdlite_predictor_layout():
    predictor = build_ssdlite_predictor([96, 64], [6, 4], num_classes=21)
    first, last = predictor.cls_heads
    assert isinstance(first, SeparableConv2d) and first.depthwise.groups == 96
    assert first.pointwise.out_channels == 6 * 21 and first.pointwise.kernel_size == (1, 1)
    assert isinstance(last, nn.Conv2d) and last.kernel_size == (1, 1) and last.out_channels == 4 * 21
    assert predictor.reg_heads[0].pointwise.out_channels == 6 * 4


def test_l2norm_gives_per_channel_scale():
    layer = L2Norm(4, scale=20.0)
    out = layer(torch.randn(2, 4, 3, 3) * 7)
    torch.testing.assert_close(out.norm(dim=1), torch.full((2, 3, 3), 20.0))
    assert torch.isfinite(layer(torch.zeros(1, 4, 2, 2))).all()  # eps guards an all-zero position


@pytest.mark.parametrize(
    ("config_name", "expected"),
    [
        ("vgg_ssd300_voc0712.yaml", [(512, 38), (1024, 19), (512, 10), (256, 5), (256, 3), (256, 1)]),
        (
            "vgg_ssd512_voc0712.yaml",
            [(512, 64), (1024, 32), (512, 16), (256, 8), (256, 4), (256, 2), (256, 1)],
        ),
        ("mobilenet_v2_ssd320_voc0712.yaml", [(96, 20), (1280, 10), (512, 5), (256, 3), (256, 2), (64, 1)]),
        ("mobilenet_v3_ssd320_voc0712.yaml", [(112, 20), (960, 10), (512, 5), (256, 3), (256, 2), (64, 1)]),
    ],
)
def test_feature_map_shapes_match_lufficc(config_name, expected):
    model = build(config_name)
    shapes = feature_map_shapes(model.backbone, load_config(CONFIGS / config_name).INPUT.IMAGE_SIZE)
    assert shapes == [(c, s, s) for c, s in expected]


def seven_level_opts(stride8_channels: int, plain_channels: list[int]) -> tuple[str, ...]:
    """Overrides that add the stride-8 map (40 x 40 at 320) in front of a MobileNet's six levels."""
    return (
        "MODEL.BACKBONE.STRIDE8_MAP", "True",
        "MODEL.BACKBONE.OUT_CHANNELS", str(tuple([stride8_channels, *plain_channels])),
        "MODEL.PRIORS.FEATURE_MAPS", "[40, 20, 10, 5, 3, 2, 1]",
        "MODEL.PRIORS.STRIDES", "[8, 16, 32, 64, 107, 160, 320]",
        "MODEL.PRIORS.MIN_SIZES", "[20, 60, 105, 150, 195, 240, 285]",
        "MODEL.PRIORS.MAX_SIZES", "[60, 105, 150, 195, 240, 285, 330]",
        "MODEL.PRIORS.ASPECT_RATIOS", "[[2], [2, 3], [2, 3], [2, 3], [2, 3], [2, 3], [2, 3]]",
        "MODEL.PRIORS.BOXES_PER_LOCATION", "[4, 6, 6, 6, 6, 6, 6]",
    )  # fmt: skip


@pytest.mark.parametrize(
    "config_name, stride8_channels",
    [("mobilenet_v2_ssd320_voc0712.yaml", 32), ("mobilenet_v3_ssd320_voc0712.yaml", 40)],
)
def test_stride8_map_adds_a_first_level_and_no_parameters(config_name, stride8_channels):
    plain = build(config_name).backbone
    model = build(config_name, *seven_level_opts(stride8_channels, plain.out_channels)).eval()
    shapes = feature_map_shapes(model.backbone, 320)
    assert shapes[0] == (stride8_channels, 40, 40)
    assert shapes[1:] == feature_map_shapes(plain, 320)  # the six usual maps follow unchanged
    # The tap reuses an existing block: the backbone's state dict (and ImageNet / lufficc loading) is the same.
    assert model.backbone.state_dict().keys() == plain.state_dict().keys()
    images = torch.randn(1, 3, 320, 320)
    features = model.backbone(images)
    with torch.no_grad():
        expected = model.backbone.features[:7](images)  # features[0..6]
    torch.testing.assert_close(features[0], expected)
    cls_logits, _ = model.predict_raw(images)
    # 4 priors per cell on the 40 x 40 map, then 6 per cell on the maps of 20, 10, 5, 3, 2 and 1.
    assert cls_logits.shape[1] == 40 * 40 * 4 + 6 * (400 + 100 + 25 + 9 + 4 + 1) == 9634


@pytest.mark.parametrize(
    "config_name, expansion_channels, expansion_modules",
    [("mobilenet_v2_ssd320_voc0712.yaml", 192, 1), ("mobilenet_v3_ssd320_voc0712.yaml", 240, 3)],
)
def test_stride8_expansion_source_taps_the_first_stride16_blocks_expansion(
    config_name, expansion_channels, expansion_modules
):
    """STRIDE8_SOURCE "expansion": the first map is the 1x1 expansion (conv, BN, activation) of features[7],
    32 x 6 = 192 (V2) or 40 x 6 = 240 (V3) channels at 40 x 40; the other six maps are the plain model's,
    value for value, with the same weights, and the state dict has the same keys."""
    plain = build(config_name).backbone.eval()
    opts = seven_level_opts(expansion_channels, plain.out_channels)
    backbone = build(config_name, *opts, "MODEL.BACKBONE.STRIDE8_SOURCE", "expansion").backbone.eval()
    assert backbone.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(backbone.state_dict())
    images = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        features = backbone(images)
        x = backbone.features[:7](images)
        for module in backbone.features[7].conv[:expansion_modules]:
            x = module(x)
        plain_features = plain(images)
    assert features[0].shape == (1, expansion_channels, 40, 40)
    torch.testing.assert_close(features[0], x)
    for got, expected in zip(features[1:], plain_features, strict=True):
        torch.testing.assert_close(got, expected)


def test_unknown_stride8_source_names_the_key():
    with pytest.raises(ConfigError, match="MODEL.BACKBONE.STRIDE8_SOURCE.*'expanded'"):
        load_config(
            CONFIGS / "mobilenet_v2_ssd320_voc0712.yaml", ["MODEL.BACKBONE.STRIDE8_SOURCE", "expanded"]
        )


def test_stride8_map_on_vgg_names_the_key():
    with pytest.raises(ConfigError, match="MODEL.BACKBONE.STRIDE8_MAP.*'vgg'.*conv4_3"):
        build("vgg_ssd300_voc0712.yaml", "MODEL.BACKBONE.STRIDE8_MAP", "True")


def test_wrong_out_channels_names_the_key():
    with pytest.raises(ConfigError, match=r"MODEL.BACKBONE.OUT_CHANNELS = \[96, 1280, 512, 256, 256, 32\]"):
        build(
            "mobilenet_v2_ssd320_voc0712.yaml", "MODEL.BACKBONE.OUT_CHANNELS", "(96, 1280, 512, 256, 256, 32)"
        )


def test_wrong_feature_maps_names_the_key():
    with pytest.raises(ConfigError, match=r"MODEL.PRIORS.FEATURE_MAPS = \[19, 10, 5, 3, 2, 1\].*\[20, 10, 5"):
        build("mobilenet_v2_ssd320_voc0712.yaml", "MODEL.PRIORS.FEATURE_MAPS", "[19, 10, 5, 3, 2, 1]")
    with pytest.raises(ConfigError, match="produces 6 feature maps but MODEL.PRIORS.FEATURE_MAPS has 7"):
        build("vgg_ssd512_voc0712.yaml", "INPUT.IMAGE_SIZE", "300")


def test_unknown_backbone_lists_the_registered_ones():
    with pytest.raises(KeyError, match="mobilenet_v2"):
        build("vgg_ssd300_voc0712.yaml", "MODEL.BACKBONE.NAME", "resnet50")


# Output stride of each of the first trunk layers, from the architectures' tables (MobileNetV2 paper Table 2:
# the stem and the first bottleneck at stride 2, two blocks at 4, three at 8; VGG16: two convs with ReLUs at
# stride 1, pool1, two convs with ReLUs at 2, pool2). A frozen prefix ends before the first stride-8 layer.
@pytest.mark.parametrize(
    ("backbone", "first_strides", "frozen_at_4"),
    [
        ("mobilenet_v2", [2, 2, 4, 4, 8, 8, 8], 4),
        ("mobilenet_v3", [2, 2, 4, 4, 8, 8, 8], 4),
        ("vgg", [1, 1, 1, 1, 2, 2, 2, 2, 2, 4], 16),  # conv1_1 .. relu3_3: pool3 is the first stride-8 layer
    ],
)
def test_trunk_output_strides_and_frozen_prefix(backbone, first_strides, frozen_at_4):
    model = build(SMOKE_CONFIGS[backbone], *small_opts(backbone))
    strides = model.backbone.trunk_output_strides()
    assert strides[: len(first_strides)] == first_strides
    assert model.backbone.freeze_to_stride(4) == frozen_at_4
    assert strides[frozen_at_4 - 1] == 4 and strides[frozen_at_4] == 8


def test_frozen_layers_keep_weights_and_batchnorm_statistics_through_training():
    """MODEL.BACKBONE.FREEZE_TO_STRIDE 4 on MobileNetV2: after optimizer steps in train mode, the stem and the
    stride-4 blocks (features[0:4]) hold exactly their initial weights and BatchNorm running statistics, while
    the next block and the heads change; the state dict has the same keys as an unfrozen model's."""
    cfg_opts = (*SMALL_MOBILENET, "MODEL.BACKBONE.FREEZE_TO_STRIDE", "4")
    model = build(SMOKE_CONFIGS["mobilenet_v2"], *cfg_opts).train()
    trunk = model.backbone.features
    assert [layer.training for layer in trunk[:5]] == [False, False, False, False, True]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        images = torch.randn(2, 3, 128, 128) * 50
        losses = model(images, [one_box_target(), one_box_target(label=2)])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    frozen_keys = {
        k for k in before if k.split(".")[:2] in (["backbone", "features"],) and int(k.split(".")[2]) < 4
    }
    assert frozen_keys and not (frozen_keys & changed)
    assert "backbone.features.4.conv.0.0.weight" in changed  # the first stride-8 block trains
    assert "backbone.features.4.conv.0.1.running_mean" in changed  # and its BatchNorm follows the batches
    assert any(k.startswith("predictor.") for k in changed)
    assert all(p.grad is None for p in trunk[:4].parameters())
    assert set(after) == set(build(SMOKE_CONFIGS["mobilenet_v2"], *SMALL_MOBILENET).state_dict())


def test_negative_freeze_to_stride_names_the_key():
    with pytest.raises(ConfigError, match="MODEL.BACKBONE.FREEZE_TO_STRIDE"):
        build(SMOKE_CONFIGS["mobilenet_v2"], *SMALL_MOBILENET, "MODEL.BACKBONE.FREEZE_TO_STRIDE", "-1")
