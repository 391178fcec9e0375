"""Helpers shared by the model benchmarks: interleaved timing, FLOP counting, the machine's matmul peak,
the model pairs (ours and torchvision's peer) and a realistic score distribution for random weights.

Timing on a shared machine: other processes steal cores at random moments, so two models timed one after
the other can differ by 2x for no reason of their own. Every benchmark here runs the contenders
round-robin (A, B, C, A, B, C, ...) and reports the median of each; ratios come from the same run.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ssd.config import load_config
from ssd.modeling import build_detection_model
from ssd.modeling.detector import SSDDetector

REPO_ROOT = Path(__file__).resolve().parents[1]

# (label, our config, extra config options, torchvision builder name). The MobileNetV3 config is a VOC one
# (21 classes); it is built here with 81 classes so both pairs compare COCO-sized heads (the torchvision
# models have 91 outputs: COCO ids with gaps). GFLOPs are printed next to every time so the difference in
# head size stays visible.
PAIRS = {
    "vgg300": ("vgg_ssd300_coco_trainval35k.yaml", (), "ssd300_vgg16"),
    "mbv3_320": (
        "mobilenet_v3_ssd320_voc0712.yaml",
        ("MODEL.NUM_CLASSES", "81"),
        "ssdlite320_mobilenet_v3_large",
    ),
}
IMAGE_SIZES = {"vgg300": 300, "mbv3_320": 320}


# ----- machine and timing -----------------------------------------------------------------------------------


def setup_threads(threads: int) -> None:
    """Same intra-op thread count for every contender (and the matmul peak)."""
    torch.set_num_threads(threads)


def interleaved_times(
    fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call of each function, called round-robin `repeats` times after `warmup` rounds."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values)


def count_gflops(fn: Callable[[], object]) -> float:
    """GFLOPs of one call, counted by torch's FlopCounterMode (a multiply-add counts 2 FLOPs).

    torchvision's model table ("GFLOPS" 34.86 for ssd300_vgg16) counts multiply-adds, so its numbers are
    about half of these.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def measure_peak_gflops(repeats: int = 5) -> dict[str, float]:
    """fp32 GEMM rate (GFLOP/s) at the current thread count, best of `repeats`.

    Two GEMMs of the same size (2048 x 2048 x 2048 multiply-adds): `torch.matmul` (MKL's sgemm) and a 1x1
    convolution in channels-last, which is the same GEMM run by oneDNN, the library that runs our convs.
    The peak is the faster of the two: on AMD CPUs MKL may not pick its AVX-512 kernels while oneDNN does,
    so matmul alone can understate what the machine does.
    """
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    conv = nn.Conv2d(n, n, 1, bias=False).to(memory_format=torch.channels_last)
    pixels = torch.randn(1, n, 32, 64).contiguous(memory_format=torch.channels_last)  # 2048 pixels
    flops = 2.0 * n**3
    with torch.inference_mode():
        times = interleaved_times({"matmul": lambda: a @ b, "conv1x1": lambda: conv(pixels)}, repeats)
    rates = {name: flops / min(values) / 1e9 for name, values in times.items()}
    rates["peak"] = max(rates.values())
    return rates


# ----- models ----------------------------------------------------------------------------------------------


def build_ours(pair: str) -> SSDDetector:
    """Our detector of `pair` with random weights (seeded), in eval mode."""
    config, opts, _ = PAIRS[pair]
    torch.manual_seed(0)
    cfg = load_config(REPO_ROOT / "configs" / config, ["MODEL.BACKBONE.PRETRAINED", "False", *opts])
    return build_detection_model(cfg).eval()


def build_torchvision(pair: str) -> nn.Module:
    """torchvision's peer of `pair`, random weights (seeded), no downloads, eval mode."""
    torch.manual_seed(0)
    builder = getattr(torchvision.models.detection, PAIRS[pair][2])
    return builder(weights=None, weights_backbone=None).eval()


def torchvision_network(model: nn.Module) -> Callable[[Tensor], dict[str, Tensor]]:
    """The network part of a torchvision SSD (backbone + head), the analogue of our `predict_raw`."""

    def network(images: Tensor) -> dict[str, Tensor]:
        return model.head(list(model.backbone(images).values()))

    return network


