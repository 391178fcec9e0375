"""Bad input and faults, one case each: every test asserts the named error or the reported count.

Each case is registered with `@case(...)`, which also records what the package does with that input;
docs/bad_inputs.md shows that table, and `test_docs_table_lists_every_case` keeps the two equal. After adding
a case, rewrite the table with

    python tests/test_bad_inputs.py
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from image_fakes import png_bomb
from test_train_e2e import TINY
from train_fakes import NaNGradientAt

from ssd.config import ConfigError, get_cfg
from ssd.data.build import build_dataset, check_num_classes
from ssd.data.datasets import COCODataset, CSVDataset, VOCDataset, XMLFolderDataset
from ssd.data.datasets.image_files import DatasetError, read_image_rgb
from ssd.engine.checkpoint import (
    Checkpointer,
    CheckpointError,
    NonFiniteWeightsError,
    load_checkpoint_file,
    save_checkpoint_file,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # train.py, test.py and demo.py live at the repository root
import demo  # noqa: E402
import test as test_cli  # noqa: E402
import train as train_cli  # noqa: E402

DOC = REPO / "docs" / "bad_inputs.md"
HEADER = "filename,width,height,class,xmin,ymin,xmax,ymax\n"

BAD_INPUTS: dict[str, tuple[str, str]] = {}  # case id -> (bad input, what the package does)
# Tables of docs/bad_inputs.md, each between "<!-- cases{section}: start -->" and "... end -->"; "" is the first.
SECTIONS: dict[str, str] = {}  # case id -> its table's section
IMAGES_SECTION = " images"  # round two: images, ONNX files and serving


def case(case_id: str, bad_input: str, outcome: str, section: str = ""):
    """Register one row of docs/bad_inputs.md (the table of `section`) for the decorated test."""

    def register(test):
        BAD_INPUTS[case_id] = (bad_input, outcome)
        SECTIONS[case_id] = section
        return test

    return register


def table_markers(section: str = "") -> tuple[str, str]:
    return f"<!-- cases{section}: start -->", f"<!-- cases{section}: end -->"


def render_table(section: str = "") -> str:
    rows = [
        f"| `{cid}` | {bad} | {outcome} |"
        for cid, (bad, outcome) in sorted(BAD_INPUTS.items())
        if SECTIONS[cid] == section
    ]
    return "\n".join(["| case | bad input | what happens |", "|---|---|---|", *rows])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _image(path: Path, width: int = 96, height: int = 64) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((height, width, 3), 90, np.uint8))
    return path


def _xml(file_name: str, objects: str = "", width="96", height="64") -> str:
    return (
        f"<annotation><filename>{file_name}</filename><size><width>{width}</width><height>{height}</height>"
        f"</size>{objects}</annotation>"
    )


def _object(name: str, corners=("11", "11", "201", "61")) -> str:
    x1, y1, x2, y2 = corners
    return (
        f"<object><name>{name}</name><bndbox><xmin>{x1}</xmin><ymin>{y1}</ymin><xmax>{x2}</xmax>"
        f"<ymax>{y2}</ymax></bndbox></object>"
    )


def _coco(path: Path, images: list[dict], annotations: list[dict], categories=None) -> Path:
    categories = categories or [{"id": 1, "name": "cat"}]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def _ann(ann_id: int, image_id: int, bbox, category_id: int = 1) -> dict:
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "iscrowd": 0,
        "area": 1,
    }


# ----- 1. annotated image size ---------------------------------------------------------------------------------


@case(
    "size-wrong-voc",
    "VOC XML `<size>` 256 x 256 on a 96 x 64 image",
    "counted: the file's size is used, one warning names the file and both sizes",
)
@case("size-wrong-csv", "CSV width/height 256 x 256 on a 96 x 64 image", "counted, as `size-wrong-voc`")
@case("size-wrong-coco", "COCO `width`/`height` 256 x 256 on a 96 x 64 image", "counted, as `size-wrong-voc`")
@pytest.mark.parametrize("fmt", ["voc", "csv", "coco"])
def test_annotated_size_that_differs_from_the_file(tmp_path, caplog, fmt):
    # One box (10, 10, 200, 60) in pixels of the file: clipped to the file's width 96, which it would not be
    # against the annotated 256; the evaluator scales detections back with the (height, width) checked here.
    if fmt == "voc":
        (tmp_path / "a.xml").write_text(_xml("a.png", _object("cat"), width="256", height="256"))
        _image(tmp_path / "a.png")
        make = lambda: XMLFolderDataset(tmp_path)  # noqa: E731
    elif fmt == "csv":
        _image(tmp_path / "a.png")
        (tmp_path / "a.csv").write_text(HEADER + "a.png,256,256,cat,10,10,200,60\n")
        make = lambda: CSVDataset(tmp_path / "a.csv", tmp_path)  # noqa: E731
    else:
        _image(tmp_path / "a.png")
        images = [{"id": 1, "file_name": "a.png", "width": 256, "height": 256}]
        json_file = _coco(tmp_path / "a.json", images, [_ann(1, 1, [10, 10, 190, 50])])
        make = lambda: COCODataset(json_file, tmp_path)  # noqa: E731
    with caplog.at_level(logging.WARNING):
        dataset = make()
    annotation = dataset.get_annotation(0)
    assert (annotation["height"], annotation["width"]) == (64, 96)
    assert annotation["boxes_xyxy"].tolist() == [[10, 10, 96, 60]]
    assert dataset.num_size_mismatches == 1
    assert any("a.png: annotated 256x256, file 96x64" in r.getMessage() for r in caplog.records)


@case("size-missing-coco", "COCO image without `height`/`width`", "read from the image file, no warning")
@case(
    "size-zero-voc", "VOC XML `<size>` 0 x 0 (some labelling tools)", "read from the image file, no warning"
)
def test_missing_size_is_read_from_the_file(tmp_path, caplog):
    _image(tmp_path / "a.png")
    json_file = _coco(tmp_path / "a.json", [{"id": 1, "file_name": "a.png"}], [])
    (tmp_path / "a.xml").write_text(_xml("a.png", width="0", height="0"))
    with caplog.at_level(logging.WARNING):
        for dataset in (COCODataset(json_file, tmp_path), XMLFolderDataset(tmp_path)):
            annotation = dataset.get_annotation(0)
            assert (annotation["height"], annotation["width"], dataset.num_size_mismatches) == (64, 96, 0)
    assert not caplog.records


@case(
    "size-exif-rotated",
    "a JPEG whose EXIF orientation turns it by 90 degrees, annotated with the decoded size",
    "no mismatch: the size is read as OpenCV decodes the image (turned)",
)
def test_exif_rotated_jpeg_has_its_decoded_size(tmp_path, caplog):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.new("RGB", (96, 64), (10, 200, 30)).save(tmp_path / "a.jpg", exif=exif.tobytes())
    assert read_image_rgb(tmp_path / "a.jpg").shape == (96, 64, 3)  # OpenCV turns it: 96 rows, 64 columns
    (tmp_path / "a.csv").write_text(HEADER + "a.jpg,64,96,cat,1,1,9,9\n")
    with caplog.at_level(logging.WARNING):
        dataset = CSVDataset(tmp_path / "a.csv", tmp_path)
    annotation = dataset.get_annotation(0)
    assert (annotation["height"], annotation["width"], dataset.num_size_mismatches) == (96, 64, 0)
    assert not caplog.records


# ----- 2. diverged weights ---------------------------------------------------------------------------------------


def run_train(output_dir: Path, *extra: str, resume: bool = False) -> int:
    args = ["--config-file", "", "--skip-test", *(["--resume"] if resume else []), *TINY]
    return train_cli.main([*args, "OUTPUT_DIR", str(output_dir), *extra])


@case(
    "diverged-last-iteration",
    "weights turn NaN in the last update while the losses stay finite",
    "error, exit status 3: no `model_final.pth`; the message names the last checkpoint with finite weights",
)
def test_a_diverged_model_is_never_saved(tmp_path, monkeypatch):
    import ssd.modeling

    real_build = ssd.modeling.build_detection_model
    monkeypatch.setattr(
        ssd.modeling, "build_detection_model", lambda cfg: NaNGradientAt(real_build(cfg), at=3)
    )
    status = run_train(
        tmp_path, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.OPTIMIZER", "SGD"
    )
    assert status == train_cli.EXIT_NON_FINITE
    log = (tmp_path / "log.txt").read_text()
    assert f"Not saving {tmp_path / 'model_final.pth'} at iteration 3" in log
    assert f"Last checkpoint with finite weights: {tmp_path / 'model_0000002.pth'}" in log
    assert not (tmp_path / "model_final.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    saved = load_checkpoint_file(tmp_path / "model_0000002.pth")["model"]
    assert all(torch.isfinite(value).all() for value in saved.values() if value.is_floating_point())


@case(
    "diverged-checkpoint-resume",
    "`--resume` from a checkpoint whose weights hold inf",
    "error naming the file and how to pick an earlier one",
)
def test_resume_refuses_a_diverged_checkpoint(tmp_path):
    model = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(model, tmp_path)
    checkpointer.save("model_0000001", 1)
    bad = {
        "model": {k: torch.full_like(v, float("inf")) for k, v in model.state_dict().items()},
        "iteration": 2,
    }
    save_checkpoint_file(bad, tmp_path / "model_0000002.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000002.pth")
    with pytest.raises(NonFiniteWeightsError, match=r"model_0000002\.pth holds a diverged model.*weight"):
        Checkpointer(model, tmp_path).resume()
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=r"Not saving .*model_0000003\.pth.*NaN/inf in weight"):
        checkpointer.save("model_0000003", 3)
    assert not (tmp_path / "model_0000003.pth").exists()
    assert checkpointer.last_saved == tmp_path / "model_0000001.pth"


# ----- 3. resume with changed settings, and 9. pruning -------------------------------------------------------


@case(
    "resume-changed-lr",
    "`--resume ... SOLVER.LR 1e-3` after a run with another LR",
    "the new value applies; each changed SOLVER key is logged",
)
@case(
    "resume-changed-optimizer",
    "`--resume ... SOLVER.OPTIMIZER AdamW` after an SGD run",
    "error naming SOLVER.OPTIMIZER (its state cannot carry over), exit status 1",
)
@case(
    "checkpoints-pruned",
    "a long run's periodic checkpoints",
    "only the newest SOLVER.MAX_TO_KEEP `model_N.pth` stay, with `model_final.pth`/`model_best.pth`",
)
def test_resume_applies_changed_solver_values_and_old_checkpoints_are_pruned(tmp_path):
    common = (
        "SOLVER.MAX_ITER",
        "4",
        "SOLVER.CHECKPOINT_PERIOD",
        "1",
        "SOLVER.MAX_TO_KEEP",
        "2",
        "SOLVER.OPTIMIZER",
        "SGD",
    )
    assert run_train(tmp_path, *common, "SOLVER.LR", "0.05") == 0
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000002.pth", "model_0000003.pth", "model_final.pth"
    ]  # fmt: skip
    (tmp_path / "model_final.pth").unlink()
    (tmp_path / "last_checkpoint").write_text("model_0000002.pth")
    assert run_train(tmp_path, *common, "SOLVER.LR", "0.001", resume=True) == 0
    final = load_checkpoint_file(tmp_path / "model_final.pth")
    # Iteration 4 is past the 2-iteration warmup and before the LR steps: the LR is SOLVER.LR itself.
    assert final["scheduler"]["base_lrs"] == [0.001]
    assert final["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001, rel=1e-12)
    assert "SOLVER.LR changed from 0.05 (checkpoint) to 0.001" in (tmp_path / "log.txt").read_text()

    (tmp_path / "last_checkpoint").write_text("model_0000003.pth")
    assert run_train(tmp_path, *common, "SOLVER.OPTIMIZER", "AdamW", resume=True) == 1
    message = (
        "model_0000003.pth holds the state of a SGD optimizer, but this run uses AdamW (SOLVER.OPTIMIZER)"
    )
    assert message in (tmp_path / "log.txt").read_text()


@case(
    "checkpoints-pruned-unit",
    "periodic saves with `max_to_keep` 2, then best and final",
    "the two newest periodic files, best and final remain",
)
def test_pruning_keeps_the_newest_periodic_checkpoints_and_best_and_final(tmp_path):
    checkpointer = Checkpointer(torch.nn.Linear(2, 2), tmp_path, max_to_keep=2)
    for iteration in range(1, 6):
        checkpointer.save(f"model_{iteration:07d}", iteration)
        if iteration == 2:
            checkpointer.save("model_best", iteration)
    checkpointer.save("model_final", 5)
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [
        "model_0000004.pth", "model_0000005.pth", "model_best.pth", "model_final.pth"
    ]  # fmt: skip


SAVER = """
import sys, torch
from ssd.engine.checkpoint import Checkpointer
checkpointer = Checkpointer(torch.nn.Linear(1000, 4000), sys.argv[1], max_to_keep=2)
iteration = 0
while True:
    iteration += 1
    checkpointer.save(f"model_{iteration:07d}", iteration)
