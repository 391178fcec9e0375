"""demo.py: with no arguments the bundled model finds the generated shapes; folders, files, a video, overrides,
--print-config, and one-line errors for missing inputs."""

from __future__ import annotations

import sys
import urllib.error
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from ssd.modeling.model_zoo import BUNDLED_CHECKPOINT
from ssd.structures.boxes import np_box_iou
from ssd.utils.visualize import write_image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
import demo  # noqa: E402


def test_bundled_model_is_small_and_self_describing():
    assert BUNDLED_CHECKPOINT.is_file() and BUNDLED_CHECKPOINT.with_suffix(".yaml").is_file()
    assert BUNDLED_CHECKPOINT.stat().st_size <= 10 * 1024 * 1024
    content = torch.load(BUNDLED_CHECKPOINT, weights_only=True)
    assert set(content) == {"model", "config", "class_names", "command"}
    assert content["class_names"] == ["__background__", "circle", "square", "triangle"]
    assert "python train.py --config-file configs/shapes_bundled.yaml" in content["command"]


def test_no_arguments_finds_the_generated_shapes(tmp_path, monkeypatch, capsys):
    """`python demo.py` in a fresh folder: annotated images in outputs/demo/, most objects found."""
    monkeypatch.chdir(tmp_path)
    results = demo.main([])
    printed = capsys.readouterr().out
    assert len(results) == demo.DEMO_NUM_IMAGES
    assert sorted(p.name for p in (tmp_path / "outputs" / "demo").iterdir()) == [r["name"] for r in results]
    assert "| load" in printed and "| inference" in printed and "| draw" in printed and "mean FPS" in printed

    found = total = false_positives = 0
    for result, (name, image, annotation) in zip(results, demo.synthetic_images(), strict=True):
        assert result["name"] == name
        assert cv2.imread(str(result["output"])).shape == image.shape
        gt_boxes, gt_labels = annotation["boxes_xyxy"], annotation["labels"]
        iou = np_box_iou(gt_boxes, result["boxes"]) if len(result["boxes"]) else np.zeros((len(gt_boxes), 0))
        same_class = gt_labels[:, None] == result["labels"][None, :]
        hits = (iou >= 0.5) & same_class  # (G, K)
        found += int(hits.any(axis=1).sum())
        total += len(gt_boxes)
        false_positives += int((~hits.any(axis=0)).sum())
        assert (result["scores"] > demo.DEFAULT_SCORE_THRESHOLD).all()
    # Shapes may hide each other (later ones are painted on top), so a few cannot be found.
    assert found / total >= 0.8, f"recall {found}/{total}"
    assert false_positives <= total // 4, f"{false_positives} false positives for {total} objects"


def test_images_dir_with_every_suffix_and_overrides(tmp_path, capsys):
    images = tmp_path / "in"
    for suffix in (".jpg", ".jpeg", ".png", ".bmp"):
        write_image(images / f"a{suffix}", np.full((60, 90, 3), 128, np.uint8))
    (images / "notes.txt").write_text("not an image")
    extra = tmp_path / "extra.png"
    write_image(extra, np.full((40, 40, 3), 30, np.uint8))
    out = tmp_path / "out"
    results = demo.main(
        ["--images-dir", str(images), str(extra), "--output-dir", str(out), "MODEL.DEVICE", "cpu"]
    )
    assert [r["name"] for r in results] == ["a.bmp", "a.jpeg", "a.jpg", "a.png", "extra.png"]
    for result in results:
        assert cv2.imread(str(out / result["name"])) is not None


def test_parse_args_splits_files_from_overrides():
    args = demo.parse_args(["x.jpg", "y.png", "MODEL.DEVICE", "cpu", "TEST.NMS_THRESHOLD", "0.5"])
    assert args.files == ["x.jpg", "y.png"]
    assert args.opts == ["MODEL.DEVICE", "cpu", "TEST.NMS_THRESHOLD", "0.5"]


def _write_video(path: Path, frames: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (128, 96))
    assert writer.isOpened()
    for _, (_, image, _) in zip(range(frames), demo.synthetic_images(), strict=False):
        writer.write(cv2.cvtColor(cv2.resize(image, (128, 96)), cv2.COLOR_RGB2BGR))
    writer.release()


@pytest.mark.parametrize(("stride", "expected"), [(1, 5), (2, 3)])
def test_video_keeps_every_stride_th_frame(tmp_path, stride, expected):
    video = tmp_path / "clip.mp4"
    _write_video(video, 5)
    result = demo.main(["--video", str(video), "--frame-stride", str(stride), "--output-dir", str(tmp_path)])
    assert result["frames_read"] == 5 and result["frames_written"] == expected
    capture = cv2.VideoCapture(str(result["output"]))
    size = (capture.get(cv2.CAP_PROP_FRAME_WIDTH), capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    count = 0
    while capture.read()[0]:
        count += 1
    capture.release()
    assert count == expected and size == (128, 96)


def test_print_config(capsys):
    cfg = demo.main(["--print-config", "TEST.NMS_THRESHOLD", "0.3"])
    printed = capsys.readouterr().out
    assert "NMS_THRESHOLD: 0.3" in printed and "IMAGE_SIZE: 128" in printed
    assert cfg.TEST.NMS_THRESHOLD == 0.3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["no_such.jpg"], "demo.py: image not found: no_such.jpg"),
        (["--images-dir", "no_such_dir"], "demo.py: images folder not found: no_such_dir"),
        (["--video", "no_such.mp4"], "demo.py: video not found: no_such.mp4"),
        (["--ckpt", "no_such.pth"], "demo.py: checkpoint not found: no_such.pth"),
    ],
)
def test_missing_inputs_are_one_line_errors(argv, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as err:
        demo.main(argv)
    assert str(err.value) == message


def test_zoo_name_without_network_names_the_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def no_network(url, dst, *args, **kwargs):
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(SystemExit) as err:
        demo.main(["--ckpt", "mobilenet_v3_ssd320_voc0712"])
    message = str(err.value)
    assert "\n" not in message
    assert "https://github.com/lufficc/SSD/releases/download/1.2/mobilenet_v3_ssd320_voc0712.pth" in message
    assert str(tmp_path / "hub" / "checkpoints" / "mobilenet_v3_ssd320_voc0712.pth") in message
