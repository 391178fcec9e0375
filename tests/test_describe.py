"""tools/describe.py: per-level table, prior total, parameter count and FLOPs of a config's model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))
import describe  # noqa: E402


def test_describe_vgg300_from_another_folder(tmp_path):
    """The command line, run outside the repository: the SSD300 prior total of the paper (8732)."""
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "describe.py"), "--config-file",
         str(REPO_ROOT / "configs" / "vgg_ssd300_voc0712.yaml")],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "priors: 8732" in lines
    assert "parameters: 26,285,486" in lines
    assert "    0   38x38       8      512         4    5776" in lines  # conv4_3
    assert "    5     1x1     300      256         4       4" in lines  # conv11_2


def test_describe_with_overrides_counts_flops():
    """Overrides reach the model; FLOPs of the 1x1-only change are checked against a hand count."""
    config = str(REPO_ROOT / "configs" / "mobilenet_v2_ssd320_voc0712.yaml")
    base = describe.describe(config, [])
    assert "priors: 3234" in base.splitlines()
    ten_classes = describe.describe(config, ["MODEL.NUM_CLASSES", "11"])
    assert "11 classes" in ten_classes

    def gflops(report: str) -> float:
        line = next(x for x in report.splitlines() if x.startswith("GFLOPs: "))
        return float(line.split()[1])

    # 10 fewer classes remove 10 * 6 output channels from each classification pointwise/1x1 conv:
    # 2 FLOPs per multiply-add, in_channels per output, one output per map cell.
    channels, sizes = [96, 1280, 512, 256, 256, 64], [20, 10, 5, 3, 2, 1]
    removed = sum(2 * c * 60 * s * s for c, s in zip(channels, sizes, strict=True))
    assert abs((gflops(base) - gflops(ten_classes)) - removed / 1e9) < 0.011  # 2-decimal rounding