def test_images(batch_size: int, height: int = 480, width: int = 640, seed: int = 0) -> list[np.ndarray]:
    """`batch_size` uint8 (H, W, 3) RGB images: smooth random blobs plus noise (a camera-sized input)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(batch_size):
        coarse = rng.integers(0, 256, size=(height // 32 + 1, width // 32 + 1, 3)).astype(np.float32)
        smooth = np.kron(coarse, np.ones((32, 32, 1), np.float32))[:height, :width]
        noisy = smooth + rng.normal(0, 12, size=smooth.shape)
        images.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return images


# ----- a realistic score distribution for random weights ---------------------------------------------------


def _last_conv(module: nn.Module) -> nn.Conv2d:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1]


def classification_convs(model: nn.Module) -> tuple[list[nn.Conv2d], int]:
    """The final classification conv of every level and C (classes incl. background), ours or torchvision's.

    In both, output channel a * C + c of a level is class c of anchor a, so channels a * C are background.
    """
    if isinstance(model, SSDDetector):
        return [_last_conv(h) for h in model.predictor.cls_heads], model.num_classes
    head = model.head.classification_head
    return [_last_conv(h) for h in head.module_list], head.num_columns


def background_probabilities(cls_logits: Tensor, bias: float, threshold: float) -> int:
    """Candidates (prior, foreground class) above `threshold` once `bias` is added to the background logit."""
    logits = cls_logits.clone()
    logits[..., 0] += bias
    return int((logits.softmax(-1)[..., 1:] > threshold).sum())


def calibrate_background_bias(
    model: nn.Module, images: Tensor, threshold: float, candidates_per_image: int
) -> tuple[float, int]:
    """Add a constant to the background logit of every prior so that, on `images`, about
    `candidates_per_image` (prior, class) pairs per image score above `threshold`.

    Why: with random weights every class has a probability near 1/C, so nearly all P * (C-1) candidates pass
    the 0.01 threshold and post-processing times NMS over ~10^5 boxes, which no trained model produces. A
    trained SSD is confident that most priors are background; raising the background logit reproduces that.
    Both models of a pair are calibrated to the same candidate count, so their post-processing sees the same
    load. The bias goes into the final classification convs (modifies `model`).

    Returns:
        (the bias, the number of candidates per image it gives on `images`).
    """
    with torch.inference_mode():
        cls_logits = network_outputs(model, images)  # (N, P, C)
    target = candidates_per_image * images.shape[0]
    low, high = -10.0, 60.0  # candidates decrease as the bias grows
    for _ in range(40):
        mid = (low + high) / 2
        if background_probabilities(cls_logits, mid, threshold) > target:
            low = mid
        else:
            high = mid
    bias = high
    convs, num_classes = classification_convs(model)
    with torch.no_grad():
        for conv in convs:
            conv.bias[::num_classes] += bias  # channels a * C: background of anchor a
    count = background_probabilities(cls_logits, bias, threshold) // images.shape[0]
    return bias, count


def network_outputs(model: nn.Module, images: Tensor) -> Tensor:
    """cls_logits (N, P, C) of our model or of a torchvision SSD (in the model's current mode)."""
    if isinstance(model, SSDDetector):
        return model.predict_raw(images)[0]
    return torchvision_network(model)(images)["cls_logits"]


def recalibrate_batchnorm(model: nn.Module, images: Tensor) -> None:
    """Set every BatchNorm's running statistics to those of the network's own activations on `images`.

    At init the running stats are mean 0 / variance 1, whatever the activations really are; in eval mode a
    random MobileNet then shrinks its signal layer after layer (torchvision's SSDLite gives logits of size
    1e-13). A trained network's BN keeps activations near unit scale, and so does this.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the calibration passes
    model.train()
    with torch.no_grad():
        network_outputs(model, images)
    model.eval()


def make_trained_like(
    model: nn.Module, images: Tensor, threshold: float, candidates_per_image: int, logit_std: float = 2.0
) -> tuple[float, int]:
    """Give a random-weight model a trained-like score distribution (modifies `model`).

    Three steps: BatchNorm statistics from the model's own activations (`recalibrate_batchnorm`); the
    final classification convs scaled so the logits have standard deviation `logit_std` on `images`
    (random heads give anything from 1e-13 to 3); then the background bias of
    `calibrate_background_bias`. Both models of a pair get the same `logit_std` and candidate count.

    Returns:
        (background bias, candidates per image above `threshold` on `images`).
    """
    recalibrate_batchnorm(model, images)
    with torch.inference_mode():
        std = float(network_outputs(model, images).std())
    convs, _ = classification_convs(model)
    with torch.no_grad():
        for conv in convs:
            conv.weight.mul_(logit_std / max(std, 1e-30))
            conv.bias.zero_()
    return calibrate_background_bias(model, images, threshold, candidates_per_image)


def format_row(name: str, seconds: list[float], extra: str = "") -> str:
    return f"  {name:34s} median {median(seconds) * 1e3:9.1f} ms  min {min(seconds) * 1e3:9.1f} ms  {extra}"
