"""Every ```bash and ```python block of README.md and docs/*.md runs, in order, as a reader would run it.

One test per documentation file, so a failure names the file and the line of the block that broke.

How blocks run:
- The working directory is a fresh temporary "checkout": every top-level entry of the repository is symlinked
  into TMP/repo (except outputs/, .git, virtual environments), TMP/repo/.venv links to the virtual environment
  running the tests, and TMP/shared links to ../shared, so relative paths in the docs (configs/...,
  ../shared/data/BCCD, .venv/bin/python) work and everything a command writes (outputs/, files the snippets
  create) lands in the temporary folder.
- Environment: the test's interpreter's bin folder first on PATH (`python` is the venv's), PYTHONPATH = the
  repository, TORCH_HOME = TMP/torch_home (an empty hub cache: a doc that needs ImageNet weights must seed it
  with tools/seed_torch_hub_cache.py, as an offline reader would), MPLBACKEND=Agg, OMP_NUM_THREADS=1.
- ```bash blocks run with `bash -e -o pipefail`. Set-up lines (venv creation, `source .../activate`,
  `pip install`) are dropped with the reason "run by .ci/run"; a block left empty counts as skipped.
- ```python blocks of one file run in one interpreter, each block in its own fresh namespace (a block may not
  use another block's variables; it may use files an earlier block wrote), so imports are paid once per file.
- Fences tagged ```text, ```yaml, ```json, ```console or plain ``` (output, config excerpts) are not run; any
  other tag fails the test (a ```py or ```sh block would otherwise be dropped without a word).
- A page whose blocks read the project's shared data (../shared/data, absent in a user's clone) is skipped when
  that folder is missing (failed under SSD_REQUIRE_SHARED_DATA=1). What a block reads is decided from the block
  itself: `../shared` in its code, or in a repository file it names (a config under configs/ or models/,
  following `_BASE_`, or a bundled model's name whose config is models/NAME.yaml), see `shared_data_read_by`.

Markers: HTML comments on the lines right before a fence (invisible when rendered) turn an expensive command
into a cheap variant of the same command; their arguments are shell words (shlex):

    <!-- doc-test: append "SOLVER.MAX_ITER 2" -->      text appended to the block's last command line
    <!-- doc-test: replace "python -m pytest -q" "python -m pytest -q tests/test_boxes.py" -->
    <!-- doc-test: env SSD_X=1 OTHER=2 -->               environment variables for the block
    <!-- doc-test: skip needs a GPU (NCCL) -->          not run; only for commands that need a network or a GPU

A `replace` whose text is not in the block fails the test, so markers cannot silently go stale. Skipped blocks
are counted and printed.

A page that runs no block at all fails, unless it says so with a page marker (anywhere in the page):

    <!-- doc-test-none: reference tables only -->        nothing to run here, and why

so a page whose blocks all lost their language tag (or were all skipped) cannot pass by running nothing; the
marker on a page that does run blocks is an error too.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import shared_data_missing

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"  # the project's shared folder (BCCD); absent in a user's clone
DOC_FILES = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
RUN_LANGUAGES = ("bash", "python")
NOT_RUN_LANGUAGES = ("", "text", "yaml", "json", "console")  # shown, never run
NOT_MIRRORED = {".git", ".venv", ".ci-venv", "outputs", ".pytest_cache", ".ruff_cache", "wandb"}
SETUP_LINE = re.compile(r"^\s*(python3? -m venv\b|source \S*activate\b|(python3? -m )?pip3? install\b)")
MARKER = re.compile(r"^\s*<!--\s*doc-test:\s*(\w+)\s*(.*?)\s*-->\s*$")
NOTHING_TO_RUN = re.compile(r"^\s*<!--\s*doc-test-none:\s*(.*?)\s*-->\s*$", re.MULTILINE)
FENCE = re.compile(r"^(\s*)```\s*([\w+-]*)\s*$")
BLOCK_TIMEOUT_S = 600


@dataclass
class Block:
    line: int  # 1-based line of the opening fence
    language: str
    code: str
    markers: list[tuple[str, str]] = field(default_factory=list)  # (command, argument text)

    @property
    def where(self) -> str:
        return f"line {self.line} ({self.language})"


def parse_blocks(text: str, source: str = "") -> list[Block]:
    """Every fenced block (any language) with the doc-test markers on the lines right before it.

    Raises:
        ValueError: an unclosed fence, or a marker not followed by a fence (a typo would otherwise be ignored).
    """
    lines = text.splitlines()
    blocks: list[Block] = []
    pending: list[tuple[str, str, int]] = []
    i = 0
    while i < len(lines):
        marker = MARKER.match(lines[i])
        if marker:
            pending.append((marker.group(1), marker.group(2), i + 1))
            i += 1
            continue
        fence = FENCE.match(lines[i])
        if fence is None:
            if pending and lines[i].strip():
                raise ValueError(f"{source}:{pending[0][2]}: doc-test marker not followed by a fenced block")
            i += 1
            continue
        indent, language = fence.group(1), fence.group(2).lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(rf"^{re.escape(indent)}```\s*$", lines[i]):
            body.append(lines[i][len(indent) :] if lines[i].startswith(indent) else lines[i])
            i += 1
        if i == len(lines):
            raise ValueError(f"{source}:{start + 1}: unclosed ``` fence")
        blocks.append(Block(start + 1, language, "\n".join(body) + "\n", [(c, a) for c, a, _ in pending]))
        pending = []
        i += 1
    if pending:
        raise ValueError(f"{source}:{pending[0][2]}: doc-test marker not followed by a fenced block")
    return blocks


def check_languages(blocks: list[Block], source: str) -> None:
    """Every fence is either run or one of the shown-only tags; a typo such as ```py must not drop a block."""
    for block in blocks:
        if block.language not in RUN_LANGUAGES + NOT_RUN_LANGUAGES:
            raise ValueError(
                f"{source} {block.where}: fence tag {block.language!r} is neither run ({', '.join(RUN_LANGUAGES)}) "
                f"nor shown-only ({', '.join(repr(t) for t in NOT_RUN_LANGUAGES)})"
            )


SHARED_TEXT = "../shared"
FILE_TOKEN = re.compile(r"[\w./-]+")


def _config_chain(path: Path) -> list[Path]:
    """A YAML config and the files its `_BASE_` lines name (relative to the including file), nearest first."""
    chain, seen = [], set()
    while path.is_file() and path.resolve() not in seen:
        seen.add(path.resolve())
        chain.append(path)
        base = re.search(r"^_BASE_:\s*[\"']?([^\"'#\s]+)", path.read_text(), re.MULTILINE)
        if base is None:
            break
        path = path.parent / base.group(1)
    return chain


def shared_data_read_by(code: str, repo_root: Path = REPO_ROOT) -> str | None:
    """Why a block reads the project's shared data (../shared), or None when it does not.

    The block reads it when `../shared` is in its code, or in a repository file that it names: a config
    (`configs/x.yaml`, `models/x.yaml`, their `_BASE_` chains) or a bundled model by name (`--ckpt NAME` loads
    models/NAME.yaml). Files the block writes itself are not in the repository and are not followed.
    """
    if SHARED_TEXT in code:
        return f"the block names {SHARED_TEXT}"
    for token in dict.fromkeys(FILE_TOKEN.findall(code)):
        candidates = [repo_root / token]
        if re.fullmatch(r"\w+", token):
            candidates.append(repo_root / "models" / f"{token}.yaml")
        for candidate in candidates:
            if candidate.suffix not in (".yaml", ".yml") or not candidate.is_file():
                continue
            for config in _config_chain(candidate):
                if SHARED_TEXT in config.read_text():
                    return f"{token} reads {SHARED_TEXT} ({config.relative_to(repo_root)})"
    return None


def apply_markers(block: Block) -> tuple[str | None, dict[str, str], str]:
    """(code to run or None when skipped, extra environment, skip reason)."""
    code, env = block.code, {}
    for command, argument in block.markers:
        words = shlex.split(argument)
        if command == "skip":
            if not argument:
                raise ValueError(f"{block.where}: `doc-test: skip` needs a reason")
            return None, env, argument
        if command == "append":
            if len(words) != 1:
                raise ValueError(f"{block.where}: `append` takes one quoted argument, got {words}")
            lines = code.rstrip("\n").split("\n")
            lines[-1] = f"{lines[-1]} {words[0]}"
            code = "\n".join(lines) + "\n"
        elif command == "replace":
            if len(words) != 2:
                raise ValueError(f"{block.where}: `replace` takes two quoted arguments, got {words}")
            if words[0] not in code:
                raise ValueError(f"{block.where}: `replace` text {words[0]!r} is not in the block")
            code = code.replace(words[0], words[1])
        elif command == "env":
            for word in words:
                key, sep, value = word.partition("=")
                if not sep:
                    raise ValueError(f"{block.where}: `env` takes KEY=VALUE words, got {word!r}")
                env[key] = value
        else:
            raise ValueError(f"{block.where}: unknown doc-test marker {command!r}")
    return code, env, ""


def check_blocks_ran(text: str, source: str, ran: int) -> None:
    """A page must run at least one block, or declare `<!-- doc-test-none: REASON -->` and run none."""
    declared = NOTHING_TO_RUN.search(text)
    if declared and not declared.group(1):
        raise ValueError(f"{source}: `doc-test-none` needs a reason")
    if ran == 0 and not declared:
        raise ValueError(
            f"{source}: 0 blocks run; a page with nothing to run says so with <!-- doc-test-none: REASON -->"
        )
    if ran > 0 and declared:
        raise ValueError(f"{source}: marked `doc-test-none` but {ran} block(s) ran; remove the marker")


def check_no_background_job(code: str, where: str) -> None:
    """A command sent to the background (`cmd &`) would outlive the test and hold the CPU: refuse it, so the
    doc gets a marker that runs the command in the foreground (e.g. `replace " &" ""`) instead."""
    for line in code.splitlines():
        if re.search(r"(?<![&|])&\s*(#.*)?$", line.split("  #")[0]):
            raise ValueError(
                f"{where}: runs a background job ({line.strip()!r}); add a doc-test replace marker"
            )


def drop_setup_lines(code: str) -> tuple[str, list[str]]:
    """Remove installation lines (run by .ci/run): returns the rest and the dropped lines."""
    kept, dropped = [], []
    for line in code.splitlines():
        (dropped if SETUP_LINE.match(line) else kept).append(line)
    return "\n".join(kept) + "\n", dropped


def make_checkout(tmp_path: Path) -> Path:
    """TMP/repo with symlinks to the repository's entries, and TMP/shared -> ../shared."""
    checkout = tmp_path / "repo"
    checkout.mkdir()
    for entry in REPO_ROOT.iterdir():
        if entry.name not in NOT_MIRRORED and not entry.name.endswith(".egg-info"):
            (checkout / entry.name).symlink_to(entry)
    if SHARED.exists():
        (tmp_path / "shared").symlink_to(SHARED)
    if sys.prefix != sys.base_prefix:  # docs may say `.venv/bin/python`: the venv running these tests
        (checkout / ".venv").symlink_to(sys.prefix)
    return checkout


def block_environment(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO_ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["TORCH_HOME"] = str(tmp_path / "torch_home")
    env["MPLBACKEND"] = "Agg"
    env["OMP_NUM_THREADS"] = "1"  # one thread per process: the test machines are shared
    env.pop("VIRTUAL_ENV", None)
    return env


# A Python worker that runs blocks sent over stdin, one JSON line each, each in a fresh namespace; it answers on
# a separate pipe so that whatever the blocks print (or their subprocesses) cannot be mistaken for an answer.
WORKER = textwrap.dedent(
    """
    import json, os, sys, traceback
    answers = os.fdopen(int(sys.argv[1]), "w")
    for request in sys.stdin:
        request = json.loads(request)
        print(f"----- doc block {request['where']} -----", flush=True)
        namespace = {"__name__": "__main__"}
        try:
            exec(compile(request["code"], request["where"], "exec"), namespace)
            error = None
        except SystemExit as exc:
            error = None if exc.code in (None, 0) else f"SystemExit({exc.code!r})"
        except BaseException:
            error = traceback.format_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        answers.write(json.dumps({"error": error}) + "\\n")
        answers.flush()
    """
)


class PythonWorker:
    def __init__(self, cwd: Path, env: dict[str, str], log: Path):
        read_fd, self._write_fd = os.pipe()
        self._answers = os.fdopen(read_fd)
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(self._write_fd)],
            cwd=cwd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            text=True,
            pass_fds=(self._write_fd,),
        )
        os.close(self._write_fd)

    def run(self, code: str, where: str) -> str | None:
        """None on success, else the traceback (or why the worker died)."""
        self.process.stdin.write(json.dumps({"code": code, "where": where}) + "\n")
        self.process.stdin.flush()
        answer = self._answers.readline()
        if not answer:
            return f"the Python worker exited with status {self.process.wait()}"
        return json.loads(answer)["error"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self._answers.close()
        self._log.close()


def _tail(path: Path, limit: int = 6000) -> str:
    text = path.read_text(errors="replace") if path.exists() else ""
    return text[-limit:]


def test_parse_blocks_markers_and_setup_lines():
    """The parser itself: markers attach to the next fence, stale or dangling markers are errors."""
    text = textwrap.dedent(
        """\
        intro
        <!-- doc-test: append "A 1" -->
        <!-- doc-test: env X=1 -->
        ```bash
        pip install -e .
        python train.py
        ```
        ```text
        not run
        ```
        """
    )
    bash, plain = parse_blocks(text)
    assert (bash.line, bash.language, plain.language) == (4, "bash", "text")
    code, env, reason = apply_markers(bash)
    assert env == {"X": "1"} and reason == ""
    kept, dropped = drop_setup_lines(code)
    assert kept == "python train.py A 1\n" and dropped == ["pip install -e ."]
    with pytest.raises(ValueError, match="not in the block"):
        apply_markers(Block(1, "bash", "python a.py\n", [("replace", '"b.py" "c.py"')]))
    with pytest.raises(ValueError, match="not followed by a fenced block"):
        parse_blocks("<!-- doc-test: skip network -->\ntext\n```bash\nx\n```\n")
    with pytest.raises(ValueError, match="background job"):
        check_no_background_job("nohup python train.py > log 2>&1 &\n", "x")
    check_no_background_job("a && b 2>&1 | tail\n", "x")  # no background job: passes
    with pytest.raises(ValueError, match="unclosed"):
        parse_blocks("```python\nprint(1)\n")
    # the count of blocks run: 0 needs the page marker, and the marker needs 0
    check_blocks_ran("text\n", "page.md", ran=1)
    check_blocks_ran("<!-- doc-test-none: tables only -->\n", "page.md", ran=0)
    with pytest.raises(ValueError, match="0 blocks run"):
        check_blocks_ran("```text\nx\n```\n", "page.md", ran=0)
    with pytest.raises(ValueError, match="remove the marker"):
        check_blocks_ran("<!-- doc-test-none: tables only -->\n", "page.md", ran=2)
    with pytest.raises(ValueError, match="needs a reason"):
        check_blocks_ran("<!-- doc-test-none: -->\n", "page.md", ran=0)


