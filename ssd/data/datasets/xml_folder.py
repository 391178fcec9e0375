"""A folder of images with one VOC XML file beside each (no ImageSets), as labelling tools write them.

Every `*.xml` in the folder is one image; the image is the XML's <filename> in the same folder, or, when
that file does not exist, the image with the XML's stem and a common extension. A <filename> that leaves the
folder (absolute, or climbing out with `..`) is refused with an error naming the XML file, and so is an XML
file or image that is a symbolic link leading outside the folder, unless `follow_symlinks`
(DATASETS.FOLLOW_SYMLINKS). Pixel convention and XML safety: see `voc.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ssd.data.datasets.base import DetectionDataset, Transform
from ssd.data.datasets.image_files import DatasetFileNotFoundError, check_link_inside, image_path_inside
from ssd.data.datasets.voc import class_maps, parse_voc_xml, parse_xml_safely

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".JPG", ".JPEG", ".PNG")


def _find_image(xml_path: Path, follow_symlinks: bool) -> Path:
    file_name = (parse_xml_safely(xml_path).findtext("filename") or "").strip()
    if file_name:
        named = image_path_inside(xml_path.parent, file_name, f"{xml_path}: <filename>", follow_symlinks)
        if named.is_file():
            return named
    for ext in IMAGE_EXTENSIONS:
        candidate = xml_path.with_suffix(ext)
        if candidate.is_file():
            return image_path_inside(xml_path.parent, candidate.name, str(xml_path), follow_symlinks)
    raise DatasetFileNotFoundError(
        f"{xml_path}: no image found beside it (tried <filename> {file_name!r} and "
        f"{xml_path.stem}{{{','.join(IMAGE_EXTENSIONS)}}})"
    )


def _class_names_in(xml_files: Sequence[Path]) -> list[str]:
    names = set()
    for xml_path in xml_files:
        for obj in parse_xml_safely(xml_path).iter("object"):
            names.add((obj.findtext("name") or "").strip())
    return sorted(names)


class XMLFolderDataset(DetectionDataset):
    """Images with a VOC XML beside each.

    Args:
        folder: holds `<stem>.xml` and its image.
        class_names: classes without background in label order; None = the sorted names found in the files.
        transform, is_train: see `DetectionDataset`.
        follow_symlinks: accept XML files and images that are symbolic links leading outside `folder`.
    """

    def __init__(
        self,
        folder: str | Path,
        class_names: Sequence[str] | None = None,
        transform: Transform | None = None,
        is_train: bool = False,
        follow_symlinks: bool = False,
    ) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise DatasetFileNotFoundError(
                f"XML folder not found: {self.folder} (expected images with one VOC <stem>.xml beside each)"
            )
        xml_files = sorted(self.folder.glob("*.xml"))
        if not xml_files:
            raise DatasetFileNotFoundError(f"no *.xml annotation files in {self.folder}")
        if not follow_symlinks:  # before any is parsed
            for path in xml_files:
                check_link_inside(self.folder, path, str(path))
        if not class_names:
            class_names = _class_names_in(xml_files)
        all_names, class_to_label = class_maps(class_names)
        records = [
            parse_voc_xml(path, class_to_label, image_path=_find_image(path, follow_symlinks))
            for path in xml_files
        ]
        super().__init__(records, all_names, transform, is_train, name=f"XML folder {self.folder}")
