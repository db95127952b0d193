"""Large annotated images (aerial scenes, orthomosaics, slides) cut into a YOLO training set of tiles.

A detector trained on a whole 2300 px scene letterboxed to 416 px sees 20 px crowns as 4 px dots;
cut into tiles of the training size it sees them at full resolution. Tiles of one scene are alike,
so the split is made by **region**, never by tile: a val rectangle (``val_region``, or every row
from ``val_below`` down) is tiled on its own, a band of ``gap`` px around it is left out of train,
and the rest of the image is tiled as train. No object can then lie in a train and a val tile.

Rules, shared with sliced inference (:mod:`edgeyolo.runtime.sliced` uses :func:`tile_grid`):

* A region of length L is covered by ``n = ceil((L - overlap) / (size - overlap))`` tiles spread
  evenly from edge to edge, so neighbours overlap by at least ``overlap`` px and no tile sticks
  out of its region; a region shorter than ``size`` gets one shorter tile (tiles may be smaller
  than the training size: the loader letterboxes them).
* A box is clipped to the tile and kept when at least ``min_visible`` of its area lies inside it.
  An object crossing a region's edge is clipped to the region by the same rule, since every tile
  lies inside its region. With ``min_visible`` above 0.5 an object can never be kept on both sides
  of a line; ``gap`` at least the largest object's size keeps it out of one side entirely.
* The whole val region of each image is also written as one image with its labels (split
  ``val_region``), so a model can be scored by sliced inference over the region as a whole.

Each tile is a PNG (lossless) named ``<stem>_x<X>_y<Y>.png`` after its origin in the source image.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgeyolo.data.convert import DatasetStage, find_voc_parts, read_voc, split_by_hash, yolo_label_text
from edgeyolo.data.formats import load_dataset
from edgeyolo.data.formats.common import _abs
from edgeyolo.data.types import Annotation, LabelIssue, Sample
from edgeyolo.errors import InputFileError, UsageError
from edgeyolo.model.io import read_image

TILE_SPLITS = ("train", "val", "val_region")


@dataclass(frozen=True)
class Rect:
    """A pixel rectangle [x0, x1) × [y0, y1)."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return max(self.x1 - self.x0, 0)

    @property
    def height(self) -> int:
        return max(self.y1 - self.y0, 0)

    @property
    def empty(self) -> bool:
        return self.width == 0 or self.height == 0

    def intersect(self, other: Rect) -> Rect:
        return Rect(max(self.x0, other.x0), max(self.y0, other.y0), min(self.x1, other.x1), min(self.y1, other.y1))

    def grow(self, by: int) -> Rect:
        return Rect(self.x0 - by, self.y0 - by, self.x1 + by, self.y1 + by)


def parse_overlap(value: str | float, size: int, option: str = "--overlap") -> int:
    """Overlap in pixels from ``0.2`` (a fraction of ``size``), ``64`` or ``64px``."""
    text = str(value).strip().lower()
    try:
        number = float(text[:-2]) if text.endswith("px") else float(text)
    except ValueError:
        raise UsageError(f"{option} {value!r}: expected a fraction of the tile (0.2) or pixels (64, 64px)") from None
    if not math.isfinite(number) or number < 0:
        raise UsageError(f"{option} {value!r}: must be a finite number >= 0")
    px = round(number * size) if number < 1 and not text.endswith("px") else round(number)
    if px >= size:
        raise UsageError(f"{option} {value!r} is {px} px, not less than the tile size {size}")
    return px


def tile_starts(length: int, size: int, overlap: int) -> list[int]:
    """Origins of the tiles covering [0, length): evenly spread, first at 0, last ending at length."""
    if length <= size:
        return [0]
    n = math.ceil((length - overlap) / (size - overlap))
    return [round(i * (length - size) / (n - 1)) for i in range(n)]


def tile_grid(region: Rect, size: int, overlap: int) -> list[Rect]:
    """The tiles covering ``region``, row by row (see the module doc)."""
    if region.empty:
        return []
    tiles = []
    for dy in tile_starts(region.height, size, overlap):
        for dx in tile_starts(region.width, size, overlap):
            x0, y0 = region.x0 + dx, region.y0 + dy
            tiles.append(Rect(x0, y0, min(x0 + size, region.x1), min(y0 + size, region.y1)))
    return tiles


