"""Image files of a dataset: keeping annotation paths inside the dataset, decoding, reading sizes; the errors.

- `image_path_inside(root, name, source)`: the path an annotation file gives for an image (or an annotation
  file), refused when it is absolute, climbs out of the folder with `..`, or is a symbolic link whose target
  lies outside the folder (an annotation file, or a downloaded archive holding links, must not make a run
  read, train on and draw into reports any file of the machine). The folder itself may be a link (the
  user named it); `follow_symlinks=True` (DATASETS.FOLLOW_SYMLINKS) accepts links that leave it, for a
  folder of links to images kept elsewhere.
- `read_image_rgb(path, max_pixels)` / `decode_image_rgb(data, max_pixels, name)`: the decoded uint8
  (H, W, 3) RGB image (OpenCV; EXIF orientation applied), refused before decoding when its header says it
  has more than `max_pixels` pixels (INPUT.MAX_IMAGE_PIXELS).
- `image_size_from_file(path)`: (height, width) of that decoded image, from the file's header when Pillow can
  read it (under 0.2 ms a file on BCCD, a third of a full decode), so every image can be checked when a dataset is built.

The pixel limit: a PNG of one colour, 30000 x 30000, is under 1 MB on disk and 2.7 GB once decoded (OpenCV's
own limit is 2^30 pixels, 3.2 GB). Every decode in the package (datasets, demo.py, the TorchServe handler)
goes through `decode_image_rgb`, which reads the size from the header first (Pillow, nothing decoded) and
raises `ImageTooLargeError` naming the file, its size and the setting. A format whose header Pillow cannot
read (OpenEXR, Radiance HDR, PFM) is decoded by OpenCV unchecked: OpenCV's 2^30 pixels is its only bound.
- `DatasetError` (a ValueError): bad annotation or image data, the message naming the file and place;
  `DatasetFileNotFoundError` is also a FileNotFoundError, `ImageTooLargeError` an OSError (an image that
  cannot be read, as a corrupt one). train.py and test.py print them as one line.
"""

from __future__ import annotations

import io
import os
import stat
import threading
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

# EXIF orientations that turn the picture by 90 degrees: OpenCV applies them when decoding, so the decoded
# image is the header's height x width transposed.
_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSPOSED = (5, 6, 7, 8)

# INPUT.MAX_IMAGE_PIXELS's default (ssd/config/defaults.py; tests/test_bad_inputs.py keeps the two equal):
# 150 million pixels (15000 x 10000; 450 MB decoded), above every camera photo (24-100 megapixels).
DEFAULT_MAX_IMAGE_PIXELS = 150_000_000
MAX_IMAGE_PIXELS_KEY = "INPUT.MAX_IMAGE_PIXELS"
# Pillow refuses to open images above 2 x Image.MAX_IMAGE_PIXELS (179 M pixels) without telling their size;
# our own limit needs the size, so headers are read with Pillow's check off (nothing is decoded by Pillow).
_PILLOW_LIMIT_LOCK = threading.Lock()


class DatasetError(ValueError):
    """Bad annotation or image data; the message names the file (and line, annotation or value) and the fix."""


class DatasetFileNotFoundError(DatasetError, FileNotFoundError):
    """A dataset file or folder that does not exist (both a DatasetError and a FileNotFoundError)."""


class ImageTooLargeError(DatasetError, OSError):
    """An image whose header gives more pixels than INPUT.MAX_IMAGE_PIXELS; nothing was decoded."""


