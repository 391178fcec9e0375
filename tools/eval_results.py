"""Evaluate a trained model with test.py and write the numbers docs publish about it into one results file.

    python tools/eval_results.py --results results/bccd_ssdlite.json \\
        -- --config-file models/bccd_ssdlite.yaml --ckpt models/bccd_ssdlite.pth

Everything after `--` is passed to test.py (config file, checkpoint, KEY VALUE overrides); the run writes into
a temporary OUTPUT_DIR. For each test dataset the results file holds test.py's metrics
(inference/<dataset>/results.json: COCO and VOC tables, 0-100) and, from analysis.json, the error analysis at
TEST.ANALYSIS_SCORE_THRESHOLD (per class TP / FP / FN and precision / recall / F1 in 0..1) and the confusion
matrix; plus the command, commit, date and machine. The precision-recall curves are left out: docs quote no
point of them, and every number in the file is one a page may be checked against (tests/doc_numbers.py).
Use it for a shipped or a given checkpoint; numbers of a training recipe come from tools/seed_runs.py (a mean
over seeds), not from one checkpoint.
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))  # tools/ is not a package
from seed_runs import machine_description  # noqa: E402


def collect(output_dir: Path) -> dict:
    """{dataset: {"metrics", "error_analysis"}} from a test.py OUTPUT_DIR.

    Raises:
        SystemExit: no inference/<dataset>/results.json (test.py evaluated nothing), or one without its
            analysis.json.
    """
    datasets = {}
    for results_path in sorted(output_dir.glob("inference/*/results.json")):
        analysis_path = results_path.with_name("analysis.json")
        if not analysis_path.is_file():
            raise SystemExit(f"{analysis_path}: missing (test.py writes it beside {results_path.name})")
        analysis = json.loads(analysis_path.read_text())
        datasets[results_path.parent.name] = {
            "metrics": json.loads(results_path.read_text()),
            "error_analysis": {
                "score_threshold": analysis["score_threshold"],
                "iou_threshold": analysis["iou_threshold"],
                "class_names": analysis["class_names"],
                "per_class": analysis["per_class"],
                "all_classes": analysis["all_classes"],
                "confusion_matrix": analysis["confusion_matrix"]["counts"],
            },
        }
    if not datasets:
        raise SystemExit(f"{output_dir}: no inference/*/results.json (does the config set DATASETS.TEST?)")
    return datasets


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    test_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", required=True, metavar="JSON", help="the results file to write")
    args = parser.parse_args(own)
    if not test_args:
        parser.error("give test.py's arguments after --, e.g. -- --config-file CFG --ckpt CKPT")
    return args, test_args


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args, test_args = parse_args(argv)
    machine = machine_description()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="eval_results_") as output_dir:
        command = [sys.executable, str(REPO / "test.py"), *test_args, "OUTPUT_DIR", output_dir]
        print("+", " ".join(command), flush=True)
        start = time.perf_counter()
        if subprocess.run(command, cwd=REPO).returncode != 0:
            raise SystemExit(f"test.py failed: {' '.join(command)}")
        wall = time.perf_counter() - start
        datasets = collect(Path(output_dir))
    results = {
        "command": "python tools/eval_results.py " + " ".join(argv),
        "test_args": test_args,
        "commit": commit,
        "date": datetime.date.today().isoformat(),
        "machine": machine,
        "wall_s": round(wall, 1),
        "datasets": datasets,
    }
    path = Path(args.results)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {path}")
    return results


if __name__ == "__main__":
    main()
