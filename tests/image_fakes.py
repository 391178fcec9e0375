"""Image files made for tests of bad input: decompression bombs, without ever holding their pixels."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path


def png_bomb(path: Path, width: int, height: int, rows: int | None = None) -> Path:
    """A grey PNG of zeros, width x height, built without holding its pixels (a 30000 x 30000 one: under 1 MB on
    disk, 2.7 GB once OpenCV decodes it to RGB). `rows` < height writes only the first rows (a header that
    promises more than the file holds)."""
    rows = height if rows is None else rows
    per_block = max(1, min(rows, 2**24 // (width + 1)))  # rows per identical deflate block
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate; a full flush makes every block the same
    block = deflate.compress(bytes((width + 1) * per_block)) + deflate.flush(zlib.Z_FULL_FLUSH)
    tail = deflate.compress(bytes((width + 1) * (rows % per_block))) + deflate.flush(zlib.Z_FINISH)
    size = (width + 1) * rows  # each row: filter byte 0, then the pixels
    adler32 = ((size % 65521) << 16) | 1  # of `size` zero bytes
    idat = b"\x78\xda" + block * (rows // per_block) + tail + struct.pack(">I", adler32)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grey, no interlace
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path
