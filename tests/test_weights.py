"""Weights: ImageNet backbones through the torch hub cache, fine-tuning checkpoints, and the converters of
torchvision's ssd300_vgg16 and lufficc/SSD checkpoints (built locally from their documented keys)."""

from __future__ import annotations

import sys
import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision
from torchvision.models.detection.image_list import ImageList

from ssd.config import load_config
from ssd.modeling import build_detection_model
from ssd.modeling.backbone.mobilenet_v2 import MobileNetV2SSD, build_mobilenet_v2
from ssd.modeling.backbone.mobilenet_v3 import build_mobilenet_v3
from ssd.modeling.backbone.vgg import build_vgg
from ssd.modeling.weights import (
    COCO_CATEGORY_IDS,
    PRETRAINED_URLS,
    WeightsError,
    convert_lufficc,
    convert_torchvision_ssd300_vgg16,
    load_model_weights,
    load_pretrained_backbone,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = REPO_ROOT / "configs"
sys.path.insert(0, str(REPO_ROOT / "tools"))
import convert_weights  # noqa: E402


def build(config_name: str, *opts: str):
    torch.manual_seed(0)
    return build_detection_model(
        load_config(CONFIGS / config_name, ["MODEL.BACKBONE.PRETRAINED", "False", *opts])
    )


# ----- ImageNet backbones -----------------------------------------------------------------------------


def test_pretrained_mobilenet_v2_matches_every_backbone_key(seeded_torch_home, mobilenet_v2_weights):
    """The real torchvision ImageNet file, from the seeded hub cache: every non-extras key is loaded."""
    backbone = MobileNetV2SSD()
    report = load_pretrained_backbone(backbone, "mobilenet_v2")
    own_keys = list(backbone.state_dict())
    features = [k for k in own_keys if not k.startswith("extras.")]
    assert sorted(report.loaded) == sorted(features)
    assert report.missing and all(k.startswith("extras.") for k in report.missing)
    assert report.unexpected == [] and report.shape_mismatch == {}

    imagenet = torch.load(mobilenet_v2_weights, weights_only=True)
    built = build_detection_model(
        load_config(CONFIGS / "mobilenet_v2_ssd320_voc0712.yaml")
    )  # PRETRAINED True
    for key in ("features.0.0.weight", "features.13.conv.1.0.weight", "features.18.1.running_var"):
        torch.testing.assert_close(built.backbone.state_dict()[key], imagenet[key], rtol=0, atol=0)


def _put_in_hub_cache(torch_home: Path, url: str, state_dict: dict) -> None:
    checkpoints = torch_home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, checkpoints / url.rsplit("/", 1)[-1])


def test_pretrained_vgg_file_layout_is_mapped(tmp_path, monkeypatch):
    """amdegroot's vgg16_reducedfc.pth holds 30 tensors keyed by layer index (reference sec. 4.4)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    convs = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
             17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512),
             31: (1024, 512)}  # fmt: skip
    fake = {}
    for index, (out_c, in_c) in convs.items():
        fake[f"{index}.weight"], fake[f"{index}.bias"] = torch.randn(out_c, in_c, 3, 3), torch.randn(out_c)
    fake["33.weight"], fake["33.bias"] = torch.randn(1024, 1024, 1, 1), torch.randn(1024)
    _put_in_hub_cache(tmp_path, PRETRAINED_URLS["vgg"], fake)
    backbone = build_vgg(300, pretrained=True)
    torch.testing.assert_close(backbone.vgg.conv4_3.weight, fake["21.weight"], rtol=0, atol=0)
    torch.testing.assert_close(backbone.vgg.conv6.weight, fake["31.weight"], rtol=0, atol=0)
    torch.testing.assert_close(backbone.vgg.conv7.bias, fake["33.bias"], rtol=0, atol=0)


def test_pretrained_mobilenet_v3_loads_the_last_conv_that_lufficc_missed(tmp_path, monkeypatch):
    """d-li14's file stores the last 1x1 conv as `conv.*`; it must land in features[16]."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = build_mobilenet_v3(320, pretrained=False)
    fake = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    fake = {k: v for k, v in fake.items() if k.startswith("features.") and not k.startswith("features.16.")}
    fake["conv.0.weight"] = torch.randn(960, 160, 1, 1)
    for name in ("weight", "bias", "running_mean", "running_var"):
        fake[f"conv.1.{name}"] = torch.rand(960)
    fake["classifier.0.weight"] = torch.randn(1280, 960)
    _put_in_hub_cache(tmp_path, PRETRAINED_URLS["mobilenet_v3"], fake)
    backbone = build_mobilenet_v3(320, pretrained=True)
    torch.testing.assert_close(backbone.features[16][0].weight, fake["conv.0.weight"], rtol=0, atol=0)
    torch.testing.assert_close(
        backbone.features[16][1].running_var, fake["conv.1.running_var"], rtol=0, atol=0
    )
    torch.testing.assert_close(
        backbone.features[4].conv[5].fc[0].weight, fake["features.4.conv.5.fc.0.weight"]
    )


