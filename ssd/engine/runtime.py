"""Where the network runs: PyTorch eager or ONNX Runtime, behind the detector's own call.

    model = build_backend(detector, "onnxruntime", onnx_path=None, num_threads=1)   # export on the fly
    detections = model(images, image_sizes=sizes)        # same call, same dicts as SSDDetector

Only the network moves to ONNX Runtime. What comes before it (the test transform that resizes and
subtracts the pixel mean) and after it (`PostProcessor`: softmax, decoding, NMS) is the detector's own code,
run on the outputs of the ONNX session:

    images (N, 3, S, S) float32  -> ONNX Runtime session     -> cls_logits (N, P, C), offsets (N, P, 4)
                                 -> detector.postprocessor   -> per image {"boxes" (K, 4) xyxy pixels, ...}

so eager and ONNX Runtime detections differ only by the float rounding of the network (about 1e-5 on the
logits), and an ONNX file made by `tools/quantize.py` (int8) runs through the same path.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

BACKENDS = ("pytorch", "onnxruntime")


def add_backend_arguments(parser) -> None:
    """--backend, --onnx and --threads, the same for demo.py and test.py (an argparse.ArgumentParser)."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="pytorch",
        help="where the network runs; pre- and post-processing are the same (docs/serving.md)",
    )
    parser.add_argument(
        "--onnx",
        default=None,
        metavar="FILE",
        help="onnxruntime: this exported or quantized file (default: export the checkpoint now)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="CPU threads for the network (default: the runtime's)"
    )


ONNX_OPSET = 17


class RawNetwork(nn.Module):
    """images (N, 3, S, S) -> (cls_logits (N, P, C), offsets (N, P, 4)): what is exported (ONNX, TorchScript)."""

    def __init__(self, detector: nn.Module):
        super().__init__()
        self.detector = detector

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.detector.predict_raw(images)


def export_onnx(detector: nn.Module, image_size: int, path: str | Path | io.BytesIO) -> None:
    """Write `detector.predict_raw` as ONNX with a dynamic batch axis (inputs "images", outputs
    "cls_logits" and "offsets").

    The TorchScript-based exporter (`dynamo=False`) is used: the dynamo exporter needs the `onnxscript`
    package, which the project does not depend on, while this one covers every layer of the SSD networks.

    Args:
        detector: an SSDDetector (anything with `predict_raw`), on the CPU; it is put in eval mode.
        image_size: S, the network's input size (INPUT.IMAGE_SIZE).
        path: a file path, or a BytesIO to keep the model in memory.
    """
    network = RawNetwork(detector).eval()
    example = torch.zeros(1, 3, image_size, image_size)
    target = path if isinstance(path, io.BytesIO) else str(path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch announces the legacy exporter's end
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the shape check in predict_raw
        torch.onnx.export(
            network,
            (example,),
            target,
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=["images"],
            output_names=["cls_logits", "offsets"],
            dynamic_axes={"images": {0: "batch"}, "cls_logits": {0: "batch"}, "offsets": {0: "batch"}},
        )


def onnxruntime_session(model: str | Path | bytes, num_threads: int | None = None):
    """An ONNX Runtime CPU session. num_threads: intra-op threads (None: ONNX Runtime's default, one per
    physical core). Raises ImportError with the install line when onnxruntime is missing."""
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(
            'the onnxruntime backend needs the onnxruntime package: pip install -e ".[extras]"'
        ) from err
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.inter_op_num_threads = 1  # one graph branch at a time: the SSD graph is a chain
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
    source = model if isinstance(model, bytes) else str(model)
    return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])


