"""The fast inference path (ssd/modeling/fast.py): folded / channels-last / compiled copies compute what the
reference model computes, and the caller's model is left as it was."""

from __future__ import annotations

import copy
import os
from functools import cache
from pathlib import Path

import pytest
import torch
from torch import nn

from ssd.config import load_config
from ssd.modeling import build_detection_model
from ssd.modeling.fast import fold_batchnorm, fuse_conv_bn_, optimize_for_inference

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# MobileNets at 128 x 128 (maps 8, 4, 2, 1, 1, 1) and width 0.5 keep each forward a few milliseconds.
SMALL = (
    "MODEL.BACKBONE.PRETRAINED", "False",
    "MODEL.BACKBONE.WIDTH_MULT", "0.5",
    "INPUT.IMAGE_SIZE", "128",
    "MODEL.PRIORS.FEATURE_MAPS", "[8, 4, 2, 1, 1, 1]",
    "MODEL.PRIORS.STRIDES", "[16, 32, 64, 128, 128, 128]",
)  # fmt: skip
# OUT_CHANNELS of each backbone at width 0.5 (checked by build_detection_model).
CHANNELS = {
    "mobilenet_v2_ssd320_voc0712.yaml": "(48, 1280, 256, 128, 128, 32)",
    "mobilenet_v3_ssd320_voc0712.yaml": "(56, 480, 256, 128, 128, 32)",
}
TOL = 1e-4


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    """Random affine parameters and running statistics, so folding a BN is not the identity."""
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                c = bn.num_features
                bn.weight.copy_(torch.rand(c, generator=generator) + 0.5)
                bn.bias.copy_(torch.randn(c, generator=generator) * 0.2)
                bn.running_mean.copy_(torch.randn(c, generator=generator) * 0.2)
                bn.running_var.copy_(torch.rand(c, generator=generator) + 0.5)


@cache
def _small_model(config: str) -> nn.Module:
    torch.manual_seed(0)
    cfg = load_config(
        CONFIGS / config,
        [*SMALL, "MODEL.BACKBONE.OUT_CHANNELS", CHANNELS[config], "TEST.CONFIDENCE_THRESHOLD", "0.2"],
    )
    model = build_detection_model(cfg)
    generator = torch.Generator().manual_seed(1)
    randomize_batchnorm(model, generator)
    # Spread the class scores so that some candidates pass the threshold and NMS has work to do.
    with torch.no_grad():
        for head in model.predictor.cls_heads:
            conv = [m for m in head.modules() if isinstance(m, nn.Conv2d)][-1]
            conv.weight.mul_(30.0)
    return model.eval()


def small_model(config: str) -> nn.Module:
    """A fresh copy of the (cached) small model: building and the first oneDNN call take seconds."""
    return copy.deepcopy(_small_model(config))


def images(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 128, 128, generator=torch.Generator().manual_seed(2)) * 50


def assert_same_detections(expected: list[dict], actual: list[dict]) -> None:
    assert len(expected) == len(actual)
    for e, a in zip(expected, actual, strict=True):
        assert e["labels"].shape == a["labels"].shape
        assert torch.equal(e["labels"], a["labels"])
        torch.testing.assert_close(a["scores"], e["scores"], atol=TOL, rtol=0)
        torch.testing.assert_close(a["boxes"], e["boxes"], atol=TOL * 128, rtol=0)  # pixels of a 128 image


def test_fold_batchnorm_matches_conv_then_bn():
    generator = torch.Generator().manual_seed(0)
    for groups, bias in ((1, False), (8, True)):
        conv = nn.Conv2d(8, 16, 3, padding=1, groups=groups, bias=bias)
        bn = nn.BatchNorm2d(16)
        randomize_batchnorm(bn, generator)
        bn.eval()
        x = torch.randn(2, 8, 5, 5, generator=generator)
        weight_before = conv.weight.clone()
        fused = fold_batchnorm(conv, bn)
        torch.testing.assert_close(fused(x), bn(conv(x)), atol=1e-5, rtol=1e-5)
        assert torch.equal(conv.weight, weight_before)  # inputs untouched


def test_fuse_conv_bn_replaces_bn_by_identity():
    seq = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))
    assert fuse_conv_bn_(seq) == 1  # the second BN follows a ReLU, not a conv: kept
    assert isinstance(seq[1], nn.Identity) and isinstance(seq[3], nn.BatchNorm2d)


V2, V3 = sorted(CHANNELS)


