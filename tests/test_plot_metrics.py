"""tools/plot_metrics.py: metrics.json of two runs -> one valid PNG, whose panels hold every series of both runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

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
    assert (
        image.shape[0] >= 400 and image.shape[1] >= 600
    )  # what is drawn: test_plotted_curves_are_the_metrics


def load_tool():
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import plot_metrics
    finally:
        sys.path.pop(0)
    return plot_metrics


def test_plotted_curves_are_the_metrics(tmp_path, monkeypatch):
    """The figure's own Line2D objects: every series of both runs, in its panel, with its label and data.

    (The pixels of the PNG cannot tell: a figure with four empty panels has almost the same pixel spread.)
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    saved = []
    real_savefig = Figure.savefig

    def keep_figure(self, *args, **kwargs):
        saved.append(self)
        return real_savefig(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", keep_figure)
    write_run(tmp_path / "run_a", 1.0)
    write_run(tmp_path / "run_b", 2.0)
    load_tool().plot_runs([tmp_path / "run_a", tmp_path / "run_b"], tmp_path / "curves.png")

    (figure,) = saved
    panels = {ax.get_title(): {line.get_label(): line for line in ax.get_lines()} for ax in figure.axes}
    iterations = list(range(20, 201, 20))
    expected = {
        "training loss (median of 20 iterations)": {
            "total_loss": (iterations, {"run_a": [10 / it for it in iterations], "run_b": [20 / it for it in iterations]}),
            "reg_loss": (iterations, {"run_a": [1 / it for it in iterations], "run_b": [1 / it for it in iterations]}),
            "cls_loss": (iterations, {"run_a": [9 / it for it in iterations], "run_b": [9 / it for it in iterations]}),
        },
        "validation loss": {"val/loss": ([100, 200], {"run_a": [0.05, 0.025], "run_b": [0.1, 0.05]})},
        "learning rate": {"lr": (iterations, {"run_a": [1e-3] * 10, "run_b": [1e-3] * 10})},
        "validation AP (0-100)": {
            "bbox/AP50": ([100, 200], {"run_a": [25, 50], "run_b": [25, 50]}),
            "bbox/AP": ([100, 200], {"run_a": [12.5, 25], "run_b": [12.5, 25]}),
        },
    }  # fmt: skip
    assert set(panels) == set(expected)
    for title, keys in expected.items():
        labels = {f"{run}: {key}" for key, (_, runs) in keys.items() for run in runs}
        assert set(panels[title]) == labels, title
        for key, (xs, runs) in keys.items():
            for run, ys in runs.items():
                line = panels[title][f"{run}: {key}"]
                assert list(line.get_xdata()) == xs, (title, run, key)
                np.testing.assert_allclose(line.get_ydata(), ys, rtol=1e-12, err_msg=f"{title} {run} {key}")
    # each run keeps one colour across panels, and the two runs differ
    colours = {run: {line.get_color() for lines in panels.values() for label, line in lines.items()
                     if label.startswith(run)} for run in ("run_a", "run_b")}  # fmt: skip
    assert len(colours["run_a"]) == len(colours["run_b"]) == 1 and colours["run_a"] != colours["run_b"]


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
