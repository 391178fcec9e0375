"""Model zoo: every entry names a config that builds; entries load and convert from a seeded torch hub cache
(files built locally in the release layouts); no network gives one clear error; load_detector's fallbacks."""

from __future__ import annotations

import re
import urllib.error

import pytest
import torch
import torchvision

from ssd.config import load_config
from ssd.config.loading import ConfigError
from ssd.modeling import build_detection_model
from ssd.modeling.model_zoo import (
    MODEL_ZOO,
    default_class_names,
    get_entry,
    load_detector,
    load_zoo_state_dict,
)
from ssd.modeling.weights import WeightsError


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty TORCH_HOME whose downloads fail loudly: a test that reaches the network fails."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return checkpoints


@pytest.mark.parametrize("name", sorted(MODEL_ZOO))
def test_every_entry_names_an_existing_config_with_matching_classes(name):
    entry = get_entry(name)
    cfg = load_config(entry.config_file)
    assert cfg.MODEL.NUM_CLASSES == len(entry.class_names)
    assert entry.class_names[0] == "__background__"
    if "lufficc" in entry.note:
        assert entry.url == f"https://github.com/lufficc/SSD/releases/download/1.2/{entry.file_name}"
    assert entry.url.endswith(".pth")


def test_release_file_names():
    assert get_entry("mobilenet_v2_ssd320_voc0712").file_name == "mobilenet_v2_ssd320_voc0712_v2.pth"
    assert get_entry("vgg_ssd512_coco_trainval35k").file_name == "vgg_ssd512_coco_trainval35k.pth"
    assert get_entry("torchvision_ssd300_vgg16_coco").file_name == "ssd300_vgg16_coco-b556d3b4.pth"
    with pytest.raises(KeyError, match="vgg_ssd300_voc0712"):
        get_entry("vgg_ssd300")


def _to_lufficc_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our SSDLite MobileNet keys -> lufficc/SSD's (the inverse of `convert_lufficc` for this layout)."""
    parts = {"depthwise": "0", "bn": "1", "pointwise": "3"}
    renamed = {}
    for key, value in state_dict.items():
        if match := re.fullmatch(r"predictor\.(cls|reg)_heads\.(\d+)\.(depthwise|bn|pointwise)\.(.+)", key):
            key = f"box_head.predictor.{match[1]}_headers.{match[2]}.conv.{parts[match[3]]}.{match[4]}"
        elif match := re.fullmatch(r"predictor\.(cls|reg)_heads\.(\d+)\.(weight|bias)", key):
            key = f"box_head.predictor.{match[1]}_headers.{match[2]}.{match[3]}"
        renamed[key] = value
    return renamed


# Random weights put every (prior, class) above the 0.01 threshold; keeping 10 detections makes the
# post-processor's NMS work on 20 candidates per class instead of all of them (seconds for VGG on a CPU).
FAST_TEST = ["MODEL.DEVICE", "cpu", "TEST.MAX_PER_IMAGE", "10"]


def _check_detections(detections: list[dict], num_classes: int, height: int, width: int) -> None:
    (result,) = detections
    boxes, labels, scores = result["boxes"], result["labels"], result["scores"]
    assert boxes.dtype == torch.float32 and boxes.shape == (len(scores), 4)
    assert labels.dtype == torch.int64 and scores.dtype == torch.float32
    assert 0 < len(scores) <= 10  # random weights: softmax over the classes puts every class above 0.01
    assert ((labels >= 1) & (labels < num_classes)).all()
    assert (scores[:-1] >= scores[1:]).all()
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()


def test_lufficc_mobilenet_v2_entry_loads_from_the_cache(hub_cache):
    """A random-weight network saved as lufficc's release file (a training checkpoint) comes back intact."""
    cfg = load_config(
        get_entry("mobilenet_v2_ssd320_voc0712").config_file, ["MODEL.BACKBONE.PRETRAINED", "False"]
    )
    torch.manual_seed(0)
    original = build_detection_model(cfg).state_dict()
    checkpoint = {"model": _to_lufficc_keys(original), "optimizer": {}, "iteration": 120000}
    torch.save(checkpoint, hub_cache / "mobilenet_v2_ssd320_voc0712_v2.pth")

    loaded = load_detector("mobilenet_v2_ssd320_voc0712", opts=FAST_TEST)
    assert loaded.class_names[15] == "person" and len(loaded.class_names) == 21
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, original[key]), key
    with torch.no_grad():
        detections = loaded.model(torch.randn(1, 3, 320, 320) * 50, image_sizes=[(240, 400)])
    _check_detections(detections, 21, 240, 400)


