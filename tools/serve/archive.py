"""Build a TorchServe archive (.mar) of a checkpoint in one line (docs/serving.md).

    python tools/serve/archive.py --ckpt models/shapes_ssdlite.pth --export-path outputs/model_store
    python tools/serve/archive.py --ckpt models/shapes_ssdlite.pth --onnx outputs/export/shapes_ssdlite_int8.onnx \\
        --model-name shapes_int8 --export-path outputs/model_store         # an int8 file from tools/quantize.py

The checkpoint is exported with tools/export.py (ONNX, fp32; or --onnx takes an exported or quantized file of
the same checkpoint: one whose input size, classes or prior count differ from the checkpoint's config is
refused, as is a file that is not ONNX), and `torch-model-archiver` (the `serve` extra) packs into <export-path>/<model-name>.mar:

    model.onnx     the network (serialized file)
    serving.json   input size, pixel mean, variances, thresholds, class names (from the checkpoint's config)
    priors.npy     (P, 4) priors, cx cy w h in 0..1
    ssd_handler.py the handler (tools/serve/ssd_handler.py): our pre-processing, ONNX Runtime, our
                   PostProcessor, JSON with class names
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tools"))

import export as export_tool  # noqa: E402  (tools/export.py)
import numpy as np  # noqa: E402

from ssd.config.loading import ConfigError  # noqa: E402
from ssd.engine.runtime import check_onnx_shapes, onnxruntime_session  # noqa: E402
from ssd.modeling.weights import WeightsError  # noqa: E402

HANDLER = HERE / "ssd_handler.py"


def build_archive(
    ckpt: str | None,
    export_path: str | Path,
    model_name: str = "ssd",
    config_file: str | None = None,
    onnx: str | Path | None = None,
    opts: list[str] | tuple[str, ...] = (),
) -> Path:
    """Export (unless `onnx` is given), then run torch-model-archiver; returns the .mar path."""
    archiver = shutil.which("torch-model-archiver") or str(
        Path(sys.executable).with_name("torch-model-archiver")
    )
    if not Path(archiver).is_file():
        raise FileNotFoundError('torch-model-archiver not found: pip install -e ".[serve]"')
    export_path = Path(export_path)
    export_path.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        # The side files (serving.json, priors.npy) always come from the checkpoint's own config.
        paths = export_tool.export(config_file, ckpt, "onnx", staging / "model.onnx", opts)
        if onnx is not None:
            if not Path(onnx).is_file():
                raise FileNotFoundError(f"ONNX file not found: {onnx} (write one with tools/export.py)")
            check_onnx_file(onnx, paths["serving"], paths["priors"])
            shutil.copyfile(onnx, staging / "model.onnx")
        shutil.copyfile(paths["serving"], staging / "serving.json")
        shutil.copyfile(paths["priors"], staging / "priors.npy")
        command = [
            archiver,
            "--model-name", model_name,
            "--version", "1.0",
            "--serialized-file", str(staging / "model.onnx"),
            "--handler", str(HANDLER),
            "--extra-files", f"{staging / 'serving.json'},{staging / 'priors.npy'}",
            "--export-path", str(export_path),
            "--force",
        ]  # fmt: skip
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed:\n{result.stdout}{result.stderr}")
    return export_path / f"{model_name}.mar"


def check_onnx_file(onnx: str | Path, serving_json: Path, priors_npy: Path) -> None:
    """ValueError naming `onnx` when it is not ONNX, or its input size, classes or prior count differ from
    the checkpoint's (serving.json, priors.npy): the server would otherwise answer every request with an error
    or with classes the model does not have."""
    serving = json.loads(serving_json.read_text())
    session = onnxruntime_session(onnx, num_threads=1)
    num_priors = np.load(priors_npy).shape[0]
    check_onnx_shapes(session, num_priors, len(serving["class_names"]), serving["image_size"], str(onnx))


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default=None, help="YAML config (default: the checkpoint's own)")
    parser.add_argument("--ckpt", default=None, help="checkpoint, URL or model zoo name (default: bundled)")
    parser.add_argument("--onnx", default=None, help="an exported or int8 file of the same checkpoint")
    parser.add_argument("--model-name", default="ssd", help="the archive's name and URL path (default ssd)")
    parser.add_argument("--export-path", default="outputs/model_store", help="where the .mar goes")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = parser.parse_args(argv)
    try:
        mar = build_archive(
            args.ckpt, args.export_path, args.model_name, args.config_file, args.onnx, args.opts
        )
    except (
        WeightsError,
        ConfigError,
        KeyError,
        FileNotFoundError,
        RuntimeError,
        ValueError,
        ImportError,
    ) as err:
        sys.exit(f"archive.py: {err}")
    print(f"archive {mar}")
    return mar


if __name__ == "__main__":
    main()
