"""Detectron2's table and copypaste formats, reproduced character for character (peers.md B.1, B.2)."""

import math

from ssd.evaluation.tables import (
    copypaste_lines,
    create_small_table,
    flatten_results,
    per_category_table,
    pipe_table,
)

SUMMARY = {"AP": 25.123, "AP50": 42.5, "AP75": 25.9, "APs": 6.8, "APm": 27.1, "APl": 40.2}


def test_summary_table_golden():
    expected = (
        "|   AP   |  AP50  |  AP75  |  APs  |  APm   |  APl   |\n"
        "|:------:|:------:|:------:|:-----:|:------:|:------:|\n"
        "| 25.123 | 42.500 | 25.900 | 6.800 | 27.100 | 40.200 |"
    )
    assert create_small_table(SUMMARY) == expected


def test_per_category_table_golden():
    per_category = [
        ("person", 40.1),
        ("bicycle", 20.2),
        ("car", 30.3),
        ("motorcycle", 25.0),
        ("airplane", 50.5),
    ]
    expected = (
        "| category   | AP     | category   | AP     | category   | AP     |\n"
        "|:-----------|:-------|:-----------|:-------|:-----------|:-------|\n"
        "| person     | 40.100 | bicycle    | 20.200 | car        | 30.300 |\n"
        "| motorcycle | 25.000 | airplane   | 50.500 |            |        |"
    )
    assert per_category_table(per_category) == expected


def test_per_category_table_with_one_class_and_nan():
    # N_COLS = min(6, 2 * num_classes): one class gives a single (category, AP) pair.
    expected = "| category   | AP   |\n|:-----------|:-----|\n| RBC        | nan  |"
    assert per_category_table([("RBC", float("nan"))]) == expected


def test_pipe_table_rejects_ragged_rows():
    try:
        pipe_table([[1, 2]], ["a"])
    except ValueError as err:
        assert "2 cells" in str(err)
    else:
        raise AssertionError("a row with too many cells must be refused")


def test_copypaste_lines_golden_and_skip_per_category():
    results = {"bbox": {**SUMMARY, "AP-person": 40.1}}
    assert copypaste_lines(results) == [
        "copypaste: Task: bbox",
        "copypaste: AP,AP50,AP75,APs,APm,APl",
        "copypaste: 25.1230,42.5000,25.9000,6.8000,27.1000,40.2000",
    ]


def test_flatten_results():
    flat = flatten_results({"bbox": {"AP": 1.0}, "voc": {"mAP50_07": float("nan")}})
    assert flat["bbox/AP"] == 1.0 and math.isnan(flat["voc/mAP50_07"])
