"""The benchmark scripts run and print their ratios (quick mode, MobileNet pair only: a smoke test, not a
timing; the numbers of BENCHMARKS.md come from the full runs it documents)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

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
