"""YOLO label files (``cls cx cy w h`` normalised, one ``.txt`` per image) and the darknet and
Ultralytics rules that find an image's label file."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from edgeyolo.data.formats.common import MSG_LABEL_ORPHAN, _abs, _image_issue
from edgeyolo.data.formats.images import read_image_size
from edgeyolo.data.types import Annotation, LabelIssue, Sample

COORD_TOL = 1e-6  # normalised YOLO coordinates may exceed [0, 1] by this much


def darknet_label_path(image: str | Path) -> Path:
    """darknet's rule: the last ``images`` or ``JPEGImages`` folder becomes ``labels``; suffix ``.txt``."""
    return _swap_folder(Path(image), ("images", "JPEGImages"))


def ultralytics_label_path(image: str | Path) -> Path:
    """Ultralytics' rule: the last ``images`` folder becomes ``labels``; suffix ``.txt``."""
    return _swap_folder(Path(image), ("images",))


def _swap_folder(image: Path, names: tuple[str, ...]) -> Path:
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] in names:
            parts[i] = "labels"
            break
    return Path(*parts).with_suffix(".txt")


# ----------------------------------------------------------------------------------- YOLO labels


def parse_yolo_labels(
    path: str | Path, width: int, height: int, num_classes: int
) -> tuple[Annotation, list[LabelIssue]]:
    """Read a YOLO label file (``cls cx cy w h`` normalised) into xyxy pixels.

    A missing file is "no objects". Every bad line is a LabelIssue and is skipped.
    """
    path = Path(path)
    issues: list[LabelIssue] = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        return Annotation.empty(), issues
    except IsADirectoryError:
        return Annotation.empty(), [LabelIssue(path, None, "label path is a directory, not a file")]
    except UnicodeDecodeError:
        return Annotation.empty(), [LabelIssue(path, None, "label file is not UTF-8 text")]
    except OSError as exc:
        return Annotation.empty(), [LabelIssue(path, None, f"label file unreadable: {exc.strerror or exc}")]
    boxes: list[tuple[float, float, float, float]] = []
    classes: list[int] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 5:
            issues.append(LabelIssue(path, number, f"expected 5 fields 'class cx cy w h', got {len(fields)}"))
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            issues.append(LabelIssue(path, number, f"non-numeric field in '{line}'"))
            continue
        if not all(math.isfinite(v) for v in values):
            issues.append(LabelIssue(path, number, f"non-finite value in '{line}'"))
            continue
        c = values[0]
        if c != int(c) or c < 0:
            issues.append(LabelIssue(path, number, f"class '{fields[0]}' is not a non-negative integer"))
            continue
        cls = int(c)
        if cls >= num_classes:
            issues.append(
                LabelIssue(path, number, f"class {cls} out of range: the dataset has {num_classes} classes (0..{num_classes - 1})")
            )
            continue
        cx, cy, w, h = values[1:]
        outside = [n for n, v in zip(("cx", "cy", "w", "h"), (cx, cy, w, h)) if v < -COORD_TOL or v > 1 + COORD_TOL]
        if outside:
            issues.append(
                LabelIssue(path, number, f"{', '.join(outside)} outside [0, 1]; YOLO labels are normalised to the image size")
            )
            continue
        if w <= 0 or h <= 0:
            issues.append(LabelIssue(path, number, "zero-size box (w or h is 0)"))
            continue
        x1 = min(max((cx - w / 2) * width, 0.0), width)
        x2 = min(max((cx + w / 2) * width, 0.0), width)
        y1 = min(max((cy - h / 2) * height, 0.0), height)
        y2 = min(max((cy + h / 2) * height, 0.0), height)
        if x2 <= x1 or y2 <= y1:
            issues.append(LabelIssue(path, number, "box lies outside the image"))
            continue
        boxes.append((x1, y1, x2, y2))
        classes.append(cls)
    if not boxes:
        return Annotation.empty(), issues
    return Annotation.of(boxes, classes), issues


def _yolo_samples(
    images: Iterable[Path], label_of: Callable[[Path], Path], num_classes: int, issues: list[LabelIssue]
) -> list[Sample]:
    samples = []
    for image in images:
        size = read_image_size(image)
        if size is None:
            issues.append(_image_issue(image))
            continue
        annotation, problems = parse_yolo_labels(label_of(image), size[0], size[1], num_classes)
        issues.extend(problems)
        samples.append(Sample(image, image.stem, size[0], size[1], annotation))
    return samples


def _orphan_labels(folder: Path, images: Sequence[Path], label_of: Callable[[Path], Path]) -> list[LabelIssue]:
    """Label files in ``folder``'s label folder that no image of ``folder`` reads. Only for a split given
    as a folder, whose label folder mirrors it; a list file may share its label folder with others."""
    labels = label_of(folder / "_.jpg").parent
    if labels == folder or not labels.is_dir():
        return []
    used = {_abs(label_of(image)) for image in images}
    return [LabelIssue(txt, None, MSG_LABEL_ORPHAN) for txt in sorted(_abs(t) for t in labels.rglob("*.txt")) if txt not in used]
