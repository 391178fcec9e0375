"""Export the network part of a detector to ONNX or TorchScript, with what a server needs beside it.

    python tools/export.py --config-file configs/shapes_mobilenet_v2_ssdlite.yaml \
        --ckpt models/shapes_ssdlite.pth --format onnx --output outputs/export/shapes.onnx

What is exported is `model.predict_raw`:

    images (N, 3, S, S) float32, RGB 0..255 minus INPUT.PIXEL_MEAN  ->  cls_logits (N, P, C), offsets (N, P, 4)

with a dynamic batch N. Post-processing (softmax, decoding, NMS) stays outside the exported graph: NMS has no
portable ONNX form that every runtime runs the same way, and it is cheap in NumPy. Beside the model go

    <stem>_priors.npy     (P, 4) float32 priors, cx cy w h in 0..1 (the order of the P outputs)
    <stem>.yaml           the full config the model was built from
    <stem>_serving.json   input size, pixel mean, variances, thresholds and class names

and `postprocess` below turns the raw outputs into detections with only NumPy:

    1. scores = softmax(cls_logits) over C; column 0 is the background.
    2. boxes: cx = priors_cx + offsets_x * center_variance * priors_w (same for y), w = priors_w *
       exp(offsets_w * size_variance) (same for h); then corners, clipped to 0..1, times the image size.
    3. per foreground class: candidates with score > score_threshold, greedy NMS at nms_threshold.
    4. all classes together: the max_per_image highest scores.

This is what `PostProcessor` computes (tests/test_export.py checks they agree).

Serving with TorchServe: `tools/serve/archive.py` exports the ONNX file and packs it, with the serving JSON,
the priors and the handler `tools/serve/ssd_handler.py` (our pre-processing, ONNX Runtime, our PostProcessor,
JSON with class names), into a .mar archive; docs/serving.md starts a server and queries it.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run from any folder without installing the package

from ssd.config.loading import ConfigError  # noqa: E402
from ssd.engine.runtime import RawNetwork, export_onnx  # noqa: E402
from ssd.modeling.model_zoo import load_detector  # noqa: E402
from ssd.modeling.weights import WeightsError  # noqa: E402


def export_torchscript(network: nn.Module, example: Tensor, path: Path) -> None:
    """TorchScript by tracing; the traced graph reads the batch size from its input, so any N works."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer notes on the shape check in predict_raw (always true here)
        traced = torch.jit.trace(network, (example,), check_trace=False)
    traced.save(str(path))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    shifted = logits - logits.max(axis=axis, keepdims=True)  # no overflow in exp
    exp = np.exp(shifted)
    return exp / exp.sum(axis=axis, keepdims=True)


def nms(boxes_xyxy: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS: indices of the kept boxes, by descending score; a box is dropped when its IoU with a kept,
    higher-scoring box exceeds `iou_threshold`. boxes_xyxy (M, 4), scores (M,)."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes_xyxy[:, 2] - boxes_xyxy[:, 0], 0, None) * np.clip(
        boxes_xyxy[:, 3] - boxes_xyxy[:, 1], 0, None
    )
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        top_left = np.maximum(boxes_xyxy[best, :2], boxes_xyxy[rest, :2])  # (R, 2)
        bottom_right = np.minimum(boxes_xyxy[best, 2:], boxes_xyxy[rest, 2:])  # (R, 2)
        inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=1)  # (R,)
        iou = inter / np.maximum(areas[best] + areas[rest] - inter, np.finfo(np.float32).tiny)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def postprocess(
    cls_logits: np.ndarray,
    offsets: np.ndarray,
    priors_cxcywh: np.ndarray,
    image_sizes: Sequence[tuple[int, int]],
    center_variance: float = 0.1,
    size_variance: float = 0.2,
    score_threshold: float = 0.01,
    nms_threshold: float = 0.45,
    max_per_image: int = 100,
) -> list[dict[str, np.ndarray]]:
    """Raw outputs of the exported network -> detections, with NumPy only (steps in the module docstring).

    Args:
        cls_logits: (N, P, C); offsets: (N, P, 4); priors_cxcywh: (P, 4) in 0..1 (the `_priors.npy` file).
        image_sizes: N pairs (height, width) of the original images; boxes come back in their pixels.

    Returns:
        N dicts: "boxes" (K, 4) float32 xyxy pixels, "labels" (K,) int64 in 1..C-1, "scores" (K,) float32,
        by descending score.
    """
    scores = softmax(cls_logits.astype(np.float32), axis=2)  # (N, P, C)
    centres = priors_cxcywh[:, :2] + offsets[..., :2] * center_variance * priors_cxcywh[:, 2:]  # (N, P, 2)
    # The same clamp of the exponent as box_coder.decode (a box at most 62.5 times its prior).
    sizes = priors_cxcywh[:, 2:] * np.exp(np.minimum(offsets[..., 2:] * size_variance, np.log(1000 / 16)))
    boxes_norm = np.clip(
        np.concatenate([centres - sizes / 2, centres + sizes / 2], axis=2), 0, 1
    )  # (N, P, 4)
    results = []
    for i, (height, width) in enumerate(image_sizes):
        boxes = boxes_norm[i] * np.array([width, height, width, height], dtype=np.float32)  # (P, 4) pixels
        all_boxes, all_labels, all_scores = [], [], []
        for label in range(1, scores.shape[2]):
            candidates = np.flatnonzero(scores[i, :, label] > score_threshold)
            keep = candidates[nms(boxes[candidates], scores[i, candidates, label], nms_threshold)]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[i, keep, label])
            all_labels.append(np.full(len(keep), label, dtype=np.int64))
        det_scores = np.concatenate(all_scores)
        order = np.argsort(-det_scores, kind="stable")
        if max_per_image > 0:
            order = order[:max_per_image]
        results.append(
            {
                "boxes": np.concatenate(all_boxes)[order].astype(np.float32),
                "labels": np.concatenate(all_labels)[order],
                "scores": det_scores[order].astype(np.float32),
            }
        )
    return results


