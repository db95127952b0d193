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

One module per format (:mod:`.darknet`, :mod:`.ultralytics`, :mod:`.coco`, :mod:`.voc`), over
:mod:`.yolo` (YOLO label files), :mod:`.xml` (line-keeping XML), :mod:`.images` (image sizes) and
:mod:`.common` (path resolution, names files, box clipping); this package picks the reader.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from edgeyolo.data.formats.coco import _load_coco, coco_image_roots
from edgeyolo.data.formats.common import (
    MSG_IMAGE_CORRUPT,
    MSG_IMAGE_MISSING,
    MSG_LABEL_ORPHAN,
    PIXEL_TOL,
    _abs,
    _names_arg,
    read_names,
)
from edgeyolo.data.formats.darknet import _load_darknet, read_darknet_data
from edgeyolo.data.formats.images import read_image_size
from edgeyolo.data.formats.ultralytics import _load_ultralytics
from edgeyolo.data.formats.voc import (
    VocObject,
    VocRecord,
    _load_voc,
    read_voc_xml,
    voc_class_names,
    voc_sample,
    voc_xml_files,
)
from edgeyolo.data.formats.xml import XmlNode, parse_xml
from edgeyolo.data.formats.yolo import COORD_TOL, darknet_label_path, parse_yolo_labels, ultralytics_label_path
from edgeyolo.data.types import DetectionDataset
from edgeyolo.errors import InputFileError

__all__ = [
    "COORD_TOL",
    "FORMATS",
    "MSG_IMAGE_CORRUPT",
    "MSG_IMAGE_MISSING",
    "MSG_LABEL_ORPHAN",
    "PIXEL_TOL",
    "VocObject",
    "VocRecord",
    "XmlNode",
    "coco_image_roots",
    "darknet_label_path",
    "detect_format",
    "load_dataset",
    "parse_xml",
    "parse_yolo_labels",
    "read_darknet_data",
    "read_image_size",
    "read_names",
    "read_voc_xml",
    "ultralytics_label_path",
    "voc_class_names",
    "voc_sample",
    "voc_xml_files",
]

FORMATS = ("darknet", "ultralytics", "coco", "voc")


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