def test_offline_without_cached_file_names_url_and_cache_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsError) as info:
        build_mobilenet_v2(320, pretrained=True)
    message = str(info.value)
    assert PRETRAINED_URLS["mobilenet_v2"] in message
    assert str(tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth") in message
    assert "\n" not in message


def test_corrupt_cached_file_is_named(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "vgg16_reducedfc.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match=str(cached)):
        build_vgg(300, pretrained=True)


# ----- fine-tuning checkpoints ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voc_checkpoint(tmp_path_factory) -> tuple[Path, dict]:
    """A 21-class MobileNetV2 SSDLite checkpoint in the training-checkpoint format ({"model": ...})."""
    state_dict = build("mobilenet_v2_ssd320_voc0712.yaml").state_dict()
    path = tmp_path_factory.mktemp("ckpt") / "model_final.pth"
    torch.save({"model": state_dict, "iteration": 10}, path)
    return path, state_dict


def test_fine_tuning_skips_heads_of_another_class_count(voc_checkpoint):
    path, saved = voc_checkpoint
    model = build("mobilenet_v2_ssd320_voc0712.yaml", "MODEL.NUM_CLASSES", "31")
    report = load_model_weights(model, path)
    expected = [
        f"predictor.cls_heads.{i}.{kind}" for i in range(5) for kind in ("pointwise.weight", "pointwise.bias")
    ]
    expected += ["predictor.cls_heads.5.weight", "predictor.cls_heads.5.bias"]
    assert sorted(report.shape_mismatch) == sorted(expected)
    assert report.missing == [] and report.unexpected == []
    own = model.state_dict()
    torch.testing.assert_close(
        own["backbone.features.5.conv.1.0.weight"], saved["backbone.features.5.conv.1.0.weight"]
    )
    torch.testing.assert_close(
        own["predictor.reg_heads.0.pointwise.weight"], saved["predictor.reg_heads.0.pointwise.weight"]
    )
    # A separable head's depthwise conv and BN do not depend on the class count: they are loaded too.
    torch.testing.assert_close(
        own["predictor.cls_heads.0.depthwise.weight"], saved["predictor.cls_heads.0.depthwise.weight"]
    )


def test_strict_load_with_wrong_num_classes_names_the_key(voc_checkpoint):
    path, _ = voc_checkpoint
    model = build("mobilenet_v2_ssd320_voc0712.yaml", "MODEL.NUM_CLASSES", "31")
    with pytest.raises(WeightsError) as info:
        load_model_weights(model, path, strict=True)
    message = str(info.value)
    assert "predictor.cls_heads.0.pointwise.weight" in message and str(path) in message
    assert "21 classes" in message and "MODEL.NUM_CLASSES is 31" in message
    assert "\n" not in message


def test_raw_state_dict_and_strict_success(voc_checkpoint, tmp_path):
    _, saved = voc_checkpoint
    raw = tmp_path / "raw.pth"
    torch.save(saved, raw)
    model = build("mobilenet_v2_ssd320_voc0712.yaml")
    report = load_model_weights(model, raw, strict=True)
    assert len(report.loaded) == len(saved) == 478


def test_missing_and_corrupt_checkpoints_are_named(tmp_path):
    model = build("mobilenet_v2_ssd320_voc0712.yaml", "MODEL.BACKBONE.WIDTH_MULT", "0.25",
                  "MODEL.BACKBONE.OUT_CHANNELS", "(24, 1280, 128, 64, 64, 16)")  # fmt: skip
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match=f"checkpoint not found: {missing}"):
        load_model_weights(model, missing)
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x80\x02garbage")
    with pytest.raises(WeightsError, match=f"cannot read checkpoint {corrupt}"):
        load_model_weights(model, corrupt)
    not_weights = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_weights)
    with pytest.raises(WeightsError, match="neither a state dict"):
        load_model_weights(model, not_weights)


