"""Pascal VOC annotations: a VOC root (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/{split}.txt``)
or a folder of ``.xml`` files. ``difficult`` is kept. Class names come from a names file/list if
given (objects of other classes are reported and skipped), else the sorted set of names.
Coordinates follow darknet's ``voc_label.py`` (and Ultralytics' VOC converter): the 1-based
``xmin..xmax`` becomes ``x1 = xmin - 1``, ``x2 = xmax - 1``, so a VOC root read here gives the same
boxes as the same data converted to YOLO by those tools."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeyolo.data.formats.common import _abs, _image_issue, _pixel_box, _split_keys
from edgeyolo.data.formats.images import read_image_size
from edgeyolo.data.formats.xml import parse_xml
from edgeyolo.data.types import Annotation, DetectionDataset, LabelIssue, Sample
from edgeyolo.errors import InputFileError


@dataclass
class VocObject:
    name: str
    box: tuple[float, float, float, float]  # xyxy pixels, darknet convention (see module doc)
    difficult: bool
    line: int  # of <bndbox>
    name_line: int  # of <name>


@dataclass
class VocRecord:
    xml: Path
    filename: str | None
    path_tag: str | None
    width: int
    height: int
    objects: list[VocObject]


def read_voc_xml(path: Path) -> tuple[VocRecord | None, list[LabelIssue]]:
    """One VOC annotation file; bad objects are issues (with their line) and skipped."""
    issues: list[LabelIssue] = []
    try:
        root = parse_xml(path)
    except FileNotFoundError:
        return None, [LabelIssue(path, None, "annotation file not found")]
    except OSError as exc:
        return None, [LabelIssue(path, None, f"annotation file unreadable: {exc.strerror or exc}")]
    except ValueError as exc:
        text = str(exc)
        line = int(text.split(":", 1)[0].split()[1])
        return None, [LabelIssue(path, line, text.split(":", 1)[1].strip())]
    if root.tag != "annotation":
        return None, [LabelIssue(path, root.line, f"expected an <annotation> root element, got <{root.tag}>")]
    width = height = 0
    size = root.find("size")
    if size is not None:
        try:
            width = int(float(size.findtext("width", "0") or 0))
            height = int(float(size.findtext("height", "0") or 0))
        except ValueError:
            issues.append(LabelIssue(path, size.line, "non-numeric <size>; reading the size from the image"))
    objects = []
    for obj in root.findall("object"):
        name = (obj.findtext("name") or "").strip()
        if not name:
            issues.append(LabelIssue(path, obj.line, "<object> without a <name>; skipped"))
            continue
        flag = obj.findtext("difficult", "0") or "0"
        try:
            difficult = bool(int(float(flag)))
        except ValueError:
            issues.append(LabelIssue(path, obj.find("difficult").line, f"non-numeric <difficult>{flag}</difficult>; taken as 0"))
            difficult = False
        bnd = obj.find("bndbox")
        if bnd is None:
            issues.append(LabelIssue(path, obj.line, f"<object> '{name}' without a <bndbox>; skipped"))
            continue
        try:
            xmin, ymin, xmax, ymax = (float(bnd.findtext(k) or "nan") for k in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            issues.append(LabelIssue(path, bnd.line, f"non-numeric <bndbox> of '{name}'; skipped"))
            continue
        if not all(math.isfinite(v) for v in (xmin, ymin, xmax, ymax)):
            issues.append(LabelIssue(path, bnd.line, f"<bndbox> of '{name}' lacks xmin/ymin/xmax/ymax; skipped"))
            continue
        objects.append(VocObject(name, (xmin - 1, ymin - 1, xmax - 1, ymax - 1), difficult, bnd.line, obj.find("name").line))
    return VocRecord(path, root.findtext("filename"), root.findtext("path"), width, height, objects), issues


def _voc_image(record: VocRecord, stem: str, folders: Sequence[Path]) -> Path:
    candidates: list[Path] = []
    for folder in folders:
        if record.filename:
            candidates.append(folder / record.filename)
        candidates.extend(folder / f"{stem}{ext}" for ext in (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp"))
    if record.path_tag:
        candidates.append(Path(record.path_tag))
    for c in candidates:
        if c.is_file():
            return _abs(c)
    return _abs(candidates[0]) if candidates else _abs(folders[0] / f"{stem}.jpg")


def voc_sample(
    xml: Path, record: VocRecord, stem: str, folders: list[Path], class_of: Callable[[VocObject], int | None],
    issues: list[LabelIssue],
) -> Sample | None:
    """One VOC annotation as a sample: its image found and measured (None when unreadable, with an
    issue), each object's class from ``class_of`` (None skips the object: ``class_of`` says why) and
    its box clipped to the image (a box with nothing inside is skipped, with an issue)."""
    image = _voc_image(record, stem, folders)
    size = read_image_size(image)
    if size is None:
        issues.append(_image_issue(image))
        return None
    width, height = size
    if record.width and record.height and (record.width, record.height) != size:
        issues.append(
            LabelIssue(xml, None, f"<size> says {record.width}x{record.height}, the image is {width}x{height}; using the image's size")
        )
    boxes, classes, difficult = [], [], []
    for obj in record.objects:
        cls = class_of(obj)
        if cls is None:
            continue
        box, note = _pixel_box(*obj.box, width, height)
        if box is None:
            issues.append(LabelIssue(xml, obj.line, f"{note}; skipped"))
            continue
        if note:
            issues.append(LabelIssue(xml, obj.line, note))
        boxes.append(box)
        classes.append(cls)
        difficult.append(obj.difficult)
    annotation = Annotation.of(boxes, classes, difficult) if boxes else Annotation.empty()
    return Sample(image, stem, width, height, annotation)


def voc_xml_files(path: str | Path, split: str = "val") -> tuple[list[Path], list[Path], bool]:
    """(xml files, image folders to search, is_root) for a VOC root's split or a folder of xml files."""
    path = _abs(Path(path))
    if path.is_file():
        return [path], [path.parent, path.parent.parent / "JPEGImages", path.parent.parent / "images"], False
    if (path / "Annotations").is_dir():
        sets = path / "ImageSets" / "Main"
        if split == "all":
            return sorted((path / "Annotations").glob("*.xml")), [path / "JPEGImages", path / "images"], True
        list_file = next((sets / f"{k}.txt" for k in (split, *_split_keys(split)) if (sets / f"{k}.txt").is_file()), None)
        if list_file is None:
            if sets.is_dir() and any(sets.glob("*.txt")):
                have = ", ".join(sorted(p.stem for p in sets.glob("*.txt") if "_" not in p.stem)) or "none"
                raise InputFileError(f"{path}: no ImageSets/Main/{split}.txt (it has: {have})")
            xmls = sorted((path / "Annotations").glob("*.xml"))
        else:
            ids = [line.split()[0] for line in list_file.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
            xmls = [path / "Annotations" / f"{i}.xml" for i in ids]
        return xmls, [path / "JPEGImages", path / "images"], True
    xmls = sorted(path.glob("*.xml"))
    return xmls, [path, path.parent / "JPEGImages", path.parent / "images"], False


def voc_class_names(xmls: Iterable[Path]) -> list[str]:
    """The sorted set of object names in VOC annotation files (unreadable files are skipped)."""
    found: set[str] = set()
    for xml in xmls:
        record, _ = read_voc_xml(xml)
        if record is not None:
            found.update(o.name for o in record.objects)
    return sorted(found)


def _load_voc(path: Path, split: str, names: list[str] | None, image_root: Path | None) -> DetectionDataset:
    xmls, folders, _ = voc_xml_files(path, split)
    if image_root is not None:
        folders = [_abs(image_root)]
    issues: list[LabelIssue] = []
    records: list[tuple[Path, VocRecord | None]] = []
    for xml in xmls:
        record, problems = read_voc_xml(xml)
        issues.extend(problems)
        records.append((xml, record))
    if names is None:
        names = sorted({o.name for _, r in records if r is not None for o in r.objects})
    index = {n: i for i, n in enumerate(names)}
    samples = []
    for xml, record in records:
        stem = xml.stem
        if record is None:
            record = VocRecord(xml, None, None, 0, 0, [])
        def class_of(obj: VocObject, xml: Path = xml) -> int | None:
            if obj.name not in index:
                issues.append(LabelIssue(xml, obj.name_line, f"class '{obj.name}' is not in the names list; skipped"))
                return None
            return index[obj.name]

        sample = voc_sample(xml, record, stem, folders, class_of, issues)
        if sample is not None:
            samples.append(sample)
    if not names and not samples:
        raise InputFileError(f"{path}: no VOC annotations found")
    return DetectionDataset(samples, list(names), str(path), issues)
