"""The fast inference path: a frozen copy of a detector with BatchNorm folded into the convs, channels-last
memory and, optionally, `torch.compile`.

    fast = optimize_for_inference(model)          # `model` itself is left untouched
    with torch.inference_mode():
        detections = fast(images, image_sizes=sizes)

What each step buys (measured on CPU, see BENCHMARKS.md):

- BatchNorm folding. In eval mode BN is a per-channel affine map y = gamma * (x - mean) / sqrt(var + eps)
  + beta, so the conv before it can absorb it: scale each output filter by s = gamma / sqrt(var + eps) and
  set the bias to (b - mean) * s + beta. One pass over the activations fewer per BN (MobileNets and the
  SSDLite heads; VGG has no BN).
- Channels-last (NHWC). oneDNN, which runs convs on CPU, computes in a blocked channels-last layout; with
  NCHW tensors every conv converts its input and output. With NHWC weights and input the data stays in
  that layout, and the predictor's NCHW -> NHWC permute becomes free.
- `torch.compile` (inductor) fuses the pointwise ops between convs. It costs a compile on the first call
  (tens of seconds) and a C++ compiler; whether it pays off on a CPU has to be measured.

Pre-NMS top-k per class is a post-processing setting, TEST.MAX_PER_CLASS (`PostProcessor.max_per_class`).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A new conv computing bn(conv(x)) with BN in eval mode (running statistics). Inputs are not modified.

    Args:
        conv: (O, I/groups, kh, kw) weight, optional (O,) bias.
        bn: O channels, with running statistics.
    """
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "fold_batchnorm needs a BatchNorm with running statistics (track_running_stats=True)"
        )
    if conv.out_channels != bn.num_features:
        raise ValueError(f"conv has {conv.out_channels} output channels but BatchNorm has {bn.num_features}")
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)  # (O,)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale  # (O,)
        if bn.bias is not None:
            shift = shift + bn.bias
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        fused.weight = nn.Parameter(conv.weight * scale.view(-1, 1, 1, 1))  # (O, 1, 1, 1) scales each filter
        fused.bias = nn.Parameter(bias * scale + shift)
    return fused


def fuse_conv_bn_(module: nn.Module) -> int:
    """Fold, in place, every BatchNorm2d that directly follows a Conv2d inside an nn.Sequential.

    The BN is replaced by nn.Identity, so the indices of the following layers (and the state-dict keys of
    the convs) do not shift. This covers our backbones and heads: every BN sits right after its conv in a
    Sequential (ConvBNReLU6, the inverted residuals, SeparableConv2d). Returns the number of BNs folded.
    """
    folded = 0
    for child in module.modules():
        if not isinstance(child, nn.Sequential):
            continue
        names = list(child._modules)
        for previous, name in zip(names, names[1:], strict=False):
            conv, bn = child._modules[previous], child._modules[name]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                child._modules[previous] = fold_batchnorm(conv, bn)
                child._modules[name] = nn.Identity()
                folded += 1
    return folded


def _to_channels_last(module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Forward pre-hook: the images (N, 3, S, S) enter the backbone as channels-last (same shape)."""
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


def optimize_for_inference(
    model: nn.Module, fuse_bn: bool = True, channels_last: bool = True, compile: bool = False
) -> nn.Module:
    """A copy of an SSDDetector made for inference; `model` is not modified.

    The copy is in eval mode with gradients off (run it under `torch.inference_mode()`); its outputs equal
    the model's in eval mode up to float rounding (BN folding reorders the arithmetic, ~1e-6 relative).
    It can no longer be trained: folded BNs are gone.

    Args:
        model: an SSDDetector (anything with `backbone` and `predictor` submodules).
        fuse_bn: fold every BatchNorm that follows a conv into that conv.
        channels_last: NHWC weights, and images converted to NHWC as they enter the backbone.
        compile: `torch.compile` the backbone and the predictor (the first call compiles).
    """
    fast = copy.deepcopy(model).eval()
    for parameter in fast.parameters():
        parameter.requires_grad_(False)
    if fuse_bn:
        fuse_conv_bn_(fast)
    if channels_last:
        fast.to(memory_format=torch.channels_last)
        fast.backbone.register_forward_pre_hook(_to_channels_last)
    if compile:
        # Module.compile compiles in place, so the state-dict keys stay those of the model.
        fast.backbone.compile()
        fast.predictor.compile()
    return fast
