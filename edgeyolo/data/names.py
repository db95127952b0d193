"""Class names from a ``.names`` file, an Ultralytics YAML, a darknet ``.data`` or a COCO json."""
from __future__ import annotations

import json
from pathlib import Path

from edgeyolo.data.formats import read_names
from edgeyolo.errors import InputFileError


def class_names(path: str | Path) -> list[str]:
    """Names from whichever file a user points at, without loading the dataset's images."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"names/data file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(path.read_text()) or {}
        names = data.get("names")
        if isinstance(names, dict):
            return [str(names[k]) for k in sorted(names, key=int)]
        if isinstance(names, list):
            return [str(n) for n in names]
        raise InputFileError(f"{path}: no 'names' list or mapping")
    if suffix == ".data":
        for line in path.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "names":
                target = Path(value.strip())
                if not target.is_absolute() and not target.exists():
                    target = path.parent / target
                return class_names(target)
        raise InputFileError(f"{path}: no 'names=' entry")
    if suffix == ".json":
        cats = json.loads(path.read_text()).get("categories")
        if not cats:
            raise InputFileError(f"{path}: no 'categories' in this COCO json")
        return [c["name"] for c in sorted(cats, key=lambda c: c["id"])]
    return read_names(path)
