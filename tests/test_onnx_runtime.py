"""The onnxruntime backend (ssd/engine/runtime.py) of demo.py and test.py: on the bundled shapes model its
detections equal eager PyTorch's within float rounding, and test.py's AP is the same within 0.1.

Tolerances: the ONNX network and the eager one compute the same convs in another order (the exporter folds
the BatchNorms into the convs), so the raw outputs differ by float rounding: measured max 6.2e-6 on logits
up to 7.5 and 5.2e-6 on offsets, on the 8 demo images; the test allows 1e-4. After the shared PostProcessor,
scores must agree within 1e-4 and box corners within 0.01 pixel."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime", reason="the onnxruntime backend needs onnxruntime (the dev extra)")

from ssd.engine.runtime import OnnxRuntimeDetector, build_backend, onnxruntime_session  # noqa: E402
from ssd.modeling.model_zoo import BUNDLED_CHECKPOINT, load_detector  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "tools"))
import export as export_tool  # noqa: E402

import demo  # noqa: E402

SCORE_ATOL = 1e-4
BOX_ATOL_PX = 1e-2


def load_test_cli():
    """The top-level test.py, loaded by path (`import test` could find the standard library's test package)."""
    spec = importlib.util.spec_from_file_location("ssd_test_cli", REPO_ROOT / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_same_detections(eager: dict, ort: dict) -> None:
    """Two detection dicts of one image (NumPy) agree rank by rank within the tolerances above."""
    assert len(eager["scores"]) == len(ort["scores"]), (len(eager["scores"]), len(ort["scores"]))
    np.testing.assert_array_equal(eager["labels"], ort["labels"])
    np.testing.assert_allclose(eager["scores"], ort["scores"], rtol=0, atol=SCORE_ATOL)
    np.testing.assert_allclose(eager["boxes"], ort["boxes"], rtol=0, atol=BOX_ATOL_PX)


@pytest.fixture(scope="module")
def bundled():
    torch.set_num_threads(1)
    return load_detector(None, None, ["MODEL.DEVICE", "cpu"])


def test_detections_equal_eager_on_the_bundled_model(bundled):
    detector = demo.Detector(bundled, score_threshold=0.0)  # the shared pre-processing
    ort = build_backend(bundled.model, "onnxruntime", bundled.cfg.INPUT.IMAGE_SIZE, num_threads=1)
    assert isinstance(ort, OnnxRuntimeDetector)
    images = [image for _, image, _ in demo.synthetic_images()]
    batch = torch.cat([detector.prepare(image) for image in images])  # (8, 3, S, S)
    sizes = [image.shape[:2] for image in images]
    with torch.no_grad():
        eager_raw = bundled.model.predict_raw(batch)
        ort_raw = ort.predict_raw(batch)
        for e, o in zip(eager_raw, ort_raw, strict=True):
            assert (e - o).abs().max() < 1e-4
        eager_dets = bundled.model(batch, image_sizes=sizes)
        ort_dets = ort(batch, image_sizes=sizes)
    assert sum(len(d["scores"]) for d in eager_dets) > 8  # something to compare (threshold 0.01)
    for e, o in zip(eager_dets, ort_dets, strict=True):
        assert_same_detections({k: v.numpy() for k, v in e.items()}, {k: v.numpy() for k, v in o.items()})


def test_demo_with_an_exported_file_equals_eager(tmp_path, capsys):
    paths = export_tool.main(["--format", "onnx", "--output", str(tmp_path / "shapes.onnx")])
    eager = demo.main(["--output-dir", str(tmp_path / "eager"), "--threads", "1"])
    ort = demo.main(
        ["--output-dir", str(tmp_path / "ort"), "--backend", "onnxruntime", "--onnx", str(paths["model"])]
    )
    assert "onnxruntime on the cpu" in capsys.readouterr().out
    assert sum(len(r["scores"]) for r in eager) >= demo.DEMO_NUM_IMAGES  # the shapes are found
    for e, o in zip(eager, ort, strict=True):
        assert e["name"] == o["name"]
        assert_same_detections(e, o)


def test_wrong_onnx_file_or_flag_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="ONNX file not found: .*missing.onnx"):
        demo.main(["--backend", "onnxruntime", "--onnx", str(tmp_path / "missing.onnx")])
    with pytest.raises(SystemExit, match="--onnx is read by the onnxruntime backend only"):
        demo.main(["--onnx", str(tmp_path / "missing.onnx")])
    # A file of another network (here: fewer priors in the config than boxes in the file) is named.
    paths = export_tool.main(["--format", "onnx", "--output", str(tmp_path / "other.onnx")])
    model = load_detector(None, None, ["MODEL.DEVICE", "cpu"]).model
    with pytest.raises(ValueError, match="other.onnx predicts 348 boxes but the config gives 10 priors"):
        OnnxRuntimeDetector(
            onnxruntime_session(paths["model"]),
            model.priors_cxcywh[:10],
            model.postprocessor,
            str(paths["model"]),
        )


@pytest.mark.slow
def test_test_py_ap_is_the_same_with_onnxruntime(tmp_path):
    """test.py on 24 new synthetic images (seed 3, the shapes test seed): AP and AP50 within 0.1."""
    test_cli = load_test_cli()
    opts = [
        "DATASETS.REGISTER", "('shapes_small:synthetic:24:3',)", "DATASETS.TEST", "('shapes_small',)",
        "DATA_LOADER.NUM_WORKERS", "0", "MODEL.DEVICE", "cpu",
    ]  # fmt: skip
    config = str(BUNDLED_CHECKPOINT.with_suffix(".yaml"))
    common = ["--config-file", config, "--ckpt", str(BUNDLED_CHECKPOINT), "--threads", "1"]
    eager = test_cli.main([*common, "--output-dir", str(tmp_path / "eager"), *opts])["shapes_small"]
    ort = test_cli.main([*common, "--backend", "onnxruntime", "--output-dir", str(tmp_path / "ort"), *opts])[
        "shapes_small"
    ]
    assert eager["bbox"]["AP50"] > 20  # a meaningful comparison: the bundled model finds the shapes
    for task, metric in (("bbox", "AP"), ("bbox", "AP50"), ("voc", "mAP50_07")):
        assert abs(eager[task][metric] - ort[task][metric]) <= 0.1, (task, metric, eager, ort)
    assert "Network in ONNX Runtime" in (tmp_path / "ort" / "log.txt").read_text()
