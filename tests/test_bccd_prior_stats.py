"""tools/bccd_prior_stats.py: the box-size percentiles on hand-made boxes, and results/bccd_priors.json (the
tables of docs/bccd.md) is what the tool measures on BCCD now (skipped without ../shared/data/BCCD)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def load_tool():
    spec = importlib.util.spec_from_file_location("bccd_prior_stats", REPO / "tools" / "bccd_prior_stats.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_box_sizes_are_percentiles_of_the_side_and_the_shape_in_input_pixels():
    # Image size 100: boxes_norm * 100 are input pixels. Class 1: sides sqrt(w * h) = 10, 20, 40 px with
    # w / h = 0.25, 1, 4; class 2: one 30 x 30 box. numpy's linear percentiles of [10, 20, 40]: the 5th is at
    # index 0.1 -> 10 + 0.1 * 10 = 11, the median 20, the 95th at index 1.9 -> 20 + 0.9 * 20 = 38.
    image_a = (np.array([[0.0, 0.0, 0.05, 0.2], [0.5, 0.5, 0.7, 0.7]]), np.array([1, 1]))  # 5x20, 20x20
    image_b = (np.array([[0.1, 0.1, 0.9, 0.3], [0.2, 0.2, 0.5, 0.5]]), np.array([1, 2]))  # 80x20, 30x30
    table = load_tool().box_sizes([image_a, image_b], ["__background__", "a", "b"], image_size=100)
    assert table["a"]["boxes"] == 3 and table["b"]["boxes"] == 1
    assert table["a"]["side_px"] == pytest.approx({"p5": 11.0, "p50": 20.0, "p95": 38.0})
    # w / h = 0.25, 1, 4: 5th 0.25 + 0.1 * 0.75 = 0.325, median 1, 95th 1 + 0.9 * 3 = 3.7
    assert table["a"]["w_over_h"] == pytest.approx({"p5": 0.325, "p50": 1.0, "p95": 3.7}, abs=1e-3)
    assert table["b"]["side_px"] == pytest.approx({"p5": 30.0, "p50": 30.0, "p95": 30.0})


def test_committed_results_are_what_the_tool_measures(bccd_root):
    committed = json.loads((REPO / "results" / "bccd_priors.json").read_text())
    register = [f"bccd_{split}:voc:{bccd_root}:{split}" for split in ("train", "val", "test")]
    measured = load_tool().measure(["DATASETS.REGISTER", repr(tuple(register))])
    assert measured["train_boxes"] == committed["train_boxes"] == 2804  # 2805 minus the zero-area RBC box
    assert measured["boxes"] == committed["boxes"], "rerun: python tools/bccd_prior_stats.py --results ..."
    assert measured["priors"] == committed["priors"], "rerun: python tools/bccd_prior_stats.py --results ..."
