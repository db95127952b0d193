"""Dataset conversion into the Ultralytics YOLO layout (and YOLO → COCO json).

Output layout of every ``*_to_yolo``::

    out/images/{train,val[,test]}/<image>     (hard link when possible, else a copy; never a symlink)
    out/labels/{train,val[,test]}/<stem>.txt  (``cls cx cy w h`` normalised, 6 decimals; empty = no objects)
    out/classes.names                         (one class name a line)
    out/data.yaml                             (absolute ``path``, train/val[/test], nc, names, names_file
                                               [, coco_category_ids])

The dataset is written into a hidden folder beside ``out`` and moved into place at the end
(:class:`DatasetStage`), so a failed conversion leaves nothing behind. Converting into an existing
output folder adds/replaces splits; the class names must agree with its ``data.yaml``. Problems in
single files (a corrupt image, a bad label) are returned as :class:`LabelIssue` lists in
:class:`ConvertResult`; a conversion that would write no image, or (VOC) an empty train or val
split, raises.

Choices:

* VOC ``difficult`` boxes are dropped by default, as darknet's ``voc_label.py`` and Ultralytics' VOC
  converter do (YOLO labels have no difficult flag); ``keep_difficult=True`` keeps them as ordinary
  boxes. The count dropped is in ``ConvertResult.notes``.
* VOC layouts (:func:`find_voc_parts`): a root with ``ImageSets/Main/{train,val}.txt`` (else
  ``trainval``; ``test`` becomes val when there is no ``val``), split folders ``train/`` ``val/``
  with or without id lists, or a flat folder of xml files. What is not split by the data is split by
  a stable hash of each file stem (``val_fraction`` to val, at least one image in each split).
* VOC class names: ``class_map`` renames classes first (``Alive=Tree``); a class left outside the
  names is an error at the file:line of its first box unless ``drop_unknown``.
* Oxford hand (``oxfordhand_to_yolo``) accepts both layouts in use: the original VGG release
  (``{training,validation,test}_dataset/*_data/{images,annotations}``, ``.mat`` files holding
  ``boxes`` — structs with corner points ``a, b, c, d`` as 1-based ``[row, col]``; each hand's
  possibly rotated quadrilateral becomes its axis-aligned bounding rectangle), and the darknet-style
  folder used by popular YOLOv3 pruning repos (``oxfordhand.data``, ``oxfordhand.names`` = ``hand``,
  ``train.txt``, ``valid.txt``, ``images/``, ``labels/``), which is validated and re-laid out.
  Reading ``.mat`` files needs scipy.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgeyolo.data.formats import VocRecord, load_dataset, read_image_size, read_voc_xml, voc_sample
from edgeyolo.data.formats.common import _abs, _image_issue, _names_arg, _pixel_box
from edgeyolo.data.types import Annotation, DetectionDataset, LabelIssue, Sample
from edgeyolo.errors import InputFileError, UsageError
from edgeyolo.fileio import atomic_write_text, new_dir_mode, new_file_mode

SPLITS = ("train", "val", "test")


@dataclass
class ConvertResult:
    out: Path  # the output folder (``*_to_yolo``) or json file (``yolo_to_coco``)
    names: list[str]
    images: dict[str, int] = field(default_factory=dict)  # split -> images written
    boxes: dict[str, int] = field(default_factory=dict)  # split -> boxes written
    issues: list[LabelIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def data_yaml(self) -> Path:
        return self.out / "data.yaml"


# ----------------------------------------------------------------------------------- writing


def _place_image(src: Path, dst: Path, link: bool = True) -> None:
    """Put ``src`` at ``dst``: a hard link when possible (same file system), else a copy.

    Never a symbolic link: the dataset must stand alone when its source moves. A source that is
    itself a symbolic link is resolved first, so the link or copy is of the real file.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    real = Path(os.path.realpath(src))
    try:
        if dst.exists() and os.path.samefile(real, dst):
            return
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        linked = False
        if link:
            tmp_path.unlink()
            try:
                os.link(real, tmp_path, follow_symlinks=False)
                linked = True
            except OSError:  # another file system, or links not allowed: copy
                pass
        if not linked:
            shutil.copyfile(real, tmp_path)
            os.chmod(tmp_path, new_file_mode())  # a copy gets a new file's mode, not the temp file's 0o600
        os.replace(tmp_path, dst)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def yolo_label_text(annotation: Annotation, width: int, height: int) -> str:
    """``cls cx cy w h`` lines (normalised, clipped to [0, 1], 6 decimals) for one image."""
    lines = []
    for (x1, y1, x2, y2), c in zip(annotation.boxes.astype(np.float64), annotation.classes):
        x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
        y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        w, h = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{int(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return "".join(line + "\n" for line in lines)


def _read_existing_yaml(out: Path) -> dict:
    path = out / "data.yaml"
    if not path.is_file():
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):  # an unreadable old yaml is simply rewritten
        return {}
    return data if isinstance(data, dict) else {}


def check_out_names(out: Path, names: Sequence[str]) -> dict:
    """The existing ``data.yaml`` of ``out`` (or {}); its class names must equal ``names``."""
    existing = _read_existing_yaml(out)
    old_names = existing.get("names")
    if isinstance(old_names, dict):
        old_names = [old_names[k] for k in sorted(old_names)]
    if old_names and [str(n) for n in old_names] != [str(n) for n in names]:
        raise UsageError(
            f"{out / 'data.yaml'} lists classes {old_names}, the converted data has {list(names)}; "
            "write into an empty folder or give the same names file"
        )
    return existing


class DatasetStage:
    """A dataset written into a hidden folder beside ``out`` and moved into place only when complete.

    A command that fails half-way leaves ``out`` as it was. Into a new ``out`` the staged folder is
    renamed as a whole; into an existing dataset each written split replaces the old one (split by
    split, each a rename), then ``data.yaml`` and the names file are rewritten.
    """

    def __init__(self, out: Path):
        self.out = _abs(Path(out))
        if self.out.exists() and not self.out.is_dir():
            raise UsageError(f"--out {self.out} is a file; give a folder")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.", suffix=".partial", dir=self.out.parent))
        os.chmod(self.root, new_dir_mode())  # renamed into place: a plain mkdir's mode, not mkdtemp's 0o700
        self.splits: list[str] = []

    def split_dirs(self, split: str) -> tuple[Path, Path]:
        """(images, labels) folders of ``split`` inside the stage, created."""
        if split not in self.splits:
            self.splits.append(split)
        dirs = self.root / "images" / split, self.root / "labels" / split
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        return dirs

    def commit(self, names: Sequence[str], category_ids: Sequence[int] | None = None) -> Path:
        """Write data.yaml + the names file and move everything to ``out``; returns data.yaml."""
        out, root = self.out, self.root
        if not out.exists() or not any(out.iterdir()):
            for split in ("train", "val"):
                self.split_dirs(split)
            _write_names_and_yaml(root, out, list(names), category_ids)
            if out.exists():
                out.rmdir()
            os.rename(root, out)
            return out / "data.yaml"
        old = root / ".replaced"
        for split in self.splits:
            for kind in ("images", "labels"):
                dst = out / kind / split
                dst.parent.mkdir(parents=True, exist_ok=True)
                if dst.exists():
                    old.mkdir(exist_ok=True)
                    os.rename(dst, old / f"{kind}-{split}")
                os.rename(root / kind / split, dst)
        for split in ("train", "val"):
            (out / "images" / split).mkdir(parents=True, exist_ok=True)
            (out / "labels" / split).mkdir(parents=True, exist_ok=True)
        _write_names_and_yaml(out, out, list(names), category_ids)
        shutil.rmtree(root, ignore_errors=True)
        return out / "data.yaml"

    def discard(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def write_yolo_dataset(
    splits: Mapping[str, DetectionDataset | Sequence[Sample]],
    names: Sequence[str],
    out_dir: str | Path,
    *,
    category_ids: Sequence[int] | None = None,
    link: bool = True,
) -> ConvertResult:
    """Write samples per split into the Ultralytics layout under ``out_dir`` (see the module doc).

    Everything is staged beside ``out_dir`` first (:class:`DatasetStage`); a dataset of no image at
    all is refused before anything reaches ``out_dir``.
    """
    out = _abs(Path(out_dir))
    names = [str(n) for n in names]
    existing = check_out_names(out, names)
    result = ConvertResult(out, names)
    stage = DatasetStage(out)
    try:
        for split, data in splits.items():
            samples = data.samples if isinstance(data, DetectionDataset) else list(data)
            image_dir, label_dir = stage.split_dirs(split)
            used: dict[str, Path] = {}
            n_images = n_boxes = 0
            for sample in samples:
                src = Path(sample.image)
                if not src.is_file():
                    result.issues.append(_image_issue(src))
                    continue
                name = _unique_name(src, used)
                width, height = sample.width, sample.height
                if not width or not height:
                    size = read_image_size(src)
                    if size is None:
                        result.issues.append(_image_issue(src))
                        continue
                    width, height = size
                _place_image(src, image_dir / name, link)
                (label_dir / (Path(name).stem + ".txt")).write_text(yolo_label_text(sample.annotation, width, height), encoding="utf-8")
                n_images += 1
                n_boxes += len(sample.annotation)
            result.images[split] = n_images
            result.boxes[split] = n_boxes
        if not sum(result.images.values()):
            first = f" (first problem: {result.issues[0]})" if result.issues else ""
            raise InputFileError(f"no image could be converted: 0 images written{first}; {out} is left as it was")
        ids = list(category_ids) if category_ids is not None else existing.get("coco_category_ids")
        stage.commit(names, ids if isinstance(ids, list) and len(ids) == len(names) else None)
    except BaseException:
        stage.discard()
        raise
    return result


def _unique_name(src: Path, used: dict[str, Path]) -> str:
    """The image's file name, made unique within one split (different sources with one name)."""
    name = src.name
    key = name.lower()
    if key not in used or used[key] == src:
        used[key] = src
        return name
    parent = src.parent.name or "img"
    for i in range(1, 1_000_000):
        candidate = f"{parent}_{src.stem}{'' if i == 1 else f'_{i}'}{src.suffix}"
        if candidate.lower() not in used:
            used[candidate.lower()] = src
            return candidate
    raise AssertionError("unreachable")


NAMES_FILE = "classes.names"


def _write_names_and_yaml(folder: Path, out: Path, names: list[str], category_ids: Sequence[int] | None) -> Path:
    """``classes.names`` and ``data.yaml`` in ``folder`` (the yaml's ``path`` is the final ``out``)."""
    import yaml

    atomic_write_text(folder / NAMES_FILE, "".join(n + "\n" for n in names))
    data: dict = {"path": str(out)}
    present = sorted(p.name for p in (folder / "images").iterdir() if p.is_dir()) if (folder / "images").is_dir() else []
    for split in [*(s for s in SPLITS if s in present), *(s for s in present if s not in SPLITS)]:
        data[split] = f"images/{split}"
    data["nc"] = len(names)
    data["names"] = list(names)
    data["names_file"] = NAMES_FILE
    if category_ids is not None:
        data["coco_category_ids"] = [int(i) for i in category_ids]
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return atomic_write_text(folder / "data.yaml", text)


def _hash_value(stem: str) -> float:
    return int(hashlib.sha1(stem.encode("utf-8")).hexdigest()[:8], 16) / 2**32


def split_by_hash(samples: Sequence[Sample], val_fraction: float, what: str = "the images") -> dict[str, list[Sample]]:
    """train / val by a stable hash of each image id; both splits get at least one image.

    On a small set the hash alone can leave val empty (23 images at 0.1 do it easily), so the image
    of lowest hash moves to val then (and the highest to train when train would be empty). Fewer
    than two images cannot be split: an error.
    """
    if not 0.0 < val_fraction < 1.0:
        raise UsageError(f"--val-fraction must lie in (0, 1), got {val_fraction}")
    if len(samples) < 2:
        raise InputFileError(f"{what}: {len(samples)} image(s) cannot be split into train and val; give at least two, or a val list")
    ranked = sorted(samples, key=lambda s: (_hash_value(str(s.image_id)), str(s.image_id)))
    n_val = sum(1 for s in ranked if _hash_value(str(s.image_id)) < val_fraction)
    n_val = min(max(n_val, 1), len(ranked) - 1)
    val = {id(s) for s in ranked[:n_val]}
    parts: dict[str, list[Sample]] = {"train": [], "val": []}
    for s in samples:
        parts["val" if id(s) in val else "train"].append(s)
    return parts


def _drop_difficult(samples: list[Sample], keep: bool) -> tuple[list[Sample], int]:
    if keep:
        return [replace(s, annotation=Annotation.of(s.annotation.boxes, s.annotation.classes)) for s in samples], 0
    dropped = 0
    out = []
    for s in samples:
        a = s.annotation
        keep_mask = ~a.difficult
        dropped += int((~keep_mask).sum())
        out.append(replace(s, annotation=Annotation.of(a.boxes[keep_mask], a.classes[keep_mask])))
    return out, dropped


# ----------------------------------------------------------------------------------- VOC

_SPLIT_FOLDERS = {"train": ("train", "training"), "val": ("val", "valid", "validation"), "test": ("test",)}
_IMAGE_FOLDERS = ("JPEGImages", "images", "Images", "imgs", "img", "jpg", "JPEGImages_tiles")
_ANNOTATION_FOLDERS = ("Annotations", "annotations", "xml", "xmls", "labels_xml")
_NOT_IMAGES = {"SegmentationClass", "SegmentationObject", "ImageSets", "labels"}  # masks share the image stems


@dataclass
class VocPart:
    """The annotation files of one split (``""``: not split yet) and where their images may be."""

    xmls: list[Path]
    folders: list[Path]
    where: str  # how this part was found, for messages
    missing_ids: list[str] = field(default_factory=list)  # ids listed without an annotation file


def _child(folder: Path, names: Sequence[str]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_dir()), None)


def _read_ids(path: Path) -> list[str]:
    """Ids of a VOC list file: the first token of each line, as a file stem (paths are accepted)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot read the id list {path}: {exc}") from None
    ids = []
    for line in text.splitlines():
        token = line.split()[0] if line.split() else ""
        if token and not token.startswith("#"):
            ids.append(Path(token.replace("\\", "/")).stem)
    return ids


def _image_folders(ann_dir: Path, root: Path) -> list[Path]:
    """Where the images of xml files in ``ann_dir`` may be: beside them, the root's image folders,
    then every sibling folder (``annotations/`` + ``pictures/`` layouts)."""
    folders = [ann_dir, *(root / n for n in _IMAGE_FOLDERS)]
    for base in dict.fromkeys((ann_dir.parent, root)):
        if base.is_dir():
            folders.extend(sorted(p for p in base.iterdir() if p.is_dir() and p != ann_dir and p.name not in _NOT_IMAGES))
    return list(dict.fromkeys(f for f in folders if f.is_dir())) or [ann_dir]


def _listed_part(ann_dir: Path, root: Path, list_file: Path) -> VocPart:
    ids = _read_ids(list_file)
    xmls, missing = [], []
    for i in ids:
        xml = ann_dir / f"{i}.xml"
        (xmls if xml.is_file() else missing).append(xml if xml.is_file() else i)
    return VocPart(xmls, _image_folders(ann_dir, root), f"{list_file}", missing)


def _root_parts(root: Path, ann_dir: Path, list_dirs: Sequence[Path]) -> dict[str, VocPart]:
    """The splits of one VOC root: its id lists (ImageSets/Main, or list files beside it), else one
    unsplit part of every xml."""
    for lists in list_dirs:
        if not lists.is_dir():
            continue
        have = {p.stem.lower(): p for p in lists.glob("*.txt") if "_" not in p.stem}
        parts: dict[str, VocPart] = {}
        train = have.get("train") or have.get("trainval")
        if train is not None:
            parts["train"] = _listed_part(ann_dir, root, train)
        val = have.get("val") or have.get("valid") or have.get("validation")
        if val is not None:
            parts["val"] = _listed_part(ann_dir, root, val)
            if "test" in have:
                parts["test"] = _listed_part(ann_dir, root, have["test"])
        elif "test" in have:
            parts["val"] = _listed_part(ann_dir, root, have["test"])
        if parts:
            return parts
    return {"": VocPart(sorted(ann_dir.glob("*.xml")), _image_folders(ann_dir, root), str(ann_dir))}


def find_voc_parts(src: str | Path) -> dict[str, VocPart]:
    """The VOC layouts in use, by split.

    * a VOC root: ``Annotations/`` (+ ``JPEGImages/``) with ``ImageSets/Main/{train,val}.txt`` or
      ``train.txt`` / ``val.txt`` beside ``Annotations/``; without lists, one unsplit part;
    * split folders: ``train/``, ``val/`` (``valid``, ``validation``; ``test``), each a VOC root
      or a folder of xml files, with or without an id list ``train.txt`` / ``val.txt`` beside the
      folder or inside it;
    * a flat folder of xml files (images beside them or in a sibling folder), or one xml file.

    Key ``""`` is a part that is not split yet. An empty dict: nothing VOC-like found.
    """
    src = _abs(Path(src))
    if src.is_file():
        return {"": VocPart([src], _image_folders(src.parent, src.parent), str(src))} if src.suffix.lower() == ".xml" else {}
    if not src.is_dir():
        return {}
    ann_dir = _child(src, _ANNOTATION_FOLDERS)
    if ann_dir is not None and any(ann_dir.glob("*.xml")):
        return _root_parts(src, ann_dir, [src / "ImageSets" / "Main", src / "ImageSets", src])
    parts: dict[str, VocPart] = {}
    for split, folder_names in _SPLIT_FOLDERS.items():
        folder = _child(src, folder_names)
        if folder is None:
            continue
        inner = _child(folder, _ANNOTATION_FOLDERS)
        xml_dir = inner if inner is not None and any(inner.glob("*.xml")) else folder
        if not any(xml_dir.glob("*.xml")):
            continue
        lists = [src / f"{n}.txt" for n in folder_names] + [folder / f"{n}.txt" for n in folder_names]
        lists += [folder / "ImageSets" / "Main" / f"{n}.txt" for n in folder_names]
        list_file = next((p for p in lists if p.is_file()), None)
        if list_file is not None:
            parts[split] = _listed_part(xml_dir, folder, list_file)
        else:
            parts[split] = VocPart(sorted(xml_dir.glob("*.xml")), _image_folders(xml_dir, folder), str(folder))
    if parts:
        if "val" not in parts and "test" in parts:
            parts["val"] = parts.pop("test")
        return parts
    if any(src.glob("*.xml")):
        return {"": VocPart(sorted(src.glob("*.xml")), _image_folders(src, src), str(src))}
    return {}


def parse_class_map(items: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """``["Alive=Tree", "Dead=Tree"]`` → ``{"Alive": "Tree", "Dead": "Tree"}``."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        return {str(k): str(v) for k, v in items.items()}
    out: dict[str, str] = {}
    for item in items:
        src, sep, dst = str(item).partition("=")
        src, dst = src.strip(), dst.strip()
        if not sep or not src or not dst:
            raise UsageError(f"--map {item!r}: expected SOURCE=TARGET, e.g. --map Alive=Tree")
        if src in out and out[src] != dst:
            raise UsageError(f"--map gives two targets for '{src}': {out[src]} and {dst}")
        out[src] = dst
    return out


@dataclass
class VocRead:
    """VOC annotations read into samples per split (``""``: not split yet), with their class names."""

    parts: dict[str, list[Sample]]
    names: list[str]
    issues: list[LabelIssue]
    notes: list[str]


def read_voc(
    src: str | Path,
    names: Sequence[str] | str | Path | None = None,
    *,
    class_map: Sequence[str] | Mapping[str, str] | None = None,
    drop_unknown: bool = False,
    image_root: str | Path | None = None,
) -> VocRead:
    """Read every VOC split found under ``src`` (:func:`find_voc_parts`), classes renamed by
    ``class_map`` first. With ``names``, a class that is neither in them nor mapped onto one is an
    error naming the file:line of its first box, unless ``drop_unknown``; without, the names are the
    sorted set found after mapping."""
    root = _abs(Path(src))
    if not root.exists():
        raise InputFileError(f"VOC dataset not found: {root}")
    layout = find_voc_parts(root)
    if not layout or not any(p.xmls for p in layout.values()):
        raise InputFileError(
            f"{root}: no VOC annotations found; expected Annotations/ (+ ImageSets/Main/*.txt), split folders "
            "train/ val/ (each with Annotations/ or xml files), or a folder of .xml files"
        )
    mapping = parse_class_map(class_map)
    issues: list[LabelIssue] = []
    notes: list[str] = []
    records: dict[str, list[tuple[Path, VocRecord, list[Path]]]] = {}
    for split, part in layout.items():
        if part.missing_ids:
            issues.extend(LabelIssue(Path(part.where), None, f"id '{i}' has no annotation file; skipped") for i in part.missing_ids)
        folders = [_abs(Path(image_root))] if image_root else part.folders
        rows = []
        for xml in part.xmls:
            record, problems = read_voc_xml(xml)
            issues.extend(problems)
            if record is not None:
                rows.append((xml, record, folders))
        records[split] = rows
    found = [o.name for rows in records.values() for _, r, _ in rows for o in r.objects]
    unused = sorted(set(mapping) - set(found))
    if unused:
        notes.append(f"--map: no box of class {', '.join(repr(u) for u in unused)} was found")
    name_list = _names_arg(names)
    if name_list is None:
        name_list = sorted({mapping.get(n, n) for n in found})
        if not name_list:
            raise InputFileError(f"{root}: no objects in the VOC annotations, so no class names; give a names file (--names)")
    else:
        bad = sorted({t for t in mapping.values() if t not in name_list})
        if bad:
            raise UsageError(f"--map target(s) {', '.join(bad)} are not in the names ({', '.join(name_list)})")
    index = {n: i for i, n in enumerate(name_list)}
    dropped: dict[str, int] = {}
    parts: dict[str, list[Sample]] = {}
    for split, rows in records.items():
        samples = []
        for xml, record, folders in rows:

            def class_of(obj, xml: Path = xml) -> int | None:
                target = mapping.get(obj.name, obj.name)
                if target in index:
                    return index[target]
                if not drop_unknown:
                    raise InputFileError(
                        f"{xml}:{obj.name_line}: class '{obj.name}' is not in the names ({', '.join(name_list)}); "
                        f"map it with --map {obj.name}=NAME, or drop such boxes with --drop-unknown"
                    )
                dropped[obj.name] = dropped.get(obj.name, 0) + 1
                return None

            sample = voc_sample(xml, record, xml.stem, folders, class_of, issues)
            if sample is not None:
                samples.append(sample)
        parts[split] = samples
    if dropped:
        notes.append("dropped boxes of classes not in the names: " + ", ".join(f"{k} ({v})" for k, v in sorted(dropped.items())))
    return VocRead(parts, list(name_list), issues, notes)


def voc_to_yolo(
    voc_root_or_xml_dir: str | Path,
    out_dir: str | Path,
    names: Sequence[str] | str | Path | None = None,
    *,
    keep_difficult: bool = False,
    val_fraction: float = 0.1,
    image_root: str | Path | None = None,
    link: bool = True,
    class_map: Sequence[str] | Mapping[str, str] | None = None,
    drop_unknown: bool = False,
) -> ConvertResult:
    """Pascal VOC in any of the layouts of :func:`find_voc_parts` → Ultralytics YOLO layout.

    Splits come from the id lists or split folders; data that is not split is split by a stable
    hash (:func:`split_by_hash`). No image at all, or an empty train or val split, is an error and
    nothing is written.
    """
    src = _abs(Path(voc_root_or_xml_dir))
    read = read_voc(src, names, class_map=class_map, drop_unknown=drop_unknown, image_root=image_root)
    issues, notes = list(read.issues), list(read.notes)
    dropped = 0
    parts: dict[str, list[Sample]] = {}
    for split, samples in read.parts.items():
        samples, n = _drop_difficult(samples, keep_difficult)
        dropped += n
        parts[split] = samples
    total = sum(len(v) for v in parts.values())
    if not total:
        first = f" (first problem: {issues[0]})" if issues else ""
        raise InputFileError(f"{src}: 0 images could be read{first}")
    if "" in parts:
        unsplit = parts.pop("")
        if "train" in parts or "val" in parts:
            parts.setdefault("train", []).extend(unsplit)
        else:
            parts.update(split_by_hash(unsplit, val_fraction, str(src)))
            notes.append(f"no val list: {len(parts['val'])} of {total} images put in val by a stable hash (--val-fraction {val_fraction})")
    if "val" not in parts and parts.get("train"):
        parts.update(split_by_hash(parts.pop("train"), val_fraction, str(src)))
        notes.append(f"no val list: {len(parts['val'])} of {total} train images put in val by a stable hash (--val-fraction {val_fraction})")
    for split in ("train", "val"):
        if split in parts and not parts[split]:
            raise InputFileError(f"{src}: the {split} split has no readable image; check its id list and images")
    if "val" not in parts:
        raise InputFileError(f"{src}: no val split; give a val list or folder, or let --val-fraction split the images")
    if "train" not in parts:
        notes.append("the data lists no train images (only val/test): the dataset has an empty train split")
    if src.name.lower() in {n for names_ in _SPLIT_FOLDERS.values() for n in names_}:
        siblings = [p.name for names_ in _SPLIT_FOLDERS.values() for n in names_ for p in [src.parent / n] if p.is_dir() and p != src]
        if siblings:
            notes.append(f"{src} is one split folder beside {', '.join(siblings)}; give --src {src.parent} to keep the splits as they are")
    result = write_yolo_dataset(parts, read.names, out_dir, link=link)
    result.issues[:0] = issues
    result.notes[:0] = notes
    if dropped:
        result.notes.append(f"dropped {dropped} difficult boxes (keep them with keep_difficult / --keep-difficult)")
    return result


# ----------------------------------------------------------------------------------- COCO


def coco_to_yolo(
    json_path: str | Path,
    images_dir: str | Path | None,
    out_dir: str | Path,
    *,
    split: str | None = None,
    link: bool = True,
) -> ConvertResult:
    """A COCO detection json (one split) → Ultralytics YOLO layout; crowd boxes are dropped.

    ``split`` defaults to 'train' / 'val' / 'test' when the json's name contains it, else 'train'.
    Category ids are kept in data.yaml as ``coco_category_ids``.
    """
    path = _abs(Path(json_path))
    if not path.is_file():
        raise InputFileError(f"COCO json not found: {path}")
    if split is None:
        stem = path.stem.lower()
        split = next((s for s in ("train", "val", "test") if s in stem), "train")
    ds = load_dataset(path, image_root=images_dir)
    result = write_yolo_dataset({split: ds}, ds.names, out_dir, category_ids=ds.category_ids, link=link)
    notes = [i for i in ds.issues if i.message.startswith("note: ")]
    result.issues[:0] = [i for i in ds.issues if not i.message.startswith("note: ")]
    result.notes.extend(i.message[len("note: "):] for i in notes)
    return result


# ----------------------------------------------------------------------------------- Oxford hand


def oxfordhand_to_yolo(
    src: str | Path,
    out_dir: str | Path,
    *,
    link: bool = True,
) -> ConvertResult:
    """The Oxford hand dataset (original .mat release, or the darknet-style folder) → Ultralytics layout."""
    root = _abs(Path(src))
    if not root.exists():
        raise InputFileError(f"Oxford hand dataset not found: {root}")
    data_file = root if root.suffix == ".data" else None
    if data_file is None and root.is_dir():
        candidates = sorted(root.glob("*.data")) or sorted(root.glob("*/*.data"))
        preferred = [c for c in candidates if "hand" in c.stem.lower()]
        data_file = (preferred or candidates or [None])[0]
    mat_dirs = sorted(p for p in root.rglob("annotations") if p.is_dir() and any(p.glob("*.mat"))) if root.is_dir() else []
    if mat_dirs:
        return _oxfordhand_mat(root, mat_dirs, out_dir, link)
    if data_file is not None:
        parts = {}
        issues: list[LabelIssue] = []
        names: list[str] = []
        for split, key in (("train", "train"), ("val", "valid"), ("test", "test")):
            try:
                ds = load_dataset(data_file, key)
            except InputFileError as exc:
                if split == "test" or "split in the .data file" in str(exc):
                    continue
                raise
            parts[split] = ds
            issues.extend(ds.issues)
            names = ds.names
        if not parts:
            raise InputFileError(f"{data_file}: neither 'train' nor 'valid' lists found")
        result = write_yolo_dataset(parts, names, out_dir, link=link)
        result.issues[:0] = issues
        return result
    raise InputFileError(
        f"{root}: not an Oxford hand dataset: expected *_dataset/*_data/{{images,annotations}} with .mat files, "
        "or a darknet-style folder with oxfordhand.data"
    )


def _split_of(path: Path) -> str:
    text = "/".join(path.parts).lower()
    if "valid" in text:
        return "val"
    if "test" in text:
        return "test"
    return "train"


def read_oxfordhand_mat(path: Path) -> list[tuple[float, float, float, float]]:
    """Axis-aligned boxes (xyxy, 0-based pixels, not clipped) of one Oxford hand .mat annotation."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise UsageError("reading the Oxford hand .mat annotations needs scipy: pip install scipy") from None
    mat = loadmat(str(path), squeeze_me=True, struct_as_record=False)
    if "boxes" not in mat:
        raise ValueError("no 'boxes' variable")
    items = np.atleast_1d(mat["boxes"]).ravel()
    boxes = []
    for item in items:
        points = []
        for key in ("a", "b", "c", "d"):
            value = getattr(item, key, None)
            if value is None and isinstance(item, np.ndarray) and item.dtype.names and key in item.dtype.names:
                value = item[key]
            if value is None:
                raise ValueError(f"a box lacks its corner '{key}'")
            arr = np.asarray(value, dtype=np.float64).ravel()
            if arr.size < 2:
                raise ValueError(f"corner '{key}' is not a [row, col] pair")
            points.append(arr[:2])
        pts = np.stack(points)  # [4, (row, col)], 1-based
        ys, xs = pts[:, 0] - 1, pts[:, 1] - 1
        boxes.append((float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())))
    return boxes


def _oxfordhand_mat(root: Path, mat_dirs: list[Path], out_dir: str | Path, link: bool) -> ConvertResult:
    issues: list[LabelIssue] = []
    parts: dict[str, list[Sample]] = {}
    for ann_dir in mat_dirs:
        split = _split_of(ann_dir.relative_to(root) if ann_dir != root else ann_dir)
        image_dir = ann_dir.parent / "images"
        for mat in sorted(ann_dir.glob("*.mat")):
            image = next((image_dir / f"{mat.stem}{ext}" for ext in (".jpg", ".jpeg", ".png") if (image_dir / f"{mat.stem}{ext}").is_file()), image_dir / f"{mat.stem}.jpg")
            size = read_image_size(image)
            if size is None:
                issues.append(_image_issue(_abs(image)))
                continue
            try:
                raw = read_oxfordhand_mat(mat)
            except UsageError:
                raise
            except Exception as exc:  # noqa: BLE001 - scipy raises many kinds; any unreadable .mat is one issue
                issues.append(LabelIssue(mat, None, f"unreadable hand annotation: {exc}"))
                continue
            boxes = []
            for i, box in enumerate(raw):
                clipped, note = _pixel_box(*box, size[0], size[1])
                if clipped is None:
                    issues.append(LabelIssue(mat, None, f"hand {i + 1}: {note}; skipped"))
                    continue
                boxes.append(clipped)
            annotation = Annotation.of(boxes, [0] * len(boxes)) if boxes else Annotation.empty()
            parts.setdefault(split, []).append(Sample(_abs(image), mat.stem, size[0], size[1], annotation))
    result = write_yolo_dataset(parts, ["hand"], out_dir, link=link)
    result.issues[:0] = issues
    return result


# ----------------------------------------------------------------------------------- YOLO -> COCO


def yolo_to_coco(
    dataset: DetectionDataset | str | Path,
    out_json: str | Path,
    *,
    split: str = "val",
    image_root: str | Path | None = None,
) -> ConvertResult:
    """Write a dataset (any readable format; typically YOLO) as a COCO detection json.

    ``file_name`` is relative to ``image_root`` if given, else to the json's sibling ``images/``
    folder or the json's folder when the image lies below it, else absolute (the COCO reader finds
    all three). Category ids are the dataset's ``category_ids`` when known, else 1..N. Image ids are
    the dataset's integer ids when unique, else 1..N. Difficult boxes get ``"difficult": 1``.
    """
    ds = dataset if isinstance(dataset, DetectionDataset) else load_dataset(dataset, split)
    out = _abs(Path(out_json))
    roots = [_abs(Path(image_root))] if image_root else [out.parent / "images", out.parent]
    cat_ids = list(ds.category_ids) if ds.category_ids and len(ds.category_ids) == ds.num_classes else list(range(1, ds.num_classes + 1))
    own_ids = [s.image_id for s in ds.samples]
    use_own = all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in own_ids) and len(set(own_ids)) == len(own_ids)
    images, annotations = [], []
    ann_id = 1
    for number, sample in enumerate(ds.samples, start=1):
        image_id = int(sample.image_id) if use_own else number
        width, height = sample.width, sample.height
        if not width or not height:
            size = read_image_size(sample.image)
            width, height = size if size else (0, 0)
        images.append({"id": image_id, "file_name": _relative_name(Path(sample.image), roots), "width": int(width), "height": int(height)})
        a = sample.annotation
        for (x1, y1, x2, y2), c, d in zip(a.boxes.astype(np.float64), a.classes, a.difficult):
            w, h = x2 - x1, y2 - y1
            entry = {
                "id": ann_id,
                "image_id": image_id,
                "category_id": int(cat_ids[int(c)]),
                "bbox": [round(float(x1), 3), round(float(y1), 3), round(float(w), 3), round(float(h), 3)],
                "area": round(float(w * h), 3),
                "iscrowd": 0,
            }
            if d:
                entry["difficult"] = 1
            annotations.append(entry)
            ann_id += 1
    data = {
        "info": {"description": f"converted by edgeyolo from {ds.source}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": int(i), "name": n, "supercategory": ""} for i, n in zip(cat_ids, ds.names)],
    }
    atomic_write_text(out, json.dumps(data))
    return ConvertResult(out, list(ds.names), {"all": len(images)}, {"all": len(annotations)}, list(ds.issues))


def _relative_name(image: Path, roots: list[Path]) -> str:
    image = _abs(image)
    for root in roots:
        try:
            return image.relative_to(root).as_posix()
        except ValueError:
            continue
    return str(image)
