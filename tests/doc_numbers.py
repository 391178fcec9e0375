"""The published-numbers rule of README.md, BENCHMARKS.md and docs/: every measured-looking number is backed.

In those pages, outside fenced or indented code, inline `code`, link targets and HTML comments, every decimal
(31.4, 0.66) and every number with a unit (5 min, 12 s, 3.1 ms, 4.8 %, 2.2 GB, 3x; not "640 x 480") must be accounted for by a
marker on the line(s) right before its block (a paragraph, list or table; a block runs to the next blank line):

    <!-- numbers: results/train_default.json results/raccoon.json; given 0.5 0.01; published -->

Parts, separated by `;`, any subset:
- `results/NAME.json` paths: the number is a value of one of these committed files, written by the command
  that measured it. It matches a numeric value (at any depth) when the value printed with the number's
  decimals equals it, signs ignored (31.4 matches 31.43; "5 min" matches 5.2; "-0.04" matches a drop of 0.04).
- `given N N ...`: constants that are stated, not measured (thresholds, settings, tolerances).
- `published`: copied from an external source (a paper, another project's README); checked against the
  project's reference notes (../shared/reference/*.md) where that folder exists.
In a table, a row that names `results/*.json` files is checked against those files only (and `given`), and a
row that names a shipped `models/*.pth` listed in `recomputed` is left to the test that re-measures it.
Integers without a unit (800 iterations, 3 classes, dates) are not checked. `<!-- results: FILES -->` is
accepted as a short form of `<!-- numbers: FILES -->`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

UNITS = r"minutes|seconds|hours|min|ms|MiB|GiB|KiB|MB|GB|KB|s|h|%"
# a ratio's "x" sticks to its number (3x, 0.66x); "30000 x 30000" is a size, not a ratio
NUMBER = re.compile(rf"(?<![\w.])(-?\d++(?:\.\d++)?+)(?![\w.]\d)(?:\s?({UNITS})(?!\w)|(x)(?!\w))?")
MARKER = re.compile(r"^\s*<!--\s*(numbers|results):\s*(.*?)\s*-->\s*$")
RESULTS_FILE = re.compile(r"results/[\w.-]+\.json")
SHIPPED_MODEL = re.compile(r"models/[\w.-]+\.pth")


@dataclass
class Block:
    source: str
    line: int  # 1-based, first line of the block
    lines: list[str]
    files: list[str] = field(default_factory=list)
    given: set[str] = field(default_factory=set)
    published: bool = False
    marked: bool = False


def parse_marker(text: str, where: str) -> tuple[list[str], set[str], bool]:
    files, given, published = [], set(), False
    for part in (p.strip() for p in text.split(";")):
        if not part:
            continue
        if part == "published":
            published = True
        elif part.startswith("given "):
            given |= set(part.split()[1:])
        elif all(RESULTS_FILE.fullmatch(word) for word in part.split()):
            files += part.split()
        else:
            raise ValueError(
                f"{where}: numbers marker part {part!r} is not results/*.json, given or published"
            )
    return files, given, published


def strip_prose(line: str) -> str:
    """The line without inline code, link targets, URLs and HTML comments (numbers there are not claims)."""
    line = re.sub(r"<!--.*?-->", " ", line)
    line = re.sub(r"`[^`]*`", " ", line)
    line = re.sub(r"\]\([^)]*\)", "]", line)
    return re.sub(r"https?://\S+", " ", line)


def blocks_of(text: str, source: str) -> list[Block]:
    """The prose blocks of a page (code fences and indented code left out), each with its marker."""
    blocks: list[Block] = []
    pending: tuple[list[str], set[str], bool] | None = None
    current: Block | None = None
    in_fence = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith("```"):
            in_fence, current = not in_fence, None
            continue
        if in_fence:
            continue
        marker = MARKER.match(line)
        if marker:
            files, given, published = parse_marker(marker.group(2), f"{source}:{number}")
            if pending:
                files, given, published = pending[0] + files, pending[1] | given, pending[2] or published
            pending, current = (files, given, published), None
            continue
        if not line.strip():
            current = None
            if pending is not None:
                raise ValueError(f"{source}:{number}: numbers marker not followed by its block")
            continue
        if line.startswith("    ") and current is None:
            continue  # indented code (commands in BENCHMARKS.md)
        if current is None:
            current = Block(source, number, [])
            if pending is not None:
                current.files, current.given, current.published = pending
                current.marked = True
                pending = None
            blocks.append(current)
        current.lines.append(line)
    return blocks


def numeric_values(data) -> list[float]:
    if isinstance(data, bool):
        return []
    if isinstance(data, int | float):
        return [float(data)]
    if isinstance(data, dict):
        return [v for item in data.values() for v in numeric_values(item)]
    if isinstance(data, list):
        return [v for item in data for v in numeric_values(item)]
    return []


def matches(token: str, values: list[float]) -> bool:
    decimals = len(token.split(".")[1]) if "." in token else 0
    wanted = token.lstrip("-")
    return any(f"{abs(v):.{decimals}f}" == wanted for v in values)


def check_page(
    text: str,
    source: str,
    repo: Path,
    reference_text: str | None,
    recomputed: set[str] = frozenset(),
) -> list[str]:
    """Problems of one page: each names the file, line, number and why it is not backed."""
    problems: list[str] = []
    cache: dict[str, list[float]] = {}

    def values_of(files: list[str], where: str) -> list[float]:
        values: list[float] = []
        for name in files:
            if name not in cache:
                path = repo / name
                if not path.is_file():
                    problems.append(f"{where}: {name} does not exist")
                    cache[name] = []
                else:
                    cache[name] = numeric_values(json.loads(path.read_text()))
            values += cache[name]
        return values

    for block in blocks_of(text, source):
        for offset, raw in enumerate(block.lines):
            where = f"{source}:{block.line + offset}"
            prose = strip_prose(raw)
            tokens = [
                m.group(1) for m in NUMBER.finditer(prose) if "." in m.group(1) or m.group(2) or m.group(3)
            ]
            if not tokens:
                continue
            row_files = list(dict.fromkeys(RESULTS_FILE.findall(raw))) if raw.lstrip().startswith("|") else []
            if raw.lstrip().startswith("|") and any(m in recomputed for m in SHIPPED_MODEL.findall(raw)):
                continue  # re-measured by the shipped-model test
            if not block.marked:
                problems.append(f"{where}: {', '.join(tokens)} without a numbers marker before the block")
                continue
            files = row_files or block.files
            published = block.published and not row_files
            values = values_of(files, where)
            for token in tokens:
                if token in block.given or token.lstrip("-") in block.given:
                    continue
                if matches(token, values):
                    continue
                if published:
                    if reference_text is None or re.search(
                        rf"(?<![\d.]){re.escape(token.lstrip('-'))}(?![\d])", reference_text
                    ):
                        continue
                    problems.append(f"{where}: {token} is marked published but is not in ../shared/reference")
                    continue
                problems.append(f"{where}: {token} is not in {files or 'any results file'} nor given")
    return problems
