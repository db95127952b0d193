"""Ultralytics dataset ``.yaml`` files: ``path``, ``train``, ``val``, ``test``, ``names`` (list or
``{id: name}``), ``nc``; a split is a folder of images (searched recursively), a list file or a list
of either. Labels: the last ``/images/`` component becomes ``/labels/``, suffix ``.txt``."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgeyolo.data.formats.common import _abs, _images_in, _read_list_file, _resolve, _Resolver, _split_keys
from edgeyolo.data.formats.yolo import _orphan_labels, _yolo_samples, ultralytics_label_path
from edgeyolo.data.types import DetectionDataset, LabelIssue
from edgeyolo.errors import InputFileError
from edgeyolo.model.io import IMAGE_SUFFIXES


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