"""


@case(
    "killed-during-save",
    "SIGKILL while a checkpoint is being written",
    "`last_checkpoint` names a complete file; the next run's resume deletes the stale `.model_N.pth.PID.tmp`",
)
def test_a_run_killed_while_saving_resumes_and_leaves_no_temporary_file(tmp_path):
    for _attempt in range(5):  # the kill must land inside a write, which a few tries always achieved
        folder = tmp_path / f"run{_attempt}"
        folder.mkdir()
        process = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(folder)], env={**os.environ, "PYTHONPATH": str(REPO)}
        )
        try:
            deadline = time.monotonic() + 60
            while not (folder / "last_checkpoint").exists() or not list(folder.glob(".*.tmp")):
                assert process.poll() is None and time.monotonic() < deadline, "saver died or never saved"
                time.sleep(0.002)
        finally:
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
        if list(folder.glob(".*.tmp")):
            break
    stale = list(folder.glob(".*.tmp"))
    assert stale, "no save was interrupted in 5 tries"
    model = torch.nn.Linear(1000, 4000)
    checkpointer = Checkpointer(model, folder, max_to_keep=2)
    iteration = checkpointer.resume()["iteration"]
    assert not list(folder.glob(".*.tmp"))
    checkpointer.save(f"model_{iteration + 1:07d}", iteration + 1)
    assert len(list(folder.glob("model_*.pth"))) == 2


class Payload:
    """Unpickling this object would run code (the file it is saved in is the attack)."""

    def __reduce__(self):
        return (Path.touch, (Path(os.environ["SSD_TEST_PAYLOAD"]),))


@case(
    "pickle-payload",
    "a checkpoint file whose pickle would run code when loaded",
    "error naming the file; the code never runs (`torch.load(weights_only=True)`)",
)
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("SSD_TEST_PAYLOAD", str(marker))
    torch.save({"model": {}, "extra": Payload()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*evil\.pth"):
        load_checkpoint_file(tmp_path / "evil.pth")
    assert not marker.exists()


@case(
    "boxes-outside-or-degenerate",
    "boxes leaving the image, and zero-area or inverted boxes",
    "counted: clipped to the image / dropped, one warning each naming example files",
)
def test_boxes_outside_the_image_are_clipped_and_degenerate_ones_dropped(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "a.csv").write_text(HEADER + "a.png,96,64,cat,-5,1,50,90\na.png,96,64,cat,30,9,30,20\n")
    dataset = CSVDataset(tmp_path / "a.csv", tmp_path)
    assert dataset.get_annotation(0)["boxes_xyxy"].tolist() == [[0, 1, 50, 64]]
    assert (dataset.num_clipped_boxes, dataset.num_dropped_boxes) == (1, 1)


# ----- 4. rows dropped --------------------------------------------------------------------------------------------


@case(
    "csv-class-empty-with-box",
    "CSV row with coordinates but an empty class",
    "error naming the file and line",
)
def test_csv_box_without_class(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "a.csv").write_text(HEADER + "a.png,96,64,cat,1,1,9,9\na.png,96,64,,5,5,20,20\n")
    with pytest.raises(DatasetError, match=r"a\.csv, line 3: coordinates without a class"):
        CSVDataset(tmp_path / "a.csv", tmp_path)


@case(
    "coco-orphan-annotation",
    "COCO annotation whose `image_id` is not among the images",
    "counted: skipped, one warning with the count and the annotation ids",
)
def test_coco_annotation_of_an_unknown_image(tmp_path, caplog):
    _image(tmp_path / "a.png")
    images = [{"id": 1, "file_name": "a.png", "width": 96, "height": 64}]
    json_file = _coco(tmp_path / "a.json", images, [_ann(1, 1, [1, 1, 5, 5]), _ann(7, 42, [1, 1, 5, 5])])
    with caplog.at_level(logging.WARNING):
        dataset = COCODataset(json_file, tmp_path)
    assert dataset.num_orphan_annotations == 1 and len(dataset.get_annotation(0)["labels"]) == 1
    assert any(
        "skipped 1 annotations" in r.getMessage() and "ids 7" in r.getMessage() for r in caplog.records
    )


# ----- 5. paths outside the dataset -----------------------------------------------------------------------------


@case(
    "path-outside-csv",
    "CSV `filename` absolute or with `../`",
    "refused: error naming the file, line and path",
)
@case("path-outside-coco", "COCO `file_name` with `../`", "refused: error naming the file and image id")
@case("path-outside-xml", "XML `<filename>` absolute", "refused: error naming the XML file")
@case("path-outside-voc-split", "VOC split file id with `../`", "refused: error naming the split file")
@pytest.mark.parametrize("fmt", ["csv-dotdot", "csv-absolute", "coco", "xml", "voc-split"])
def test_image_paths_outside_the_dataset_are_refused(tmp_path, fmt):
    outside = _image(tmp_path / "secret.png")  # exists: the old code read it and trained on it
    data = tmp_path / "data"
    _image(data / "a.png")
    if fmt.startswith("csv"):
        name = "../secret.png" if fmt == "csv-dotdot" else str(outside)
        (data / "a.csv").write_text(HEADER + f"{name},96,64,cat,1,1,9,9\n")
        expected = rf"a\.csv, line 2: image path '{re.escape(name)}' does not name a file inside"
        with pytest.raises(DatasetError, match=expected):
            CSVDataset(data / "a.csv", data)
    elif fmt == "coco":
        images = [{"id": 3, "file_name": "../secret.png", "width": 96, "height": 64}]
        json_file = _coco(data / "a.json", images, [])
        with pytest.raises(
            DatasetError, match=r"a\.json, image id 3: file_name: image path '\.\./secret\.png'"
        ):
            COCODataset(json_file, data)
    elif fmt == "xml":
        (data / "a.xml").write_text(_xml(str(outside)))
        with pytest.raises(DatasetError, match=r"a\.xml: <filename>: image path .*secret\.png"):
            XMLFolderDataset(data)
    else:
        (data / "ImageSets" / "Main").mkdir(parents=True)
        (data / "ImageSets" / "Main" / "train.txt").write_text("../../secret\n")
        with pytest.raises(DatasetError, match=r"train\.txt, entry 1: image path '\.\./\.\./secret\.xml'"):
            VOCDataset(data, "train", ("cat",))


# ----- 6. XML entity expansion --------------------------------------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0" encoding="{encoding}"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol9 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
]>
<annotation><filename>a.png</filename><object><name>&lol9;</name></object></annotation>
"""