def check_image_pixels(height: int, width: int, max_pixels: int, name: str) -> None:
    """Raise ImageTooLargeError naming `name`, its size and the setting when height x width > max_pixels
    (max_pixels <= 0: no limit)."""
    if max_pixels > 0 and height * width > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {width} x {height} = {height * width:,} pixels, above {MAX_IMAGE_PIXELS_KEY} "
            f"{max_pixels}; not decoded. Downscale the image, or raise {MAX_IMAGE_PIXELS_KEY} (0 = no limit)"
        )


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
    normalised = os.path.normpath(name) if name else "."
    if not name or os.path.isabs(name) or normalised in (".", "..") or normalised.startswith(".." + os.sep):
        raise DatasetError(
            f"{source}: image path {name!r} does not name a file inside the image folder {image_root} "
            "(empty, absolute and '..' paths are refused); write it relative to that folder"
        )
    path = os.path.join(image_root, normalised)
    # A file right in the folder that is no link cannot lead outside: one lstat, not a resolve of the whole
    # path (118k COCO images: 0.6 s instead of 9 s). Anything else is resolved in full.
    if not follow_symlinks and (os.sep in normalised or _is_link(path)):
        check_link_inside(image_root, path, source)
    return Path(path)


def _is_link(path: str) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:  # a missing file is no link (the image check reports it)
        return False


def check_link_inside(folder: str | Path, path: str | Path, source: str) -> None:
    """Refuse `path` (below `folder` as written) when resolving its symbolic links leads outside `folder`.

    Raises:
        DatasetError: naming the path, where it leads and DATASETS.FOLLOW_SYMLINKS.
    """
    target, inside = os.path.realpath(path), os.path.realpath(folder)
    if os.path.commonpath([target, inside]) != inside:
        raise DatasetError(
            f"{source}: {path} is a symbolic link to {target}, outside the dataset folder {folder}; links that "
            "leave the folder are refused (set DATASETS.FOLLOW_SYMLINKS True to allow them)"
        )


def read_image_rgb(path: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode an image file into uint8 (H, W, 3) RGB; grey and RGBA files are converted.

    np.fromfile + cv2.imdecode instead of cv2.imread: it reads any path (non-ASCII names included) and lets
    us tell "missing" apart from "not an image".

    Raises:
        FileNotFoundError: no such file.
        ImageTooLargeError: the header gives more than `max_pixels` pixels (<= 0: no limit).
        OSError: corrupt, or not an image; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFileNotFoundError(f"image file not found: {path}")
    return decode_image_rgb(np.fromfile(path, dtype=np.uint8), max_pixels, str(path))


def decode_image_rgb(data: bytes | np.ndarray, max_pixels: int, name: str) -> np.ndarray:
    """An image file's bytes -> uint8 (H, W, 3) RGB, refused from its header when above `max_pixels`.

    Args:
        data: the encoded file (bytes, or a uint8 array of them).
        max_pixels: INPUT.MAX_IMAGE_PIXELS; <= 0 leaves only OpenCV's own limit (2^30 pixels).
        name: the file (or request) named in errors.

    Raises:
        ImageTooLargeError: too many pixels (nothing decoded). OSError: empty, corrupt, or not an image.
    """
    data = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) else data
    if data.size == 0:
        raise OSError(f"cannot decode image {name}: it is empty (0 bytes)")
    size = _header_size(io.BytesIO(data.tobytes()))
    if size is not None:
        check_image_pixels(*size, max_pixels, name)
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR_RGB)
    except cv2.error as err:  # above OpenCV's own limit (2^30 pixels), or a header it rejects
        raise OSError(f"cannot decode image {name}: OpenCV refuses it ({str(err).strip()[-120:]})") from None
    if image is None:
        raise OSError(f"cannot decode image file (corrupt or not an image): {name}")
    return image


def _header_size(source: str | Path | io.BytesIO) -> tuple[int, int] | None:
    """(height, width) as decoded (EXIF turns applied) from the header, or None when Pillow cannot read it."""
    try:
        with _PILLOW_LIMIT_LOCK:
            pillow_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
            try:
                image = Image.open(source)
            finally:
                Image.MAX_IMAGE_PIXELS = pillow_limit
        with image:
            width, height = image.size
            # Pillow's PNG getexif() decodes every pixel to look for an eXIf chunk after them (a 30000 x
            # 30000 PNG: 900 MB): only an eXIf chunk met before the pixels (where writers put it) is read.
            exif_in_header = image.format != "PNG" or "exif" in image.info
            try:
                orientation = image.getexif().get(_EXIF_ORIENTATION) if exif_in_header else None
            except Exception:  # noqa: BLE001 - damaged metadata further in the file: the header is what counts
                orientation = None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None  # a format Pillow does not know, or a damaged header: let OpenCV decide
    return (width, height) if orientation in _EXIF_TRANSPOSED else (height, width)


