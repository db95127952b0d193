"""The in-memory dataset shape every format reader produces and every consumer reads."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Annotation:
    """Ground truth of one image: ``boxes`` xyxy in original pixels (float32 [N, 4]),
    ``classes`` 0-based (int64 [N]), ``difficult`` (bool [N], VOC's flag; False elsewhere)."""

    boxes: np.ndarray
    classes: np.ndarray
    difficult: np.ndarray

    @staticmethod
    def empty() -> "Annotation":
        return Annotation(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool))

    @staticmethod
    def of(boxes, classes, difficult=None) -> "Annotation":
        b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        c = np.asarray(classes, dtype=np.int64).reshape(-1)
        d = np.zeros(len(c), bool) if difficult is None else np.asarray(difficult, dtype=bool).reshape(-1)
        if not len(b) == len(c) == len(d):
            raise ValueError(f"boxes/classes/difficult lengths differ: {len(b)}, {len(c)}, {len(d)}")
        return Annotation(b, c, d)

    def __len__(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class Sample:
    image: Path
    image_id: int | str  # the dataset's own id (COCO id, VOC/YOLO file stem)
    width: int  # original size in pixels; 0 when not known without reading the image
    height: int
    annotation: Annotation


@dataclass(frozen=True)
class LabelIssue:
    """A problem in a label file, reported as ``file:line: message`` and never fatal."""

    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        where = str(self.path) if self.line is None else f"{self.path}:{self.line}"
        return f"{where}: {self.message}"


@dataclass
class DetectionDataset:
    samples: list[Sample]
    names: list[str]
    source: str = ""
    issues: list[LabelIssue] = field(default_factory=list)
    # COCO category id of each 0-based class (COCO json datasets); None elsewhere
    category_ids: list[int] | None = None

    @property
    def num_classes(self) -> int:
        return len(self.names)