def test_zoo_name_as_fine_tuning_weights(hub_cache):
    """MODEL.WEIGHTS / --ckpt accept a zoo name: a 21-class VOC entry initialises a 4-class model, heads skipped."""
    from ssd.modeling.model_zoo import load_weights

    cfg = load_config(
        get_entry("mobilenet_v2_ssd320_voc0712").config_file, ["MODEL.BACKBONE.PRETRAINED", "False"]
    )
    torch.manual_seed(0)
    original = build_detection_model(cfg).state_dict()
    torch.save({"model": _to_lufficc_keys(original)}, hub_cache / "mobilenet_v2_ssd320_voc0712_v2.pth")

    small = load_config(
        get_entry("mobilenet_v2_ssd320_voc0712").config_file,
        ["MODEL.BACKBONE.PRETRAINED", "False", "MODEL.NUM_CLASSES", "4"],
    )
    model = build_detection_model(small)
    report = load_weights(model, "mobilenet_v2_ssd320_voc0712")
    assert report.shape_mismatch and all("cls_heads" in key for key in report.shape_mismatch)
    key = "backbone.features.0.0.weight"
    assert torch.equal(model.state_dict()[key], original[key])


def test_torchvision_ssd300_vgg16_entry_loads_from_the_cache(hub_cache):
    torch.manual_seed(0)
    reference = torchvision.models.detection.ssd300_vgg16(weights=None, weights_backbone=None)
    torch.save(reference.state_dict(), hub_cache / "ssd300_vgg16_coco-b556d3b4.pth")

    loaded = load_detector("torchvision_ssd300_vgg16_coco", opts=FAST_TEST)
    assert loaded.cfg.MODEL.NUM_CLASSES == 81 and loaded.class_names[1] == "person"
    own = loaded.model.state_dict()
    assert torch.equal(
        own["backbone.vgg.conv4_3.weight"], reference.state_dict()["backbone.features.21.weight"]
    )
    with torch.no_grad():
        detections = loaded.model(torch.randn(1, 3, 300, 300) * 50, image_sizes=[(300, 300)])
    _check_detections(detections, 81, 300, 300)


def test_no_network_and_no_file_gives_one_clear_error(hub_cache):
    with pytest.raises(WeightsError) as err:
        load_zoo_state_dict("vgg_ssd300_voc0712")
    message = str(err.value)
    assert "\n" not in message
    assert "https://github.com/lufficc/SSD/releases/download/1.2/vgg_ssd300_voc0712.pth" in message
    assert str(hub_cache / "vgg_ssd300_voc0712.pth") in message


def test_foreign_file_in_the_cache_is_named(hub_cache):
    torch.save({"model": {"head.weird.weight": torch.zeros(1)}}, hub_cache / "vgg_ssd300_voc0712.pth")
    with pytest.raises(WeightsError, match=r"vgg_ssd300_voc0712\.pth.*head\.weird\.weight"):
        load_zoo_state_dict("vgg_ssd300_voc0712")


def test_checkpoint_without_config_and_wrong_network_are_refused(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"model": {"x": torch.zeros(1)}}, path)
    with pytest.raises(ConfigError, match="--config-file"):
        load_detector(path)
    shapes = "configs/shapes_mobilenet_v2_ssdlite.yaml"
    with pytest.raises(WeightsError, match="does not fit"):
        load_detector(path, shapes)
    with pytest.raises(WeightsError, match="checkpoint not found"):
        load_detector(tmp_path / "missing.pth", shapes)


def test_default_class_names():
    assert default_class_names(load_config("configs/vgg_ssd300_voc0712.yaml"))[1] == "aeroplane"
    assert default_class_names(load_config("configs/vgg_ssd512_coco_trainval35k.yaml"))[80] == "toothbrush"
    assert default_class_names(load_config("configs/shapes_mobilenet_v2_ssdlite.yaml"))[1:] == (
        "circle",
        "square",
        "triangle",
    )
    cfg = load_config(None, ["MODEL.NUM_CLASSES", "3"])
    assert default_class_names(cfg) == ("__background__", "class 1", "class 2")
