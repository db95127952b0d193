"""Images on disk: the suffixes OpenCV reads and a reader that never raises on a bad file.

Atomic writes, file hashes and file modes are in :mod:`edgeyolo.fileio`.
"""
from __future__ import annotations

from pathlib import Path

# every image type OpenCV reads; one list for datasets, detect sources and calibration folders
IMAGE_SUFFIXES = (
    ".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".dng", ".mpo", ".pfm", ".jp2", ".ppm", ".pgm", ".pbm",
)


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
