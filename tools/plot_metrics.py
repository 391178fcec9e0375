"""Plot training curves from OUTPUT_DIR/metrics.json: losses, learning rate and validation AP.

    python tools/plot_metrics.py outputs/run_a [outputs/run_b ...] [--out curves.png]

One figure with four panels (training losses, validation losses, learning rate, AP metrics); several runs
are overlaid, each in its own colour, labelled by its folder name. metrics.json is Detectron2's format: one
JSON object per line with an "iteration" key (see ssd/engine/writers.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

TRAIN_LOSSES = ("total_loss", "reg_loss", "cls_loss")
VAL_LOSSES = ("val/loss", "val/reg_loss", "val/cls_loss")
AP_KEYS = ("bbox/AP", "bbox/AP50", "voc/mAP50_07")
LINE_STYLES = {"reg_loss": "--", "cls_loss": ":", "val/reg_loss": "--", "val/cls_loss": ":", "bbox/AP": "--"}


def read_metrics(path: Path) -> dict[str, list[tuple[int, float]]]:
    """metrics.json -> {key: [(iteration, value), ...]} sorted by iteration (later lines win on repeats)."""
    if not path.is_file():
        raise FileNotFoundError(f"no metrics.json at {path} (is it a training OUTPUT_DIR?)")
    series: dict[str, dict[int, float]] = defaultdict(dict)
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            print(
                f"{path}:{number}: skipping a line that is not JSON (a run killed mid-write?)",
                file=sys.stderr,
            )
            continue
        iteration = record.pop("iteration", None)
        if iteration is None:
            continue
        for key, value in record.items():
            if isinstance(value, (int, float)):
                series[key][int(iteration)] = float(value)
    return {key: sorted(points.items()) for key, points in series.items()}


def plot_runs(run_dirs: list[Path], out: Path) -> Path:
    """Draw every run's curves into one PNG at `out`; returns `out`."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = {
        "train": (axes[0, 0], "training loss (median of 20 iterations)", TRAIN_LOSSES),
        "val": (axes[0, 1], "validation loss", VAL_LOSSES),
        "lr": (axes[1, 0], "learning rate", ("lr",)),
        "ap": (axes[1, 1], "validation AP (0-100)", AP_KEYS),
    }
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, run_dir in enumerate(run_dirs):
        series = read_metrics(run_dir / "metrics.json")
        colour = colours[index % len(colours)]
        for ax, _, keys in panels.values():
            for key in keys:
                if key not in series:
                    continue
                iterations, values = zip(*series[key], strict=True)
                marker = "o" if len(iterations) < 30 else None  # validation points are sparse: show them
                ax.plot(
                    iterations, values, color=colour, linestyle=LINE_STYLES.get(key, "-"), marker=marker,
                    markersize=3, label=f"{run_dir.name}: {key}",
                )  # fmt: skip
    for ax, title, _ in panels.values():
        ax.set_title(title)
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    panels["lr"][0].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output_dirs", nargs="+", type=Path, help="training OUTPUT_DIRs holding metrics.json")
    parser.add_argument("--out", type=Path, default=None, help="PNG file (default: FIRST_DIR/metrics.png)")
    args = parser.parse_args(argv)
    out = args.out or args.output_dirs[0] / "metrics.png"
    try:
        plot_runs(args.output_dirs, out)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