def test_fence_tags_are_run_or_shown_only():
    """```py (a typo for python) or ```sh would drop a block silently: the page fails instead."""
    check_languages(parse_blocks("```text\nout\n```\n```\nplain\n```\n```yaml\nA: 1\n```\n"), "page.md")
    for tag in ("py", "sh", "shell", "python3"):
        with pytest.raises(ValueError, match=f"fence tag '{tag}'"):
            check_languages(parse_blocks(f"```{tag}\nprint(1)\n```\n"), "page.md")


def test_shared_data_is_decided_from_what_a_block_reads(tmp_path):
    """A block reads ../shared through the files it names, not only through its own text (issue 19: the
    serving page ran tools/quantize.py on the BCCD config and failed in a clone without ../shared)."""
    reason = shared_data_read_by(
        "python tools/quantize.py --config-file configs/mobilenet_v2_ssd320_bccd.yaml"
    )
    assert reason and "configs/mobilenet_v2_ssd320_bccd.yaml" in reason
    reason = shared_data_read_by("python demo.py --ckpt bccd_ssdlite --output-dir out")
    assert reason and "models/bccd_ssdlite.yaml" in reason
    assert "../shared" in shared_data_read_by("ls ../shared/data/BCCD")
    for code in (
        "python train.py SOLVER.MAX_ITER 2",
        "python demo.py --ckpt shapes_ssdlite",
        "python test.py --config-file models/shapes_ssdlite.yaml --ckpt models/shapes_ssdlite.pth",
    ):
        assert shared_data_read_by(code) is None, code
    # through a _BASE_ chain (path relative to the including file), in a repository of its own
    (tmp_path / "configs" / "sub").mkdir(parents=True)
    (tmp_path / "configs" / "base.yaml").write_text(
        'DATASETS:\n  REGISTER: ("a:voc:../shared/data/X:train",)\n'
    )
    (tmp_path / "configs" / "sub" / "mine.yaml").write_text("_BASE_: ../base.yaml\nSOLVER:\n  LR: 0.1\n")
    reason = shared_data_read_by("python train.py --config-file configs/sub/mine.yaml", tmp_path)
    assert reason and "base.yaml" in reason
    (tmp_path / "configs" / "base.yaml").write_text("SOLVER:\n  LR: 0.2\n")
    assert shared_data_read_by("python train.py --config-file configs/sub/mine.yaml", tmp_path) is None


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_doc_blocks_run(doc: Path, tmp_path: Path):
    name = str(doc.relative_to(REPO_ROOT))
    text = doc.read_text()
    all_blocks = parse_blocks(text, name)
    check_languages(all_blocks, name)
    blocks = [b for b in all_blocks if b.language in RUN_LANGUAGES]
    if not (SHARED / "data").is_dir():
        for block in blocks:
            code, _, _ = apply_markers(block)
            reason = shared_data_read_by(code) if code is not None else None
            if reason:
                shared_data_missing(f"{name} {block.where}: {reason}, which is not at {SHARED / 'data'}")
    checkout = make_checkout(tmp_path)
    env = block_environment(tmp_path)
    worker: PythonWorker | None = None
    skipped: list[str] = []
    ran = 0
    start = time.perf_counter()
    try:
        for index, block in enumerate(blocks):
            code, extra_env, reason = apply_markers(block)
            if code is None:
                skipped.append(f"{name} {block.where}: {reason}")
                continue
            if block.language == "bash":
                check_no_background_job(code, f"{name} {block.where}")
                code, dropped = drop_setup_lines(code)
                if dropped:
                    skipped.append(f"{name} {block.where}: {len(dropped)} set-up line(s), run by .ci/run")
                if not code.strip():
                    continue
                log = tmp_path / f"block_{index:02d}_line{block.line}.log"
                with log.open("w") as out:
                    result = subprocess.run(
                        ["bash", "-e", "-o", "pipefail", "-c", code],
                        cwd=checkout,
                        env={**env, **extra_env},
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        timeout=BLOCK_TIMEOUT_S,
                    )
                if result.returncode != 0:
                    pytest.fail(
                        f"{name} {block.where} exited with {result.returncode}:\n{code}\n--- output ---\n"
                        + _tail(log)
                    )
            else:
                if extra_env:
                    code = f"import os\nos.environ.update({extra_env!r})\n" + code
                if worker is None:
                    worker = PythonWorker(checkout, env, tmp_path / "python_blocks.log")
                error = worker.run(code, f"{name}:{block.line}")
                if error is not None:
                    pytest.fail(
                        f"{name} {block.where} failed:\n{error}\n--- output ---\n"
                        + _tail(tmp_path / "python_blocks.log")
                    )
            ran += 1
    finally:
        if worker is not None:
            worker.close()
    print(f"{name}: {ran} blocks run, {len(skipped)} skipped, {time.perf_counter() - start:.1f} s")
    for line in skipped:
        print(f"  skipped {line}")
    check_blocks_ran(text, name, ran)


def test_architecture_example_is_the_shipped_module():
    """docs/architecture.md shows tests/docs_examples/tiny_parts.py (that its launcher imports) unchanged."""
    module = (REPO_ROOT / "tests" / "docs_examples" / "tiny_parts.py").read_text()
    code = module[module.index("from torch import Tensor, nn") :]
    doc_blocks = [b.code for b in parse_blocks((REPO_ROOT / "docs" / "architecture.md").read_text())]
    assert any(code in block for block in doc_blocks), "copy tiny_parts.py into the architecture.md example"
