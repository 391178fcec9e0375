"""The published-numbers checker (tests/doc_numbers.py) on small pages whose verdicts are derived by hand."""

from __future__ import annotations

import json
import textwrap

import pytest
from doc_numbers import blocks_of, check_page, matches


@pytest.fixture
def repo(tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "run.json").write_text(
        json.dumps(
            {"command": "python x.py", "summary": {"AP": {"mean": 31.43, "std": 0.52}, "cpu_min": 5.2}}
        )
    )
    (tmp_path / "results" / "other.json").write_text(json.dumps({"AP": 47.7, "ratio": [0.66, 0.6]}))
    return tmp_path


def check(text: str, repo, reference: str | None = None, recomputed=frozenset()) -> list[str]:
    return check_page(textwrap.dedent(text), "page.md", repo, reference, set(recomputed))


def test_matching_rounds_to_the_printed_decimals():
    assert matches("31.4", [31.43]) and matches("31", [31.43]) and not matches("31.5", [31.43])
    assert matches("-0.04", [0.04]) and matches("0.60", [0.6]) and not matches("0.61", [0.6])


def test_unmarked_number_fails_and_names_line_and_number(repo):
    problems = check("Intro.\n\nWe measured AP 31.4 in 5 min.\n", repo)
    assert problems == ["page.md:3: 31.4, 5 without a numbers marker before the block"]


def test_marked_numbers_match_their_file_and_a_changed_one_fails(repo):
    page = "<!-- numbers: results/run.json -->\nAP 31.4 +- 0.5 in 5 min of CPU.\n"
    assert check(page, repo) == []
    problems = check(page.replace("31.4", "32.4"), repo)
    assert problems == ["page.md:2: 32.4 is not in ['results/run.json'] nor given"]
    assert check(page.replace("5 min", "6 min"), repo) == [
        "page.md:2: 6 is not in ['results/run.json'] nor given"
    ]


def test_not_checked_integers_code_versions_and_links(repo):
    page = "Trained 800 iterations on 3 classes (torch 2.14.1, `AP 99.9`, [x](docs/v1.5.md)) on 2026-11-29.\n"
    assert check(page, repo) == []


def test_given_published_and_missing_file(repo):
    page = "<!-- numbers: given 0.5 0.01; published -->\nIoU 0.5, threshold 0.01; the paper reports 77.2.\n"
    assert check(page, repo, reference="SSD300* 77.2 VOC07") == []
    assert check(page, repo, reference=None) == []  # no reference notes (a user's clone): not checked
    assert check(page, repo, reference="SSD300 74.3") == [
        "page.md:2: 77.2 is marked published but is not in ../shared/reference"
    ]
    problems = check("<!-- numbers: results/none.json -->\nAP 1.5\n", repo)
    assert problems[0] == "page.md:2: results/none.json does not exist"


def test_table_rows_are_checked_against_their_own_file(repo):
    page = """\
    <!-- numbers: published -->
    | model | value | source |
    |---|---|---|
    | ours | 31.4 | [run](results/run.json) |
    | short path | 47.7 | [other](results/other.json) |
    | bundled `models/a.pth` | 56.9 | recomputed |
    | paper | 77.2 | published |
    """
    assert check(page, repo, reference="77.2", recomputed={"models/a.pth"}) == []
    swapped = page.replace("| 31.4 |", "| 47.7 |")  # a value of another row's file is not this row's
    assert check(swapped, repo, reference="77.2", recomputed={"models/a.pth"}) == [
        "page.md:4: 47.7 is not in ['results/run.json'] nor given"
    ]
    # the block's own files do not back a row that names its file: 47.7 is in other.json, not in run.json
    marked_both = swapped.replace(
        "<!-- numbers: published -->", "<!-- numbers: results/other.json; published -->"
    )
    assert check(marked_both, repo, reference="77.2", recomputed={"models/a.pth"}) == [
        "page.md:4: 47.7 is not in ['results/run.json'] nor given"
    ]
    unlisted = check(page, repo, reference="77.2", recomputed=set())
    assert unlisted == ["page.md:6: 56.9 is marked published but is not in ../shared/reference"]


def test_markers_attach_to_the_next_block_only(repo):
    blocks = blocks_of("<!-- numbers: results/run.json -->\nA 31.4\n\nB 2.5\n", "page.md")
    assert [(b.line, b.marked) for b in blocks] == [(2, True), (4, False)]
    with pytest.raises(ValueError, match="not followed by its block"):
        blocks_of("<!-- numbers: given 1.5 -->\n\ntext\n", "page.md")
    with pytest.raises(ValueError, match="is not results"):
        check("<!-- numbers: results.json -->\nA 1.5\n", repo)
