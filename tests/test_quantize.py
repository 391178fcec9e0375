"""tools/quantize.py (int8 static quantization, ssd/engine/quantize.py): the int8 file really is int8 with
signed activations (S8S8), it is calibrated on the images asked for, and its test AP50 stays within
MAX_AP50_DROP of fp32 on the bundled shapes model (all 200 shapes_test images) and on the BCCD model.

The bound comes from measurements on two CPU families (`python benchmarks/int8_accuracy.py`, results in
results/int8_accuracy.json; AP50 drop = fp32 - int8):
- AMD EPYC (AVX-512 VNNI, this project's sandbox): S8S8 0.01 on shapes_test (200 images), 0.20 on 60 new shapes
  images; U8S8 0.04 and 0.22.
- Intel Xeon with AMX (issue 19's report): U8S8 1.09 on the same 60 images; S8S8 was not measured there (no
  such machine here). ONNX Runtime's guide names S8S8 the first choice for CPUs, and U8S8's known loss on x86
  (16-bit saturation in VPMADDUBSW) is what S8S8 avoids, so S8S8 is expected to lose no more there; the 200
  images of shapes_test also halve the weight of one detection against the 60-image set.
MAX_AP50_DROP = 1.5 is above every measured drop (1.09 the largest, U8S8 on Intel) with room for that family;
a real regression (e.g. the calibration set of one image, or images not prepared as for inference) loses more.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime", reason="int8 quantization needs onnxruntime (the dev extra)")
onnx = pytest.importorskip("onnx", reason="int8 quantization needs onnx (the dev extra)")

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))
import quantize as quantize_tool  # noqa: E402

SHAPES = REPO_ROOT / "models" / "shapes_ssdlite.pth"
BCCD = REPO_ROOT / "models" / "bccd_ssdlite.pth"
MAX_AP50_DROP = 1.5


def load_test_cli():
    """The top-level test.py, loaded by path (`import test` could find the standard library's test package)."""
    spec = importlib.util.spec_from_file_location("ssd_test_cli", REPO_ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def int8_conv_weights(path: Path) -> tuple[int, int]:
    """(Conv weights stored as int8, all Conv weights) of a QDQ ONNX file: in QDQ a quantized conv reads its
    weight through DequantizeLinear from an int8 initializer."""
    model = onnx.load(str(path))
    int8_inits = {i.name for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8}
    dequantized = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    quantized = sum(dequantized.get(c.input[1]) in int8_inits for c in convs)
    return quantized, len(convs)


@pytest.fixture(scope="module")
def shapes_int8(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("int8") / "shapes_int8.onnx"
    return quantize_tool.main(["--ckpt", str(SHAPES), "--output", str(out), "--calibration-images", "16"])


def activation_types(path: Path) -> set[int]:
    """ONNX data types of the zero points of every QuantizeLinear (the quantized activations' type)."""
    model = onnx.load(str(path))
    inits = {i.name: i.data_type for i in model.graph.initializer}
    return {inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2}


def test_every_conv_is_int8_unless_skipped(shapes_int8, tmp_path, capsys):
    assert int8_conv_weights(shapes_int8["int8"]) == (shapes_int8["convs"], shapes_int8["convs"])
    assert activation_types(shapes_int8["int8"]) == {onnx.TensorProto.INT8}  # S8S8, the default
    assert shapes_int8["calibration_images"] == 16  # 16 distinct training images, as asked
    assert shapes_int8["fp32"].with_name("shapes_fp32_serving.json").is_file()  # the side files of export
    skipped = quantize_tool.main(
        ["--onnx", str(shapes_int8["fp32"]), "--output", str(tmp_path / "nodw.onnx"), "--skip-depthwise",
         "--calibration-images", "8", "--benchmark"]
    )  # fmt: skip
    assert len(skipped["excluded"]) == 31  # MobileNetV2: 17 blocks, 14 of them (t=6) + SSDLite heads
    quantized, convs = int8_conv_weights(skipped["int8"])
    assert quantized == convs - 31
    assert re.search(
        r"median of 20: fp32 \d+\.\d\d ms, int8 \d+\.\d\d ms \(\d+\.\d\dx\)", capsys.readouterr().out
    )
    assert skipped["calibration_images"] == 8


def test_uint8_activations_on_request(shapes_int8, tmp_path):
    out = quantize_tool.main(
        ["--onnx", str(shapes_int8["fp32"]), "--output", str(tmp_path / "u8.onnx"), "--activations", "uint8",
         "--calibration-images", "4"]
    )  # fmt: skip
    assert activation_types(out["int8"]) == {onnx.TensorProto.UINT8}
    assert out["calibration_images"] == 4


def test_bad_arguments_are_one_line(tmp_path):
    with pytest.raises(SystemExit, match="ONNX file not found: .*none.onnx"):
        quantize_tool.main(["--onnx", str(tmp_path / "none.onnx"), "--output", str(tmp_path / "x.onnx")])


def _ap50(test_cli, ckpt: Path, output_dir: Path, extra: list[str], opts: list[str]) -> float:
    config = str(ckpt.with_suffix(".yaml"))
    args = ["--config-file", config, "--ckpt", str(ckpt), "--threads", "1", "--output-dir", str(output_dir)]
    results = test_cli.main([*args, *extra, *opts])
    (name,) = results
    return results[name]["bbox"]["AP50"]


@pytest.mark.slow
def test_int8_ap50_within_bound_on_shapes(shapes_int8, tmp_path):
    """All 200 images of shapes_test (the 60-image set of earlier versions weighed one detection too much)."""
    test_cli = load_test_cli()
    opts = ["DATA_LOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu", "TEST.EVALUATORS", "('coco',)"]
    fp32 = _ap50(test_cli, SHAPES, tmp_path / "fp32", [], opts)
    int8 = _ap50(
        test_cli,
        SHAPES,
        tmp_path / "int8",
        ["--backend", "onnxruntime", "--onnx", str(shapes_int8["int8"])],
        opts,
    )
    assert fp32 > 80  # the bundled model finds the shapes: a meaningful comparison
    assert fp32 - int8 <= MAX_AP50_DROP, (fp32, int8)


@pytest.mark.slow
def test_int8_ap50_within_bound_on_bccd(bccd_root, tmp_path):
    if not BCCD.is_file():
        pytest.skip(f"{BCCD.relative_to(REPO_ROOT)} is not shipped yet (the BCCD model of issue 14)")
    test_cli = load_test_cli()
    info = quantize_tool.main(["--ckpt", str(BCCD), "--output", str(tmp_path / "bccd_int8.onnx")])
    opts = ["DATA_LOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu"]
    fp32 = _ap50(test_cli, BCCD, tmp_path / "fp32", [], opts)
    int8 = _ap50(
        test_cli, BCCD, tmp_path / "int8", ["--backend", "onnxruntime", "--onnx", str(info["int8"])], opts
    )
    assert fp32 - int8 <= MAX_AP50_DROP, (fp32, int8)
