"""tools/plot_metrics.py: metrics.json of two runs -> one valid PNG."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def write_run(folder: Path, scale: float) -> None:
    folder.mkdir()
    lines = []
    for it in range(20, 201, 20):
        lines.append(
            {
                "iteration": it,
                "total_loss": scale * 10 / it,
                "reg_loss": 1 / it,
                "cls_loss": 9 / it,
                "lr": 1e-3,
            }
        )
        if it % 100 == 0:
            lines.append(
                {"iteration": it, "val/loss": scale * 5 / it, "bbox/AP50": it / 4, "bbox/AP": it / 8}
            )
    text = "".join(json.dumps(line) + "\n" for line in lines)
    (folder / "metrics.json").write_text(text + '{"iteration": 21')  # a truncated last line is skipped


def test_two_runs_make_a_png(tmp_path):
    write_run(tmp_path / "run_a", 1.0)
    write_run(tmp_path / "run_b", 2.0)
    out = tmp_path / "curves.png"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "plot_metrics.py"), str(tmp_path / "run_a"), str(tmp_path / "run_b"),
         "--out", str(out)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    image = matplotlib.image.imread(out)
    assert image.shape[0] >= 400 and image.shape[1] >= 600
    assert image[..., :3].std() > 0.05  # curves were drawn, not a blank canvas


def test_read_metrics_and_missing_file(tmp_path):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        from plot_metrics import main, read_metrics
    finally:
        sys.path.pop(0)
    write_run(tmp_path / "run", 1.0)
    series = read_metrics(tmp_path / "run" / "metrics.json")
    assert [it for it, _ in series["bbox/AP50"]] == [100, 200]
    assert len(series["total_loss"]) == 10
    assert main([str(tmp_path / "missing")]) == 1