def clip_boxes(boxes: np.ndarray, window: Rect, min_visible: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (xyxy, image pixels) seen through ``window``: (boxes in window pixels, indices kept,
    visible fraction of each kept box). A box is kept when its visible fraction is at least
    ``min_visible`` and it shows a non-empty area."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x1 = np.clip(b[:, 0], window.x0, window.x1)
    y1 = np.clip(b[:, 1], window.y0, window.y1)
    x2 = np.clip(b[:, 2], window.x0, window.x1)
    y2 = np.clip(b[:, 3], window.y0, window.y1)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    seen = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    frac = np.where(area > 0, seen / np.maximum(area, 1e-12), 0.0)
    keep = np.nonzero((seen > 0) & (frac >= min_visible - 1e-9))[0]
    local = np.stack([x1 - window.x0, y1 - window.y0, x2 - window.x0, y2 - window.y0], axis=1)[keep]
    return local.astype(np.float32), keep, frac[keep]


def split_regions(width: int, height: int, val: Rect | None, gap: int) -> tuple[Rect | None, list[Rect]]:
    """(val region, train regions) of one image: train is the image minus the val region grown by
    ``gap``, as up to four rectangles (above, below, left, right of it)."""
    image = Rect(0, 0, width, height)
    if val is None:
        return None, [image]
    region = val.intersect(image)
    if region.empty:
        region = None
    held = val.grow(gap).intersect(image)
    if held.empty:
        return region, [image]
    train = [
        Rect(0, 0, width, held.y0),
        Rect(0, held.y1, width, height),
        Rect(0, held.y0, held.x0, held.y1),
        Rect(held.x1, held.y0, width, held.y1),
    ]
    return region, [r for r in train if not r.empty]


@dataclass(frozen=True)
class TileConfig:
    """How to tile and split. ``val_region`` (x0, y0, x1, y1 pixels), ``val_below`` (a row) and
    ``val_fraction`` (whole images by a stable hash) are alternatives; with none, the source's own
    train/val splits are kept."""

    size: int = 416
    overlap: int = 0  # pixels
    min_visible: float = 0.5
    val_region: tuple[int, int, int, int] | None = None
    val_below: int | None = None
    gap: int = 0
    val_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.size < 16:
            raise UsageError(f"--size must be at least 16 px, got {self.size}")
        if not 0 <= self.overlap < self.size:
            raise UsageError(f"overlap must lie in [0, size), got {self.overlap} for size {self.size}")
        if not 0.0 <= self.min_visible <= 1.0:
            raise UsageError(f"--min-visible must lie in [0, 1], got {self.min_visible}")
        if self.gap < 0:
            raise UsageError(f"--gap must be >= 0, got {self.gap}")
        chosen = [n for n, v in (("--val-region", self.val_region), ("--val-below", self.val_below), ("--val-fraction", self.val_fraction)) if v is not None]
        if len(chosen) > 1:
            raise UsageError(f"give one of {', '.join(chosen)}, not several")
        if self.val_region is not None:
            x0, y0, x1, y1 = self.val_region
            if x1 <= x0 or y1 <= y0:
                raise UsageError(f"--val-region {x0},{y0},{x1},{y1}: expected X0,Y0,X1,Y1 with X1 > X0 and Y1 > Y0")
        if self.val_below is not None and self.val_below < 0:
            raise UsageError(f"--val-below must be >= 0, got {self.val_below}")
        if self.gap and self.val_region is None and self.val_below is None:
            raise UsageError("--gap needs a region split: --val-region or --val-below")

    @property
    def by_region(self) -> bool:
        return self.val_region is not None or self.val_below is not None

    def val_rect(self, width: int, height: int) -> Rect | None:
        if self.val_region is not None:
            return Rect(*self.val_region)
        if self.val_below is not None:
            return Rect(0, self.val_below, width, max(height, self.val_below))
        return None


def parse_region(text: str) -> tuple[int, int, int, int]:
    """``"X0,Y0,X1,Y1"`` → a tuple of four ints."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = tuple(round(float(p)) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 4:
        raise UsageError(f"--val-region {text!r}: expected four pixel values X0,Y0,X1,Y1")
    return values  # type: ignore[return-value]


@dataclass
class SplitCount:
    images: int = 0  # tiles written (one per val region for val_region)
    boxes: int = 0  # labelled boxes over all tiles (an object in two overlapping tiles counts twice)
    objects: int = 0  # distinct source objects with at least one box kept
    whole: int = 0  # of those, objects that some tile shows whole


@dataclass
class TileResult:
    out: Path
    names: list[str]
    counts: dict[str, SplitCount]
    shared_objects: int  # source objects kept in train and in val (0 with a region split and a gap)
    issues: list[LabelIssue] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def data_yaml(self) -> Path:
        return self.out / "data.yaml"


def load_tile_source(
    src: str | Path,
    names: Sequence[str] | str | Path | None = None,
    *,
    class_map: Sequence[str] | Mapping[str, str] | None = None,
    drop_unknown: bool = False,
    image_root: str | Path | None = None,
) -> tuple[dict[str, list[Sample]], list[str], list[LabelIssue], list[str]]:
    """Samples by split ("" when the source is not split), class names, issues, notes.

    VOC (an xml file, an xml folder or any layout ``data convert`` reads) goes through the VOC
    reader with its class map; a COCO json or a YOLO dataset (.yaml / .data) through
    ``load_dataset`` (its train and val splits, whichever exist)."""
    path = _abs(Path(src))
    if not path.exists():
        raise InputFileError(f"--src {path}: not found")
    if find_voc_parts(path):
        read = read_voc(path, names, class_map=class_map, drop_unknown=drop_unknown, image_root=image_root)
        return read.parts, read.names, read.issues, read.notes
    if names is not None or class_map or drop_unknown:
        raise UsageError("--names, --map and --drop-unknown apply to VOC sources only (other formats name their classes)")
    if path.suffix.lower() == ".json":
        ds = load_dataset(path, image_root=image_root)
        return {"": ds.samples}, ds.names, list(ds.issues), []
    parts: dict[str, list[Sample]] = {}
    issues: list[LabelIssue] = []
    names_found: list[str] = []
    for split in ("train", "val"):
        try:
            ds = load_dataset(path, split, image_root=image_root)
        except InputFileError as exc:
            if "split" in str(exc):
                continue
            raise
        parts[split] = ds.samples
        issues.extend(ds.issues)
        names_found = ds.names
    if not parts:
        raise InputFileError(f"{path}: neither a train nor a val split found")
    return parts, names_found, issues, []


def tile_dataset(
    src: str | Path,
    out_dir: str | Path,
    config: TileConfig,
    names: Sequence[str] | str | Path | None = None,
    *,
    class_map: Sequence[str] | Mapping[str, str] | None = None,
    drop_unknown: bool = False,
    image_root: str | Path | None = None,
) -> TileResult:
    """Tile the images of ``src`` into a YOLO dataset at ``out_dir`` (a new or empty folder)."""
    out = _abs(Path(out_dir))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not an empty folder; tiles go into a new folder")
    parts, name_list, issues, notes = load_tile_source(src, names, class_map=class_map, drop_unknown=drop_unknown, image_root=image_root)
    samples = [s for split in parts.values() for s in split]
    if not samples:
        first = f" (first problem: {issues[0]})" if issues else ""
        raise InputFileError(f"{src}: 0 images could be read{first}")
    if config.by_region:
        plan = [("", s) for s in samples]
    elif config.val_fraction is not None:
        halves = split_by_hash(samples, config.val_fraction, str(src))
        plan = [(split, s) for split in ("train", "val") for s in halves[split]]
    elif parts.get("train") and parts.get("val"):
        plan = [(split, s) for split in ("train", "val") for s in parts[split]]
    else:
        raise UsageError(
            "how should the tiles be split? give --val-below Y or --val-region X0,Y0,X1,Y1 (a region of each image "
            "is val, no object in two splits) or --val-fraction F (whole images)"
        )
    counts = {split: SplitCount() for split in TILE_SPLITS}
    objects: dict[str, set[tuple[int, int]]] = {split: set() for split in TILE_SPLITS}
    whole: dict[str, set[tuple[int, int]]] = {split: set() for split in TILE_SPLITS}
    stage = DatasetStage(out)
    try:
        used: set[str] = set()
        any_val = False
        for number, (fixed, sample) in enumerate(plan):
            image = read_image(sample.image)
            if image is None:
                issues.append(LabelIssue(Path(sample.image), None, "image unreadable (corrupt or not an image); skipped"))
                continue
            height, width = image.shape[:2]
            stem = _unique_stem(Path(sample.image).stem, used)
            ann = sample.annotation
            if fixed:
                regions = {fixed: [Rect(0, 0, width, height)]}
            else:
                val_rect, train_rects = split_regions(width, height, config.val_rect(width, height), config.gap)
                regions = {"train": train_rects, "val": [val_rect] if val_rect is not None else []}
                if val_rect is not None:
                    any_val = True
                    _write_tile(stage, "val_region", f"{stem}_region_x{val_rect.x0}_y{val_rect.y0}", image, val_rect, ann,
                                config.min_visible, number, counts, objects, whole)
            for split, rects in regions.items():
                for rect in rects:
                    for tile in tile_grid(rect, config.size, config.overlap):
                        _write_tile(stage, split, f"{stem}_x{tile.x0}_y{tile.y0}", image, tile, ann,
                                    config.min_visible, number, counts, objects, whole)
        if config.by_region and not any_val:
            raise UsageError(f"the val region {config.val_region or f'below row {config.val_below}'} lies outside every image")
        for split in ("train", "val"):
            if counts[split].images == 0:
                raise InputFileError(f"{src}: no {split} tile was written; check the region and the tile size")
        for split in TILE_SPLITS:
            counts[split].objects, counts[split].whole = len(objects[split]), len(whole[split])
        shared = len(objects["train"] & (objects["val"] | objects["val_region"]))
        record = {
            "source": str(_abs(Path(src))),
            "config": asdict(config),
            "counts": {k: asdict(v) for k, v in counts.items()},
            "shared_objects": shared,
        }
        (stage.root / "tile.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        stage.commit(name_list)
    except BaseException:
        stage.discard()
        raise
    if shared:
        notes.append(f"{shared} object(s) are kept in train and in val: use --gap (at least the largest object) or --min-visible above 0.5")
    if not counts["val_region"].images:
        del counts["val_region"]
    return TileResult(out, name_list, counts, shared, issues, notes)


def _unique_stem(stem: str, used: set[str]) -> str:
    name, i = stem, 1
    while name.lower() in used:
        i += 1
        name = f"{stem}_{i}"
    used.add(name.lower())
    return name


def _write_tile(
    stage: DatasetStage,
    split: str,
    name: str,
    image: np.ndarray,
    window: Rect,
    annotation: Annotation,
    min_visible: float,
    image_number: int,
    counts: dict[str, SplitCount],
    objects: dict[str, set[tuple[int, int]]],
    whole: dict[str, set[tuple[int, int]]],
) -> None:
    import cv2

    image_dir, label_dir = stage.split_dirs(split)
    crop = np.ascontiguousarray(image[window.y0 : window.y1, window.x0 : window.x1])
    ok, data = cv2.imencode(".png", crop)
    if not ok:
        raise InputFileError(f"could not encode the tile {name}")
    (image_dir / f"{name}.png").write_bytes(data.tobytes())
    boxes, keep, frac = clip_boxes(annotation.boxes, window, min_visible)
    kept = Annotation.of(boxes, annotation.classes[keep])
    (label_dir / f"{name}.txt").write_text(yolo_label_text(kept, window.width, window.height), encoding="utf-8")
    counts[split].images += 1
    counts[split].boxes += len(keep)
    for index, f in zip(keep.tolist(), frac.tolist()):
        objects[split].add((image_number, index))
        if f >= 1.0 - 1e-9:
            whole[split].add((image_number, index))