def export(
    config_file: str | None,
    ckpt: str | None,
    fmt: str,
    output: str | Path | None = None,
    opts: Sequence[str] = (),
) -> dict[str, Path]:
    """Export and write the side files; returns their paths ("model", "priors", "config", "serving")."""
    loaded = load_detector(ckpt, config_file, [*opts, "MODEL.DEVICE", "cpu"])
    cfg = loaded.cfg
    suffix = ".onnx" if fmt == "onnx" else ".pt"
    if output is None:
        stem = Path(config_file).stem if config_file else Path(loaded.source).stem
        output = Path("outputs") / "export" / f"{stem}{suffix}"
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)

    network = RawNetwork(loaded.model).eval()
    size = cfg.INPUT.IMAGE_SIZE
    example = torch.zeros(1, 3, size, size)
    with torch.no_grad():
        if fmt == "onnx":  # the same export as the onnxruntime backend of demo.py and test.py
            export_onnx(loaded.model, size, output)
        else:
            export_torchscript(network, example, output)

    paths = {
        "model": output,
        "priors": output.with_name(f"{output.stem}_priors.npy"),
        "config": output.with_suffix(".yaml"),
        "serving": output.with_name(f"{output.stem}_serving.json"),
    }
    np.save(paths["priors"], loaded.model.priors_cxcywh.cpu().numpy().astype(np.float32))
    paths["config"].write_text(cfg.dump())
    serving = {
        "input": "images (N, 3, S, S) float32: RGB, resized to S x S (bilinear), 0..255 minus pixel_mean",
        "outputs": "cls_logits (N, P, C) before softmax, class 0 = background; offsets (N, P, 4)",
        "image_size": size,
        "pixel_mean": list(cfg.INPUT.PIXEL_MEAN),
        "center_variance": cfg.MODEL.CENTER_VARIANCE,
        "size_variance": cfg.MODEL.SIZE_VARIANCE,
        "score_threshold": cfg.TEST.CONFIDENCE_THRESHOLD,
        "nms_threshold": cfg.TEST.NMS_THRESHOLD,
        "max_per_class": cfg.TEST.MAX_PER_CLASS,
        "max_per_image": cfg.TEST.MAX_PER_IMAGE,
        "class_names": list(loaded.class_names),
        "max_image_pixels": cfg.INPUT.MAX_IMAGE_PIXELS,
    }
    paths["serving"].write_text(json.dumps(serving, indent=2))
    return paths


def main(argv: list[str] | None = None) -> dict[str, Path]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=None, help="YAML config (default: the checkpoint's own)")
    parser.add_argument("--ckpt", default=None, help="checkpoint, URL or model zoo name (default: bundled)")
    parser.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    parser.add_argument("--output", default=None, help="default: outputs/export/<config>.onnx|.pt")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    try:
        paths = export(args.config_file, args.ckpt, args.format, args.output, args.opts)
    except (WeightsError, ConfigError, KeyError) as err:
        sys.exit(f"export.py: {err}")
    for kind, path in paths.items():
        print(f"{kind:8s} {path}")
    return paths


if __name__ == "__main__":
    main()
