"""Readers for the detection dataset formats in the wild, all producing :class:`DetectionDataset`.

Supported (``load_dataset`` picks by the path it is given):

* **darknet** ``.data`` file — ``classes``, ``train``, ``valid``, ``names`` keys; the splits are list
  files of image paths (or folders); relative paths are tried against the ``.data`` file's folder,
  then the current directory, then the ``.data`` folder's parents. Labels are found by darknet's
  rule: the last ``images`` (or ``JPEGImages``) path component becomes ``labels`` and the suffix
  ``.txt``.
* **Ultralytics** ``.yaml`` — ``path``, ``train``, ``val``, ``test``, ``names`` (list or
  ``{id: name}``), ``nc``; a split is a folder of images (searched recursively), a list file or a
  list of either. Labels: the last ``/images/`` component becomes ``/labels/``, suffix ``.txt``.
* **COCO** ``.json`` — ``file_name`` resolved against an explicit image root, else the json's
  sibling ``images/`` folder, the json's folder, the parent's ``images/`` and the parent. Classes
  are the categories in sorted id order (0-based); ``category_ids`` keeps the ids. ``iscrowd``
  boxes are dropped (one note in ``issues``); ``ignore``/``difficult`` set the difficult flag.
* **Pascal VOC** — a VOC root (``Annotations/``, ``JPEGImages/``, ``ImageSets/Main/{split}.txt``)
  or a folder of ``.xml`` files. ``difficult`` is kept. Class names come from a names file/list
  if given (objects of other classes are reported and skipped), else the sorted set of names.
  Coordinates follow darknet's ``voc_label.py`` (and Ultralytics' VOC converter): the 1-based
  ``xmin..xmax`` becomes ``x1 = xmin - 1``, ``x2 = xmax - 1``, so a VOC root read here gives the
  same boxes as the same data converted to YOLO by those tools.

Boxes come out as xyxy in original-image pixels. Problems in labels never stop loading: each is a
:class:`LabelIssue` (file, line, message) in ``dataset.issues`` and the bad entry is skipped. A
missing YOLO label file means "no objects". A missing or unreadable image is an issue and its sample
is dropped. Only a dataset that cannot be read at all raises :class:`InputFileError`.

Image sizes are read from the file header (JPEG with its EXIF orientation, PNG, BMP, GIF), falling
back to ``cv2.imread`` for other formats; sizes are cached per (path, mtime, size). A JPEG whose
header is intact but whose data is truncated passes here; ``check_dataset`` decodes every image.
"""
from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat


from edgeyolo.data.types import Annotation, DetectionDataset, LabelIssue, Sample
from edgeyolo.errors import InputFileError
from edgeyolo.model.io import IMAGE_SUFFIXES, read_image

COORD_TOL = 1e-6  # normalised YOLO coordinates may exceed [0, 1] by this much
PIXEL_TOL = 1.0  # pixel boxes may exceed the image by this much without a note

# messages of image-level issues (``check`` sorts issues by these prefixes)
MSG_IMAGE_MISSING = "image not found"
MSG_IMAGE_CORRUPT = "image unreadable (corrupt or not an image)"
MSG_LABEL_ORPHAN = "label file without an image (ignored; was the image deleted or renamed?)"

FORMATS = ("darknet", "ultralytics", "coco", "voc")


# ----------------------------------------------------------------------------------- image sizes

_SIZE_CACHE: dict[tuple[str, int, int], tuple[int, int]] = {}
_SIZE_CACHE_MAX = 1_000_000


def read_image_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of an image as ``cv2.imread`` would return it; None if unreadable/missing."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        return None
    key = (str(path), st.st_mtime_ns, st.st_size)
    hit = _SIZE_CACHE.get(key)
    if hit is not None:
        return hit
    size = None
    try:
        with open(path, "rb") as fh:
            size = _header_size(fh)
    except OSError:
        return None
    if size is None:
        size = _decoded_size(path)
    if size is not None:
        if len(_SIZE_CACHE) >= _SIZE_CACHE_MAX:
            _SIZE_CACHE.clear()
        _SIZE_CACHE[key] = size
    return size


def _decoded_size(path: Path) -> tuple[int, int] | None:
    image = read_image(path)
    if image is None:
        return None
    return int(image.shape[1]), int(image.shape[0])