# JPEG frame headers (SOF0-15 without DHT C4, JPG C8, DAC CC): they hold the height and width.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_HEADER_BYTES = 65536  # the frame header of a camera JPEG follows its EXIF (at most 64 kB)


def _plain_header_size(path: str | Path) -> tuple[int, int] | None:
    """(height, width) of a JPEG or PNG read from its first bytes, when nothing in them can turn the image:
    a JPEG without any APP1 segment (EXIF or XMP, where Pillow finds an orientation), a PNG without an eXIf
    chunk before its pixels. Anything else (other formats, those files, a header this does not follow) is
    None, and Pillow reads it (`_header_size`). Pillow takes about 2.5 times as long; for a COCO-sized
    dataset, checked file by file when it is built, that is seconds of start-up."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)  # a JPEG's frame header without EXIF before it comes within these
            if head[:2] == b"\xff\xd8":
                size, more = _jpeg_size(head)
                if more and len(head) == 4096:  # long tables or comments first: up to _HEADER_BYTES
                    size, _ = _jpeg_size(head + handle.read(_HEADER_BYTES - 4096))
                return size
            if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR" and b"IDAT" in head:
                return _png_size(head)
    except OSError:
        return None
    return None


def _png_size(head: bytes) -> tuple[int, int] | None:
    """A PNG's (height, width) from IHDR when no eXIf chunk comes before the first IDAT (chunks: length,
    type, data, CRC)."""
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    i = 8
    while i + 8 <= len(head):
        kind = head[i + 4 : i + 8]
        if kind == b"eXIf":
            return None
        if kind == b"IDAT":
            return (height, width) if height and width else None
        i += 12 + int.from_bytes(head[i : i + 4], "big")
    return None


def _jpeg_size(head: bytes) -> tuple[tuple[int, int] | None, bool]:
    """Walk a JPEG's segments (0xFF, marker, 2-byte length) up to the frame header.

    Returns:
        ((height, width) or None, whether `head` ended before the walk did: more bytes may tell). None at an
        APP1 segment or a broken structure.
    """
    i = 2
    while i + 4 <= len(head):
        if head[i] != 0xFF:
            return None, False
        marker = head[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker == 0xE1:  # APP1: EXIF or XMP, which may turn the image
            return None, False
        if marker in _JPEG_FRAME_MARKERS:
            if i + 9 > len(head):
                return None, True
            height, width = (
                int.from_bytes(head[i + 5 : i + 7], "big"),
                int.from_bytes(head[i + 7 : i + 9], "big"),
            )
            return ((height, width) if height and width else None), False
        length = int.from_bytes(head[i + 2 : i + 4], "big")
        if length < 2:
            return None, False
        i += 2 + length
    return None, True


def image_size_from_file(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file as `read_image_rgb` will decode it, read from the header when Pillow
    can (fast, the pixels are not decoded), else by decoding the file with OpenCV.

    Raises:
        FileNotFoundError: no such file.
        OSError: neither Pillow nor OpenCV can read it (corrupt, or not an image); the message names it.
    """
    if not os.path.isfile(path):  # os.path, not pathlib: called once per image when a dataset is built
        raise DatasetFileNotFoundError(f"image file not found: {path}")
    size = _plain_header_size(path)
    if size is None:
        size = _header_size(path)
    if size is not None:
        return size
    height, width = read_image_rgb(path).shape[:2]  # OpenCV's own pixel limit applies
    return height, width
