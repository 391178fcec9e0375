"""Markdown pipe tables and `copypaste:` lines in Detectron2's exact text format.

Detectron2 prints its evaluation tables with `tabulate(..., tablefmt="pipe", floatfmt=".3f")`. `tabulate` is not
a dependency here, so the few rules that produce that text are re-implemented:

- a column is as wide as its widest cell, and at least as wide as its header plus 2;
- every cell gets one space of padding on each side, between `|` separators;
- the separator row spells the alignment: `:---:` centred, `:----` left;
- centring puts the odd leftover space on the right;
- floats are formatted with `floatfmt` (NaN prints as `nan`), ints as they are; a missing cell (None) is empty.

Unlike tabulate, strings are never re-parsed as numbers (a class named "1" stays "1", not "1.000").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

_MIN_HEADER_PADDING = 2  # tabulate's MIN_PADDING: header width + 2


def _format_cell(value: object, floatfmt: str) -> str:
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int):  # counts stay integers (tabulate's default intfmt)
        return str(value)
    return format(value, floatfmt)


def _align(text: str, width: int, align: str) -> str:
    if align == "left":
        return text.ljust(width)
    if align == "center":
        left = (width - len(text)) // 2
        return " " * left + text + " " * (width - len(text) - left)
    raise ValueError(f"unknown alignment {align!r}; expected 'left' or 'center'")


def pipe_table(
    rows: Sequence[Sequence[object]], headers: Sequence[str], align: str = "left", floatfmt: str = ".3f"
) -> str:
    """A markdown pipe table, formatted as `tabulate(rows, headers, tablefmt="pipe")` would.

    Args:
        rows: table rows; each has len(headers) cells (numbers, strings or None for an empty cell).
        headers: column titles.
        align: "left" or "center", used for every column (headers included).
        floatfmt: format spec for numbers.
    """
    cells = [[_format_cell(v, floatfmt) for v in row] for row in rows]
    for row in cells:
        if len(row) != len(headers):
            raise ValueError(f"row {row} has {len(row)} cells, expected {len(headers)}")
    widths = [
        max([len(h) + _MIN_HEADER_PADDING] + [len(row[j]) for row in cells]) for j, h in enumerate(headers)
    ]

    def line(values: Sequence[str]) -> str:
        return (
            "|" + "|".join(" " + _align(v, w, align) + " " for v, w in zip(values, widths, strict=True)) + "|"
        )

    if align == "center":
        separator = "|" + "|".join(":" + "-" * w + ":" for w in widths) + "|"
    else:
        separator = "|" + "|".join(":" + "-" * (w + 1) for w in widths) + "|"
    return "\n".join([line(headers), separator] + [line(row) for row in cells])


def create_small_table(metrics: Mapping[str, float]) -> str:
    """One-row table of named metrics, centred (Detectron2's `create_small_table`).

    >>> print(create_small_table({"AP": 25.123, "APs": 6.8}))
    |   AP   |  APs  |
    |:------:|:-----:|
    | 25.123 | 6.800 |
    """
    return pipe_table([list(metrics.values())], list(metrics.keys()), align="center")


def per_category_table(
    per_category: Sequence[tuple[str, float]], metric: str = "AP", max_pairs: int = 3
) -> str:
    """Per-category metric laid out in up to `max_pairs` (category, metric) column pairs, left-aligned.

    Categories fill the table row by row, as in Detectron2's "Per-category bbox AP" table.
    """
    num_cols = min(2 * max_pairs, 2 * len(per_category))
    flat = list(itertools.chain.from_iterable(per_category))
    columns = [flat[i::num_cols] for i in range(num_cols)]
    rows = [list(row) for row in itertools.zip_longest(*columns)]
    return pipe_table(rows, ["category", metric] * (num_cols // 2), align="left")


def copypaste_lines(results: Mapping[str, object]) -> list[str]:
    """Detectron2's `print_csv_format` lines; per-category keys (containing "-") are left out.

    Example:
        copypaste: Task: bbox
        copypaste: AP,AP50,AP75,APs,APm,APl
        copypaste: 25.1230,42.5000,25.9000,6.8000,27.1000,40.2000
    """
    lines = []
    for task, metrics in results.items():
        if not isinstance(metrics, Mapping):
            lines.append(f"copypaste: {task}={metrics}")
            continue
        important = [(k, v) for k, v in metrics.items() if "-" not in k and isinstance(v, int | float)]
        lines.append(f"copypaste: Task: {task}")
        lines.append("copypaste: " + ",".join(k for k, _ in important))
        lines.append("copypaste: " + ",".join(f"{float(v):.4f}" for _, v in important))
    return lines


def flatten_results(results: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """{"bbox": {"AP": 1.0}} -> {"bbox/AP": 1.0} (the names training logs and BEST_METRIC use)."""
    return {f"{task}/{k}": v for task, metrics in results.items() for k, v in metrics.items()}


def nan_to_none(value: float) -> float | None:
    """JSON has no NaN; write null instead (json.dump would write the invalid token NaN)."""
    return None if isinstance(value, float) and math.isnan(value) else value