def _header_size(fh) -> tuple[int, int] | None:
    head = fh.read(32)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return (w, h) if w > 0 and h > 0 else None
    if head.startswith(b"\xff\xd8"):
        fh.seek(2)
        return _jpeg_size(fh)
    if head.startswith(b"BM") and len(head) >= 26:
        header_size = struct.unpack("<I", head[14:18])[0]
        if header_size == 12:
            w, h = struct.unpack("<HH", head[18:22])
        else:
            w, h = struct.unpack("<ii", head[18:26])
        h = abs(h)
        return (w, h) if w > 0 and h > 0 else None
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return None  # OpenCV versions differ on GIF; let the decoder decide
    return None


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(fh) -> tuple[int, int] | None:
    orientation = 1
    while True:
        byte = fh.read(1)
        if not byte:
            return None
        if byte != b"\xff":
            return None
        marker = fh.read(1)
        while marker == b"\xff":  # fill bytes
            marker = fh.read(1)
        if not marker:
            return None
        m = marker[0]
        if m in (0xD8, 0x01) or 0xD0 <= m <= 0xD7:
            continue  # markers without a length
        if m in (0xD9, 0xDA):
            return None  # end of image / start of scan before any frame header
        raw = fh.read(2)
        if len(raw) < 2:
            return None
        length = struct.unpack(">H", raw)[0]
        if length < 2:
            return None
        if m in _SOF:
            body = fh.read(5)
            if len(body) < 5:
                return None
            h, w = struct.unpack(">HH", body[1:5])
            if w == 0 or h == 0:
                return None
            return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
        if m == 0xE1 and orientation == 1:
            body = fh.read(length - 2)
            orientation = _exif_orientation(body)
            continue
        fh.seek(length - 2, os.SEEK_CUR)


def _exif_orientation(app1: bytes) -> int:
    if not app1.startswith(b"Exif\x00\x00"):
        return 1
    tiff = app1[6:]
    if len(tiff) < 8:
        return 1
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return 1
    try:
        offset = struct.unpack(order + "I", tiff[4:8])[0]
        count = struct.unpack(order + "H", tiff[offset : offset + 2])[0]
        for i in range(count):
            entry = tiff[offset + 2 + 12 * i : offset + 14 + 12 * i]
            if len(entry) < 12:
                break
            tag, kind = struct.unpack(order + "HH", entry[:4])
            if tag == 0x0112 and kind == 3:
                value = struct.unpack(order + "H", entry[8:10])[0]
                return value if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


# ----------------------------------------------------------------------------------- label paths


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


def _image_issue(image: Path) -> LabelIssue:
    return LabelIssue(image, None, MSG_IMAGE_MISSING if not image.exists() else MSG_IMAGE_CORRUPT)


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


# ----------------------------------------------------------------------------------- helpers


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


def _orphan_labels(folder: Path, images: Sequence[Path], label_of: Callable[[Path], Path]) -> list[LabelIssue]:
    """Label files in ``folder``'s label folder that no image of ``folder`` reads. Only for a split given
    as a folder, whose label folder mirrors it; a list file may share its label folder with others."""
    labels = label_of(folder / "_.jpg").parent
    if labels == folder or not labels.is_dir():
        return []
    used = {_abs(label_of(image)) for image in images}
    return [LabelIssue(txt, None, MSG_LABEL_ORPHAN) for txt in sorted(_abs(t) for t in labels.rglob("*.txt")) if txt not in used]


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


# ----------------------------------------------------------------------------------- dispatch


def detect_format(spec: str | Path) -> str:
    """'darknet', 'ultralytics', 'coco' or 'voc' for a dataset path; InputFileError if none fits."""
    path = Path(spec).expanduser()
    if not path.exists():
        raise InputFileError(f"dataset not found: {path}")
    if path.is_file():
        suffix = path.suffix.lower()
        kind = {".data": "darknet", ".yaml": "ultralytics", ".yml": "ultralytics", ".json": "coco", ".xml": "voc"}.get(suffix)
        if kind is None:
            raise InputFileError(
                f"{path}: unknown dataset file type '{suffix}'; expected a darknet .data, an Ultralytics .yaml, "
                "a COCO .json, or a Pascal VOC root / folder of .xml files"
            )
        return kind
    if (path / "Annotations").is_dir():
        return "voc"
    if any(path.glob("*.xml")):
        return "voc"
    for name in ("data.yaml", "data.yml", "dataset.yaml"):
        if (path / name).is_file():
            return "ultralytics"
    if len(list(path.glob("*.data"))) == 1:
        return "darknet"
    raise InputFileError(
        f"{path}: cannot tell the dataset format of this folder; give the .data / .yaml / .json file, "
        "or a VOC root (Annotations/, JPEGImages/) or a folder of VOC .xml files"
    )


