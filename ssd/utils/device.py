"""MODEL.DEVICE -> torch.device: the one place the run's device is chosen (train.py, test.py, demo.py)."""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from ssd.config import ConfigError
from ssd.utils import dist as dist_utils


def select_device(name: str) -> torch.device:
    """MODEL.DEVICE -> torch.device; "auto" picks CUDA when available, else the CPU.

    Under torchrun each process takes the GPU of its LOCAL_RANK. On CUDA, cuDNN benchmarking is switched on:
    SSD's input size is fixed, so the fastest kernels are picked once.

    Raises:
        ConfigError: CUDA was asked for but is not available.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"MODEL.DEVICE is {name!r} but CUDA is not available; use 'auto' or 'cpu'")
        if device.index is None:
            device = torch.device("cuda", dist_utils.get_local_rank())
        torch.backends.cudnn.benchmark = True
    return device


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ("AMD EPYC", "Intel(R) Xeon(R) ..."), else platform's guess.

    Results files (benchmarks/record.py, tools/seed_runs.py) record it: float and int8 kernels differ between
    CPU families, so a measured number names the CPU it came from.
    """
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