# ----- torchvision ssd300_vgg16 ----------------------------------------------------------------------


def test_torchvision_ssd300_vgg16_conversion_is_equivalent():
    """Random torchvision weights, converted, give the same head outputs and the same detections."""
    torch.manual_seed(0)
    tv = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None).eval()
    # torchvision's softmax runs over 91 outputs, ours over 81: silence the 10 unused COCO ids (a trained
    # model never predicts them) so both softmaxes see the same classes.
    unused = [i for i in range(1, 91) if i not in COCO_CATEGORY_IDS]
    with torch.no_grad():
        for conv in tv.head.classification_head.module_list:
            conv.bias.view(-1, 91)[:, unused] = -1e4
    tv.detections_per_img = 100  # ours: TEST.MAX_PER_IMAGE 100; torchvision keeps 400 per class before NMS
    ours = build("vgg_ssd300_coco_trainval35k.yaml", "TEST.MAX_PER_CLASS", "400").eval()
    ours.load_state_dict(convert_torchvision_ssd300_vgg16(tv.state_dict()), strict=True)

    # Both take RGB 0..255 minus (123, 117, 104); torchvision's transform (normalise, resize to 300) is
    # bypassed by calling its backbone, head, anchors and post-processing directly on the same tensor.
    images = torch.randn(1, 3, 300, 300) * 40
    with torch.no_grad():
        features = list(tv.backbone(images).values())
        head = tv.head(features)
        anchors = tv.anchor_generator(ImageList(images, [(300, 300)]), features)
        (tv_det,) = tv.postprocess_detections(head, anchors, [(300, 300)])
        cls_logits, offsets = ours.predict_raw(images)
        (det,) = ours(images)

    coco_ids = torch.tensor((0, *COCO_CATEGORY_IDS))  # our label -> torchvision's COCO id
    assert (head["cls_logits"][..., coco_ids] - cls_logits).abs().max() < 1e-4
    assert (head["bbox_regression"] - offsets).abs().max() < 1e-4
    assert len(det["boxes"]) == len(tv_det["boxes"]) == 100
    torch.testing.assert_close(det["boxes"], tv_det["boxes"], rtol=0, atol=1e-3)  # pixels
    torch.testing.assert_close(det["scores"], tv_det["scores"], rtol=0, atol=1e-5)
    assert torch.equal(coco_ids[det["labels"]], tv_det["labels"])


def test_torchvision_converter_rejects_other_keys():
    with pytest.raises(WeightsError, match="backbone.body.conv1.weight"):
        convert_torchvision_ssd300_vgg16({"backbone.body.conv1.weight": torch.zeros(1)})


# ----- lufficc/SSD checkpoints (fakes built from the documented keys and shapes, reference sec. 4) ------