def _dataset_file(path: Path, kind: str) -> Path:
    if path.is_file():
        return path
    if kind == "ultralytics":
        for name in ("data.yaml", "data.yml", "dataset.yaml"):
            if (path / name).is_file():
                return path / name
    if kind == "darknet":
        return next(iter(path.glob("*.data")))
    return path


def load_dataset(
    spec: str | Path,
    split: str = "val",
    *,
    image_root: str | Path | None = None,
    names: Sequence[str] | str | Path | None = None,
) -> DetectionDataset:
    """Read any supported dataset (see the module doc) into a :class:`DetectionDataset`.

    ``split`` is ``train``, ``val`` (darknet's ``valid``) or ``test``; COCO jsons and VOC xml folders
    hold one split and ignore it (a VOC root reads ``ImageSets/Main/{split}.txt``). ``image_root``
    is the COCO image folder (or a VOC xml folder's images); ``names`` a names file or list for VOC.
    """
    path = _abs(Path(spec))
    kind = detect_format(path)
    path = _dataset_file(path, kind)
    if kind == "darknet":
        return _load_darknet(path, split)
    if kind == "ultralytics":
        return _load_ultralytics(path, split)
    if kind == "coco":
        return _load_coco(path, Path(image_root) if image_root else None)
    return _load_voc(path, split, _names_arg(names), Path(image_root) if image_root else None)


def _split_keys(split: str) -> tuple[str, ...]:
    s = split.lower()
    if s in ("val", "valid", "validation"):
        return ("valid", "val", "validation")
    if s in ("train", "training"):
        return ("train",)
    return (s,)


# ----------------------------------------------------------------------------------- darknet


