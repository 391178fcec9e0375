"""tools/seed_runs.py: runs at the same time (--jobs) each report their own CPU time, and the summary is the
mean and sample standard deviation of the runs' metrics. train.py is replaced by a stand-in script that burns
a known amount of CPU and writes a results file whose metric is the seed."""

from __future__ import annotations

import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

FAKE_TRAIN = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    args = sys.argv[1:]
    seed, out = int(args[args.index("SEED") + 1]), Path(args[args.index("OUTPUT_DIR") + 1])
    burn = 0.4 * (seed + 1)  # CPU seconds: 0.4, 0.8
    start = time.process_time()
    while time.process_time() - start < burn:
        pass
    if "FAIL" in args:
        sys.exit(3)
    (out / "inference" / "toy_test").mkdir(parents=True)
    (out / "inference" / "toy_test" / "results.json").write_text(json.dumps({"bbox": {"AP50": 10.0 * seed}}))
    """
)


@pytest.fixture()
def seed_runs(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("seed_runs", REPO / "tools" / "seed_runs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "train.py").write_text(FAKE_TRAIN)
    monkeypatch.setattr(module, "REPO", tmp_path)
    return module


def test_parallel_runs_each_report_their_own_cpu_time(seed_runs, tmp_path):
    results_file = tmp_path / "toy.json"
    argv = ["--seeds", "0", "1", "--jobs", "2", "--results", str(results_file)]
    results = seed_runs.main(
        [*argv, "--output-root", str(tmp_path / "runs"), "--", "--config-file", "x.yaml"]
    )
    assert json.loads(results_file.read_text()) == results
    cpu = {run["seed"]: run["cpu_s"] for run in results["runs"]}
    # each run burnt 0.4 or 0.8 s of its own; a sum over both runs (RUSAGE_CHILDREN) would give 1.2 to each
    assert 0.35 <= cpu[0] < 0.75 and 0.75 <= cpu[1] < 1.15
    assert results["summary"]["toy_test/bbox/AP50"] == {"mean": 5.0, "std": 7.07, "min": 0.0, "max": 10.0}
    assert (tmp_path / "runs" / "toy" / "seed1" / "stdout.txt").is_file()  # --jobs 2: output goes to a file


def test_a_failed_run_names_its_seed_and_its_output(seed_runs, tmp_path):
    argv = ["--seeds", "0", "1", "--jobs", "2", "--results", str(tmp_path / "toy.json")]
    with pytest.raises(SystemExit, match=r"seed \d: train.py exited with 3; its output is in .*stdout.txt"):
        seed_runs.main([*argv, "--output-root", str(tmp_path / "runs"), "--", "FAIL"])
    assert not (tmp_path / "toy.json").exists()


def test_jobs_below_one_is_refused(seed_runs, tmp_path):
    with pytest.raises(SystemExit):
        seed_runs.main(["--jobs", "0", "--results", str(tmp_path / "toy.json")])