def _fake_lufficc_vgg(image_size: int, num_classes: int) -> dict[str, torch.Tensor]:
    sd = {}
    convs = {0: (64, 3), 2: (64, 64), 5: (128, 64), 7: (128, 128), 10: (256, 128), 12: (256, 256), 14: (256, 256),
             17: (512, 256), 19: (512, 512), 21: (512, 512), 24: (512, 512), 26: (512, 512), 28: (512, 512)}  # fmt: skip
    for index, (out_c, in_c) in convs.items():
        sd[f"backbone.vgg.{index}.weight"], sd[f"backbone.vgg.{index}.bias"] = (
            torch.randn(out_c, in_c, 3, 3),
            torch.randn(out_c),
        )
    sd["backbone.vgg.31.weight"], sd["backbone.vgg.31.bias"] = torch.randn(1024, 512, 3, 3), torch.randn(1024)
    sd["backbone.vgg.33.weight"], sd["backbone.vgg.33.bias"] = (
        torch.randn(1024, 1024, 1, 1),
        torch.randn(1024),
    )
    extras = [(256, 1024, 1), (512, 256, 3), (128, 512, 1), (256, 128, 3), (128, 256, 1), (256, 128, 3), (128, 256, 1),
              (256, 128, 3)] + ([(128, 256, 1), (256, 128, 4)] if image_size == 512 else [])  # fmt: skip
    for i, (out_c, in_c, k) in enumerate(extras):
        sd[f"backbone.extras.{i}.weight"], sd[f"backbone.extras.{i}.bias"] = (
            torch.randn(out_c, in_c, k, k),
            torch.randn(out_c),
        )
    sd["backbone.l2_norm.weight"] = torch.full((512,), 20.0)
    channels = [512, 1024, 512, 256, 256, 256] + ([256] if image_size == 512 else [])
    anchors = [4, 6, 6, 6, 4, 4] if image_size == 300 else [4, 6, 6, 6, 6, 4, 4]
    for kind, per_anchor in (("cls", num_classes), ("reg", 4)):
        for level, (c, a) in enumerate(zip(channels, anchors, strict=True)):
            sd[f"box_head.predictor.{kind}_headers.{level}.weight"] = torch.randn(a * per_anchor, c, 3, 3)
            sd[f"box_head.predictor.{kind}_headers.{level}.bias"] = torch.randn(a * per_anchor)
    return sd


def _bn(prefix: str, channels: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": torch.rand(channels), f"{prefix}.bias": torch.rand(channels),
            f"{prefix}.running_mean": torch.rand(channels), f"{prefix}.running_var": torch.rand(channels),
            f"{prefix}.num_batches_tracked": torch.tensor(5)}  # fmt: skip


def _fake_lufficc_ssdlite_heads(channels: list[int], num_classes: int) -> dict[str, torch.Tensor]:
    sd = {}
    for kind, per_anchor in (("cls", num_classes), ("reg", 4)):
        out_c = 6 * per_anchor
        for level, c in enumerate(channels[:-1]):
            prefix = f"box_head.predictor.{kind}_headers.{level}.conv"
            sd[f"{prefix}.0.weight"], sd[f"{prefix}.0.bias"] = torch.randn(c, 1, 3, 3), torch.randn(c)
            sd.update(_bn(f"{prefix}.1", c))
            sd[f"{prefix}.3.weight"], sd[f"{prefix}.3.bias"] = torch.randn(out_c, c, 1, 1), torch.randn(out_c)
        last = f"box_head.predictor.{kind}_headers.{len(channels) - 1}"
        sd[f"{last}.weight"], sd[f"{last}.bias"] = torch.randn(out_c, channels[-1], 1, 1), torch.randn(out_c)
    return sd


@pytest.mark.parametrize(
    ("config_name", "image_size", "num_classes"),
    [("vgg_ssd300_voc0712.yaml", 300, 21), ("vgg_ssd512_coco_trainval35k.yaml", 512, 81)],
)
def test_lufficc_vgg_conversion(config_name, image_size, num_classes):
    fake = _fake_lufficc_vgg(image_size, num_classes)
    assert len(fake) == (71 if image_size == 300 else 79)  # the documented entry counts
    model = build(config_name)
    model.load_state_dict(convert_lufficc({"model": fake, "iteration": 5}), strict=True)
    own = model.state_dict()
    torch.testing.assert_close(own["backbone.vgg.conv4_3.weight"], fake["backbone.vgg.21.weight"])
    torch.testing.assert_close(own["backbone.vgg.conv6.bias"], fake["backbone.vgg.31.bias"])
    torch.testing.assert_close(own["backbone.extras.conv9_2.weight"], fake["backbone.extras.3.weight"])
    torch.testing.assert_close(
        own["predictor.cls_heads.2.weight"], fake["box_head.predictor.cls_headers.2.weight"]
    )
    if image_size == 512:
        torch.testing.assert_close(own["backbone.extras.conv12_2.weight"], fake["backbone.extras.9.weight"])


