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

XML is parsed with the standard library after rejecting any DOCTYPE or ENTITY declaration, so crafted files
cannot expand entities (the "billion laughs" attack) or reach external resources.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssd.data.datasets.base import BACKGROUND, DetectionDataset, Transform, image_size_from_file, make_record

VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

_DECLARATION = re.compile(rb"<!\s*(DOCTYPE|ENTITY)", re.IGNORECASE)


def parse_xml_safely(path: Path) -> ET.Element:
    """Parse an XML file, refusing DTDs and entity declarations (no entity expansion is possible)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise FileNotFoundError(f"annotation file not found: {path}") from None
    if _DECLARATION.search(data):
        raise ValueError(f"{path}: XML with a DOCTYPE or ENTITY declaration is refused (entity expansion)")
    try:
        return ET.fromstring(data)
    except ET.ParseError as error:
        raise ValueError(f"{path}: malformed XML ({error})") from None


def _number(element: ET.Element, tag: str, path: Path) -> float:
    node = element.find(tag)
    if node is None or not (node.text or "").strip():
        raise ValueError(f"{path}: <{tag}> missing in an <object>")
    return float(node.text)


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
            raise ValueError(f"{xml_path}: <filename> missing, cannot locate the image")
        image_path = xml_path.parent / file_name
    width = int(float(root.findtext("size/width") or 0))
    height = int(float(root.findtext("size/height") or 0))
    if width <= 0 or height <= 0:  # some tools write <size> as 0: read it from the image instead
        height, width = image_size_from_file(image_path)

    boxes, labels, difficult = [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in class_to_label:
            raise ValueError(
                f"{xml_path}: unknown class {name!r}; known classes: {', '.join(class_to_label)}"
            )
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{xml_path}: <object> {name!r} without <bndbox>")
        # 1-based pixel indices -> 0-based coordinates, see the module docstring.
        boxes.append([_number(bndbox, tag, xml_path) - 1 for tag in ("xmin", "ymin", "xmax", "ymax")])
        labels.append(class_to_label[name])
        difficult.append(int(float((obj.findtext("difficult") or "0").strip() or 0)) != 0)
    return make_record(xml_path.stem, image_path, height, width, boxes, labels, difficult)


def class_maps(class_names: Sequence[str]) -> tuple[tuple[str, ...], dict[str, int]]:
    """Class names without background -> (class_names with background first, name -> label)."""
    names = tuple(str(name).strip() for name in class_names if name != BACKGROUND)
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate class names in {names}")
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
    """

    def __init__(
        self,
        root: str | Path,
        split: str,
        class_names: Sequence[str] = VOC_CLASSES,
        transform: Transform | None = None,
        is_train: bool = False,
        image_ext: str = ".jpg",
    ) -> None:
        self.root = Path(root)
        self.split = split
        split_file = self.root / "ImageSets" / "Main" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(
                f"VOC split file not found: {split_file} (expected the VOC layout "
                "ROOT/{Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/<split>.txt})"
            )
        image_ids = [line.split()[0] for line in split_file.read_text().splitlines() if line.strip()]
        all_names, class_to_label = class_maps(class_names)
        records = [
            parse_voc_xml(
                self.root / "Annotations" / f"{image_id}.xml",
                class_to_label,
                image_path=self.root / "JPEGImages" / f"{image_id}{image_ext}",
            )
            for image_id in image_ids
        ]
        super().__init__(records, all_names, transform, is_train, name=f"VOC {self.root}:{split}")
