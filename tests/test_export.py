"""tools/export.py: ONNX (onnxruntime) and TorchScript outputs equal PyTorch's for any batch size, the side files
are written, and the NumPy post-processing for serving gives PostProcessor's detections."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from ssd.config import load_config
from ssd.modeling import build_detection_model
from ssd.modeling.model_zoo import load_detector

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))
import export as export_tool  # noqa: E402

CONFIG = REPO_ROOT / "configs" / "shapes_mobilenet_v2_ssdlite.yaml"  # a small network: 192 x 192 input


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """Random weights with a spread that makes outputs of order 1 (fresh heads output nearly zeros, which
    would let any export pass a 1e-4 tolerance)."""
    torch.manual_seed(0)
    model = build_detection_model(load_config(CONFIG))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() > 1:
                param.normal_(0, (1.0 / param[0].numel()) ** 0.5)  # LeCun init: activations of order 1
            elif name.endswith("bias"):
                param.normal_(0, 0.1)
    path = tmp_path_factory.mktemp("ckpt") / "random.pth"
    torch.save({"model": model.state_dict()}, path)
    return path


def _reference(checkpoint: Path, images: torch.Tensor):
    model = load_detector(checkpoint, CONFIG, ["MODEL.DEVICE", "cpu"]).model
    with torch.no_grad():
        cls_logits, offsets = model.predict_raw(images)
    assert cls_logits.abs().mean() > 0.1 and offsets.abs().mean() > 0.1  # a meaningful comparison
    return model, cls_logits.numpy(), offsets.numpy()


def test_onnx_matches_pytorch_with_a_dynamic_batch(checkpoint, tmp_path):
    import onnxruntime

    paths = export_tool.main(
        [
            "--config-file",
            str(CONFIG),
            "--ckpt",
            str(checkpoint),
            "--format",
            "onnx",
            "--output",
            str(tmp_path / "m.onnx"),
        ]
    )
    images = torch.randn(3, 3, 192, 192) * 60  # batch 3; the export used batch 1
    model, cls_logits, offsets = _reference(checkpoint, images)
    session = onnxruntime.InferenceSession(str(paths["model"]), providers=["CPUExecutionProvider"])
    onnx_cls, onnx_offsets = session.run(["cls_logits", "offsets"], {"images": images.numpy()})
    assert onnx_cls.shape == (3, len(model.priors_cxcywh), 4) and onnx_offsets.shape == offsets.shape
    assert np.abs(onnx_cls - cls_logits).max() < 1e-4
    assert np.abs(onnx_offsets - offsets).max() < 1e-4

    # Side files: priors in output order, the config, the serving parameters.
    np.testing.assert_array_equal(np.load(paths["priors"]), model.priors_cxcywh.numpy())
    assert load_config(paths["config"]).INPUT.IMAGE_SIZE == 192
    serving = json.loads(paths["serving"].read_text())
    assert serving["class_names"] == ["__background__", "circle", "square", "triangle"]
    assert serving["pixel_mean"] == [123, 117, 104] and serving["size_variance"] == 0.2


def test_torchscript_matches_pytorch_with_a_dynamic_batch(checkpoint, tmp_path):
    paths = export_tool.export(str(CONFIG), str(checkpoint), "torchscript", tmp_path / "m.pt")
    images = torch.randn(2, 3, 192, 192) * 60
    _, cls_logits, offsets = _reference(checkpoint, images)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in favour of torch.export
        scripted = torch.jit.load(str(paths["model"]))
    with torch.no_grad():
        ts_cls, ts_offsets = scripted(images)
    assert np.abs(ts_cls.numpy() - cls_logits).max() < 1e-4
    assert np.abs(ts_offsets.numpy() - offsets).max() < 1e-4


def test_numpy_postprocess_equals_postprocessor(checkpoint):
    images = torch.randn(2, 3, 192, 192) * 60
    model, cls_logits, offsets = _reference(checkpoint, images)
    image_sizes = [(300, 300), (120, 400)]
    post = model.postprocessor
    expected = post(torch.from_numpy(cls_logits), torch.from_numpy(offsets), model.priors_cxcywh, image_sizes)
    got = export_tool.postprocess(
        cls_logits,
        offsets,
        model.priors_cxcywh.numpy(),
        image_sizes,
        post.center_variance,
        post.size_variance,
        post.score_threshold,
        post.nms_threshold,
        post.max_per_image,
    )
    for mine, theirs in zip(got, expected, strict=True):
        assert len(mine["scores"]) == len(theirs["scores"]) > 0
        np.testing.assert_array_equal(mine["labels"], theirs["labels"].numpy())
        np.testing.assert_allclose(mine["scores"], theirs["scores"].numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(mine["boxes"], theirs["boxes"].numpy(), rtol=1e-4, atol=1e-3)


def test_nms_golden():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], dtype=np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.95], dtype=np.float32)
    # 3 (0.95) suppresses 0 (IoU 0.9) and 1 (IoU 81/90 = 0.9 > 0.45); 2 overlaps nothing.
    np.testing.assert_array_equal(export_tool.nms(boxes, scores, 0.45), [3, 2])
    assert export_tool.nms(boxes[:0], scores[:0], 0.45).shape == (0,)


def test_missing_checkpoint_is_one_clear_line(tmp_path):
    with pytest.raises(SystemExit, match=r"export\.py: checkpoint not found: .*nope\.pth"):
        export_tool.main(["--config-file", str(CONFIG), "--ckpt", str(tmp_path / "nope.pth")])
