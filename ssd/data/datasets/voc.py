"""Pascal VOC: the VOCdevkit layout, and the VOC XML format shared with `xml_folder.py`.

Layout (one year, e.g. VOCdevkit/VOC2007; BCCD uses the same layout)::

    ROOT/Annotations/<id>.xml
    ROOT/JPEGImages/<id>.jpg
    ROOT/ImageSets/Main/<split>.txt      one <id> per line

Pixel convention (read this before writing an evaluator). VOC XML files store integer pixel indices,
1-based (the top-left pixel is (1, 1)). Like lufficc/SSD we subtract 1 from all four numbers, so boxes
become 0-based: `boxes_xyxy = (xmin - 1, ymin - 1, xmax - 1, ymax - 1)`, and a box's width is taken as
`xmax - xmin` (no "+1"). This is a pure shift: a box written as (504, 337, 504, 337) keeps zero area and is
dropped as degenerate. For evaluation, `ssd/evaluation/voc.py` compares VOC-XML datasets with the
devkit's inclusive-pixel IoU ("+1" on widths and heights, as the official devkit, chainercv and lufficc/SSD do),
so VOC mAP numbers are identical to theirs; other formats (COCO, CSV, synthetic) use the continuous IoU of
`ssd.structures.boxes`. To write results back into VOC files, add 1.
(detectron2 subtracts 1 from xmin/ymin only, reading indices as inclusive pixels; lufficc's shift is kept
here so zero-area annotations stay zero-area and are reported as degenerate.)

`difficult`: read into the annotation's `difficult` flag; a missing or empty <difficult> tag means 0
(lufficc/SSD crashes on a missing tag, which custom VOC-style files often lack). Training datasets drop
difficult boxes; evaluation keeps them so the VOC metric can ignore them.

XML safety: any DOCTYPE (and so any ENTITY declaration, which can only sit inside one) is refused, so crafted
files cannot expand entities (the "billion laughs" attack) or reach external resources. The refusal comes from
an expat handler that fires when the parser meets the DOCTYPE, after the file has been decoded in whatever
encoding it declares (UTF-16 included) and before any entity is declared or expanded; a scan of the raw bytes
would miss a UTF-16 file, and libexpat's own amplification limit exists only in recent versions.

`<filename>` must name a file inside the annotation's folder (see `image_files.image_path_inside`); a VOC
split file's ids must stay inside Annotations/ and JPEGImages/, symbolic links leading out of them included
(unless `follow_symlinks`, DATASETS.FOLLOW_SYMLINKS).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from xml.parsers import expat

from ssd.data.datasets.base import BACKGROUND, DetectionDataset, Transform, make_record
from ssd.data.datasets.image_files import DatasetError, DatasetFileNotFoundError, image_path_inside

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip


def _refuse_doctype(data: bytes, path: Path) -> None:
    """Run expat over `data` with handlers that raise at a DOCTYPE or entity declaration (see module doc)."""

    def refuse(*_args) -> None:
        raise DatasetError(
            f"{path}: XML with a DOCTYPE or ENTITY declaration is refused (entity expansion); "
            "annotation files need neither: remove the declaration"
        )

    parser = expat.ParserCreate()
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse  # unreachable without a DOCTYPE; kept as a second lock
    parser.UnparsedEntityDeclHandler = refuse
    parser.ExternalEntityRefHandler = refuse
    try:
        parser.Parse(data, True)
    except expat.ExpatError as error:
        raise DatasetError(f"{path}: malformed XML ({error})") from None


def parse_xml_safely(path: Path) -> ET.Element:
    """Parse an XML file, refusing DTDs and entity declarations (no entity expansion is possible)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DatasetFileNotFoundError(f"annotation file not found: {path}") from None
    _refuse_doctype(data, path)
    try:
        return ET.fromstring(data)
    except ET.ParseError as error:
        raise DatasetError(f"{path}: malformed XML ({error})") from None


def _number(element: ET.Element, tag: str, path: Path, what: str) -> float:
    """The number in `element`'s child <tag>; a missing, empty or non-numeric value names the file."""
    text = (element.findtext(tag) or "").strip()
    if not text:
        raise DatasetError(f"{path}: <{tag}> missing or empty in {what}")
    try:
        return float(text)
    except ValueError:
        raise DatasetError(
            f"{path}: <{tag}> of {what} is {text!r}, not a number; write plain numbers"
        ) from None


