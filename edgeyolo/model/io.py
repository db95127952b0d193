"""Atomic file writes: an artifact is either complete or absent, never half-written."""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

# every image type OpenCV reads; one list for datasets, detect sources and calibration folders
IMAGE_SUFFIXES = (
    ".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dng", ".mpo", ".pfm", ".jp2", ".ppm", ".pgm", ".pbm",
)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def read_image(path: str | Path):
    """BGR uint8 image, or None when the file is missing, empty or not a decodable image.

    Reads the bytes first so that a non-ASCII path or a truncated file is a None, never an exception.
    """
    import cv2
    import numpy as np

    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:
        return None
    if data.size == 0:
        return None
    try:
        image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    if image is None or image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        return None
    return image


def sha256_file(path: str | Path, length: int | None = None) -> str:
    """sha256 of a file, or of its first ``length`` bytes (a partial upload's prefix)."""
    digest = hashlib.sha256()
    left = length
    with open(path, "rb") as fh:
        while left is None or left > 0:
            block = fh.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
    return digest.hexdigest()
