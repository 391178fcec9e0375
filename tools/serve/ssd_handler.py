"""TorchServe handler of an SSD archive built by tools/serve/archive.py (docs/serving.md).

The archive holds the exported network (`model.onnx`, fp32 or int8), `serving.json` (input size, pixel
mean, variances, thresholds, class names; written by tools/export.py) and `priors.npy` ((P, 4) cx cy w h in
0..1). Per request (the image file's bytes as the body, or as the form field "data"):

    bytes -> cv2.imdecode -> uint8 (H, W, 3) RGB
          -> the package's test transform (resize to S x S, minus the pixel mean)   -> (1, 3, S, S)
          -> the network in ONNX Runtime                                            -> cls_logits, offsets
          -> the package's PostProcessor (softmax, decoding, NMS)                   -> detections in H x W pixels
          -> {"image_size": [H, W], "detections": [{"class_id", "class_name", "score", "box_xyxy"}, ...]}

The pre- and post-processing are `ssd.data.transforms` and `ssd.modeling.postprocess`, the code eager
PyTorch and `test.py --backend onnxruntime` run, so the server's JSON equals the local detections within
float rounding (tests/test_torchserve.py checks it against a running server). The server's Python therefore
needs this package installed (`pip install -e ".[serve]"`); the handler reads nothing else from the checkout.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import torch

from ssd.data.transforms import build_transforms
from ssd.engine.runtime import OnnxRuntimeDetector, onnxruntime_session
from ssd.modeling.postprocess import PostProcessor

MODEL_FILE, SERVING_FILE, PRIORS_FILE = "model.onnx", "serving.json", "priors.npy"


def _decode(body) -> np.ndarray:
    """An image file's bytes (a request body) -> uint8 (H, W, 3) RGB; ValueError when it is not an image."""
    if isinstance(body, str):
        body = body.encode("latin-1")
    data = np.frombuffer(bytes(body), dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB) if data.size else None
    if image is None:
        raise ValueError(f"the request body ({len(data)} bytes) is not an image that OpenCV can decode")
    return image


class SSDHandler:
    """initialize(context) once per worker; handle(data, context) per batch of requests (one list entry each)."""

    def __init__(self):
        self.detector: OnnxRuntimeDetector | None = None
        self.class_names: list[str] = []
        self.transform = None

    def initialize(self, context) -> None:
        model_dir = Path(context.system_properties["model_dir"])
        serving = json.loads((model_dir / SERVING_FILE).read_text())
        # One ONNX Runtime thread per worker unless SSD_SERVE_THREADS says otherwise: TorchServe scales with
        # workers, and several workers each taking every core would fight over them.
        threads = int(os.environ.get("SSD_SERVE_THREADS", "1"))
        session = onnxruntime_session(model_dir / MODEL_FILE, threads)
        postprocessor = PostProcessor(
            serving["center_variance"],
            serving["size_variance"],
            serving["score_threshold"],
            serving["nms_threshold"],
            serving.get("max_per_class", -1),
            serving["max_per_image"],
        )
        priors_cxcywh = torch.from_numpy(np.load(model_dir / PRIORS_FILE))  # (P, 4)
        self.detector = OnnxRuntimeDetector(
            session, priors_cxcywh, postprocessor, str(model_dir / MODEL_FILE)
        )
        self.transform = build_transforms(serving["image_size"], serving["pixel_mean"], is_train=False)
        self.class_names = list(serving["class_names"])

    def handle(self, data: list[dict], context) -> list[dict]:
        """One JSON-ready dict per request; the requests of a batch run through the network together."""
        images = [_decode(row.get("data") or row.get("body")) for row in data]
        no_boxes, no_labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
        batch = torch.stack(
            [self.transform(image, no_boxes, no_labels)[0] for image in images]
        )  # (N, 3, S, S)
        with torch.no_grad():
            results = self.detector(batch, image_sizes=[image.shape[:2] for image in images])
        return [self._to_json(image.shape[:2], result) for image, result in zip(images, results, strict=True)]

    def _to_json(self, size: tuple[int, int], result: dict[str, torch.Tensor]) -> dict:
        detections = [
            {
                "class_id": int(label),
                "class_name": self.class_names[int(label)],
                "score": float(score),
                "box_xyxy": [float(v) for v in box],
            }
            for box, label, score in zip(
                result["boxes"].tolist(), result["labels"].tolist(), result["scores"].tolist(), strict=True
            )
        ]
        return {"image_size": [int(size[0]), int(size[1])], "detections": detections}
