"""Dataset conversion into the Ultralytics YOLO layout (and YOLO → COCO json).

Output layout of every ``*_to_yolo``::

    out/images/{train,val[,test]}/<image>     (hard link when possible, else a copy)
    out/labels/{train,val[,test]}/<stem>.txt  (``cls cx cy w h`` normalised, 6 decimals; empty = no objects)
    out/data.yaml                             (absolute ``path``, train/val[/test], nc, names
                                               [, coco_category_ids])

Every file is written atomically (temporary file + rename). Converting into an existing output
folder adds/replaces splits; the class names must agree with its ``data.yaml``. Problems (a corrupt
image, a bad label) are returned as :class:`LabelIssue` lists in :class:`ConvertResult`, never raised.

Choices:

* VOC ``difficult`` boxes are dropped by default, as darknet's ``voc_label.py`` and Ultralytics' VOC
  converter do (YOLO labels have no difficult flag); ``keep_difficult=True`` keeps them as ordinary
  boxes. The count dropped is in ``ConvertResult.notes``.
* VOC splits: ``train`` ← ``ImageSets/Main/train.txt`` (else ``trainval.txt``), ``val`` ←
  ``val.txt`` (else ``test.txt``), ``test`` ← ``test.txt`` when ``val.txt`` exists. A folder of xml
  files (or a root without ImageSets) is split by a stable hash of each file stem: ``val_fraction``
  of the images go to ``val``.
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

from edgeyolo.data.formats import (
    _abs,
    _image_issue,
    _load_voc,
    _names_arg,
    _pixel_box,
    load_dataset,
    read_image_size,
    voc_class_names,
    voc_xml_files,
)
from edgeyolo.data.types import Annotation, DetectionDataset, LabelIssue, Sample
from edgeyolo.errors import InputFileError, UsageError
from edgeyolo.model.io import atomic_write_text

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
    """Put ``src`` at ``dst`` atomically: a hard link when possible, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        if dst.exists() and os.path.samefile(src, dst):
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
                os.link(src, tmp_path)
                linked = True
            except OSError:
                pass
        if not linked:
            shutil.copyfile(src, tmp_path)
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


def write_yolo_dataset(
    splits: Mapping[str, DetectionDataset | Sequence[Sample]],
    names: Sequence[str],
    out_dir: str | Path,
    *,
    category_ids: Sequence[int] | None = None,
    link: bool = True,
) -> ConvertResult:
    """Write samples per split into the Ultralytics layout under ``out_dir`` (see the module doc)."""
    out = _abs(Path(out_dir))
    names = [str(n) for n in names]
    existing = _read_existing_yaml(out)
    old_names = existing.get("names")
    if isinstance(old_names, dict):
        old_names = [old_names[k] for k in sorted(old_names)]
    if old_names and [str(n) for n in old_names] != names:
        raise UsageError(
            f"{out / 'data.yaml'} lists classes {old_names}, the converted data has {names}; "
            "write into an empty folder or give the same names file"
        )
    result = ConvertResult(out, names)
    for split, data in splits.items():
        samples = data.samples if isinstance(data, DetectionDataset) else list(data)
        image_dir, label_dir = out / "images" / split, out / "labels" / split
        image_dir.mkdir(parents=True, exist_ok=True)
        label_dir.mkdir(parents=True, exist_ok=True)
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
            atomic_write_text(label_dir / (Path(name).stem + ".txt"), yolo_label_text(sample.annotation, width, height))
            n_images += 1
            n_boxes += len(sample.annotation)
        result.images[split] = n_images
        result.boxes[split] = n_boxes
    for split in ("train", "val"):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    ids = list(category_ids) if category_ids is not None else existing.get("coco_category_ids")
    _write_data_yaml(out, names, ids if isinstance(ids, list) and len(ids) == len(names) else None)
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


def _write_data_yaml(out: Path, names: list[str], category_ids: list[int] | None) -> Path:
    import yaml

    data: dict = {"path": str(out)}
    for split in SPLITS:
        if (out / "images" / split).is_dir():
            data[split] = f"images/{split}"
    data["nc"] = len(names)
    data["names"] = list(names)
    if category_ids is not None:
        data["coco_category_ids"] = [int(i) for i in category_ids]
    text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
    return atomic_write_text(out / "data.yaml", text)


