"""int8 static quantization of an exported network with ONNX Runtime's tooling (`tools/quantize.py` is the CLI).

    quantize_int8("shapes.onnx", "shapes_int8.onnx", calibration_batches)   # batches (N, 3, S, S) float32

Static quantization stores weights as int8 and also runs the activations in 8 bits: every conv's input and
output gets a fixed scale and zero point, chosen from the activations seen on calibration images (min/max
over the batches). So the calibration images must look like what the model will see: training images of the
config's dataset, through the test transform.

The graph is written in the QDQ format (QuantizeLinear / DequantizeLinear pairs around each quantized op),
which ONNX Runtime's CPU provider fuses into int8 kernels (QLinearConv, ...). Weights are quantized per
output channel (one scale per filter), activations per tensor.

Activations are signed 8 bits by default ("S8S8": int8 activations, int8 weights), the data types ONNX
Runtime's quantization guide names as the first choice for CPUs in general. The alternative, unsigned
activations with signed weights ("U8S8", `activations="uint8"`), runs on x86 through an instruction that
adds pairs of u8 x s8 products into 16 bits (VPMADDUBSW) on CPUs without VNNI, and that sum can saturate;
which kernel runs depends on the CPU family (AVX2, AVX-512 VNNI, AMX), so the same U8S8 file can lose
different amounts of accuracy on two machines (issue 19, 60 shapes images: AP50 -0.22 on an AMD EPYC, -1.09
on an Intel Xeon with AMX). The price of S8S8 is speed: on the AMD EPYC measured here its MobileNet networks
ran slower than fp32, U8S8 faster. docs/serving.md has the measured accuracy and speed of both.

Depthwise convs (one filter per channel: groups == channels) are the usual trouble in MobileNets: a filter
of 9 weights gets its own scale, which is fine, but the activations between depthwise and pointwise convs
are clipped ReLU6 outputs whose range differs a lot across channels, and one per-tensor scale for all
channels loses the small ones. `skip_depthwise=True` leaves them in float32 (the measured trade-off is in
docs/serving.md).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np


def depthwise_conv_names(model_path: str | Path) -> list[str]:
    """Names of the Conv nodes of an ONNX file whose `group` equals their input channels (depthwise)."""
    import onnx

    model = onnx.load(str(model_path))
    weights = {init.name: tuple(init.dims) for init in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        weight_shape = weights.get(node.input[1])  # (O, I / group, kh, kw)
        if group > 1 and weight_shape is not None and weight_shape[1] == 1:
            names.append(node.name)
    return names


class _BatchReader:
    """onnxruntime.quantization's CalibrationDataReader over (N, 3, S, S) float32 batches."""

    def __init__(self, batches: Iterable[np.ndarray]):
        self._batches: Iterator[np.ndarray] = iter(batches)
        # hashes of the images seen: a calibration set of one image repeated counts as one
        self._distinct: set[int] = set()

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        if batch is None:
            return None
        self._distinct.update(hash(image.tobytes()) for image in batch)
        return {"images": np.ascontiguousarray(batch, dtype=np.float32)}

    @property
    def distinct_images(self) -> int:
        return len(self._distinct)


def quantize_int8(
    fp32_path: str | Path,
    int8_path: str | Path,
    calibration_batches: Iterable[np.ndarray],
    skip_depthwise: bool = False,
    activations: str = "int8",
) -> dict:
    """Write an int8 (QDQ) copy of an exported network, calibrated on `calibration_batches`.

    Args:
        fp32_path: an ONNX file written by tools/export.py ("images" -> "cls_logits", "offsets").
        int8_path: where the quantized file goes.
        calibration_batches: (N, 3, S, S) float32 batches, prepared as for inference (test transform).
        skip_depthwise: keep the depthwise convs in float32.
        activations: "int8" (S8S8, the default) or "uint8" (U8S8; see the module docstring).

    Returns:
        {"convs": number of Conv nodes, "excluded": names of the nodes left in float32,
        "calibration_images": how many distinct images the calibration ran}.
    """
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(_BatchReader, CalibrationDataReader):
        pass

    activation_types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    if activations not in activation_types:
        raise ValueError(f"activations must be one of {sorted(activation_types)}, got {activations!r}")

    int8_path = Path(int8_path)
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference and graph clean-up first, as ONNX Runtime's documentation asks: the quantizer
        # needs the shapes of the activations.
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        excluded = depthwise_conv_names(prepared) if skip_depthwise else []
        convs = sum(node.op_type == "Conv" for node in onnx.load(str(prepared)).graph.node)
        reader = Reader(calibration_batches)
        quantize_static(
            str(prepared),
            str(int8_path),
            reader,
            quant_format=QuantFormat.QDQ,
            activation_type=activation_types[activations],
            weight_type=QuantType.QInt8,
            per_channel=True,
            nodes_to_exclude=excluded,
        )
    return {"convs": convs, "excluded": excluded, "calibration_images": reader.distinct_images}
