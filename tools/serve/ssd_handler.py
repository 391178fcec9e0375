"""TorchServe handler of an SSD archive built by tools/serve/archive.py (docs/serving.md).

The archive holds the exported network (`model.onnx`, fp32 or int8), `serving.json` (input size, pixel
mean, variances, thresholds, class names, pixel limit; written by tools/export.py) and `priors.npy` ((P, 4)
cx cy w h in 0..1). Per request (the image file's bytes as the body or as the form field "data", or the same
bytes as base64 text, as TorchServe's own image handlers accept):

    bytes -> header size (refused above max_image_pixels) -> cv2.imdecode -> uint8 (H, W, 3) RGB
          -> the package's test transform (resize to S x S, minus the pixel mean)   -> (1, 3, S, S)
          -> the network in ONNX Runtime                                            -> cls_logits, offsets
          -> the package's PostProcessor (softmax, decoding, NMS)                   -> detections in H x W pixels
          -> {"image_size": [H, W], "detections": [{"class_id", "class_name", "score", "box_xyxy"}, ...]}

The pre- and post-processing are `ssd.data.transforms` and `ssd.modeling.postprocess`, the code eager
PyTorch and `test.py --backend onnxruntime` run, so the server's JSON equals the local detections within
float rounding (tests/test_torchserve.py checks it against a running server). The server's Python therefore
needs this package installed (`pip install -e ".[serve]"`); the handler reads nothing else from the checkout.

Bad requests are answered one by one: an empty body, a JSON body, base64 text that does not decode, bytes
that are not an image (400) or an image above the pixel limit (413) get that status and {"error": message}
(`context.set_response_status`, per request); the other requests of the same batch are answered normally.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from ssd.data.datasets.image_files import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLargeError, decode_image_rgb
from ssd.data.transforms import build_transforms
from ssd.engine.runtime import OnnxRuntimeDetector, onnxruntime_session
from ssd.modeling.postprocess import PostProcessor

MODEL_FILE, SERVING_FILE, PRIORS_FILE = "model.onnx", "serving.json", "priors.npy"
BAD_REQUEST, TOO_LARGE = 400, 413  # HTTP statuses of refused requests
logger = logging.getLogger(__name__)


def decode_request(row: dict, max_pixels: int) -> np.ndarray:
    """One request of a batch (TorchServe's {"data" or "body": ...}) -> uint8 (H, W, 3) RGB.

    Accepted: the image file's bytes, or base64 text of them. TorchServe hands a JSON body over parsed (a
    dict or list) and a text body as str.

    Raises:
        ImageTooLargeError: above `max_pixels` pixels (answered 413). ValueError: anything else (400).
    """
    body = row.get("data")
    if body is None:
        body = row.get("body")
    if isinstance(body, str):  # text/plain or a JSON string: base64, as TorchServe's image handlers take it
        try:
            body = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(
                f"the request body is text ({len(body)} characters) but not base64; send the image file's "
                "bytes (Content-Type application/octet-stream) or base64 text of them"
            ) from None
    if body is not None and not isinstance(body, (bytes, bytearray)):
        raise ValueError(
            f"the request body is JSON ({type(body).__name__}), not an image; send the image file's bytes "
            "(Content-Type application/octet-stream) or base64 text of them"
        )
    if not body:
        raise ValueError("the request body is empty; send an image file (JPEG, PNG, ...)")
    try:
        return decode_image_rgb(bytes(body), max_pixels, f"the request image ({len(body)} bytes)")
    except ImageTooLargeError:
        raise
    except OSError as err:
        raise ValueError(f"{err} (OpenCV reads JPEG, PNG, BMP, WebP, TIFF, ...)") from None


# TorchServe loads the one class this module defines as the handler: no other class may live here.
class SSDHandler:
    """initialize(context) once per worker; handle(data, context) per batch of requests (one list entry each)."""

    def __init__(self):
        self.detector: OnnxRuntimeDetector | None = None
        self.class_names: list[str] = []
        self.transform = None
        self.max_pixels = DEFAULT_MAX_IMAGE_PIXELS

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
        self.class_names = list(serving["class_names"])
        # Archives made before the limit was written into serving.json get the config's default.
        self.max_pixels = int(serving.get("max_image_pixels", DEFAULT_MAX_IMAGE_PIXELS))
        self.detector = OnnxRuntimeDetector(
            session,
            priors_cxcywh,
            postprocessor,
            str(model_dir / MODEL_FILE),
            num_classes=len(self.class_names),
            image_size=serving["image_size"],
        )
        self.transform = build_transforms(serving["image_size"], serving["pixel_mean"], is_train=False)

    def handle(self, data: list[dict], context) -> list[dict]:
        """One JSON-ready dict per request: detections, or {"error"} with a 4xx status for that request only;
        the good requests of a batch run through the network together."""
        answers: list[dict | None] = [None] * len(data)
        images, good = [], []
        for index, row in enumerate(data):
            try:
                images.append(decode_request(row, self.max_pixels))
                good.append(index)
            except ValueError as err:  # ImageTooLargeError included (a ValueError and an OSError)
                status = TOO_LARGE if isinstance(err, ImageTooLargeError) else BAD_REQUEST
                answers[index] = {"error": str(err)}
                # The reason phrase travels in the HTTP status line: one line of ASCII.
                phrase = str(err).encode("ascii", "replace").decode().replace("\n", " ")
                context.set_response_status(status, phrase, index)
        logger.info("SSDHandler: batch of %d requests, %d refused", len(data), len(data) - len(good))
        if images:
            no_boxes, no_labels = np.zeros((0, 4), np.float32), np.zeros(0, np.int64)
            batch = torch.stack(
                [self.transform(image, no_boxes, no_labels)[0] for image in images]
            )  # (N', 3, S, S), the good requests only
            with torch.no_grad():
                results = self.detector(batch, image_sizes=[image.shape[:2] for image in images])
            for index, image, result in zip(good, images, results, strict=True):
                answers[index] = self._to_json(image.shape[:2], result)
        return answers

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