class OnnxRuntimeDetector(nn.Module):
    """An SSDDetector whose network runs in ONNX Runtime; pre- and post-processing stay the package's.

    Called like SSDDetector at inference: `model(images, image_sizes=...)` -> detection dicts. It has no
    parameters and cannot be trained (a call with targets raises). ONNX Runtime runs on the CPU: inputs on a
    GPU are copied to the CPU, and detections come back on the CPU.

    Args:
        session: an ONNX Runtime session of an exported network ("images" -> "cls_logits", "offsets").
        priors_cxcywh: (P, 4) priors in 0..1, in the network's output order.
        postprocessor: (cls_logits, offsets, priors_cxcywh, image_sizes) -> detections (the eager
            detector's `PostProcessor`).
        source: what the session was made from, for error messages.
    """

    def __init__(
        self,
        session,
        priors_cxcywh: Tensor,
        postprocessor: Callable[..., list[dict[str, Tensor]]],
        source: str = "the ONNX model",
    ):
        super().__init__()
        self.session = session
        self.register_buffer("priors_cxcywh", priors_cxcywh.detach().cpu(), persistent=False)
        self.postprocessor = postprocessor
        self.source = source
        outputs = {o.name: o.shape for o in session.get_outputs()}
        if set(outputs) != {"cls_logits", "offsets"}:
            raise ValueError(
                f"{source}: outputs are {sorted(outputs)}, expected cls_logits and offsets "
                "(a file written by tools/export.py --format onnx)"
            )
        num_boxes = outputs["cls_logits"][1]
        if isinstance(num_boxes, int) and num_boxes != priors_cxcywh.shape[0]:
            raise ValueError(
                f"{source} predicts {num_boxes} boxes but the config gives {priors_cxcywh.shape[0]} priors; "
                "was it exported from this config (INPUT.IMAGE_SIZE, MODEL.PRIORS)?"
            )

    def predict_raw(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (N, 3, S, S) float32 -> cls_logits (N, P, C), offsets (N, P, 4), float32 on the CPU."""
        feed = {"images": images.detach().to("cpu", torch.float32).contiguous().numpy()}
        cls_logits, offsets = self.session.run(["cls_logits", "offsets"], feed)
        return torch.from_numpy(cls_logits), torch.from_numpy(offsets)

    def forward(
        self,
        images: Tensor,
        targets: Sequence[dict[str, Tensor]] | None = None,
        image_sizes: Sequence[tuple[int, int]] | None = None,
    ) -> list[dict[str, Tensor]]:
        """images (N, 3, S, S) -> N dicts "boxes" (K, 4) xyxy pixels, "labels" (K,), "scores" (K,)."""
        if targets is not None:
            raise ValueError("the onnxruntime backend runs inference only; train with the pytorch backend")
        cls_logits, offsets = self.predict_raw(images)
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        return self.postprocessor(cls_logits, offsets, self.priors_cxcywh, list(image_sizes))


def build_backend(
    detector: nn.Module,
    backend: str,
    image_size: int,
    onnx_path: str | Path | None = None,
    num_threads: int | None = None,
) -> nn.Module:
    """The detector to run inference with.

    Args:
        detector: a loaded SSDDetector (eval mode); returned as is for "pytorch".
        backend: "pytorch" or "onnxruntime".
        image_size: S (INPUT.IMAGE_SIZE), for the on-the-fly export.
        onnx_path: onnxruntime: an exported (or quantized) ONNX file of this detector; None exports the
            detector in memory first.
        num_threads: onnxruntime intra-op threads (None: its default).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "pytorch":
        if onnx_path is not None:
            raise ValueError("--onnx is read by the onnxruntime backend only; add --backend onnxruntime")
        return detector
    if onnx_path is None:
        buffer = io.BytesIO()
        cpu_copy = detector if _on_cpu(detector) else _cpu_copy(detector)
        export_onnx(cpu_copy, image_size, buffer)
        session, source = onnxruntime_session(buffer.getvalue(), num_threads), "the exported network"
    else:
        path = Path(onnx_path)
        if not path.is_file():
            raise FileNotFoundError(f"ONNX file not found: {path} (write one with tools/export.py)")
        session, source = onnxruntime_session(path, num_threads), str(path)
    return OnnxRuntimeDetector(session, detector.priors_cxcywh, detector.postprocessor, source).eval()


def _on_cpu(module: nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in module.parameters())


def _cpu_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).cpu()
