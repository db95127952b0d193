"""What the dataset readers share: path resolution, names files, split names, image issues and
pixel-box clipping."""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from edgeyolo.data.types import LabelIssue
from edgeyolo.errors import InputFileError
from edgeyolo.model.io import IMAGE_SUFFIXES

PIXEL_TOL = 1.0  # pixel boxes may exceed the image by this much without a note

# messages of image-level issues (``check`` sorts issues by these prefixes)
MSG_IMAGE_MISSING = "image not found"
MSG_IMAGE_CORRUPT = "image unreadable (corrupt or not an image)"
MSG_LABEL_ORPHAN = "label file without an image (ignored; was the image deleted or renamed?)"


def _image_issue(image: Path) -> LabelIssue:
    return LabelIssue(image, None, MSG_IMAGE_MISSING if not image.exists() else MSG_IMAGE_CORRUPT)


def _abs(path: Path) -> Path:
    return Path(os.path.normpath(path.expanduser().absolute()))


def _resolve(value: str | Path, bases: Sequence[Path]) -> Path:
    """An absolute path as is; a relative one against the first base where it exists (else the first)."""
    p = Path(value).expanduser()
    if p.is_absolute():
        return _abs(p)
    for base in bases:
        candidate = base / p
        if candidate.exists():
            return _abs(candidate)
    return _abs(bases[0] / p)


class _Resolver:
    """Resolves many relative paths, trying first the base that worked last time."""

    def __init__(self, bases: Sequence[Path]):
        self.bases = list(dict.fromkeys(_abs(b) for b in bases))

    def __call__(self, value: str) -> Path:
        p = Path(value).expanduser()
        if p.is_absolute():
            return _abs(p)
        for i, base in enumerate(self.bases):
            candidate = base / p
            if candidate.exists():
                if i:
                    self.bases.insert(0, self.bases.pop(i))
                return _abs(candidate)
        return _abs(self.bases[0] / p)


def _images_in(folder: Path) -> list[Path]:
    return sorted(_abs(p) for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _read_list_file(path: Path, resolve: Callable[[str], Path]) -> list[Path]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot read the image list {path}: {exc}") from None
    return [resolve(line.strip()) for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def read_names(path: str | Path) -> list[str]:
    """Class names, one per line (blank lines ignored)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise InputFileError(f"names file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot read the names file {path}: {exc}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _names_arg(names: Sequence[str] | str | Path | None) -> list[str] | None:
    if names is None:
        return None
    if isinstance(names, (str, Path)):
        return read_names(names)
    return [str(n) for n in names]


def _split_keys(split: str) -> tuple[str, ...]:
    s = split.lower()
    if s in ("val", "valid", "validation"):
        return ("valid", "val", "validation")
    if s in ("train", "training"):
        return ("train",)
    return (s,)


def _pixel_box(
    x1: float, y1: float, x2: float, y2: float, width: int, height: int
) -> tuple[tuple[float, float, float, float] | None, str]:
    """A pixel box clipped to the image: (box, note) or (None, reason) when it cannot be used."""
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        return None, "non-finite coordinate"
    if x2 <= x1 or y2 <= y1:
        return None, f"empty box ({x1:g}, {y1:g}, {x2:g}, {y2:g})"
    note = ""
    if x1 < -PIXEL_TOL or y1 < -PIXEL_TOL or x2 > width + PIXEL_TOL or y2 > height + PIXEL_TOL:
        note = f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) extends outside the {width}x{height} image; clipped"
    cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
    cx2, cy2 = min(max(x2, 0.0), width), min(max(y2, 0.0), height)
    if cx2 <= cx1 or cy2 <= cy1:
        return None, f"box ({x1:g}, {y1:g}, {x2:g}, {y2:g}) lies outside the {width}x{height} image"
    return (cx1, cy1, cx2, cy2), note
