"""tools/eval_results.py: what it keeps of a test.py output folder, its errors, and (with ../shared/data/BCCD)
that results/bccd_ssdlite.json, the numbers docs/bccd.md publishes, is what test.py measures now."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))  # tools/ is not a package
import eval_results  # noqa: E402

# The tolerance of tests/test_published_numbers.py for the same model and command (0-100 scale).
TOLERANCE = 0.5


def write_run(root: Path, dataset: str, with_analysis: bool = True) -> None:
    folder = root / "inference" / dataset
    folder.mkdir(parents=True)
    (folder / "results.json").write_text(json.dumps({"bbox": {"AP": 12.5}, "voc": {"mAP50_07": 40.0}}))
    if with_analysis:
        analysis = {
            "score_threshold": 0.5, "iou_threshold": 0.5, "class_names": ["__background__", "cat"],
            "confusion_matrix": {"rows": "ground truth", "columns": "prediction", "counts": [[0, 2], [1, 3]]},
            "per_class": {"cat": {"TP": 3, "FP": 2, "FN": 1, "precision": 0.6, "recall": 0.75, "F1": 0.667}},
            "all_classes": {"TP": 3, "FP": 2, "FN": 1, "precision": 0.6, "recall": 0.75, "F1": 0.667},
            "pr_curves": {"recall": [0.0, 0.5, 1.0], "per_class": {"cat": {"precision": [1.0, 0.9, 0.1]}}},
        }  # fmt: skip
        (folder / "analysis.json").write_text(json.dumps(analysis))


def test_collect_keeps_metrics_error_analysis_and_counts_but_not_the_curves(tmp_path):
    write_run(tmp_path, "pets_test")
    collected = eval_results.collect(tmp_path)
    assert list(collected) == ["pets_test"]
    assert collected["pets_test"]["metrics"] == {"bbox": {"AP": 12.5}, "voc": {"mAP50_07": 40.0}}
    analysis = collected["pets_test"]["error_analysis"]
    assert analysis["confusion_matrix"] == [[0, 2], [1, 3]]
    assert analysis["per_class"]["cat"] == {"TP": 3, "FP": 2, "FN": 1, "precision": 0.6, "recall": 0.75,
                                            "F1": 0.667}  # fmt: skip
    assert analysis["score_threshold"] == 0.5 and analysis["class_names"] == ["__background__", "cat"]
    text = json.dumps(collected)
    assert "pr_curves" not in text and "0.9" not in text  # no point of the curves is kept


def test_collect_names_what_is_missing(tmp_path):
    with pytest.raises(SystemExit, match=r"no inference/\*/results.json"):
        eval_results.collect(tmp_path)
    write_run(tmp_path, "pets_test", with_analysis=False)
    with pytest.raises(SystemExit, match=r"pets_test/analysis.json: missing"):
        eval_results.collect(tmp_path)


def test_test_py_arguments_are_required():
    with pytest.raises(SystemExit):
        eval_results.parse_args(["--results", "out.json"])
    args, test_args = eval_results.parse_args(["--results", "out.json", "--", "--ckpt", "m.pth"])
    assert args.results == "out.json" and test_args == ["--ckpt", "m.pth"]


def test_committed_bccd_results_are_what_test_py_measures(bccd_root, tmp_path, monkeypatch):
    committed = json.loads((REPO / "results" / "bccd_ssdlite.json").read_text())
    monkeypatch.chdir(REPO)  # the model's config names BCCD relative to the repository root
    measured = eval_results.main(
        ["--results", str(tmp_path / "bccd_ssdlite.json"), "--", *committed["test_args"]]
    )
    (name,) = committed["datasets"]
    now, then = measured["datasets"][name], committed["datasets"][name]
    for task, metrics in then["metrics"].items():
        for metric, value in metrics.items():
            if metric in ("TP", "FP", "FN"):
                continue  # counts: their ratios (precision, recall, F1) are compared, within the tolerance
            assert now["metrics"][task][metric] == pytest.approx(value, abs=TOLERANCE), f"{task}/{metric}"
    for cls, row in then["error_analysis"]["per_class"].items():
        for key in ("precision", "recall", "F1"):  # 0..1; the tolerance above on the 0-100 scale
            assert 100 * now["error_analysis"]["per_class"][cls][key] == pytest.approx(
                100 * row[key], abs=TOLERANCE
            ), f"{cls}/{key}"
