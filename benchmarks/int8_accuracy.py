"""What int8 costs in accuracy, per activation data type, on this CPU: the numbers docs/serving.md publishes.

    python benchmarks/int8_accuracy.py --results results/int8_accuracy.json           # shapes (+ BCCD if present)

For each bundled model (models/shapes_ssdlite.pth on shapes_test and on 60 new shapes images; models/bccd_ssdlite.pth
on BCCD test when ../shared/data/BCCD exists) it evaluates with test.py (1 thread) the network in PyTorch, in
ONNX Runtime fp32 (shapes_test), and quantized by tools/quantize.py with int8 activations (S8S8, the default),
uint8 activations (U8S8) and, on shapes_test, int8 with the depthwise convs left in float32. The results file names the CPU and the
int8 instruction sets it has (AVX-512 VNNI, AVX-VNNI, AMX), since the int8 kernels ONNX Runtime picks depend on
them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))
import quantize as quantize_tool  # noqa: E402  (tools/quantize.py)
import seed_runs  # noqa: E402  (tools/seed_runs.py: the machine description)

INT8_FLAGS = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8")
SHAPES_60 = ["DATASETS.REGISTER", "('shapes_60:synthetic:60:3',)", "DATASETS.TEST", "('shapes_60',)"]
# backend variants: name -> (tools/quantize.py arguments, or None for no quantization; --backend)
VARIANTS = {
    "pytorch": (None, "pytorch"),
    "onnxruntime_fp32": (None, "onnxruntime"),
    "int8": (["--activations", "int8"], "onnxruntime"),
    "int8_uint8_activations": (["--activations", "uint8"], "onnxruntime"),
    "int8_depthwise_fp32": (["--activations", "int8", "--skip-depthwise"], "onnxruntime"),
}
CASES = {  # name -> (checkpoint, test.py overrides, needs BCCD, variants)
    "shapes_test": ("models/shapes_ssdlite.pth", [], False, list(VARIANTS)),
    "shapes_60": (
        "models/shapes_ssdlite.pth",
        SHAPES_60,
        False,
        ["pytorch", "int8", "int8_uint8_activations"],
    ),
    "bccd_test": ("models/bccd_ssdlite.pth", [], True, ["pytorch", "int8", "int8_uint8_activations"]),
}


def cpu_flags() -> dict[str, bool]:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    words = set(text.split())
    return {flag: flag in words for flag in INT8_FLAGS}


def load_test_cli():
    spec = importlib.util.spec_from_file_location("ssd_test_cli", REPO / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def evaluate(test_cli, ckpt: str, output_dir: Path, overrides: list[str], backend: str, onnx: Path | None):
    """test.py's results for one dataset, {task: {metric: value}}, rounded to 0.01."""
    backend_args = ["--backend", backend] + (["--onnx", str(onnx)] if onnx else [])
    args = ["--config-file", str(Path(ckpt).with_suffix(".yaml")), "--ckpt", ckpt, "--threads", "1"]
    results = test_cli.main(
        [*args, "--output-dir", str(output_dir), *backend_args, *overrides, "DATA_LOADER.NUM_WORKERS", "0",
         "MODEL.DEVICE", "cpu"]
    )  # fmt: skip
    ((_, tasks),) = results.items()
    return {task: {k: round(v, 2) for k, v in metrics.items()} for task, metrics in tasks.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", required=True, metavar="JSON")
    parser.add_argument("--calibration-images", type=int, default=64)
    args = parser.parse_args(argv)
    test_cli = load_test_cli()
    bccd_present = (REPO.parent / "shared" / "data" / "BCCD" / "Annotations").is_dir()
    out: dict = {
        "command": "python benchmarks/int8_accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": {**seed_runs.machine_description(), "int8_flags": cpu_flags()},
        "calibration_images": args.calibration_images,
        "cases": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files: dict[tuple[str, str], Path] = {}
        for name, (ckpt, overrides, needs_bccd, variants) in CASES.items():
            if needs_bccd and not bccd_present:
                print(f"{name}: skipped (../shared/data/BCCD not found)")
                continue
            case = {}
            for variant in variants:
                quantize_args, backend = VARIANTS[variant]
                onnx = None
                if quantize_args is not None:
                    if (ckpt, variant) not in files:
                        output = tmp / f"{Path(ckpt).stem}_{variant}_int8.onnx"
                        info = quantize_tool.main(
                            ["--ckpt", ckpt, "--output", str(output), *quantize_args,
                             "--calibration-images", str(args.calibration_images)]
                        )  # fmt: skip
                        files[(ckpt, variant)] = info["int8"]
                    onnx = files[(ckpt, variant)]
                case[variant] = evaluate(test_cli, ckpt, tmp / name / variant, overrides, backend, onnx)
            for variant in variants:
                if variant.startswith("int8"):
                    case[variant]["AP50_drop"] = round(
                        case["pytorch"]["bbox"]["AP50"] - case[variant]["bbox"]["AP50"], 2
                    )
            out["cases"][name] = case
            print(name, json.dumps({v: (m["bbox"]["AP"], m["bbox"]["AP50"]) for v, m in case.items()}))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {args.results}")
    return out


if __name__ == "__main__":
    main()
