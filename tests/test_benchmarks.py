"""The benchmark scripts run, print their ratios and write them to `--results` (quick mode, MobileNet pair
only: a smoke test, not a timing; the numbers of BENCHMARKS.md come from the full runs it documents).

The results file is what the published numbers are checked against (tests/doc_numbers.py), so each test
reads the ratios off the printed output and finds the same values in the file, and checks the machine
description against /proc/cpuinfo and os.cpu_count() read here.
"""

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


def read_results(path: Path, script: str, *args: str) -> dict:
    """The results file of a run, with the fields every benchmark writes checked."""
    results = json.loads(path.read_text())
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            line.split(":", 1)[1].strip()
            for line in cpuinfo.read_text().splitlines()
            if line.startswith("model name")
        ]
        assert results["machine"]["cpu"] == names[0]
    assert results["machine"]["logical_cpus"] == os.cpu_count()
    assert results["command"].split() == ["python", f"benchmarks/{script}", *args]
    for key in ("load_average_start", "load_average_end"):
        assert len(results[key]) == 3 and all(value >= 0 for value in results[key]), results[key]
    assert results["wall_seconds"] > 0
    return results


def two_decimals(value: float) -> str:
    return f"{value:.2f}"


def test_inference_benchmark_prints_ratios_and_writes_them(tmp_path):
    args = ("--pairs", "mbv3_320", "--quick", "--threads", "1", "--results", str(tmp_path / "inference.json"))
    output = run_benchmark("inference.py", *args)
    assert re.search(r"ratio to torchvision: ours \d+\.\d\d, ours fast \d+\.\d\d", output), output[-2000:]
    assert "GFLOP/s" in output and "x bound" in output
    # ONNX Runtime fp32 and int8 (issue 14) in the same table, end to end and network alone
    assert len(re.findall(r"ours onnxruntime int8 +median", output)) == 2, output[-2000:]
    printed = re.findall(
        r"ratio to torchvision: ours (\d+\.\d\d), ours fast (\d+\.\d\d), ours onnxruntime (\d+\.\d\d), "
        r"ours onnxruntime int8 (\d+\.\d\d)",
        output,
    )
    assert len(printed) == 2, output[-2000:]  # end to end, then network alone
    results = read_results(tmp_path / "inference.json", "inference.py", *args)
    assert results["machine"]["threads"] == 1
    batch = results["pairs"]["mbv3_320"]["batches"]["1"]
    contenders = ("ours", "ours fast", "ours onnxruntime", "ours onnxruntime int8")
    for part, ratios in zip(("end_to_end_ratio", "network_ratio"), printed, strict=True):
        assert tuple(two_decimals(batch[part][name]) for name in contenders) == ratios, part
    speedup = re.search(
        r"int8 speed-up over ONNX Runtime fp32: end to end (\d+\.\d\d)x, network (\d+\.\d\d)x", output
    )
    assert speedup, output[-2000:]
    written = batch["int8_speedup"]
    assert (two_decimals(written["end_to_end"]), two_decimals(written["network"])) == speedup.groups()
    # the ratio is the medians' quotient: recompute it from the written medians (rounded to 1 µs)
    medians = {name: batch["network"][name]["median_ms"] for name in ("ours fast", "torchvision")}
    assert abs(batch["network_ratio"]["ours fast"] - medians["ours fast"] / medians["torchvision"]) < 1e-3


def test_postprocess_benchmark_prints_the_share_and_writes_it(tmp_path):
    args = ("--pairs", "mbv3_320", "--quick", "--threads", "1", "--results", str(tmp_path / "post.json"))
    output = run_benchmark("postprocess.py", *args)
    match = re.search(
        r"ours / torchvision: (\d+\.\d\d); share of end to end: ours (\d+\.\d)%.*torchvision (\d+\.\d)%",
        output,
    )
    assert match, output[-2000:]
    assert 0 < float(match.group(2)) < 100
    written = read_results(tmp_path / "post.json", "postprocess.py", *args)["pairs"]["mbv3_320"]["1"]
    assert two_decimals(written["ours_over_torchvision"]) == match.group(1)
    shares = written["share_percent"]
    assert (f"{shares['ours']:.1f}", f"{shares['torchvision']:.1f}") == match.group(2, 3)


def test_train_step_benchmark_prints_ratios_and_writes_them(tmp_path):
    args = ("--pairs", "mbv3_320", "--quick", "--threads", "1", "--results", str(tmp_path / "train.json"))
    output = run_benchmark("train_step.py", *args)
    written = read_results(tmp_path / "train.json", "train_step.py", *args)["pairs"]["mbv3_320"]["ratios"]
    for line, key in (
        ("ours / torchvision (defaults)", "ours / torchvision"),
        ("ours NCHW / torchvision", "ours NCHW / torchvision"),
        ("ours / torchvision NHWC", "ours / torchvision NHWC"),
    ):
        match = re.search(re.escape(line) + r".*: (\d+\.\d\d)", output)
        assert match, line
        assert two_decimals(written[key]) == match.group(1), key


def test_data_pipeline_benchmark_prints_the_speedup_and_writes_it(bccd_root, tmp_path):
    args = ("--root", str(bccd_root), "--num-images", "20", "--results", str(tmp_path / "data.json"))
    output = run_benchmark("data_pipeline.py", *args)
    match = re.search(r"speed-up: (\d+\.\d\d)x", output)
    assert match, output[-2000:]
    written = read_results(tmp_path / "data.json", "data_pipeline.py", *args)
    assert two_decimals(written["speedup"]) == match.group(1)
    rates = written["pipelines"]
    ours, reference = (rates[name]["images_per_s_median"] for name in rates)
    assert abs(written["speedup"] - ours / reference) < 1e-9
    printed_rates = re.findall(r"(\d+\.\d) images/s median", output)
    assert printed_rates == [f"{ours:.1f}", f"{reference:.1f}"]


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


def test_startup_benchmark_quick_times_train_py_and_its_recipe_steps(tmp_path):
    results = tmp_path / "startup.json"
    args = ("--quick", "--root", str(tmp_path / "data"), "--results", str(results))
    output = run_benchmark("startup.py", *args)
    data = read_results(results, "startup.py", *args)
    printed = re.search(r"train.py to its training loop: (\d+\.\d) s, peak RSS (\d+\.\d\d) GB", output)
    assert printed, output[-2000:]
    assert (printed[1], printed[2]) == (
        f"{data['loop_start_s']:.1f}",
        two_decimals(data["loop_start_peak_rss_gb"]),
    )
    assert 0 < data["loop_start_s"] <= data["first_iteration_s"]
    assert 0 < data["imports_peak_rss_gb"] < data["loop_start_peak_rss_gb"] <= data["peak_rss_gb"]
    assert 0 < data["loop_start_cpu_s"]
    assert data["train_images"] == 200 and len(data["worker_peak_rss_gb"]) == 2  # the base's 2 loader workers
    # Every step of the recipe is timed from train.py's own log (the base config fits priors).
    assert set(data["recipe_steps_s"]) == {
        "parse DATASETS.TRAIN", "hold out validation", "read training boxes", "fit priors",
        "training and validation views", "coverage table",
    }  # fmt: skip
    assert "holding out 40 of the 200 training images" in output
