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

import argparse
import copy
import io
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

BACKENDS = ("pytorch", "onnxruntime")


def positive_int(text: str) -> int:
    """argparse type of --threads: an integer >= 1 (0 or -1 would otherwise fail inside torch or ONNX Runtime)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


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
        "--threads",
        type=positive_int,
        default=None,
        help="CPU threads for the network, >= 1 (default: the runtime's)",
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
    physical core). Raises ImportError with the install line when onnxruntime is missing, ValueError naming
    the file when ONNX Runtime cannot load it (not an ONNX file, or a damaged one)."""
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
    try:
        return onnxruntime.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as err:  # noqa: BLE001 - ONNX Runtime's errors (InvalidProtobuf, Fail, ...) share no base
        name = "the exported network" if isinstance(model, bytes) else str(model)
        reason = str(err).split(":")[-1].strip() or type(err).__name__
        raise ValueError(
            f"{name}: ONNX Runtime cannot load it ({type(err).__name__}: {reason}); is it an ONNX file "
            "written by tools/export.py or tools/quantize.py?"
        ) from None


def check_onnx_shapes(
    session, num_priors: int, num_classes: int | None, image_size: int | None, source: str
) -> None:
    """Refuse an ONNX network exported for another config: its input side S, its C or its P.

    The exported graph fixes everything but the batch axis (`export_onnx`), so a file exported from another
    checkpoint would run and give wrong detections ("class 5" of a 4-class model) or fail later. Checked in
    that order: another input size explains another prior count.

    Args:
        session: an ONNX Runtime session ("images" (N, 3, S, S) -> "cls_logits" (N, P, C), "offsets" (N, P, 4)).
        num_priors: P of the config; num_classes: C, background included (None: not checked);
        image_size: S, INPUT.IMAGE_SIZE (None: not checked); source: the file, for the message.
    """
    outputs = {o.name: o.shape for o in session.get_outputs()}
    if set(outputs) != {"cls_logits", "offsets"}:
        raise ValueError(
            f"{source}: outputs are {sorted(outputs)}, expected cls_logits and offsets "
            "(a file written by tools/export.py --format onnx)"
        )
    inputs = {i.name: i.shape for i in session.get_inputs()}
    side = inputs.get("images", [None] * 4)[2:]
    if image_size is not None and all(isinstance(v, int) for v in side) and side != [image_size] * 2:
        raise ValueError(
            f"{source} takes {side[1]} x {side[0]} images but INPUT.IMAGE_SIZE is {image_size}; "
            "was it exported from this config? (tools/export.py writes one for it)"
        )
    classes = outputs["cls_logits"][2]
    if num_classes is not None and isinstance(classes, int) and classes != num_classes:
        raise ValueError(
            f"{source} predicts {classes} classes (background included) but the model has {num_classes} "
            "(MODEL.NUM_CLASSES); was it exported from this checkpoint? (tools/export.py writes one for it)"
        )
    num_boxes = outputs["cls_logits"][1]
    if isinstance(num_boxes, int) and num_boxes != num_priors:
        raise ValueError(
            f"{source} predicts {num_boxes} boxes but the config gives {num_priors} priors; "
            "was it exported from this config (INPUT.IMAGE_SIZE, MODEL.PRIORS)?"
        )


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
        num_classes: C of the model the file must come from (None: not checked).
        image_size: S of the config (None: not checked).

    Raises:
        ValueError: the file's input size, classes or prior count differ (`check_onnx_shapes`).
    """

    def __init__(
        self,
        session,
        priors_cxcywh: Tensor,
        postprocessor: Callable[..., list[dict[str, Tensor]]],
        source: str = "the ONNX model",
        num_classes: int | None = None,
        image_size: int | None = None,
    ):
        super().__init__()
        check_onnx_shapes(session, priors_cxcywh.shape[0], num_classes, image_size, source)
        self.session = session
        self.register_buffer("priors_cxcywh", priors_cxcywh.detach().cpu(), persistent=False)
        self.postprocessor = postprocessor
        self.source = source

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
    return OnnxRuntimeDetector(
        session,
        detector.priors_cxcywh,
        detector.postprocessor,
        source,
        num_classes=getattr(detector, "num_classes", None),
        image_size=image_size,
    ).eval()


def _on_cpu(module: nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in module.parameters())


def _cpu_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).cpu()
