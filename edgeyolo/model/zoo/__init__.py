"""Named model definitions: edgeyolo's own cfgs ship with the package; the darknet originals
(yolov3, yolov3-spp, yolov3-tiny, yolov4, yolov4-tiny) are found in ``$EDGEYOLO_DARKNET_CFG_DIR``."""
from __future__ import annotations

import os
from pathlib import Path

from edgeyolo.errors import InputFileError

ZOO_DIR = Path(__file__).resolve().parent
OWN = ("edgeyolo-res", "edgeyolo-mobile")
DARKNET = ("yolov3", "yolov3-spp", "yolov3-tiny", "yolov4", "yolov4-tiny")
DEFAULT = "edgeyolo-res"
# edgeyolo-res trained on the synthetic set's defaults (``edgeyolo data synth``): the demo build's start.
# Its safetensors metadata holds the command, seed, data and measured mAP (``edgeyolo.demo.*`` keys,
# written by examples/demo/make_checkpoint.py).
DEMO_CHECKPOINT = ZOO_DIR / "edgeyolo-res-synth.safetensors"


def demo_checkpoint() -> Path:
    """The trained demo checkpoint that ships with the package."""
    if not DEMO_CHECKPOINT.is_file():
        raise InputFileError(
            f"the demo checkpoint {DEMO_CHECKPOINT.name} is missing from this install ({ZOO_DIR}); "
            "reinstall edgeyolo, or give --cfg and --weights"
        )
    return DEMO_CHECKPOINT


def darknet_cfg_dir() -> Path | None:
    env = os.environ.get("EDGEYOLO_DARKNET_CFG_DIR")
    return Path(env) if env else None


def resolve_cfg(name_or_path: str | Path) -> Path:
    """A cfg path as given, or the file behind a zoo name."""
    path = Path(name_or_path)
    if path.suffix == ".cfg" or path.exists() or os.sep in str(name_or_path):
        if not path.exists():
            raise InputFileError(f"cfg file not found: {path}")
        return path
    name = str(name_or_path)
    if name in OWN:
        return ZOO_DIR / f"{name}.cfg"
    if name in DARKNET:
        folder = darknet_cfg_dir()
        if folder is None or not (folder / f"{name}.cfg").exists():
            raise InputFileError(
                f"'{name}' is a darknet cfg that does not ship with edgeyolo; pass its path with --cfg "
                "or point EDGEYOLO_DARKNET_CFG_DIR at a folder holding it"
            )
        return folder / f"{name}.cfg"
    raise InputFileError(f"cfg not found: '{name}' is neither a file nor a zoo name ({', '.join(OWN + DARKNET)})")


def names() -> list[str]:
    return list(OWN + DARKNET)
