"""What int8 costs in accuracy, per activation data type, on this CPU: the numbers docs/serving.md publishes.

    python benchmarks/int8_accuracy.py --results results/int8_accuracy.json           # shapes (+ BCCD if present)

For each bundled model (models/shapes_ssdlite.pth on shapes_test and on 60 new shapes images; models/bccd_ssdlite.pth
on BCCD test when ../shared/data/BCCD exists) it exports the fp32 network once, quantizes it with int8
activations (S8S8, the default of tools/quantize.py) and with uint8 activations (U8S8), and evaluates the
three with test.py (fp32 in PyTorch, int8 in ONNX Runtime, 1 thread). The results file names the CPU and the
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
CASES = {  # name -> (checkpoint, test.py overrides, needs BCCD)
    "shapes_test": ("models/shapes_ssdlite.pth", [], False),
    "shapes_60": ("models/shapes_ssdlite.pth", SHAPES_60, False),
    "bccd_test": ("models/bccd_ssdlite.pth", [], True),
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


def evaluate(test_cli, ckpt: str, output_dir: Path, overrides: list[str], onnx: Path | None) -> dict:
    backend = ["--backend", "onnxruntime", "--onnx", str(onnx)] if onnx else []
    args = ["--config-file", str(Path(ckpt).with_suffix(".yaml")), "--ckpt", ckpt, "--threads", "1"]
    results = test_cli.main(
        [*args, "--output-dir", str(output_dir), *backend, *overrides, "DATA_LOADER.NUM_WORKERS", "0",
         "MODEL.DEVICE", "cpu"]
    )  # fmt: skip
    ((name, metrics),) = results.items()
    return {"AP50": round(metrics["bbox"]["AP50"], 2), "AP": round(metrics["bbox"]["AP"], 2)}


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
        for name, (ckpt, overrides, needs_bccd) in CASES.items():
            if needs_bccd and not bccd_present:
                print(f"{name}: skipped (../shared/data/BCCD not found)")
                continue
            case = {"fp32": evaluate(test_cli, ckpt, tmp / name / "fp32", overrides, None)}
            for activations in ("int8", "uint8"):
                key = (ckpt, activations)
                if key not in files:
                    info = quantize_tool.main(
                        ["--ckpt", ckpt, "--output", str(tmp / f"{Path(ckpt).stem}_{activations}_int8.onnx"),
                         "--activations", activations, "--calibration-images", str(args.calibration_images)]
                    )  # fmt: skip
                    files[key] = info["int8"]
                metrics = evaluate(test_cli, ckpt, tmp / name / activations, overrides, files[key])
                metrics["AP50_drop"] = round(case["fp32"]["AP50"] - metrics["AP50"], 2)
                case[f"{activations}_activations"] = metrics
            out["cases"][name] = case
            print(name, json.dumps(case))
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out, indent=2) + "\n")
    print(f"written to {args.results}")
    return out


if __name__ == "__main__":
    main()
