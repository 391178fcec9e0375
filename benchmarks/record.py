"""The machine a benchmark ran on, and the results file (`--results PATH`) every benchmark script writes.

A published speed is only worth the conditions it was measured under, so each results file holds, next to
the numbers the script printed:

    {"command": "python benchmarks/inference.py --threads 1 ...",   # the exact command line
     "date": "2026-12-01T22:10:05+00:00", "commit": "0094cbf", "code_changed": false,
     "machine": {"cpu": "AMD EPYC", "logical_cpus": 2, "threads": 1, "torch": ..., "torchvision": ...,
                 "onnxruntime": ..., "python": ...},
     "load_average_start": [1 min, 5 min, 15 min], "load_average_end": [...], "wall_seconds": 312.4,
     ... the script's own keys (times in ms, ratios, rates) ...}

`code_changed` is true when the package or the benchmarks differed from `commit` (the times then belong to
uncommitted code). BENCHMARKS.md, README.md and docs/serving.md quote these files, and tests/doc_numbers.py
checks every number there against them.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torchvision

from ssd.utils.device import cpu_model

REPO_ROOT = Path(__file__).resolve().parents[1]


def onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return onnxruntime.__version__


def machine(threads: int) -> dict:
    """CPU model, logical CPUs, torch threads and library versions (what stays fixed during a run)."""
    return {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "threads": threads,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnxruntime": onnxruntime_version(),
        "python": platform.python_version(),
    }


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_line(threads: int) -> str:
    """One printed line: CPU, threads, load average now, date, torch and torchvision versions."""
    info = machine(threads)
    load = " ".join(f"{x:.2f}" for x in load_average())
    return (
        f"machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, {threads} torch threads, load average "
        f"{load}, {datetime.date.today()}, torch {info['torch']}, torchvision {info['torchvision']}"
        + (f", onnxruntime {info['onnxruntime']}" if info["onnxruntime"] else "")
    )


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def command_line() -> str:
    """The command that is running, as typed from the repository root (`python benchmarks/x.py ...`)."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(REPO_ROOT))
    except ValueError:
        script_text = str(script)
    return shlex.join(["python", script_text, *sys.argv[1:]])


def start(threads: int) -> dict:
    """A new record: command, date, commit, machine and the load average now. Call first thing in main()."""
    changed = _git("status", "--porcelain", "--untracked-files=no", "--", "ssd", "benchmarks")
    return {
        "command": command_line(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "--short", "HEAD"),
        "code_changed": None if changed is None else bool(changed),
        "machine": machine(threads),
        "load_average_start": load_average(),
        "_started": time.perf_counter(),
    }


def write(path: str | None, record: dict) -> None:
    """Add the end-of-run load average and wall time to `record` and write it to `path` as JSON (no-op for
    None)."""
    if path is None:
        return
    record = dict(record)
    record["load_average_end"] = load_average()
    record["wall_seconds"] = round(time.perf_counter() - record.pop("_started"), 1)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(record, indent=2) + "\n")
    print(f"results written to {target}")


def timing(seconds: list[float]) -> dict:
    """{"median_ms", "min_ms"} of a list of seconds, as the tables print them."""
    return {"median_ms": round(statistics.median(seconds) * 1e3, 3), "min_ms": round(min(seconds) * 1e3, 3)}
