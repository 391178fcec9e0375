"""MODEL.DEVICE -> torch.device: the one place the run's device is chosen (train.py, test.py, demo.py)."""

from __future__ import annotations

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