def read_darknet_data(path: str | Path) -> tuple[dict[str, str], list[LabelIssue]]:
    """``key = value`` pairs of a darknet .data file (keys lower-cased) and the lines it could not read."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot read the darknet .data file {path}: {exc}") from None
    values: dict[str, str] = {}
    issues: list[LabelIssue] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if "=" not in line:
            issues.append(LabelIssue(path, number, f"expected 'key = value', got '{line}'"))
            continue
        key, value = (part.strip() for part in line.split("=", 1))
        values[key.lower()] = value
    return values, issues


def _load_darknet(path: Path, split: str) -> DetectionDataset:
    values, issues = read_darknet_data(path)
    base = path.parent
    bases = [base, Path.cwd(), *list(base.parents)[:2]]
    names: list[str] = []
    if "names" in values:
        names_path = _resolve(values["names"], bases)
        if names_path.is_file():
            names = read_names(names_path)
        else:
            issues.append(LabelIssue(path, None, f"names file not found: {values['names']}; using class0, class1, ..."))
    nc = len(names)
    if "classes" in values:
        try:
            nc = int(values["classes"])
        except ValueError:
            raise InputFileError(f"{path}: 'classes = {values['classes']}' is not an integer") from None
        if names and len(names) != nc:
            issues.append(LabelIssue(path, None, f"classes = {nc} but the names file lists {len(names)} names"))
    if nc <= 0:
        raise InputFileError(f"{path}: no classes: give 'classes = N' or a 'names' file")
    names = (names + [f"class{i}" for i in range(len(names), nc)])[:nc]
    key = next((k for k in _split_keys(split) if k in values), None)
    if key is None:
        have = ", ".join(k for k in ("train", "valid", "test") if k in values) or "none"
        raise InputFileError(f"{path}: no '{_split_keys(split)[0]}' split in the .data file (it has: {have})")
    list_path = _resolve(values[key], bases)
    resolver = _Resolver([base, Path.cwd(), list_path.parent, *list(base.parents)[:2]])
    if list_path.is_dir():
        images = _images_in(list_path)
    elif list_path.is_file():
        images = _read_list_file(list_path, resolver)
    else:
        raise InputFileError(f"{path}: the '{key}' image list {values[key]} was not found (tried {list_path})")
    samples = _yolo_samples(images, darknet_label_path, nc, issues)
    return DetectionDataset(samples, names, str(path), issues)


# ----------------------------------------------------------------------------------- Ultralytics


def _yaml_names(data: dict, path: Path, issues: list[LabelIssue]) -> list[str]:
    raw = data.get("names")
    nc = data.get("nc")
    if isinstance(raw, dict):
        try:
            table = {int(k): str(v) for k, v in raw.items()}
        except (TypeError, ValueError):
            raise InputFileError(f"{path}: 'names' keys must be class ids 0..N-1") from None
        size = max(table) + 1 if table else 0
        if table and min(table) < 0:
            raise InputFileError(f"{path}: 'names' has a negative class id")
        names = [table.get(i, f"class{i}") for i in range(size)]
    elif isinstance(raw, (list, tuple)):
        names = [str(n) for n in raw]
    elif raw is None:
        names = []
    else:
        raise InputFileError(f"{path}: 'names' must be a list or an {{id: name}} mapping")
    if nc is not None:
        try:
            nc = int(nc)
        except (TypeError, ValueError):
            raise InputFileError(f"{path}: 'nc: {nc}' is not an integer") from None
        if names and nc != len(names):
            issues.append(LabelIssue(path, None, f"nc = {nc} but 'names' lists {len(names)} names; using nc"))
        names = (names + [f"class{i}" for i in range(len(names), nc)])[:nc]
    if not names:
        raise InputFileError(f"{path}: no classes: give 'names' (and/or 'nc')")
    return names


def _load_ultralytics(path: Path, split: str) -> DetectionDataset:
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"cannot read {path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise InputFileError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise InputFileError(f"{path}: expected a YAML mapping with train/val/names keys")
    issues: list[LabelIssue] = []
    names = _yaml_names(data, path, issues)
    root = path.parent
    if data.get("path"):
        root = _resolve(str(data["path"]), [path.parent, Path.cwd()])
    key = next((k for k in (split, *_split_keys(split)) if data.get(k)), None)
    if key is None:
        have = ", ".join(k for k in ("train", "val", "test") if data.get(k)) or "none"
        raise InputFileError(f"{path}: no '{split}' split in the dataset yaml (it has: {have})")
    entries = data[key] if isinstance(data[key], (list, tuple)) else [data[key]]
    images: list[Path] = []
    for entry in entries:
        target = _resolve(str(entry), [root, Path.cwd()])
        if target.is_dir():
            found = _images_in(target)
            images.extend(found)
            issues.extend(_orphan_labels(target, found, ultralytics_label_path))
        elif target.is_file() and target.suffix.lower() not in IMAGE_SUFFIXES:
            images.extend(_read_list_file(target, _list_resolver(target, root)))
        elif target.is_file():
            images.append(target)
        else:
            raise InputFileError(f"{path}: '{key}: {entry}' was not found (tried {target})")
    samples = _yolo_samples(images, ultralytics_label_path, len(names), issues)
    ids = data.get("coco_category_ids")
    category_ids = [int(i) for i in ids] if isinstance(ids, list) and len(ids) == len(names) else None
    return DetectionDataset(samples, names, str(path), issues, category_ids)


def _list_resolver(list_file: Path, root: Path) -> Callable[[str], Path]:
    inner = _Resolver([list_file.parent, root, Path.cwd()])

    def resolve(line: str) -> Path:
        if line.startswith("./"):
            return _abs(list_file.parent / line[2:])
        return inner(line)

    return resolve


# ----------------------------------------------------------------------------------- COCO


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


# ----------------------------------------------------------------------------------- Pascal VOC


@dataclass
class XmlNode:
    """A minimal element tree that remembers the line of every element."""

    tag: str
    line: int
    children: list[XmlNode] = field(default_factory=list)
    text: str = ""

    def find(self, tag: str) -> XmlNode | None:
        return next((c for c in self.children if c.tag == tag), None)

    def findall(self, tag: str) -> list[XmlNode]:
        return [c for c in self.children if c.tag == tag]

    def findtext(self, tag: str, default: str | None = None) -> str | None:
        node = self.find(tag)
        return node.text.strip() if node is not None else default


def parse_xml(path: Path) -> XmlNode:
    """Parse an XML file keeping line numbers; raises ValueError('line N: ...') when malformed."""
    parser = expat.ParserCreate()
    root: list[XmlNode] = []
    stack: list[XmlNode] = []
    texts: list[list[str]] = []

    def start(tag, _attrs):
        node = XmlNode(tag, parser.CurrentLineNumber)
        if stack:
            stack[-1].children.append(node)
        else:
            root.append(node)
        stack.append(node)
        texts.append([])

    def end(_tag):
        node = stack.pop()
        node.text = "".join(texts.pop())

    def chars(data):
        if texts:
            texts[-1].append(data)

    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    try:
        with open(path, "rb") as fh:
            parser.ParseFile(fh)
    except expat.ExpatError as exc:
        raise ValueError(f"line {exc.lineno}: malformed XML: {expat.errors.messages[exc.code]}") from None
    if not root:
        raise ValueError("line 1: empty XML document")
    return root[0]


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
