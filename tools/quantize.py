"""int8 static quantization of a detector's network, calibrated on training images of its config's dataset.

    python tools/quantize.py --ckpt models/shapes_ssdlite.pth --output outputs/export/shapes_ssdlite_int8.onnx
    python test.py --config-file models/shapes_ssdlite.yaml --ckpt models/shapes_ssdlite.pth \\
        --backend onnxruntime --onnx outputs/export/shapes_ssdlite_int8.onnx      # its accuracy

The checkpoint is exported to ONNX first (tools/export.py, fp32, with its side files beside it: priors, config,
serving JSON), unless --onnx names an exported file. Calibration: --calibration-images images spread evenly
over DATASETS.TRAIN, through the test transform (resize and mean, no augmentation), in batches of 8. The
method and what does not quantize well are in `ssd/engine/quantize.py` and docs/serving.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # run from any folder without installing the package
sys.path.insert(0, str(REPO_ROOT / "tools"))

import export as export_tool  # noqa: E402  (tools/export.py)

from ssd.config.loading import ConfigError  # noqa: E402
from ssd.data.build import build_dataset  # noqa: E402
from ssd.data.datasets.image_files import DatasetError  # noqa: E402
from ssd.engine.quantize import quantize_int8  # noqa: E402
from ssd.engine.runtime import onnxruntime_session  # noqa: E402
from ssd.modeling.weights import WeightsError  # noqa: E402

CALIBRATION_BATCH = 8
BENCHMARK_REPEATS = 20


def calibration_batches(cfg, num_images: int) -> Iterator[np.ndarray]:
    """(B, 3, S, S) float32 batches of `num_images` training images, spread evenly over DATASETS.TRAIN."""
    if not cfg.DATASETS.TRAIN:
        raise ValueError("DATASETS.TRAIN is empty: the calibration images are training images")
    dataset = build_dataset(cfg, cfg.DATASETS.TRAIN, is_train=False)  # is_train=False: the test transform
    count = min(num_images, len(dataset))
    indices = np.linspace(0, len(dataset) - 1, count).round().astype(int)
    for start in range(0, count, CALIBRATION_BATCH):
        yield np.stack([dataset[int(i)][0].numpy() for i in indices[start : start + CALIBRATION_BATCH]])


def time_networks(files: dict[str, Path], images: np.ndarray) -> dict[str, float]:
    """Median seconds per run of each ONNX file on `images` (N, 3, S, S), one ONNX Runtime thread, the files
    taking turns (so that a busy machine slows them alike)."""
    sessions = {name: onnxruntime_session(path, num_threads=1) for name, path in files.items()}
    times: dict[str, list[float]] = {name: [] for name in files}
    for round_ in range(BENCHMARK_REPEATS + 2):  # the first 2 rounds warm up
        for name, session in sessions.items():
            start = time.perf_counter()
            session.run(None, {"images": images})
            if round_ >= 2:
                times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=None, help="YAML config (default: the checkpoint's own)")
    parser.add_argument("--ckpt", default=None, help="checkpoint, URL or model zoo name (default: bundled)")
    parser.add_argument("--onnx", default=None, help="an exported fp32 file (default: export the checkpoint)")
    parser.add_argument("--output", required=True, help="the int8 ONNX file to write")
    parser.add_argument("--calibration-images", type=int, default=64, help="training images (default 64)")
    parser.add_argument(
        "--skip-depthwise", action="store_true", help="keep depthwise convs in float32 (see docs/serving.md)"
    )
    parser.add_argument(
        "--activations",
        choices=("int8", "uint8"),
        default="int8",
        help="activation data type: int8 (S8S8, default) or uint8 (U8S8); see ssd/engine/quantize.py",
    )
    parser.add_argument(
        "--benchmark",
        action="store_true",
        help="then time the fp32 and int8 networks (batch 1, 1 thread, median of 20, interleaved)",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.calibration_images < 1:
        parser.error("--calibration-images must be >= 1")
    output = Path(args.output)
    try:
        if args.onnx is None:
            fp32 = output.with_name(output.stem.removesuffix("_int8") + "_fp32.onnx")
            paths = export_tool.export(args.config_file, args.ckpt, "onnx", fp32, args.opts)
            fp32 = paths["model"]
        else:
            fp32 = Path(args.onnx)
            if not fp32.is_file():
                raise FileNotFoundError(f"ONNX file not found: {fp32} (write one with tools/export.py)")
        from ssd.modeling.model_zoo import load_detector  # the config the checkpoint was trained with

        cfg = load_detector(args.ckpt, args.config_file, [*args.opts, "MODEL.DEVICE", "cpu"]).cfg
        info = quantize_int8(
            fp32,
            output,
            calibration_batches(cfg, args.calibration_images),
            args.skip_depthwise,
            args.activations,
        )
    except (WeightsError, ConfigError, DatasetError, KeyError, ValueError, FileNotFoundError) as err:
        sys.exit(f"quantize.py: {err}")
    kept = f", {len(info['excluded'])} depthwise left in float32" if info["excluded"] else ""
    print(f"fp32  {fp32}")
    print(
        f"int8  {output} ({info['convs']} convs{kept}, {args.activations} activations; calibrated on "
        f"{info['calibration_images']} images of {cfg.DATASETS.TRAIN})"
    )
    if args.benchmark:
        image = next(calibration_batches(cfg, 1))  # (1, 3, S, S)
        times = time_networks({"fp32": fp32, "int8": output}, image)
        print(
            f"network, batch 1, 1 thread, median of {BENCHMARK_REPEATS}: fp32 {times['fp32'] * 1e3:.2f} ms, "
            f"int8 {times['int8'] * 1e3:.2f} ms ({times['fp32'] / times['int8']:.2f}x)"
        )
    return {"fp32": fp32, "int8": output, **info}


if __name__ == "__main__":
    main()
