"""Dataset health check: label issues, missing/corrupt/duplicate images, class and box counts."""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from edgeyolo.data.formats import MSG_IMAGE_CORRUPT, MSG_IMAGE_MISSING, load_dataset
from edgeyolo.data.types import DetectionDataset, LabelIssue
from edgeyolo.errors import DatasetError
from edgeyolo.log import track


@dataclass
class CheckReport:
    source: str
    names: list[str]
    num_images: int  # samples that loaded (images that could be read)
    num_boxes: int
    class_histogram: list[int]  # boxes per class
    images_per_class: list[int]  # images holding at least one box of the class
    difficult_boxes: int
    empty_images: int  # images without any box
    boxes_per_image: dict[int, int]  # number of boxes -> number of images with that many
    issues: list[LabelIssue] = field(default_factory=list)  # label problems (from loading and from the check)
    missing_images: list[Path] = field(default_factory=list)
    corrupt_images: list[Path] = field(default_factory=list)
    duplicates: list[list[Path]] = field(default_factory=list)  # groups of byte-identical images

    @property
    def max_boxes_per_image(self) -> int:
        return max(self.boxes_per_image, default=0)

    @property
    def mean_boxes_per_image(self) -> float:
        return self.num_boxes / self.num_images if self.num_images else 0.0

    @property
    def label_issues(self) -> list[LabelIssue]:
        """Issues that are not about an image being missing or unreadable."""
        return [i for i in self.issues if not _is_image_issue(i)]

    @property
    def ok(self) -> bool:
        return not (self.issues or self.missing_images or self.corrupt_images or self.duplicates)

    @property
    def problems(self) -> list[LabelIssue]:
        """What a strict check fails on: every issue (label lines, missing and corrupt images, duplicate
        boxes) except the loaders' notes; byte-identical images alone are not a problem."""
        return [i for i in self.issues if not i.message.startswith("note: ")]

    def require_clean(self) -> "CheckReport":
        """This report, or DatasetError (one line: the counts and the first problem) when it has problems."""
        problems = self.problems
        if not problems:
            return self
        images = [i for i in problems if _is_image_issue(i)]
        labels = len(problems) - len(images)
        raise DatasetError(
            f"{self.source}: {labels} label issue(s) and {len(images)} missing or corrupt image(s), first: {problems[0]}; "
            f"fix them (all are listed by `edgeyolo data check --data {self.source}`)"
        )


def _is_image_issue(issue: LabelIssue) -> bool:
    return issue.line is None and (
        issue.message.startswith(MSG_IMAGE_MISSING) or issue.message.startswith(MSG_IMAGE_CORRUPT) or issue.message.startswith("truncated JPEG")
    )


def check_dataset(
    ds: DetectionDataset | str | Path,
    *,
    split: str = "train",
    decode: bool = True,
    hash_images: bool = True,
    strict: bool = False,
    image_root: str | Path | None = None,
    names: Sequence[str] | str | Path | None = None,
) -> CheckReport:
    """Check a dataset: a loaded one, or a dataset file / folder whose ``split`` is loaded here
    (``image_root`` and ``names`` as for :func:`~edgeyolo.data.formats.load_dataset`).

    Besides the loader's issues: every image is read once to hash its bytes (``hash_images``:
    duplicate groups) and, with ``decode``, fully decoded (a valid header with broken data is
    caught here; a JPEG without its end marker is reported as truncated). Duplicate boxes (same
    class and coordinates twice in one image) are reported against the image.

    ``strict=True`` raises DatasetError when any issue is found (see ``CheckReport.problems``):
    training on a label line that was skipped, or an image that cannot be read, quietly trains on
    less than the user thinks.
    """
    if not isinstance(ds, DetectionDataset):
        ds = load_dataset(ds, split, image_root=image_root, names=names)
    report = _check(ds, decode=decode, hash_images=hash_images)
    return report.require_clean() if strict else report


def _check(ds: DetectionDataset, *, decode: bool, hash_images: bool) -> CheckReport:
    import cv2

    issues = list(ds.issues)
    missing = [i.path for i in ds.issues if i.line is None and i.message.startswith(MSG_IMAGE_MISSING)]
    corrupt = [i.path for i in ds.issues if i.line is None and i.message.startswith(MSG_IMAGE_CORRUPT)]
    nc = ds.num_classes
    hist = np.zeros(nc, np.int64)
    per_class_images = np.zeros(nc, np.int64)
    per_image: Counter[int] = Counter()
    by_hash: dict[str, list[Path]] = {}
    difficult = 0
    empty = 0
    ok_images = 0
    num_boxes = 0
    for sample in track(ds.samples, "checking images", total=len(ds.samples)):
        path = Path(sample.image)
        if hash_images or decode:
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                missing.append(path)
                issues.append(LabelIssue(path, None, MSG_IMAGE_MISSING))
                continue
            except OSError as exc:
                corrupt.append(path)
                issues.append(LabelIssue(path, None, f"{MSG_IMAGE_CORRUPT}: {exc.strerror or exc}"))
                continue
            if decode:
                image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
                if image is None:
                    corrupt.append(path)
                    issues.append(LabelIssue(path, None, MSG_IMAGE_CORRUPT))
                    continue
                if data[:2] == b"\xff\xd8" and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
                    corrupt.append(path)
                    issues.append(LabelIssue(path, None, "truncated JPEG (no end-of-image marker); re-save or remove it"))
            if hash_images:
                by_hash.setdefault(hashlib.sha1(data).hexdigest(), []).append(path)
        ok_images += 1
        a = sample.annotation
        n = len(a)
        num_boxes += n
        per_image[n] += 1
        if n == 0:
            empty += 1
            continue
        difficult += int(a.difficult.sum())
        valid = a.classes[(a.classes >= 0) & (a.classes < nc)]
        hist += np.bincount(valid, minlength=nc)[:nc]
        per_class_images[np.unique(valid)] += 1
        rows = np.concatenate([a.classes[:, None].astype(np.float64), np.round(a.boxes.astype(np.float64), 2)], axis=1)
        dupes = n - len(np.unique(rows, axis=0))
        if dupes:
            issues.append(LabelIssue(path, None, f"{dupes} duplicate box(es) (same class and coordinates) in this image"))
    groups = [sorted(paths) for paths in by_hash.values() if len(paths) > 1]
    groups.sort(key=lambda g: str(g[0]))
    return CheckReport(
        source=ds.source,
        names=list(ds.names),
        num_images=ok_images,
        num_boxes=num_boxes,
        class_histogram=hist.tolist(),
        images_per_class=per_class_images.tolist(),
        difficult_boxes=difficult,
        empty_images=empty,
        boxes_per_image=dict(sorted(per_image.items())),
        issues=issues,
        missing_images=missing,
        corrupt_images=corrupt,
        duplicates=groups,
    )
