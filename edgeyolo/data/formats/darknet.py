"""Darknet ``.data`` files: ``classes``, ``train``, ``valid``, ``names`` keys; the splits are list files
of image paths (or folders); relative paths are tried against the ``.data`` file's folder, then the
current directory, then the ``.data`` folder's parents. Labels are found by darknet's rule
(:func:`~edgeyolo.data.formats.yolo.darknet_label_path`)."""
from __future__ import annotations

from pathlib import Path

from edgeyolo.data.formats.common import _images_in, _read_list_file, _resolve, _Resolver, _split_keys, read_names
from edgeyolo.data.formats.yolo import _yolo_samples, darknet_label_path
from edgeyolo.data.types import DetectionDataset, LabelIssue
from edgeyolo.errors import InputFileError


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
