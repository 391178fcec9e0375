"""Every number README.md, BENCHMARKS.md and docs/ publish is checked (issue 19), in two ways:

1. The accuracy README.md's "Results" table states for a model shipped in `models/` is what test.py measures
   (re-run here, `test_readme_numbers_are_what_test_py_measures`).
2. Every other measured-looking number is backed by a marker and, for measured ones, a committed results file
   written by the command that measured it (`test_every_measured_number_is_backed`; the rule and the marker
   syntax are in tests/doc_numbers.py). Training numbers come from tools/seed_runs.py: >= 3 seeds.

About 1:

The test reads the table itself, so a number in the README and the model beside it cannot drift apart: a row
whose first column names a `models/*.pth` file must have an entry in SHIPPED below, and each entry re-runs the
row's `python test.py` command and compares every number of the row within 0.5 (the README rounds to 0.1;
the rest allows for another CPU or a GPU).

To check a newly shipped model, add its README row (naming the file, e.g. `models/bccd_ssdlite.pth`) and an
entry here; an entry whose file is not in `models/` yet is skipped with a message saying so.
"""

from __future__ import annotations

import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REQUIRE_SHARED_DATA, SHARED_DATA
from doc_numbers import check_page

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOC_PAGES = [README, REPO / "BENCHMARKS.md", *sorted((REPO / "docs").glob("*.md"))]
REFERENCE = SHARED_DATA.parent / "reference"  # ../shared/reference: notes on the papers' and peers' numbers
TOLERANCE = 0.5


@dataclass(frozen=True)
class Shipped:
    """A shipped model, how the README's command evaluates it, and which results its row's numbers are."""

    checkpoint: str  # path from the repository root, as the README row names it (in backticks)
    config: str
    metric_column: str  # the row's "metric" column, word for word
    results: tuple[tuple[str, str], ...]  # (task, metric) of test.py's results, one per number of the row
    needs_bccd: bool = False  # the model is evaluated on ../shared/data/BCCD


COCO_AP, COCO_AP50, VOC_MAP07 = ("bbox", "AP"), ("bbox", "AP50"), ("voc", "mAP50_07")

SHIPPED = [
    Shipped("models/shapes_ssdlite.pth", "models/shapes_ssdlite.yaml", "box AP / AP50 / VOC mAP",
            (COCO_AP, COCO_AP50, VOC_MAP07)),
    # The BCCD model of issue 12; its config and row are expected beside it, as for the shapes model.
    Shipped("models/bccd_ssdlite.pth", "models/bccd_ssdlite.yaml", "box AP / AP50 / VOC mAP",
            (COCO_AP, COCO_AP50, VOC_MAP07), needs_bccd=True),
]  # fmt: skip


def results_rows(text: str) -> list[list[str]]:
    """The cells of every data row of the table under "## Results" (header and separator left out)."""
    section = text.split("\n## Results\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]
    return [row for row in cells[2:] if not set("".join(row)) <= set("-: ")]


def row_naming(rows: list[list[str]], checkpoint: str) -> list[str] | None:
    matches = [row for row in rows if f"`{checkpoint}`" in row[0]]
    assert len(matches) <= 1, f"README.md: {len(matches)} result rows name {checkpoint}"
    return matches[0] if matches else None


def numbers(cell: str) -> list[float]:
    """'56.9 / 91.0 / 87.2' -> [56.9, 91.0, 87.2]."""
    return [float(part) for part in cell.split("/")]


def test_results_table_is_read():
    rows = results_rows(README.read_text())
    assert all(len(row) == 5 for row in rows), [row for row in rows if len(row) != 5]
    assert len(rows) >= 10
    assert numbers(row_naming(rows, "models/shapes_ssdlite.pth")[3])  # the bundled model has a row


def test_every_shipped_model_in_the_table_has_an_entry():
    named = set(
        re.findall(r"`(models/[\w.-]+\.pth)`", " ".join(row[0] for row in results_rows(README.read_text())))
    )
    missing = named - {entry.checkpoint for entry in SHIPPED}
    assert not missing, f"README.md states results for {sorted(missing)}: add them to SHIPPED in {__file__}"


def load_test_cli():
    """The top-level test.py, loaded by path (`import test` could find the standard library's test package)."""
    spec = importlib.util.spec_from_file_location("ssd_test_cli", REPO / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("entry", SHIPPED, ids=lambda entry: Path(entry.checkpoint).stem)
def test_readme_numbers_are_what_test_py_measures(entry, tmp_path, monkeypatch, request):
    if not (REPO / entry.checkpoint).is_file():
        pytest.skip(f"{entry.checkpoint} is not shipped yet; this entry checks its README row once it is")
    if entry.needs_bccd:
        request.getfixturevalue("bccd_root")  # skips (or fails under CI) without ../shared/data/BCCD
    row = row_naming(results_rows(README.read_text()), entry.checkpoint)
    assert row is not None, f"{entry.checkpoint} is shipped but no README.md result row names it"
    assert row[2] == entry.metric_column, f"README.md's metric column for {entry.checkpoint}: {row[2]!r}"
    stated = numbers(row[3])
    assert len(stated) == len(entry.results), row[3]
    assert f"--config-file {entry.config} --ckpt {entry.checkpoint}" in row[4]  # the command this test runs

    monkeypatch.chdir(REPO)  # the README's command runs from the repository root (relative dataset paths)
    results = load_test_cli().main(
        ["--config-file", entry.config, "--ckpt", entry.checkpoint, "OUTPUT_DIR", str(tmp_path),
         "DATA_LOADER.NUM_WORKERS", "0"]
    )  # fmt: skip
    (dataset_results,) = results.values()  # one test dataset
    measured = [dataset_results[task][metric] for task, metric in entry.results]
    print(f"{entry.checkpoint}: README {stated}, measured {[round(v, 2) for v in measured]}")
    for (task, metric), value, readme in zip(entry.results, measured, stated, strict=True):
        assert value == pytest.approx(readme, abs=TOLERANCE), (
            f"{task}/{metric}: README {readme}, measured {value}"
        )


def reference_text() -> str | None:
    """The project's notes on published numbers (../shared/reference/*.md), or None in a user's clone."""
    if not REFERENCE.is_dir():
        import os

        assert os.environ.get(REQUIRE_SHARED_DATA) != "1", (
            f"{REFERENCE} is missing: published numbers unchecked"
        )
        return None
    return "\n".join(path.read_text() for path in sorted(REFERENCE.glob("*.md")))


@pytest.mark.parametrize("page", DOC_PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_measured_number_is_backed(page):
    """Each decimal or number with a unit in the page is in the results file its marker names, a stated
    constant, or a published number found in the reference notes; rows of shipped models are re-measured above."""
    recomputed = {entry.checkpoint for entry in SHIPPED}
    problems = check_page(page.read_text(), str(page.relative_to(REPO)), REPO, reference_text(), recomputed)
    assert not problems, "\n".join(problems)


def test_training_numbers_are_means_over_three_seeds():
    """A results file of tools/seed_runs.py (it has "runs") holds >= 3 runs with distinct seeds."""
    files = sorted((REPO / "results").glob("*.json"))
    seeded = [path for path in files if "runs" in json.loads(path.read_text())]
    assert seeded, "no results/*.json from tools/seed_runs.py: the README's training rows need them"
    for path in seeded:
        data = json.loads(path.read_text())
        seeds = [run["seed"] for run in data["runs"]]
        assert len(set(seeds)) >= 3, f"{path.name}: seeds {seeds}; publish a mean over >= 3 seeds"
        assert data["machine"]["cpu"], f"{path.name}: which CPU measured it?"
