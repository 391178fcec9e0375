"""The benchmark scripts run and print their ratios (quick mode, MobileNet pair only: a smoke test, not a
timing; the numbers of BENCHMARKS.md come from the full runs it documents)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_benchmark(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    return output


def test_inference_benchmark_prints_ratios():
    output = run_benchmark("inference.py", "--pairs", "mbv3_320", "--quick", "--threads", "1")
    assert re.search(r"ratio to torchvision: ours \d+\.\d\d, ours fast \d+\.\d\d", output), output[-2000:]
    assert "GFLOP/s" in output and "x bound" in output
    # ONNX Runtime fp32 and int8 (issue 14) in the same table, end to end and network alone
    assert len(re.findall(r"ours onnxruntime int8 +median", output)) == 2, output[-2000:]
    assert re.search(r"ours onnxruntime \d+\.\d\d, ours onnxruntime int8 \d+\.\d\d", output), output[-2000:]


def test_postprocess_benchmark_prints_the_share():
    output = run_benchmark("postprocess.py", "--pairs", "mbv3_320", "--quick", "--threads", "1")
    match = re.search(r"share of end to end: ours (\d+\.\d)%", output)
    assert match, output[-2000:]
    assert 0 < float(match.group(1)) < 100


def test_train_step_benchmark_prints_ratios():
    output = run_benchmark("train_step.py", "--pairs", "mbv3_320", "--quick", "--threads", "1")
    for line in ("ours / torchvision (defaults)", "ours NCHW / torchvision", "ours / torchvision NHWC"):
        assert re.search(re.escape(line) + r".*: \d+\.\d\d", output), line


def test_data_pipeline_benchmark_prints_the_speedup(bccd_root):
    output = run_benchmark("data_pipeline.py", "--root", str(bccd_root), "--num-images", "20")
    assert re.search(r"\d+\.\d+x", output), output[-2000:]


def test_scale_benchmark_quick_writes_every_step(tmp_path):
    results = tmp_path / "scale.json"
    output = run_benchmark("scale.py", "--quick", "--root", str(tmp_path / "data"), "--results", str(results))
    for line in (
        "start-up to the first batch",
        "worker private memory",
        "one validation of",
        "evaluation of 24 images",
    ):
        assert line in output, output[-2000:]
    data = json.loads(results.read_text())
    assert data["command"].startswith("python benchmarks/scale.py --quick") and "machine" in data
    train, evaluation = data["train"], data["eval"]["24"]
    # 200 names, 20 % held out (below VAL_MAX_IMAGES): 160 train, 40 validation images.
    assert (train["train_images"], train["val_images"]) == (160, 40)
    assert train["worker_last_batches"] > train["worker_first_batches"] > 0
    assert evaluation["AP_faster"] == pytest.approx(evaluation["AP_pycocotools"], abs=1e-4)
    assert 0 < evaluation["AP_faster"] < 100 and evaluation["report_mb"] > 0
