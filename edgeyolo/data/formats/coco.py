"""COCO detection ``.json`` files: ``file_name`` resolved against an explicit image root, else the
json's sibling ``images/`` folder, the json's folder, the parent's ``images/`` and the parent.
Classes are the categories in sorted id order (0-based); ``category_ids`` keeps the ids.
``iscrowd`` boxes are dropped (one note in ``issues``); ``ignore``/``difficult`` set the difficult
flag."""
from __future__ import annotations

import json
from pathlib import Path

from edgeyolo.data.formats.common import _abs, _image_issue, _pixel_box, _Resolver
from edgeyolo.data.formats.images import read_image_size
from edgeyolo.data.types import Annotation, DetectionDataset, LabelIssue, Sample
from edgeyolo.errors import InputFileError


def coco_image_roots(json_path: Path, image_root: Path | None = None) -> list[Path]:
    if image_root is not None:
        return [_abs(image_root)]
    d = json_path.parent
    return [d / "images", d, d.parent / "images", d.parent]


def _load_coco(path: Path, image_root: Path | None) -> DetectionDataset:
    if image_root is not None and not image_root.is_dir():
        raise InputFileError(f"image folder not found: {image_root}")
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise InputFileError(f"{path}:{exc.lineno}: not valid JSON: {exc.msg}") from None
    except OSError as exc:
        raise InputFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise InputFileError(f"{path}: not a COCO detection json (expected an 'images' list)")
    issues: list[LabelIssue] = []
    categories = [c for c in data.get("categories", []) if isinstance(c, dict) and "id" in c]
    categories.sort(key=lambda c: int(c["id"]))
    category_ids = [int(c["id"]) for c in categories]
    names = [str(c.get("name", f"class{i}")) for i, c in enumerate(categories)]
    index = {cid: i for i, cid in enumerate(category_ids)}
    if not names:
        raise InputFileError(f"{path}: no 'categories' in the COCO json")

    by_image: dict[object, list[dict]] = {}
    for ann in data.get("annotations", []) or []:
        if isinstance(ann, dict):
            by_image.setdefault(ann.get("image_id"), []).append(ann)
    known_ids = {img.get("id") for img in data["images"] if isinstance(img, dict)}
    orphans = sum(len(v) for k, v in by_image.items() if k not in known_ids)
    if orphans:
        issues.append(LabelIssue(path, None, f"{orphans} annotations refer to image ids not in 'images'; skipped"))

    roots = coco_image_roots(path, image_root)
    resolver = _Resolver(roots)
    crowd = 0
    samples = []
    # Two records of one image would be written as one label file, the second overwriting the first
    # (its boxes silently lost); two records with one id would share their annotations. Refuse both.
    by_path: dict[Path, object] = {}
    by_id: dict[object, str] = {}
    for img in data["images"]:
        if not isinstance(img, dict) or "file_name" not in img or "id" not in img:
            issues.append(LabelIssue(path, None, f"image entry without 'id'/'file_name': {str(img)[:80]}"))
            continue
        image = resolver(str(img["file_name"]))
        if img["id"] in by_id:
            raise InputFileError(
                f"{path}: image id {img['id']} appears twice in 'images' (file_name '{by_id[img['id']]}' and "
                f"'{img['file_name']}'); each image needs its own id"
            )
        if image in by_path:
            raise InputFileError(
                f"{path}: images {by_path[image]} and {img['id']} have the same file_name '{img['file_name']}'; "
                "list each image once (move the second one's annotations to the first id)"
            )
        by_id[img["id"]] = str(img["file_name"])
        by_path[image] = img["id"]
        size = read_image_size(image)
        if size is None:
            issues.append(_image_issue(image))
            continue
        width, height = size
        stated = (img.get("width"), img.get("height"))
        if all(isinstance(v, (int, float)) and v > 0 for v in stated) and (int(stated[0]), int(stated[1])) != size:
            issues.append(
                LabelIssue(path, None, f"image {img['id']} ({img['file_name']}): the json says {stated[0]}x{stated[1]}, "
                           f"the file is {width}x{height}; using the file's size")
            )
        boxes, classes, difficult = [], [], []
        for ann in by_image.get(img["id"], []):
            aid = ann.get("id", "?")
            if ann.get("iscrowd", 0):
                crowd += 1
                continue
            cid = ann.get("category_id")
            if cid not in index:
                issues.append(LabelIssue(path, None, f"annotation {aid}: unknown category_id {cid}; skipped"))
                continue
            bbox = ann.get("bbox")
            try:
                x, y, w, h = (float(v) for v in bbox)
            except (TypeError, ValueError):
                issues.append(LabelIssue(path, None, f"annotation {aid}: 'bbox' must be [x, y, w, h], got {bbox}; skipped"))
                continue
            box, note = _pixel_box(x, y, x + w, y + h, width, height)
            if box is None:
                issues.append(LabelIssue(path, None, f"annotation {aid}: {note}; skipped"))
                continue
            if note:
                issues.append(LabelIssue(path, None, f"annotation {aid}: {note}"))
            boxes.append(box)
            classes.append(index[cid])
            difficult.append(bool(ann.get("ignore", 0) or ann.get("difficult", 0)))
        annotation = Annotation.of(boxes, classes, difficult) if boxes else Annotation.empty()
        samples.append(Sample(image, img["id"], width, height, annotation))
    if crowd:
        issues.append(LabelIssue(path, None, f"note: dropped {crowd} iscrowd annotations (crowd regions are not boxes to detect)"))
    return DetectionDataset(samples, names, str(path), issues, category_ids)
