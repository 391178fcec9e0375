"""Image files of a dataset: keeping annotation paths inside the dataset, decoding, reading sizes; the errors.

- `image_path_inside(root, name, source)`: the path an annotation file gives for an image (or an annotation
  file), refused when it is absolute, climbs out of the folder with `..`, or is a symbolic link whose target
  lies outside the folder (an annotation file, or a downloaded archive holding links, must not make a run
  read, train on and draw into reports any file of the machine). The folder itself may be a link (the
  user named it); `follow_symlinks=True` (DATASETS.FOLLOW_SYMLINKS) accepts links that leave it, for a
  folder of links to images kept elsewhere.
- `read_image_rgb(path)`: the decoded uint8 (H, W, 3) RGB image (OpenCV; EXIF orientation applied).
- `image_size_from_file(path)`: (height, width) of that decoded image, from the file's header when Pillow can
  read it (under 0.2 ms a file on BCCD, a third of a full decode), so every image can be checked when a dataset is built.
- `DatasetError` (a ValueError): bad annotation or image data, the message naming the file and place;
  `DatasetFileNotFoundError` is also a FileNotFoundError. train.py and test.py print them as one line.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# EXIF orientations that turn the picture by 90 degrees: OpenCV applies them when decoding, so the decoded
# image is the header's height x width transposed.
_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSPOSED = (5, 6, 7, 8)


class DatasetError(ValueError):
    """Bad annotation or image data; the message names the file (and line, annotation or value) and the fix."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
    """A dataset file or folder that does not exist (both a DatasetError and a FileNotFoundError)."""


def image_path_inside(image_root: str | Path, name: str, source: str, follow_symlinks: bool = False) -> Path:
    """`image_root / name` for a path written in an annotation file, refusing any path that leaves
    `image_root`: an absolute path, one whose `..` climb above it after normalisation, and (unless
    `follow_symlinks`) one that is a symbolic link, or lies under one, whose target is outside the folder.

    Args:
        image_root: the folder the annotation's paths are relative to (itself resolved: it may be a link).
        name: the path as written in the annotation file.
        source: where `name` was read (file, line or annotation id), for the error message.
        follow_symlinks: accept symbolic links whose target is outside `image_root` (DATASETS.FOLLOW_SYMLINKS).
    """
    name = str(name).strip()
    normalised = Path(os.path.normpath(name)) if name else Path(".")
    if not name or Path(name).anchor or normalised.parts[:1] in (("..",), ()):
        raise DatasetError(
            f"{source}: image path {name!r} does not name a file inside the image folder {image_root} "
            "(empty, absolute and '..' paths are refused); write it relative to that folder"
        )
    path = Path(image_root) / normalised
    if not follow_symlinks:
        check_link_inside(image_root, path, source)
    return path


def check_link_inside(folder: str | Path, path: str | Path, source: str) -> None:
    """Refuse `path` (below `folder` as written) when resolving its symbolic links leads outside `folder`.

    Raises:
        DatasetError: naming the path, where it leads and DATASETS.FOLLOW_SYMLINKS.
    """
    target = Path(path).resolve()
    if not target.is_relative_to(Path(folder).resolve()):
        raise DatasetError(
            f"{source}: {path} is a symbolic link to {target}, outside the dataset folder {folder}; links that "
            "leave the folder are refused (set DATASETS.FOLLOW_SYMLINKS True to allow them)"
        )


def read_image_rgb(path: str | Path) -> np.ndarray:
    """Decode an image file into uint8 (H, W, 3) RGB; grey and RGBA files are converted.

    np.fromfile + cv2.imdecode instead of cv2.imread: it reads any path (non-ASCII names included) and lets
    us tell "missing" apart from "not an image".
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFileNotFoundError(f"image file not found: {path}")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB) if data.size else None
    if image is None:
        raise OSError(f"cannot decode image file (corrupt or not an image): {path}")
    return image


def image_size_from_file(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file as `read_image_rgb` will decode it, read from the header when Pillow
    can (fast, the pixels are not decoded), else by decoding the file with OpenCV.

    Raises:
        FileNotFoundError: no such file.
        OSError: neither Pillow nor OpenCV can read it (corrupt, or not an image); the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            width, height = image.size
            try:
                orientation = image.getexif().get(_EXIF_ORIENTATION)
            except Exception:  # noqa: BLE001 - damaged metadata further in the file: the header is what counts
                orientation = None
        if orientation in _EXIF_TRANSPOSED:
            width, height = height, width
        return height, width
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError):
        pass  # a format Pillow does not know, or a damaged header: let OpenCV decide
    height, width = read_image_rgb(path).shape[:2]
    return height, width