# Each folding / layout pair on each MobileNet would be 6 cases of ~5 s (first oneDNN calls); these 5 cover
# folding and channels-last alone and together, on both backbones and both SSDLite heads.
@pytest.mark.parametrize(
    "config, fuse_bn, channels_last",
    [(V2, True, False), (V3, True, False), (V3, False, True), (V2, True, True), (V3, True, True)],
    ids=["v2-fused", "v3-fused", "v3-nhwc", "v2-both", "v3-both"],
)
def test_fast_path_equals_reference(config, fuse_bn, channels_last):
    model = small_model(config)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images()
    with torch.inference_mode():
        ref_logits, ref_offsets = model.predict_raw(x)
        ref_detections = model(x, image_sizes=[(128, 128), (96, 160)])
    fast = optimize_for_inference(model, fuse_bn=fuse_bn, channels_last=channels_last)

    num_bn = sum(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert num_bn == 0 if fuse_bn else num_bn > 0
    # The promised layout: NHWC conv weights, and the images NHWC as they enter the backbone (NCHW without it).
    # Only weights whose two layouts differ count (I > 1 and kh * kw > 1; 1x1 and depthwise are both).
    weights = [
        p for p in fast.parameters() if p.dim() == 4 and p.shape[1] > 1 and p.shape[2] * p.shape[3] > 1
    ]
    assert weights and all(
        p.is_contiguous(memory_format=torch.channels_last) == channels_last for p in weights
    )
    entering = []
    fast.backbone.register_forward_pre_hook(
        lambda module, args: entering.append(args[0].is_contiguous(memory_format=torch.channels_last))
    )  # runs after the fast path's own hook, so it sees what the backbone gets
    with torch.inference_mode():
        logits, offsets = fast.predict_raw(x)
        detections = fast(x, image_sizes=[(128, 128), (96, 160)])
    assert entering == [channels_last, channels_last]
    torch.testing.assert_close(logits, ref_logits, atol=TOL, rtol=0)
    torch.testing.assert_close(offsets, ref_offsets, atol=TOL, rtol=0)
    assert sum(len(d["labels"]) for d in ref_detections) > 0  # the comparison below is not vacuous
    assert_same_detections(ref_detections, detections)

    # The caller's model is unchanged: same modules, same tensors, same layout, still trainable.
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    for key, value in model.state_dict().items():
        assert torch.equal(value, state_before[key]), key
        assert value.is_contiguous(), key
    assert all(p.requires_grad for p in model.parameters())
    assert not model.backbone._forward_pre_hooks


@pytest.mark.skipif(
    os.environ.get("SSD_TEST_COMPILE") != "1",
    reason="torch.compile of even a width-0.5 MobileNet takes ~3 minutes on the 2-core CPU (measured); "
    "run with SSD_TEST_COMPILE=1",
)
def test_compiled_fast_path_equals_reference():
    model = small_model("mobilenet_v2_ssd320_voc0712.yaml")
    x = images(1)
    with torch.inference_mode():
        ref_logits, ref_offsets = model.predict_raw(x)
    fast = optimize_for_inference(model, compile=True)
    with torch.inference_mode():
        logits, offsets = fast.predict_raw(x)
    torch.testing.assert_close(logits, ref_logits, atol=TOL, rtol=0)
    torch.testing.assert_close(offsets, ref_offsets, atol=TOL, rtol=0)


@pytest.mark.parametrize("config", [V2, V3], ids=["v2", "v3"])
def test_channels_last_training_gradients_equal_nchw(config):
    # What SOLVER.CHANNELS_LAST trains: NHWC weights and images. With BatchNorm in eval mode (running
    # statistics) the gradients equal NCHW's to float rounding. In train mode the batch statistics of a random
    # net amplify rounding differences, for either layout (see tests/test_train_e2e.py).
    model = small_model(config)
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = images()
    gradients = []
    for net, batch in ((model, x), (nhwc, x.contiguous(memory_format=torch.channels_last))):
        cls_logits, offsets = net.predict_raw(batch)  # a smooth loss: fixed random weights on every output
        g = torch.Generator().manual_seed(4)
        loss = (cls_logits * torch.randn(cls_logits.shape, generator=g)).sum()
        loss = loss + (offsets * torch.randn(offsets.shape, generator=g)).sum()
        loss.backward()
        gradients.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    reference, channels_last = gradients
    assert ((channels_last - reference).norm() / reference.norm()).item() < 1e-5