@case(
    "xml-doctype-utf8",
    'XML with a DOCTYPE / ENTITY declaration ("billion laughs")',
    "refused: error naming the file",
)
@case(
    "xml-doctype-utf16",
    "XML with a DOCTYPE / ENTITY declaration, encoded in UTF-16",
    "refused the same way (the check runs after decoding)",
)
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_entity_declarations_are_refused_in_any_encoding(tmp_path, encoding):
    _image(tmp_path / "a.png")
    (tmp_path / "a.xml").write_bytes(BILLION_LAUGHS.format(encoding=encoding).encode(encoding))
    with pytest.raises(DatasetError, match=r"a\.xml: XML with a DOCTYPE or ENTITY declaration is refused"):
        XMLFolderDataset(tmp_path, class_names=("cat",))


# ----- 7. malformed values ------------------------------------------------------------------------------------------


@case(
    "coco-unknown-category",
    "COCO `category_id` missing from `categories`",
    "error naming the file and annotation id",
)
@case("coco-bbox-3-numbers", "COCO `bbox` of 3 numbers", "error naming the file and annotation id")
@case("csv-extra-column", "CSV row with a 9th field", "error naming the file, line and field count")
@case("xml-xmin-text", "XML `<xmin>abc</xmin>`", "error naming the file, object and value")
@case("xml-width-unit", "XML `<width>96px</width>`", "error naming the file and value")
@case(
    "unknown-class", "a class name not in DATASETS.CLASS_NAMES", "error naming the file and the known classes"
)
@pytest.mark.parametrize(
    "fmt",
    ["coco-category", "coco-bbox", "csv-extra", "xml-xmin", "xml-width", "xml-unknown-class"],
)
def test_malformed_values_name_file_and_place(tmp_path, fmt):
    _image(tmp_path / "a.png")
    images = [{"id": 1, "file_name": "a.png", "width": 96, "height": 64}]
    if fmt == "coco-category":
        json_file = _coco(tmp_path / "a.json", images, [_ann(5, 1, [1, 1, 5, 5], category_id=99)])
        expected = r"a\.json, annotation id 5: category_id 99 is not among the categories \(ids \[1\]\)"
        make = lambda: COCODataset(json_file, tmp_path)  # noqa: E731
    elif fmt == "coco-bbox":
        json_file = _coco(tmp_path / "a.json", images, [_ann(6, 1, [1, 1, 5])])
        expected = r"a\.json, annotation id 6: bbox must be 4 numbers"
        make = lambda: COCODataset(json_file, tmp_path)  # noqa: E731
    elif fmt == "csv-extra":
        (tmp_path / "a.csv").write_text(HEADER + "a.png,96,64,cat,1,1,9,9,extra\n")
        expected = r"a\.csv, line 2: 9 fields, the header has 8"
        make = lambda: CSVDataset(tmp_path / "a.csv", tmp_path)  # noqa: E731
    else:
        corners = ("abc", "1", "9", "9") if fmt == "xml-xmin" else ("1", "1", "9", "9")
        name = "zebra" if fmt == "xml-unknown-class" else "cat"
        width = "96px" if fmt == "xml-width" else "96"
        (tmp_path / "a.xml").write_text(_xml("a.png", _object(name, corners), width=width))
        expected = {
            "xml-xmin": r"a\.xml: <xmin> of <object> 1 \('cat'\) is 'abc', not a number",
            "xml-width": r"a\.xml: <width> of <size> is '96px', not a number",
            "xml-unknown-class": r"a\.xml: unknown class 'zebra'; known classes: cat",
        }[fmt]
        make = lambda: XMLFolderDataset(tmp_path, class_names=("cat",))  # noqa: E731
    with pytest.raises(DatasetError, match=expected):
        make()


@case(
    "num-classes-too-small",
    "MODEL.NUM_CLASSES smaller than the dataset's classes",
    "error naming MODEL.NUM_CLASSES and the value to set, exit status 1",
)
def test_num_classes_that_does_not_fit_the_data(tmp_path):
    assert run_train(tmp_path, "SOLVER.MAX_ITER", "1", "MODEL.NUM_CLASSES", "3") == 1
    log = (tmp_path / "log.txt").read_text()
    assert "MODEL.NUM_CLASSES is 3, but dataset 'tiny_train' has 4 classes with background" in log
    assert "set MODEL.NUM_CLASSES 4" in log
    with pytest.raises(ConfigError, match=r"is 5, but dataset 'x' has 4 classes .*set MODEL.NUM_CLASSES 4"):
        check_num_classes(5, ("__background__", "a", "b", "c"), "x")


# ----- 8. corrupt images, demo, test.py, empty datasets -----------------------------------------------------------------