def test_lufficc_mobilenet_v2_conversion():
    # Backbone: torchvision's MobileNetV2 features (lufficc's layout, reference sec. 3.2 and 4.2) + extras.
    features = torchvision.models.mobilenet_v2().features.state_dict()
    fake = {f"backbone.features.{k}": v for k, v in features.items()}
    for i, (inp, hidden, out) in enumerate(
        [(1280, 256, 512), (512, 128, 256), (256, 128, 256), (256, 64, 64)]
    ):
        prefix = f"backbone.extras.{i}.conv"
        fake[f"{prefix}.0.0.weight"] = torch.randn(hidden, inp, 1, 1)
        fake.update(_bn(f"{prefix}.0.1", hidden))
        fake[f"{prefix}.1.0.weight"] = torch.randn(hidden, 1, 3, 3)
        fake.update(_bn(f"{prefix}.1.1", hidden))
        fake[f"{prefix}.2.weight"] = torch.randn(out, hidden, 1, 1)
        fake.update(_bn(f"{prefix}.3", out))
    fake.update(_fake_lufficc_ssdlite_heads([96, 1280, 512, 256, 256, 64], 21))
    assert len(fake) == 478  # the documented entry count
    model = build("mobilenet_v2_ssd320_voc0712.yaml")
    model.load_state_dict(convert_lufficc(fake), strict=True)
    own = model.state_dict()
    torch.testing.assert_close(
        own["predictor.cls_heads.1.depthwise.weight"], fake["box_head.predictor.cls_headers.1.conv.0.weight"]
    )
    torch.testing.assert_close(
        own["predictor.reg_heads.4.bn.running_var"],
        fake["box_head.predictor.reg_headers.4.conv.1.running_var"],
    )
    torch.testing.assert_close(
        own["predictor.cls_heads.5.weight"], fake["box_head.predictor.cls_headers.5.weight"]
    )


def test_lufficc_mobilenet_v3_conversion_and_cli(tmp_path):
    """Backbone keys are lufficc's (documented: features.N.conv.{0..8}, SE at conv.5.fc, features.16, 490
    entries in all); the converted checkpoint goes through tools/convert_weights.py."""
    backbone = build_mobilenet_v3(320, pretrained=False).state_dict()
    assert "features.4.conv.5.fc.0.weight" in backbone and "features.16.0.weight" in backbone
    fake = {f"backbone.{k}": torch.randn_like(v) if v.is_floating_point() else v for k, v in backbone.items()}
    fake.update(_fake_lufficc_ssdlite_heads([112, 960, 512, 256, 256, 64], 21))
    assert len(fake) == 490  # the documented entry count
    src, dst = tmp_path / "lufficc_mbv3.pth", tmp_path / "ours.pth"
    torch.save({"model": fake, "optimizer": {}, "iteration": 120000}, src)
    config = str(CONFIGS / "mobilenet_v3_ssd320_voc0712.yaml")
    convert_weights.main(["lufficc", str(src), str(dst), "--config-file", config])
    model = build("mobilenet_v3_ssd320_voc0712.yaml")
    assert len(load_model_weights(model, dst, strict=True).loaded) == 490
    torch.testing.assert_close(model.backbone.features[16][0].weight, fake["backbone.features.16.0.weight"])

    with pytest.raises(SystemExit, match="checkpoint not found"):
        convert_weights.main(["lufficc", str(tmp_path / "nope.pth"), str(dst), "--config-file", config])
    # A VOC checkpoint converted with a COCO config: the mismatch is reported, nothing is written.
    with pytest.raises(SystemExit, match="cls_heads"):
        convert_weights.main(["lufficc", str(src), str(tmp_path / "x.pth"), "--config-file", config,
                              "MODEL.NUM_CLASSES", "81"])  # fmt: skip
    assert not (tmp_path / "x.pth").exists()


def test_lufficc_converter_rejects_efficient_net():
    with pytest.raises(WeightsError, match="backbone._conv_stem.weight"):
        convert_lufficc({"backbone._conv_stem.weight": torch.zeros(1)})
