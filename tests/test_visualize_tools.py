"""Learner tools and drawing helpers: each tool writes a readable image from any folder, with the right content."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from ssd.utils.visualize import color_for_label, draw_boxes, make_grid, write_image

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))
import visualize_augmentations  # noqa: E402
import visualize_matches  # noqa: E402
import visualize_priors  # noqa: E402


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable image"
    return image


def test_draw_boxes_draws_on_a_copy_in_the_label_colour():
    image = np.zeros((50, 60, 3), np.uint8)
    drawn = draw_boxes(image, np.array([[10, 20, 30, 40]]), np.array([2]), np.array([0.9]), ("bg", "a", "b"))
    assert not image.any()  # the input is untouched
    assert tuple(drawn[30, 10]) == color_for_label(2)  # left edge, away from the caption
    assert tuple(drawn[30, 20]) == (0, 0, 0)  # inside stays as it was
    assert drawn[:20].any()  # the caption tag above the box
    empty = draw_boxes(image, np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0))
    assert not empty.any()
    with pytest.raises(ValueError, match="2 boxes but 1 labels"):
        draw_boxes(image, np.zeros((2, 4)), np.array([1]))


def test_grid_and_write_image(tmp_path):
    grid = make_grid([np.zeros((10, 20, 3), np.uint8), np.zeros((15, 5, 3), np.uint8)] * 3, columns=2)
    assert grid.shape == (3 * (15 + 4) + 4, 2 * (20 + 4) + 4, 3)
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0] = 255  # pure red in RGB
    path = write_image(tmp_path / "sub" / "red.png", image)
    assert tuple(_read(path)[0, 0]) == (0, 0, 255)  # stored as BGR, read back as BGR
    with pytest.raises(OSError, match="red.xyz"):
        write_image(tmp_path / "red.xyz", image)


def test_prior_index_picks_the_priors_of_one_cell():
    """Level 1 of the shapes config is 6x6 cells with 4 priors, after 12*12*4 priors of level 0."""
    offsets = [0, 576, 720]
    cells = visualize_priors.prior_index(offsets, [12, 6], [4, 4], level=1, row=2, col=5)
    assert cells == range(576 + (2 * 6 + 5) * 4, 576 + (2 * 6 + 5) * 4 + 4)


def test_visualize_priors_from_another_folder(tmp_path, monkeypatch):
    """From an unrelated folder the tool still finds its default config (resolved from its own path)."""
    monkeypatch.chdir(tmp_path)
    output = visualize_priors.main(["--levels", "0", "3", "--locations", "0,0", "--output", "priors.png"])
    image = _read(tmp_path / output)
    assert image.shape[1] == 768  # 192 x 4, the smallest multiple of the input size >= 600
    # Each chosen level is drawn in its own colour (level l in color_for_label(l + 1)); others are absent.
    for level, present in ((0, True), (1, False), (3, True)):
        bgr = color_for_label(level + 1)[::-1]
        assert bool((image == bgr).all(axis=2).any()) == present, level


def test_visualize_priors_on_an_image_and_bad_cell(tmp_path):
    photo = tmp_path / "photo.jpg"
    write_image(photo, np.full((50, 80, 3), 90, np.uint8))
    out = visualize_priors.main(["--image", str(photo), "--levels", "2", "--output", str(tmp_path / "p.jpg")])
    assert _read(out).shape[1] == 768
    with pytest.raises(SystemExit):
        visualize_priors.main(["--levels", "2", "--locations", "9,9", "--output", str(tmp_path / "x.png")])


def test_visualize_augmentations_writes_one_panel_per_step(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = visualize_augmentations.main(["--index", "3", "--seed", "1", "--output", "aug.png"])
    printed = capsys.readouterr().out
    steps = [line for line in printed.splitlines() if line[:1].isdigit()]
    assert [s.split(":")[0].split(" ")[1] for s in steps] == [
        "PhotometricDistort", "Expand", "RandomSampleCrop", "RandomMirror", "ToPercentCoords", "Resize",
        "NormalizeToTensor",
    ]  # fmt: skip
    assert steps[-1].startswith("7 NormalizeToTensor: image 192x192")
    image = _read(tmp_path / out)
    assert image.shape[0] > 2 * 260 and image.shape[1] > 4 * 260  # 2 rows of 4 panels


def test_visualize_matches_reports_every_box(tmp_path, capsys):
    out = visualize_matches.main(["--index", "3", "--output", str(tmp_path / "m.png")])
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("box ")]
    from ssd.data.datasets import get_dataset

    annotation = get_dataset("shapes_train").get_annotation(3)
    assert len(lines) == len(annotation["labels"])
    for line in lines:
        count = int(line.split(": ")[1].split(" priors")[0])
        assert count >= 1  # every box gets at least its forced best-prior match
    assert _read(out).shape[1] == 768