def _hash_split(stem: str, val_fraction: float) -> str:
    value = int(hashlib.sha1(stem.encode("utf-8")).hexdigest()[:8], 16) / 2**32
    return "val" if value < val_fraction else "train"


def _split_by_hash(ds: DetectionDataset, val_fraction: float) -> dict[str, list[Sample]]:
    parts: dict[str, list[Sample]] = {"train": [], "val": []}
    for s in ds.samples:
        parts[_hash_split(str(s.image_id), val_fraction)].append(s)
    return parts


def _drop_difficult(ds: DetectionDataset, keep: bool) -> tuple[DetectionDataset, int]:
    if keep:
        samples = [replace(s, annotation=Annotation.of(s.annotation.boxes, s.annotation.classes)) for s in ds.samples]
        return replace(ds, samples=samples), 0
    dropped = 0
    samples = []
    for s in ds.samples:
        a = s.annotation
        keep_mask = ~a.difficult
        dropped += int((~keep_mask).sum())
        samples.append(replace(s, annotation=Annotation.of(a.boxes[keep_mask], a.classes[keep_mask])))
    return replace(ds, samples=samples), dropped


# ----------------------------------------------------------------------------------- VOC


def voc_to_yolo(
    voc_root_or_xml_dir: str | Path,
    out_dir: str | Path,
    names: Sequence[str] | str | Path | None = None,
    *,
    keep_difficult: bool = False,
    val_fraction: float = 0.1,
    image_root: str | Path | None = None,
    link: bool = True,
) -> ConvertResult:
    """Pascal VOC (a root with ImageSets, or a folder of xml files) → Ultralytics YOLO layout."""
    src = _abs(Path(voc_root_or_xml_dir))
    if not src.exists():
        raise InputFileError(f"VOC dataset not found: {src}")
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"val_fraction must lie in [0, 1), got {val_fraction}")
    sets = src / "ImageSets" / "Main"
    split_sources: dict[str, str] = {}
    if (src / "Annotations").is_dir() and sets.is_dir():
        have = {p.stem for p in sets.glob("*.txt")}
        if "train" in have or "trainval" in have:
            split_sources["train"] = "train" if "train" in have else "trainval"
        if "val" in have:
            split_sources["val"] = "val"
            if "test" in have:
                split_sources["test"] = "test"
        elif "test" in have:
            split_sources["val"] = "test"
    name_list = _names_arg(names)
    if name_list is None:
        xmls: list[Path] = []
        if split_sources:
            for source in dict.fromkeys(split_sources.values()):
                xmls.extend(voc_xml_files(src, source)[0])
        else:
            xmls = voc_xml_files(src, "val")[0] if not (src / "Annotations").is_dir() else sorted((src / "Annotations").glob("*.xml"))
        name_list = voc_class_names(dict.fromkeys(xmls))
    if not name_list:
        raise InputFileError(f"{src}: no object classes found in the VOC annotations; give a names file")
    root_arg = Path(image_root) if image_root else None
    issues: list[LabelIssue] = []
    dropped = 0
    parts: dict[str, DetectionDataset | list[Sample]] = {}
    if split_sources:
        for split, source in split_sources.items():
            ds = _load_voc(src, source, name_list, root_arg)
            ds, n = _drop_difficult(ds, keep_difficult)
            dropped += n
            issues.extend(ds.issues)
            parts[split] = ds
    else:
        if (src / "Annotations").is_dir():
            ds = _load_voc(src, "all", name_list, root_arg)  # no ImageSets: every xml in Annotations/
        else:
            ds = _load_voc(src, "val", name_list, root_arg)
        ds, dropped = _drop_difficult(ds, keep_difficult)
        issues.extend(ds.issues)
        parts.update(_split_by_hash(ds, val_fraction))
    result = write_yolo_dataset(parts, name_list, out_dir, link=link)
    result.issues[:0] = issues
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