def parse_voc_xml(
    xml_path: Path, class_to_label: dict[str, int], image_path: Path | None = None
) -> dict[str, Any]:
    """Read one VOC XML file into a record (see `base.make_record`), boxes shifted to 0-based.

    Args:
        xml_path: the annotation file.
        class_to_label: class name (as written in the files, stripped) -> label 1..C-1.
        image_path: the image; default: <filename> of the XML, beside the XML file.
    """
    root = parse_xml_safely(xml_path)
    if image_path is None:
        file_name = (root.findtext("filename") or "").strip()
        if not file_name:
            raise DatasetError(f"{xml_path}: <filename> missing, cannot locate the image")
        image_path = image_path_inside(xml_path.parent, file_name, f"{xml_path}: <filename>")
    # A missing or 0 <size> (some tools write 0) is read from the image file by DetectionDataset, which also
    # replaces a stated size that differs from the file's.
    size = root.find("size")
    height = width = 0
    if size is not None and (size.findtext("width") or "").strip():
        width = int(_number(size, "width", xml_path, "<size>"))
    if size is not None and (size.findtext("height") or "").strip():
        height = int(_number(size, "height", xml_path, "<size>"))

    boxes, labels, difficult = [], [], []
    for index, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        if name not in class_to_label:
            raise DatasetError(
                f"{xml_path}: unknown class {name!r}; known classes: {', '.join(class_to_label)}"
            )
        bndbox = obj.find("bndbox")
        what = f"<object> {index} ({name!r})"
        if bndbox is None:
            raise DatasetError(f"{xml_path}: {what} without <bndbox>")
        # 1-based pixel indices -> 0-based coordinates, see the module docstring.
        boxes.append([_number(bndbox, tag, xml_path, what) - 1 for tag in ("xmin", "ymin", "xmax", "ymax")])
        labels.append(class_to_label[name])
        flag = (obj.findtext("difficult") or "").strip()
        difficult.append(flag != "" and _number(obj, "difficult", xml_path, what) != 0)
    return make_record(xml_path.stem, image_path, height, width, boxes, labels, difficult)


def class_maps(class_names: Sequence[str]) -> tuple[tuple[str, ...], dict[str, int]]:
    """Class names without background -> (class_names with background first, name -> label)."""
    names = tuple(str(name).strip() for name in class_names if name != BACKGROUND)
    if len(set(names)) != len(names):
        raise DatasetError(f"duplicate class names in {names}")
    return (BACKGROUND, *names), {name: label for label, name in enumerate(names, start=1)}


class VOCDataset(DetectionDataset):
    """A VOCdevkit-style folder (VOC2007, VOC2012, BCCD, ...) and one split of it.

    Args:
        root: the folder holding Annotations/, JPEGImages/ and ImageSets/Main/.
        split: name of ImageSets/Main/<split>.txt.
        class_names: classes without background, in label order; default the 20 VOC classes.
        transform: see `DetectionDataset`.
        is_train: drop difficult boxes.
        image_ext: extension of the files in JPEGImages/.
        follow_symlinks: accept files that are symbolic links leading outside Annotations/ and JPEGImages/.
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str] = VOC_CLASSES,
        transform: Transform | None = None,
        is_train: bool = False,
        image_ext: str = ".jpg",
        follow_symlinks: bool = False,
    ) -> None:
        self.root = Path(root)
        self.split = split
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise DatasetFileNotFoundError(
                f"VOC split file not found: {split_file} (expected the VOC layout "
                "ROOT/{Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/<split>.txt})"
            )
        image_ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        all_names, class_to_label = class_maps(class_names)
        records = []
        for line, image_id in enumerate(image_ids, start=1):
            source = f"{split_file}, entry {line}"
            records.append(
                parse_voc_xml(
                    image_path_inside(self.root / "Annotations", f"{image_id}.xml", source, follow_symlinks),
                    class_to_label,
                    image_path=image_path_inside(
                        self.root / "JPEGImages", f"{image_id}{image_ext}", source, follow_symlinks
                    ),
                )
            )
        super().__init__(records, all_names, transform, is_train, name=f"VOC {self.root}:{split}")