@case(
    "image-missing-or-not-an-image",
    "an annotated image that is missing, or not an image",
    "error when the dataset is built, naming every bad file",
)
@case(
    "image-truncated",
    "a truncated PNG (valid header) with DATASETS.CHECK_IMAGES True",
    "error at start-up naming the file (without the option: when first loaded)",
)
def test_bad_image_files_fail_at_start_up(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "b.png").write_bytes(b"not an image")
    (tmp_path / "a.csv").write_text(HEADER + "a.png,96,64,cat,1,1,9,9\nb.png,96,64,,,,,\nc.png,96,64,,,,,\n")
    with pytest.raises(DatasetError, match=r"2 of 3 image files cannot be read: .*b\.png; .*c\.png"):
        CSVDataset(tmp_path / "a.csv", tmp_path)
    cv2.imwrite(
        str(tmp_path / "b.png"), np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)
    )
    data = (tmp_path / "b.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data[: len(data) // 2])  # the header survives, half the pixels do not
    (tmp_path / "a.csv").write_text(HEADER + "a.png,96,64,cat,1,1,9,9\nb.png,96,64,,,,,\n")
    cfg = get_cfg()
    cfg.merge_from_list(
        ["DATASETS.REGISTER", (f"t:csv:{tmp_path / 'a.csv'}:{tmp_path}",), "MODEL.NUM_CLASSES", 2]
    )
    assert len(build_dataset(cfg, ["t"], is_train=True)) == 2  # the header is fine: found only when loaded
    cfg.merge_from_list(["DATASETS.CHECK_IMAGES", True])
    with pytest.raises(DatasetError, match=r"1 of 2 images cannot be decoded: cannot decode .*b\.png"):
        build_dataset(cfg, ["t"], is_train=True)


@case(
    "demo-unreadable-image",
    "`demo.py` on a folder where one image is unreadable",
    "that image is reported and skipped, the others are written, exit status 1 naming it",
)
def test_demo_goes_on_past_an_unreadable_image(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a_bad.png").write_bytes(b"not an image")
    _image(folder / "b_good.png")
    with pytest.raises(SystemExit) as err:
        demo.main(["--images-dir", str(folder), "--output-dir", str(tmp_path / "out"), "MODEL.DEVICE", "cpu"])
    assert (
        str(err.value) == f"demo.py: 1 of 2 images could not be read and were skipped: {folder / 'a_bad.png'}"
    )
    assert "a_bad.png: skipped, cannot decode image file" in capsys.readouterr().err
    assert cv2.imread(str(tmp_path / "out" / "b_good.png")) is not None


@case(
    "test-py-bad-config",
    "`test.py` with an unknown config key, a missing checkpoint or a checkpoint holding NaN",
    "one line `test.py: ...`, exit status 1, no traceback",
)
@case(
    "dataset-file-missing",
    "a dataset's annotation file or folder that does not exist",
    "error naming the path (train.py / test.py: one line, exit status 1)",
)
@case(
    "empty-dataset",
    "an empty dataset in DATASETS.TRAIN or DATASETS.TEST",
    "error naming the dataset (train.py: exit status 1; test.py: one line, exit status 1)",
)
def test_test_py_errors_are_one_line_and_empty_datasets_are_named(tmp_path):
    with pytest.raises(SystemExit) as err:
        test_cli.main(["--config-file", "", "--ckpt", "x.pth", "MODEL.NO_SUCH_KEY", "1"])
    assert str(err.value).startswith("test.py: ") and "MODEL.NO_SUCH_KEY" in str(err.value)
    with pytest.raises(SystemExit) as err:
        test_cli.main(
            [
                "--config-file",
                "",
                "--ckpt",
                str(tmp_path / "nope.pth"),
                *TINY,
                "DATASETS.TEST",
                "('tiny_train',)",
                "OUTPUT_DIR",
                str(tmp_path),
            ]
        )
    assert str(err.value) == f"test.py: checkpoint not found: {tmp_path / 'nope.pth'}"
    torch.save({"model": {"w": torch.tensor([1.0, float("nan")])}}, tmp_path / "diverged.pth")
    with pytest.raises(SystemExit) as err:
        test_cli.main(
            ["--config-file", "", "--ckpt", str(tmp_path / "diverged.pth"), *TINY, "DATASETS.TEST", "('tiny_train',)",
             "OUTPUT_DIR", str(tmp_path)]
        )  # fmt: skip
    assert (
        str(err.value)
        == f"test.py: {tmp_path / 'diverged.pth'} holds NaN/inf weights (w): it was saved by a diverged run; use an earlier checkpoint"
    )

    missing = (
        "DATASETS.REGISTER",
        f"('gone:csv:{tmp_path / 'gone.csv'}:{tmp_path}',)",
        "DATASETS.TRAIN",
        "('gone',)",
    )
    assert run_train(tmp_path / "gone", "SOLVER.MAX_ITER", "1", *missing) == 1
    assert (
        f"CSV annotation file not found: {tmp_path / 'gone.csv'}"
        in (tmp_path / "gone" / "log.txt").read_text()
    )

    (tmp_path / "empty.csv").write_text(HEADER)
    empty = ("DATASETS.REGISTER", f"('empty:csv:{tmp_path / 'empty.csv'}:{tmp_path}',)")
    assert run_train(tmp_path / "train", "SOLVER.MAX_ITER", "1", *empty, "DATASETS.TRAIN", "('empty',)") == 1
    assert "dataset 'empty' (DATASETS.TRAIN) is empty" in (tmp_path / "train" / "log.txt").read_text()
    from ssd.modeling import build_detection_model

    cfg = get_cfg()
    cfg.merge_from_list(list(TINY))
    torch.save({"model": build_detection_model(cfg).state_dict()}, tmp_path / "tiny.pth")
    with pytest.raises(SystemExit) as err:
        test_cli.main(
            ["--config-file", "", "--ckpt", str(tmp_path / "tiny.pth"), *TINY, *empty, "DATASETS.TEST", "('empty',)",
             "OUTPUT_DIR", str(tmp_path / "test")]
        )  # fmt: skip
    assert str(err.value).startswith("test.py: dataset 'empty' (DATASETS.TEST / DATASETS.VAL) is empty")


# ----- round two: images, ONNX files and serving ---------------------------------------------------------------


# Peak RSS (resource.getrusage) of one child, measured in a fresh interpreter between the test and the child
# so that no other child of the test counts. Everything runs in children: a failure costs no test memory.
_MEASURE = (
    "import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
    "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, 'EXIT', code)"
)
_CHILD_ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
_DATASET_CHILD = """
import sys
from ssd.config import get_cfg
from ssd.data.build import build_dataset
from ssd.data.datasets import CSVDataset, DatasetError
csv_file, folder = sys.argv[1:3]
cfg = get_cfg()
cfg.merge_from_list(["DATASETS.REGISTER", (f"bombs:csv:{csv_file}:{folder}",), "MODEL.NUM_CLASSES", 2])
try:
    build_dataset(cfg, ["bombs"], is_train=True)
except DatasetError as err:
    print("BUILD:", err)
try:  # built without a config: the default limit applies when the image is loaded
    CSVDataset(csv_file, folder).load_image(0)
except OSError as err:
    print("LOAD:", err)
"""
_HANDLER_CHILD = """
import sys
sys.path.insert(0, "tools/serve")
from ssd_handler import SSDHandler
class Context:  # what TorchServe passes: per-request statuses
    status = {}
    def set_response_status(self, code, phrase="", idx=0):
        self.status[idx] = code
context = Context()
# No model is loaded: a batch whose requests are all refused never reaches the network.
answers = SSDHandler().handle([{"body": open(name, "rb").read()} for name in sys.argv[1:]], context)
for index, answer in enumerate(answers):
    print("STATUS", context.status[index], answer["error"])
"""


def _peak_rss_mb(command: list[str]) -> tuple[float, int, str]:
    """(peak RSS in MB, exit status, stdout + stderr) of `command` run in a child from the repository root."""
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, *command],
        cwd=REPO, env=_CHILD_ENV, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    found = re.search(r"PEAK_KB (\d+) EXIT (-?\d+)", result.stdout)
    assert found, result.stdout + result.stderr
    return int(found[1]) / 1024, int(found[2]), result.stdout + result.stderr


@case(
    "pixels-bomb-demo",
    "`demo.py` on a PNG of 30000 x 30000 pixels under 1 MB (2.7 GB decoded)",
    "refused from its header: one line naming the file, its size and INPUT.MAX_IMAGE_PIXELS; exit status 1; "
    "nothing decoded (peak memory of the run measured)",
    IMAGES_SECTION,
)
@case(
    "pixels-bomb-dataset",
    "the same PNG in a dataset",
    "error when the dataset is built, naming the file, its size and INPUT.MAX_IMAGE_PIXELS; a dataset made "
    "without a config refuses it when loaded (default limit)",
    IMAGES_SECTION,
)
@case(
    "pixels-bomb-handler",
    "the same PNG, and a 60000 x 60000 header, POSTed to the TorchServe handler",
    "that request answered 413 with the message; nothing decoded",
    IMAGES_SECTION,
)
def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = png_bomb(tmp_path / "bomb.png", 30000, 30000)
    assert bomb.stat().st_size < 2**20
    huge = png_bomb(tmp_path / "huge.png", 60000, 60000, rows=8)
    refusal = f"{bomb}: 30000 x 30000 = 900,000,000 pixels, above INPUT.MAX_IMAGE_PIXELS 150000000"
    # The floor: an interpreter with torch and OpenCV imported, nothing else. Their library files count in RSS
    # (0.9 GB with a CUDA build of torch); a decoded bomb would add 2.7 GB (RGB) or 0.9 GB (grey) above it,
    # while each refusing run stays within 0.5 GB of it (its model, ONNX Runtime), so under 1 GB of its own.
    floor, _, _ = _peak_rss_mb([sys.executable, "-c", "import cv2, torch, PIL.Image"])

    demo_peak, status, output = _peak_rss_mb(
        [sys.executable, "demo.py", str(bomb), "--output-dir", str(tmp_path / "out"), "MODEL.DEVICE", "cpu"]
    )
    assert status == 1 and f"bomb.png: skipped, {refusal}" in output, output
    assert f"demo.py: 1 of 1 images could not be read and were skipped: {bomb}" in output

    (tmp_path / "a.csv").write_text(HEADER + "bomb.png,30000,30000,cat,1,1,9,9\n")
    dataset_peak, status, output = _peak_rss_mb(
        [sys.executable, "-c", _DATASET_CHILD, str(tmp_path / "a.csv"), str(tmp_path)]
    )
    assert status == 0, output
    assert (
        f"BUILD: CSV {tmp_path / 'a.csv'}: 1 of 1 images have more pixels than INPUT.MAX_IMAGE_PIXELS "
        "150000000: bomb.png 30000 x 30000. Downscale them, raise INPUT.MAX_IMAGE_PIXELS (0 = no limit), or "
        "remove them from the annotations." in output
    ), output
    assert f"LOAD: {refusal}" in output

    handler_peak, status, output = _peak_rss_mb([sys.executable, "-c", _HANDLER_CHILD, str(bomb), str(huge)])
    assert status == 0, output
    assert (
        f"STATUS 413 the request image ({bomb.stat().st_size} bytes): 30000 x 30000 = 900,000,000 pixels"
        in output
    )
    assert (
        f"STATUS 413 the request image ({huge.stat().st_size} bytes): 60000 x 60000 = 3,600,000,000 pixels"
        in output
    )
    for name, peak in (("demo.py", demo_peak), ("dataset", dataset_peak), ("handler", handler_peak)):
        assert peak - floor < 512, (
            f"{name}: peak {peak:.0f} MB, {peak - floor:.0f} MB above the floor {floor:.0f} MB"
        )


@case(
    "pixels-header-60000",
    "`demo.py` on a folder holding a PNG whose header says 60000 x 60000 (above OpenCV's own 2^30 limit)",
    "that file is named and skipped, the others are written, exit status 1; with INPUT.MAX_IMAGE_PIXELS 0 "
    "OpenCV's refusal becomes an error naming the file, not a `cv2.error`",
    IMAGES_SECTION,
)
def test_a_header_above_opencvs_limit_is_one_skipped_file(tmp_path, capsys):
    folder = tmp_path / "in"
    _image(folder / "b_good.png")
    huge = png_bomb(folder / "a_huge.png", 60000, 60000, rows=8)
    with pytest.raises(SystemExit) as err:
        demo.main(["--images-dir", str(folder), "--output-dir", str(tmp_path / "out"), "MODEL.DEVICE", "cpu"])
    assert str(err.value) == f"demo.py: 1 of 2 images could not be read and were skipped: {huge}"
    assert (
        f"a_huge.png: skipped, {huge}: 60000 x 60000 = 3,600,000,000 pixels, above" in capsys.readouterr().err
    )
    assert cv2.imread(str(tmp_path / "out" / "b_good.png")) is not None
    with pytest.raises(OSError, match=rf"cannot decode image {re.escape(str(huge))}: OpenCV refuses it"):
        read_image_rgb(huge, max_pixels=0)


@case(
    "pixels-above-pillow-limit",
    "a PNG header of 14000 x 14000 (above Pillow's own 179 M pixel limit, under OpenCV's)",
    "its size is read from the header, never by decoding the file; refused as `pixels-bomb-dataset`",
    IMAGES_SECTION,
)
def test_size_above_pillows_limit_comes_from_the_header(tmp_path, monkeypatch):
    from ssd.data.datasets import image_files

    big = png_bomb(tmp_path / "big.png", 14000, 14000, rows=8)
    _image(tmp_path / "small.png")

    def no_decode(*args, **kwargs):
        raise AssertionError("the image was decoded to read its size")

    monkeypatch.setattr(image_files.cv2, "imdecode", no_decode)
    assert image_files.image_size_from_file(big) == (14000, 14000)
    (tmp_path / "a.csv").write_text(HEADER + "small.png,96,64,cat,1,1,9,9\nbig.png,14000,14000,cat,1,1,9,9\n")
    cfg = get_cfg()
    cfg.merge_from_list(["DATASETS.REGISTER", (f"t:csv:{tmp_path / 'a.csv'}:{tmp_path}",)])
    with pytest.raises(DatasetError, match=r": 1 of 2 images have more pixels .* big\.png 14000 x 14000\. "):
        build_dataset(cfg, ["t"], is_train=True)


@case(
    "pixels-setting",
    "INPUT.MAX_IMAGE_PIXELS below an image of the dataset; 0; a negative value",
    "error naming the file, its size and the key; 0 = no limit (the image loads); negative: error naming the key",
    IMAGES_SECTION,
)
@case(
    "pixels-grown-after-start",
    "an image replaced, after the dataset was built, by one above INPUT.MAX_IMAGE_PIXELS",
    "refused when loaded (an `OSError` naming the file, its size and the key), never decoded",
    IMAGES_SECTION,
)
def test_the_pixel_limit_is_the_configs(tmp_path):
    from ssd.config import load_config
    from ssd.data.datasets.image_files import ImageTooLargeError

    _image(tmp_path / "a.png", width=96, height=64)  # 6144 pixels
    (tmp_path / "a.csv").write_text(HEADER + "a.png,96,64,cat,1,1,9,9\n")
    cfg = get_cfg()
    cfg.merge_from_list(
        ["DATASETS.REGISTER", (f"t:csv:{tmp_path / 'a.csv'}:{tmp_path}",), "INPUT.MAX_IMAGE_PIXELS", 6143]
    )
    with pytest.raises(
        DatasetError, match=r"1 of 1 images have more pixels than INPUT.MAX_IMAGE_PIXELS 6143: a.png 96 x 64"
    ):
        build_dataset(cfg, ["t"], is_train=True)
    cfg.merge_from_list(["INPUT.MAX_IMAGE_PIXELS", 0])
    assert build_dataset(cfg, ["t"], is_train=False).load_image(0).shape == (64, 96, 3)
    cfg.merge_from_list(["INPUT.MAX_IMAGE_PIXELS", 6144])
    dataset = build_dataset(cfg, ["t"], is_train=False)
    assert dataset.load_image(0).shape == (64, 96, 3)
    _image(tmp_path / "a.png", width=97, height=64)  # the file changes after start-up
    with pytest.raises(
        ImageTooLargeError, match=r"a\.png: 97 x 64 = 6,208 pixels, above INPUT.MAX_IMAGE_PIXELS 6144;"
    ):
        dataset.load_image(0)
    assert issubclass(ImageTooLargeError, OSError)  # handled as any image that cannot be read
    with pytest.raises(ConfigError, match=r"INPUT.MAX_IMAGE_PIXELS must be >= 0 \(0 = no limit\), got -1"):
        load_config("", ["INPUT.MAX_IMAGE_PIXELS", "-1"])


@case(
    "demo-folder-formats",
    "`demo.py --images-dir` with .webp, .tif and .gif images beside a .svg and a .txt file",
    "every format OpenCV reads is processed; the other files are counted and named on one line (exit status 0)",
    IMAGES_SECTION,
)
def test_demo_reads_every_opencv_format_and_names_the_rest(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "in"
    _image(folder / "a.webp")
    _image(folder / "b.tif")
    Image.new("RGB", (96, 64), (90, 90, 90)).save(folder / "c.gif")
    (folder / "d.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (folder / "notes.txt").write_text("labelled by hand")
    results = demo.main(
        ["--images-dir", str(folder), "--output-dir", str(tmp_path / "out"), "MODEL.DEVICE", "cpu"]
    )
    assert [r["name"] for r in results] == ["a.webp", "b.tif", "c.gif"]
    err = capsys.readouterr().err
    assert (
        f"demo.py: 2 files in {folder} are not images OpenCV reads (by suffix) and are skipped: d.svg, notes.txt"
        in err
    )


@pytest.fixture(scope="module")
def tiny_onnx_files(tmp_path_factory):
    """A tiny 4-class checkpoint (tiny.pth, its config beside it) and ONNX files that do not fit it: 6 classes,
    128 x 128 inputs (TINY is 96), and a text file."""
    from ssd.engine.runtime import export_onnx
    from ssd.modeling import build_detection_model

    folder = tmp_path_factory.mktemp("onnx")
    cfg = get_cfg()
    cfg.merge_from_list(list(TINY))
    torch.save({"model": build_detection_model(cfg).state_dict()}, folder / "tiny.pth")
    (folder / "tiny.yaml").write_text(cfg.dump())
    other_classes = cfg.clone()
    other_classes.merge_from_list(["MODEL.NUM_CLASSES", 6])
    export_onnx(build_detection_model(other_classes).eval(), 96, folder / "classes6.onnx")
    other_size = cfg.clone()
    other_size.merge_from_list(
        ["INPUT.IMAGE_SIZE", 128, "MODEL.PRIORS.FEATURE_MAPS", [8, 4, 2, 1, 1, 1],
         "MODEL.PRIORS.STRIDES", [16, 32, 64, 128, 128, 128]]
    )  # fmt: skip
    export_onnx(build_detection_model(other_size).eval(), 128, folder / "size128.onnx")
    (folder / "notes.onnx").write_text("not a network")
    return folder


@case(
    "onnx-other-classes",
    "`--onnx` exported for 6 classes with a 4-class checkpoint (`demo.py`, `test.py`, `tools/serve/archive.py`)",
    "one line naming the file and both class counts, exit status 1; nothing drawn, scored or packed",
    IMAGES_SECTION,
)
@case(
    "onnx-other-input-size",
    "`--onnx` exported for 128 x 128 inputs with a 96 x 96 config",
    "one line naming the file, its input size and INPUT.IMAGE_SIZE, exit status 1",
    IMAGES_SECTION,
)
@case(
    "onnx-not-onnx",
    "`--onnx` naming a file that is not ONNX",
    "one line naming the file and ONNX Runtime's reason (`InvalidProtobuf`), exit status 1",
    IMAGES_SECTION,
)
def test_an_onnx_file_of_another_model_is_refused(tiny_onnx_files, tmp_path):
    sys.path.insert(0, str(REPO / "tools" / "serve"))
    import archive  # tools/serve/archive.py

    folder = tiny_onnx_files
    expected = {
        "classes6.onnx": f"{folder / 'classes6.onnx'} predicts 6 classes (background included) but the model has 4",
        "size128.onnx": f"{folder / 'size128.onnx'} takes 128 x 128 images but INPUT.IMAGE_SIZE is 96",
        "notes.onnx": f"{folder / 'notes.onnx'}: ONNX Runtime cannot load it (InvalidProtobuf: ",
    }
    exported = archive.export_tool.export(None, str(folder / "tiny.pth"), "onnx", tmp_path / "tiny.onnx")
    for name, message in expected.items():
        onnx = str(folder / name)
        with pytest.raises(SystemExit) as err:
            demo.main(["--ckpt", str(folder / "tiny.pth"), "--backend", "onnxruntime", "--onnx", onnx,
                       "--output-dir", str(tmp_path / "demo")])  # fmt: skip
        assert str(err.value).startswith(f"demo.py: {message}"), err.value
        with pytest.raises(SystemExit) as err:
            test_cli.main(["--config-file", str(folder / "tiny.yaml"), "--ckpt", str(folder / "tiny.pth"),
                           "--backend", "onnxruntime", "--onnx", onnx, "--output-dir", str(tmp_path / "test"),
                           "DATASETS.TEST", "('tiny_val',)"])  # fmt: skip
        assert str(err.value).startswith(f"test.py: {message}"), err.value
        with pytest.raises(ValueError, match=re.escape(message)):
            archive.check_onnx_file(onnx, exported["serving"], exported["priors"])
    assert not (tmp_path / "demo").exists()
    if Path(sys.executable).with_name("torch-model-archiver").is_file():  # the `serve` extra
        with pytest.raises(SystemExit) as err:
            archive.main(["--ckpt", str(folder / "tiny.pth"), "--onnx", str(folder / "classes6.onnx"),
                          "--export-path", str(tmp_path / "store")])  # fmt: skip
        assert str(err.value).startswith(f"archive.py: {expected['classes6.onnx']}")
        assert not list((tmp_path / "store").glob("*.mar"))


@case(
    "threads-not-positive",
    "`--threads 0` or `--threads -1` (`demo.py`, `test.py`)",
    "argparse's one-line usage error naming --threads, exit status 2",
    IMAGES_SECTION,
)
def test_threads_must_be_positive(capsys):
    for parse, value in ((demo.parse_args, "0"), (test_cli.parse_args, "-1"), (demo.parse_args, "two")):
        with pytest.raises(SystemExit) as err:
            parse(["--config-file", "x.yaml", "--threads", value])
        assert err.value.code == 2
        assert f"argument --threads: must be an integer >= 1, got '{value}'" in capsys.readouterr().err
    assert demo.parse_args(["--threads", "3"]).threads == 3


class _ServeContext:
    """What TorchServe hands a handler: the model folder, and per-request response statuses."""

    def __init__(self, model_dir: Path):
        self.system_properties = {"model_dir": str(model_dir)}
        self.status: dict[int, tuple[int, str]] = {}

    def set_response_status(self, code: int = 200, phrase: str = "", idx: int = 0) -> None:
        self.status[idx] = (code, phrase)


@case(
    "serve-not-an-image",
    "a TorchServe request whose body is not an image, in a batch with good ones",
    "that request: 400 with a message; the others of the batch: their detections",
    IMAGES_SECTION,
)
@case(
    "serve-empty-body",
    "a TorchServe request with an empty body",
    "400 for it alone, as `serve-not-an-image`",
    IMAGES_SECTION,
)
@case(
    "serve-json-body",
    "a TorchServe request with a JSON object body; base64 text that does not decode",
    "400 for it alone, the message says what to send",
    IMAGES_SECTION,
)
@case(
    "serve-base64-body",
    "a TorchServe request whose body is the image as base64 text (as TorchServe's image handlers take)",
    "accepted: the same detections as the image's bytes",
    IMAGES_SECTION,
)
@case(
    "serve-too-many-pixels",
    "a TorchServe request above the archive's pixel limit (INPUT.MAX_IMAGE_PIXELS, in serving.json)",
    "413 for it alone, naming its size and the setting",
    IMAGES_SECTION,
)
def test_handler_answers_each_request_of_a_batch(tmp_path):
    import base64
    import shutil

    sys.path.insert(0, str(REPO / "tools" / "serve"))
    import archive  # tools/serve/archive.py
    from ssd_handler import SSDHandler

    from ssd.modeling.model_zoo import load_detector

    paths = archive.export_tool.export(None, None, "onnx", tmp_path / "export" / "shapes.onnx")
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for kind, name in (("model", "model.onnx"), ("serving", "serving.json"), ("priors", "priors.npy")):
        shutil.copyfile(paths[kind], model_dir / name)
    assert json.loads((model_dir / "serving.json").read_text())["max_image_pixels"] == 150_000_000
    handler, context = SSDHandler(), _ServeContext(model_dir)
    handler.initialize(context)

    image = next(demo.synthetic_images())[1]  # uint8 (300, 300, 3) RGB
    png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
    bomb = png_bomb(tmp_path / "bomb.png", 15000, 10001, rows=8).read_bytes()  # 1 row over 150 M pixels
    batch = [
        {"body": png},
        {"body": b"not an image"},
        {"body": b""},
        {"body": {"image": "cat.jpg"}},  # TorchServe parses an application/json body
        {"body": "not base64!"},
        {"data": base64.b64encode(png).decode()},
        {"body": bomb},
    ]
    answers = handler.handle(batch, context)
    assert len(answers) == len(batch)
    expected_status = {1: 400, 2: 400, 3: 400, 4: 400, 6: 413}
    assert {index: code for index, (code, _) in context.status.items()} == expected_status
    for index in expected_status:
        assert answers[index]["error"] == context.status[index][1]
    assert "corrupt or not an image" in answers[1]["error"]
    assert answers[2]["error"].startswith("the request body is empty")
    assert answers[3]["error"].startswith("the request body is JSON (dict), not an image")
    assert answers[4]["error"].startswith("the request body is text (11 characters) but not base64")
    assert (
        f"({len(bomb)} bytes): 15000 x 10001 = 150,015,000 pixels, above INPUT.MAX_IMAGE_PIXELS 150000000"
        in answers[6]["error"]
    )

    loaded = load_detector(None, None, ["MODEL.DEVICE", "cpu"])
    local = demo.Detector(loaded, score_threshold=0.0)  # the eager model: all detections, as the handler's
    with torch.no_grad():
        expected = local.detect(local.prepare(image), *image.shape[:2])
    assert len(expected["scores"]) > 0
    for index in (0, 5):
        detections = answers[index]["detections"]
        assert answers[index]["image_size"] == [300, 300]
        assert [d["class_id"] for d in detections] == expected["labels"].tolist()
        np.testing.assert_allclose([d["score"] for d in detections], expected["scores"], atol=1e-4)
        np.testing.assert_allclose([d["box_xyxy"] for d in detections], expected["boxes"], atol=1e-2)


# ----- Round two: annotations and training (issue 20, part A) ---------------------------------------------------


@pytest.fixture
def ssd_log(caplog):
    """caplog that also sees the "ssd" logger, which setup_logger (train.py) stops from propagating."""
    ssd_logger = logging.getLogger("ssd")
    propagate = ssd_logger.propagate
    ssd_logger.propagate = True
    caplog.set_level(logging.INFO)
    yield caplog
    ssd_logger.propagate = propagate


def _warnings(caplog) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


@case(
    "coco-duplicate-image-id",
    "COCO JSON with two images of the same id (one of them vanished, its boxes landed on the other file)",
    "error naming the file and the ids; `tools/convert_to_coco.py`: the same, one line, exit status 1",
)
@case(
    "coco-duplicate-annotation-id",
    "COCO JSON with two annotations of the same id",
    "error naming the file and the ids",
)
@case("coco-no-categories", "COCO JSON without `categories`", "error naming the file and the missing key")
@pytest.mark.parametrize("fault", ["image-id", "annotation-id", "categories"])
def test_coco_duplicate_ids_and_missing_categories(tmp_path, fault):
    _image(tmp_path / "a.png")
    _image(tmp_path / "b.png")
    images = [{"id": 1, "file_name": "a.png"}, {"id": 2 if fault != "image-id" else 1, "file_name": "b.png"}]
    annotations = [_ann(5, 1, [1, 1, 9, 9]), _ann(6 if fault != "annotation-id" else 5, 2, [2, 2, 9, 9])]
    json_file = _coco(tmp_path / "a.json", images, annotations)
    if fault == "categories":
        content = json.loads(json_file.read_text())
        del content["categories"]
        json_file.write_text(json.dumps(content))
    expected = {
        "image-id": r"a\.json: 1 image ids appear more than once \(1\); ids must be unique",
        "annotation-id": r"a\.json: 1 annotation ids appear more than once \(5\)",
        "categories": r"a\.json: no 'categories' list",
    }[fault]
    with pytest.raises(DatasetError, match=expected):
        COCODataset(json_file, tmp_path)


def _convert_to_coco():
    import importlib.util

    spec = importlib.util.spec_from_file_location("convert_to_coco", REPO / "tools" / "convert_to_coco.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@case(
    "convert-existing-output",
    "`tools/convert_to_coco.py --output` naming a file that exists",
    "refused, one line, exit status 1, the file untouched; `--overwrite` replaces it",
)
def test_convert_to_coco_keeps_an_existing_file_and_reports_duplicate_ids(tmp_path, capsys):
    convert = _convert_to_coco()
    _image(tmp_path / "a.png")
    (tmp_path / "a.csv").write_text(HEADER + "a.png,96,64,cat,1,1,9,9\n")
    register = ["DATASETS.REGISTER", f"('mine:csv:{tmp_path / 'a.csv'}:{tmp_path}',)"]
    output = tmp_path / "out.json"
    output.write_text("precious")
    args = ["--config-file", "", "--dataset", "mine", "--output", str(output)]
    assert convert.main([*args, *register]) == 1
    assert capsys.readouterr().err == f"convert_to_coco.py: {output} exists; add --overwrite to replace it\n"
    assert output.read_text() == "precious"
    assert convert.main([*args, "--overwrite", *register]) == 0
    written = json.loads(output.read_text())
    assert [a["bbox"] for a in written["annotations"]] == [[1.0, 1.0, 8.0, 8.0]]  # (1, 1, 9, 9) xyxy

    images = [{"id": 3, "file_name": "a.png"}, {"id": 3, "file_name": "a.png"}]
    json_file = _coco(tmp_path / "dup.json", images, [])
    register = ["DATASETS.REGISTER", f"('dup:coco:{json_file}:{tmp_path}',)"]
    assert (
        convert.main(
            ["--config-file", "", "--dataset", "dup", "--output", str(tmp_path / "o.json"), *register]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith(f"convert_to_coco.py: {json_file}: 1 image ids appear more than once (3)")
    assert err.count("\n") == 1 and not (tmp_path / "o.json").exists()


@case(
    "coco-crowd",
    "COCO annotations with `iscrowd` 1",
    "counted and logged (count, file); not trained on; in evaluation ignore regions (COCO: pycocotools' "
    "crowd rule, VOC: as `difficult`)",
)
def test_crowd_boxes_are_not_trained_on_and_are_ignore_regions_in_evaluation(tmp_path, ssd_log):
    from eval_fakes import prediction

    from ssd.evaluation.coco import dataset_to_coco_dict, evaluate_coco_detections
    from ssd.evaluation.voc import PascalVOCEvaluator

    _image(tmp_path / "a.png")
    crowd = [_ann(2, 1, [50, 5, 40, 55]), _ann(3, 1, [0, 44, 20, 18])]
    for annotation in crowd:
        annotation["iscrowd"] = 1
    images = [{"id": 1, "file_name": "a.png", "width": 96, "height": 64}]
    json_file = _coco(tmp_path / "a.json", images, [_ann(1, 1, [10, 10, 30, 30]), *crowd])

    train = COCODataset(json_file, tmp_path, is_train=True)
    assert train.num_crowd_boxes == 2
    assert f"{json_file}: 2 crowd annotations (iscrowd=1) in 1 images (e.g. a.png)" in _warnings(ssd_log)
    _, target, _ = train[0]  # no transform: boxes relative to the 96 x 64 image
    expected = [[10 / 96, 10 / 64, 40 / 96, 40 / 64]]  # the object only: the crowd boxes are gone
    torch.testing.assert_close(target["boxes_norm"], torch.tensor(expected))

    # One detection on the object (score 0.9) and one on the first crowd region (0.95, ranked first); the
    # second crowd region gets none. Crowd as ignore regions: AP 100 by hand (one object, found; the other
    # detection neither hit nor error). Crowd dropped: a false positive ranked first, AP 50. Crowd counted
    # as objects: one of three missed, AP below 100.
    dataset = COCODataset(json_file, tmp_path)
    boxes_xyxy = [[50, 5, 90, 60], [10, 10, 40, 40]]
    voc = PascalVOCEvaluator(dataset, pixel_offset=0)
    voc.process([{"index": 0}], [prediction(boxes_xyxy, [1, 1], [0.95, 0.9])])
    assert voc.evaluate()["voc"]["AP50"] == pytest.approx(100.0)
    detections = [
        {"image_id": 1, "category_id": 1, "bbox": [50, 5, 40, 55], "score": 0.95},
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},
    ]
    for ground_truth in (json.loads(json_file.read_text()), dataset_to_coco_dict(dataset)):
        results = evaluate_coco_detections(ground_truth, detections, verbose=False)
        assert results["AP"] == pytest.approx(100.0)


@case(
    "csv-duplicate-row",
    "CSV with the same box row twice",
    "counted: used once, one warning naming the file and both line numbers",
)
@case(
    "csv-two-sizes",
    "CSV listing one image with two different widths/heights",
    "error naming the file, both lines and both sizes",
)
@case("csv-latin1", "CSV saved in Latin-1 (not UTF-8)", "error naming the file and line, asking for UTF-8")
@case("csv-bom", "CSV starting with a UTF-8 byte-order mark (Excel)", "accepted as if it had none")
@pytest.mark.parametrize("fault", ["duplicate", "sizes", "latin1", "bom"])
def test_csv_duplicates_sizes_and_encodings(tmp_path, ssd_log, fault):
    _image(tmp_path / "a.png")
    _image(tmp_path / "é.png")
    csv_file = tmp_path / "a.csv"
    rows = "a.png,96,64,cat,1,1,9,9\né.png,96,64,cat,2,2,9,9\n"
    if fault == "duplicate":
        csv_file.write_text(HEADER + rows + "a.png,96,64,cat,1,1,9,9\na.png,96,64,cat,1,1,9,8\n")
        dataset = CSVDataset(csv_file, tmp_path)
        assert dataset.get_annotation(0)["boxes_xyxy"].tolist() == [[1, 1, 9, 9], [1, 1, 9, 8]]
        assert dataset.num_duplicate_rows == 1
        assert (
            f"{csv_file}: 1 box rows repeat an earlier row exactly and are used once: line 4 (= line 2)"
            in (_warnings(ssd_log))
        )
    elif fault == "sizes":
        csv_file.write_text(HEADER + rows + "a.png,192,128,cat,1,1,9,9\n")
        expected = r"a\.csv, line 4: a\.png is 192x128 \(width x height\) here but 96x64 on line 2"
        with pytest.raises(DatasetError, match=expected):
            CSVDataset(csv_file, tmp_path)
    elif fault == "latin1":
        csv_file.write_bytes((HEADER + rows).encode("latin-1"))
        with pytest.raises(
            DatasetError, match=r"a\.csv, line 3: not UTF-8 text \(byte 0xe9\); save the file as UTF-8"
        ):
            CSVDataset(csv_file, tmp_path)
    else:
        csv_file.write_bytes(b"\xef\xbb\xbf" + (HEADER + rows).encode("utf-8"))
        dataset = CSVDataset(csv_file, tmp_path)
        assert [Path(dataset.get_annotation(i)["file_name"]).name for i in range(2)] == ["a.png", "é.png"]


@case(
    "dataset-name-unknown",
    "a misspelt name in DATASETS.TRAIN (or VAL / TEST)",
    "error naming the key and the name, suggesting the closest and listing the known names; exit status 1",
)
def test_unknown_dataset_name_is_one_line_with_a_suggestion(tmp_path):
    assert run_train(tmp_path, "SOLVER.MAX_ITER", "1", "DATASETS.TRAIN", "('tiny_trian',)") == 1
    log = (tmp_path / "log.txt").read_text()
    assert "DATASETS.TRAIN: unknown dataset 'tiny_trian': did you mean 'tiny_train'? registered and " in log
    assert "tiny_val" in log and "voc_2007_trainval" in log and "Traceback" not in log


def _truncate(path: Path) -> None:
    """Keep the header and half the pixels: the start-up check passes, the decode fails."""
    cv2.imwrite(str(path), np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@case(
    "image-damaged-during-run",
    "training images damaged after start-up (DATASETS.CHECK_IMAGES off)",
    "skipped: the next image takes the place, a warning names the file; after DATASETS.MAX_UNREADABLE_IMAGES "
    "such reads the run stops, one line naming the file and the option (also from a loader worker), exit 1",
)
def test_images_damaged_after_start_up_are_skipped_up_to_a_limit(tmp_path, ssd_log):
    from ssd.data.build import build_train_loader

    for name in "abcd":
        _image(tmp_path / f"{name}.png")
    (tmp_path / "a.csv").write_text(HEADER + "".join(f"{n}.png,96,64,cat,1,1,9,9\n" for n in "abcd"))
    cfg = get_cfg()
    cfg.merge_from_list(
        ["DATASETS.REGISTER", (f"t:csv:{tmp_path / 'a.csv'}:{tmp_path}",), "MODEL.NUM_CLASSES", 2,
         "DATA_LOADER.NUM_WORKERS", 0, "SOLVER.BATCH_SIZE", 4, "SOLVER.MAX_ITER", 2,
         "DATASETS.MAX_UNREADABLE_IMAGES", 2, "INPUT.IMAGE_SIZE", 64]
    )  # fmt: skip
    dataset = build_dataset(cfg, ["t"], is_train=True)
    _truncate(tmp_path / "b.png")  # after the dataset was built
    batches = [indices.tolist() for _, _, indices in build_train_loader(cfg, dataset=dataset)]
    assert all(len(batch) == 4 and 1 not in batch for batch in batches)  # b (index 1) replaced by c (2)
    skipped = [
        line for line in _warnings(ssd_log).splitlines() if "Skipped an unreadable training image" in line
    ]
    assert len(skipped) == 2 and all(str(tmp_path / "b.png") in line for line in skipped)
    cfg.merge_from_list(["SOLVER.MAX_ITER", 3])  # the third failed read is one too many
    with pytest.raises(DatasetError, match=r"b\.png: 3 image reads failed during training, more than "
                       r"DATASETS\.MAX_UNREADABLE_IMAGES 2"):  # fmt: skip
        list(build_train_loader(cfg, dataset=dataset))

    # The same stop through train.py with a loader worker process: one line in the log, exit status 1.
    _truncate(tmp_path / "a.png")
    _truncate(tmp_path / "c.png")
    _truncate(tmp_path / "d.png")
    extra = ["DATASETS.REGISTER", f"('t:csv:{tmp_path / 'a.csv'}:{tmp_path}',)", "DATASETS.TRAIN", "('t',)",
             "MODEL.NUM_CLASSES", "2", "DATA_LOADER.NUM_WORKERS", "1", "DATASETS.MAX_UNREADABLE_IMAGES", "0",
             "SOLVER.MAX_ITER", "1"]  # fmt: skip
    assert run_train(tmp_path / "run", *extra) == 1
    errors = [line for line in (tmp_path / "run" / "log.txt").read_text().splitlines() if " ERROR] " in line]
    assert len(errors) == 1 and errors[0].endswith(
        "more than DATASETS.MAX_UNREADABLE_IMAGES 0 (the earlier ones are in the log); replace or remove the "
        "files (DATASETS.CHECK_IMAGES True finds them all at start-up), or raise the option"
    )
    assert "cannot decode image file" in errors[0] and "Caught DatasetError" not in errors[0]


@case(
    "symlink-outside",
    "an image (or XML annotation) that is a symbolic link to a file outside the dataset folder",
    "refused: error naming the link, its target and DATASETS.FOLLOW_SYMLINKS (which allows it); links "
    "inside the folder and a dataset folder that is itself a link are fine",
)
@pytest.mark.parametrize("fmt", ["csv", "coco", "xml-image", "xml-annotation", "voc"])
def test_symlinks_leaving_the_dataset_folder_are_refused_unless_allowed(tmp_path, fmt):
    outside = _image(tmp_path / "elsewhere" / "secret.png")
    data = tmp_path / "data"
    _image(data / "real.png")
    (data / "inside.png").symlink_to(data / "real.png")  # a link that stays inside: always fine
    if fmt == "csv":
        (data / "a.png").symlink_to(outside)
        (data / "a.csv").write_text(HEADER + "a.png,96,64,cat,1,1,9,9\ninside.png,96,64,cat,1,1,9,9\n")
        make = lambda follow: CSVDataset(data / "a.csv", data, follow_symlinks=follow)  # noqa: E731
        link = data / "a.png"
    elif fmt == "coco":
        (data / "a.png").symlink_to(outside)
        images = [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "inside.png"}]
        json_file = _coco(data / "a.json", images, [_ann(1, 1, [1, 1, 5, 5])])
        make = lambda follow: COCODataset(json_file, data, follow_symlinks=follow)  # noqa: E731
        link = data / "a.png"
    elif fmt.startswith("xml"):
        (data / "inside.xml").write_text(_xml("inside.png", _object("cat", ("2", "2", "9", "9"))))
        if fmt == "xml-image":
            (data / "a.png").symlink_to(outside)
            (data / "a.xml").write_text(_xml("a.png", _object("cat", ("2", "2", "9", "9"))))
            link = data / "a.png"
        else:
            (tmp_path / "elsewhere" / "a.xml").write_text(
                _xml("real.png", _object("cat", ("2", "2", "9", "9")))
            )
            (data / "a.xml").symlink_to(tmp_path / "elsewhere" / "a.xml")
            link = data / "a.xml"
        make = lambda follow: XMLFolderDataset(data, follow_symlinks=follow)  # noqa: E731
    else:
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (data / sub).mkdir(parents=True)
        (data / "ImageSets" / "Main" / "train.txt").write_text("a\n")
        (data / "Annotations" / "a.xml").write_text(_xml("a.jpg", _object("cat", ("2", "2", "9", "9"))))
        cv2.imwrite(str(tmp_path / "elsewhere" / "a.jpg"), np.full((64, 96, 3), 90, np.uint8))
        (data / "JPEGImages" / "a.jpg").symlink_to(tmp_path / "elsewhere" / "a.jpg")
        make = lambda follow: VOCDataset(data, "train", ("cat",), follow_symlinks=follow)  # noqa: E731
        link = data / "JPEGImages" / "a.jpg"
    target = link.resolve()
    with pytest.raises(
        DatasetError,
        match=rf"{re.escape(str(link))} is a symbolic link to {re.escape(str(target))}, outside the dataset "
        r"folder .*set DATASETS\.FOLLOW_SYMLINKS True to allow them",
    ):
        make(False)
    assert len(make(True)) >= 1
    (tmp_path / "linked").symlink_to(data)  # the dataset folder itself may be a link: its files are inside
    assert len(CSVDataset(_one_row_csv(data), tmp_path / "linked")) == 1


def _one_row_csv(folder: Path) -> Path:
    (folder / "one.csv").write_text(HEADER + "inside.png,96,64,cat,1,1,9,9\n")
    return folder / "one.csv"


@case(
    "priors-auto-no-boxes",
    "MODEL.PRIORS.AUTO True on training images without any box",
    "error naming MODEL.PRIORS.AUTO and DATASETS.TRAIN, exit status 1",
)
def test_auto_priors_without_boxes_is_one_line(tmp_path):
    _image(tmp_path / "a.png")
    (tmp_path / "a.csv").write_text(HEADER + "a.png,96,64,,,,,\n")
    extra = ["DATASETS.REGISTER", f"('empty:csv:{tmp_path / 'a.csv'}:{tmp_path}',)", "DATASETS.TRAIN",
             "('empty',)", "DATASETS.CLASS_NAMES", "('cat',)", "MODEL.NUM_CLASSES", "2", "MODEL.PRIORS.AUTO",
             "True", "SOLVER.MAX_ITER", "1"]  # fmt: skip
    assert run_train(tmp_path / "run", *extra) == 1
    log = (tmp_path / "run" / "log.txt").read_text()
    assert (
        "MODEL.PRIORS.AUTO: the training images (DATASETS.TRAIN ('empty',), 1 images) hold no boxes to fit "
        "priors to; check the annotations, or set MODEL.PRIORS.AUTO False" in log
    )
    assert "Traceback" not in log


@case(
    "resume-old-checkpoint-optimizer",
    "`--resume` with AdamW from an SGD checkpoint written before optimizer classes were recorded",
    "error naming SOLVER.OPTIMIZER and what to do (the class is recognised from the optimizer's settings), "
    "not `KeyError: 'step'` at the first step",
)
def test_resume_from_an_old_checkpoint_of_another_optimizer(tmp_path):
    model = torch.nn.Linear(3, 2)
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.ones(1, 3)).sum().backward()
    sgd.step()
    cfg = get_cfg()
    Checkpointer(model, tmp_path, sgd, config_yaml=cfg.dump()).save("model_0000001", 1)
    old = load_checkpoint_file(tmp_path / "model_0000001.pth")
    del old["optimizer_class"]  # as written before the class was stored
    save_checkpoint_file(old, tmp_path / "model_0000001.pth")
    adamw = torch.optim.AdamW(model.parameters(), lr=0.1)
    with pytest.raises(
        CheckpointError,
        match=r"model_0000001\.pth holds the state of a SGD optimizer, but this run uses AdamW "
        r"\(SOLVER\.OPTIMIZER\): resume with SOLVER\.OPTIMIZER SGD",
    ):
        Checkpointer(model, tmp_path, adamw).resume()


@case(
    "weights-other-architecture",
    "a MobileNet checkpoint with a VGG config: `test.py --ckpt` (strict) or fine-tuning (MODEL.WEIGHTS)",
    "error saying the architectures differ and naming the layers; fine-tuning refuses a file of which "
    "fewer than half the model's tensors match, naming the count",
)
def test_weights_of_another_architecture(tmp_path):
    from ssd.modeling import build_detection_model
    from ssd.modeling.weights import WeightsError, load_model_weights

    cfg = get_cfg()
    cfg.merge_from_list(list(TINY))
    torch.save({"model": build_detection_model(cfg).state_dict()}, tmp_path / "mobilenet.pth")
    vgg_cfg = get_cfg()
    vgg_cfg.merge_from_file(str(REPO / "configs" / "vgg_ssd300_voc0712.yaml"))
    vgg_cfg.merge_from_list(["MODEL.NUM_CLASSES", 4, "MODEL.BACKBONE.PRETRAINED", False])
    vgg = build_detection_model(vgg_cfg)
    before = {k: v.clone() for k, v in vgg.state_dict().items()}
    with pytest.raises(WeightsError) as err:
        load_model_weights(vgg, tmp_path / "mobilenet.pth", strict=True)
    message = str(err.value)
    assert message.startswith(f"{tmp_path / 'mobilenet.pth'} was written for another architecture than this")
    assert "the file has backbone.features.*" in message and "the model backbone.vgg.*" in message
    assert "classes" not in message
    total = len(before)
    with pytest.raises(WeightsError, match=rf"mobilenet\.pth: only \d+ of the model's {total} tensors match"):
        load_model_weights(vgg, tmp_path / "mobilenet.pth")
    assert all(torch.equal(before[k], v) for k, v in vgg.state_dict().items())  # nothing was loaded


@case(
    "output-dir-is-a-file",
    "OUTPUT_DIR naming an existing file",
    "error naming OUTPUT_DIR, exit status 1",
)
def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "out").write_text("")
    args = train_cli.parse_args(["--config-file", "", *TINY, "OUTPUT_DIR", str(tmp_path / "out")])
    with pytest.raises(
        ConfigError, match=rf"^OUTPUT_DIR {re.escape(str(tmp_path / 'out'))} is a file, not a folder"
    ):
        train_cli.run(args)
    assert run_train(tmp_path / "out") == 1


@case(
    "disk-full-while-saving",
    "the disk fills up (ENOSPC) while a checkpoint is written",
    "error naming the file and saying the previous checkpoint is intact (it is: temporary file, then rename)",
)
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    import ssd.engine.checkpoint as checkpoint_module

    model = torch.nn.Linear(3, 2)
    checkpointer = Checkpointer(model, tmp_path)
    checkpointer.save("model_0000001", 1)
    saved = (tmp_path / "model_0000001.pth").read_bytes()
    real_save = torch.save

    def save_until_the_disk_is_full(obj, f):  # half the bytes reach the file, then the write fails
        real_save(obj, f)
        f.truncate(f.tell() // 2)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint_module.torch, "save", save_until_the_disk_is_full)
    with torch.no_grad():
        model.weight += 1
    with pytest.raises(
        CheckpointError,
        match=rf"cannot write .*model_0000002\.pth at iteration 2: No space left on device; the previous "
        rf"checkpoint {re.escape(str(tmp_path / 'model_0000001.pth'))} is intact",
    ):
        checkpointer.save("model_0000002", 2)
    assert checkpointer.last_saved == tmp_path / "model_0000001.pth"  # what later error messages offer
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "model_0000001.pth").read_bytes() == saved
    assert Checkpointer(torch.nn.Linear(3, 2), tmp_path).resume()["iteration"] == 1


# ----- the documented table ------------------------------------------------------------------------------------------


def test_docs_table_lists_every_case():
    text = DOC.read_text()
    for section in sorted(set(SECTIONS.values())):
        start, end = table_markers(section)
        table = text.split(start)[1].split(end)[0].strip()
        assert table == render_table(section), (
            "docs/bad_inputs.md is stale: run `python tests/test_bad_inputs.py`"
        )


if __name__ == "__main__":  # rewrite the tables in docs/bad_inputs.md
    text = DOC.read_text()
    for section in sorted(set(SECTIONS.values())):
        start, end = table_markers(section)
        before, rest = text.split(start)
        after = rest.split(end)[1]
        text = f"{before}{start}\n{render_table(section)}\n{end}{after}"
    DOC.write_text(text)
    print(f"wrote {len(BAD_INPUTS)} cases to {DOC}")
