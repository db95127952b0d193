"""Image sizes read from the file header (JPEG with its EXIF orientation, PNG, BMP, GIF), falling
back to ``cv2.imread`` for other formats; sizes are cached per (path, mtime, size). A JPEG whose
header is intact but whose data is truncated passes here; ``check_dataset`` decodes every image."""
from __future__ import annotations

import os
import struct
from pathlib import Path

from edgeyolo.model.io import read_image

_SIZE_CACHE: dict[tuple[str, int, int], tuple[int, int]] = {}
_SIZE_CACHE_MAX = 1_000_000


def read_image_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of an image as ``cv2.imread`` would return it; None if unreadable/missing."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_mtime_ns, st.st_size)
    hit = _SIZE_CACHE.get(key)
    if hit is not None:
        return hit
    size = None
    try:
        with open(path, "rb") as fh:
            size = _header_size(fh)
    except OSError:
        return None
    if size is None:
        size = _decoded_size(path)
    if size is not None:
        if len(_SIZE_CACHE) >= _SIZE_CACHE_MAX:
            _SIZE_CACHE.clear()
        _SIZE_CACHE[key] = size
    return size


def _decoded_size(path: Path) -> tuple[int, int] | None:
    image = read_image(path)
    if image is None:
        return None
    return int(image.shape[1]), int(image.shape[0])


def _header_size(fh) -> tuple[int, int] | None:
    head = fh.read(32)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return (w, h) if w > 0 and h > 0 else None
    if head.startswith(b"\xff\xd8"):
        fh.seek(2)
        return _jpeg_size(fh)
    if head.startswith(b"BM") and len(head) >= 26:
        header_size = struct.unpack("<I", head[14:18])[0]
        if header_size == 12:
            w, h = struct.unpack("<HH", head[18:22])
        else:
            w, h = struct.unpack("<ii", head[18:26])
        h = abs(h)
        return (w, h) if w > 0 and h > 0 else None
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return None  # OpenCV versions differ on GIF; let the decoder decide
    return None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(fh) -> tuple[int, int] | None:
    orientation = 1
    while True:
        byte = fh.read(1)
        if not byte:
            return None
        if byte != b"\xff":
            return None
        marker = fh.read(1)
        while marker == b"\xff":  # fill bytes
            marker = fh.read(1)
        if not marker:
            return None
        m = marker[0]
        if m in (0xD8, 0x01) or 0xD0 <= m <= 0xD7:
            continue  # markers without a length
        if m in (0xD9, 0xDA):
            return None  # end of image / start of scan before any frame header
        raw = fh.read(2)
        if len(raw) < 2:
            return None
        length = struct.unpack(">H", raw)[0]
        if length < 2:
            return None
        if m in _SOF:
            body = fh.read(5)
            if len(body) < 5:
                return None
            h, w = struct.unpack(">HH", body[1:5])
            if w == 0 or h == 0:
                return None
            return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
        if m == 0xE1 and orientation == 1:
            body = fh.read(length - 2)
            orientation = _exif_orientation(body)
            continue
        fh.seek(length - 2, os.SEEK_CUR)


def _exif_orientation(app1: bytes) -> int:
    if not app1.startswith(b"Exif\x00\x00"):
        return 1
    tiff = app1[6:]
    if len(tiff) < 8:
        return 1
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        offset = struct.unpack(order + "I", tiff[4:8])[0]
        count = struct.unpack(order + "H", tiff[offset : offset + 2])[0]
        for i in range(count):
            entry = tiff[offset + 2 + 12 * i : offset + 14 + 12 * i]
            if len(entry) < 12:
                break
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag == 0x0112 and kind == 3:
                value = struct.unpack(order + "H", entry[8:10])[0]
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1
