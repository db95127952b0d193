"""Sliced inference: a large image run as overlapping tiles, detections merged in image coordinates.

Letterboxing a 2300 px scene into a 416 px input shrinks 20 px objects to 4 px, below what a
stride-8 head resolves; run tile by tile they keep their size. Each tile goes through the one
contract (:meth:`Contract.preprocess` / :meth:`Contract.postprocess`, so its own NMS and its own
``max_detections``) on any runner, and the tiles follow :func:`edgeyolo.data.tile.tile_grid`, the
grid ``data tile`` trains on. Merging across the seams:

1. A detection touching an edge of its tile that is not an edge of the image may be an object cut
   by the tile. It is dropped when a detection of another tile that does not touch such an edge
   covers at least ``CONTAINED`` of it: that tile saw the object whole. Whatever the classes: a
   part of an object is often taken for another class (the head of a dog cut off by a tile edge
   came out as a cat in our tests), and the tile that sees the whole region sees any smaller
   object inside it whole as well.
2. The rest goes through the contract's NMS once more, over the union of all tiles.

An object larger than the overlap is cut in every tile that holds it; its pieces then survive step 1
and only NMS can merge them, so keep the overlap above the largest object's size.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgeyolo.contract import Contract, nms
from edgeyolo.data.tile import Rect, parse_overlap, tile_grid
from edgeyolo.errors import UsageError
from edgeyolo.runtime.base import Runner

CONTAINED = 0.6  # share of a cut box that a whole box of another tile must cover to replace it


@dataclass(frozen=True)
class Slicing:
    """Tile side and overlap in original-image pixels; ``edge`` is how close (px) a box must come to
    a tile's inner edge to count as cut (default: 2 % of the tile, at least 2 px)."""

    tile: int
    overlap: int
    edge: float = -1.0

    def __post_init__(self) -> None:
        if self.tile < 32:
            raise UsageError(f"--tile must be at least 32 px, got {self.tile}")
        if not 0 <= self.overlap < self.tile:
            raise UsageError(f"--tile-overlap must be less than the tile ({self.tile} px), got {self.overlap} px")

    @classmethod
    def of(cls, tile: int, overlap: str | float = 0.2) -> Slicing:
        """From the CLI's values: ``overlap`` a fraction of the tile (0.2) or pixels (64, 64px)."""
        if tile < 32:
            raise UsageError(f"--tile must be at least 32 px, got {tile}")
        return cls(tile, parse_overlap(overlap, tile, "--tile-overlap"))

    @property
    def edge_px(self) -> float:
        return self.edge if self.edge >= 0 else max(2.0, 0.02 * self.tile)

    def windows(self, width: int, height: int) -> list[Rect]:
        return tile_grid(Rect(0, 0, width, height), self.tile, self.overlap)


@dataclass
class SlicedDetections:
    det: np.ndarray  # float32 [M, 6]: x1, y1, x2, y2 (image pixels), score, class
    tiles: int
    seconds_inference: float


def detect_sliced(runner: Runner, contract: Contract, image_bgr: np.ndarray, slicing: Slicing) -> SlicedDetections:
    """Detections of ``runner`` on ``image_bgr`` run tile by tile and merged (see the module doc).
    An image no larger than one tile is run whole, exactly as without slicing."""
    height, width = image_bgr.shape[:2]
    windows = slicing.windows(width, height)
    per_tile, seconds = [], 0.0
    for w in windows:
        crop = image_bgr[w.y0 : w.y1, w.x0 : w.x1]
        blob, box = contract.preprocess(crop)
        det = contract.postprocess(runner.infer(blob)[0], box)
        seconds += runner.last_inference_s
        det[:, [0, 2]] += w.x0
        det[:, [1, 3]] += w.y0
        per_tile.append(det)
    if len(windows) == 1:
        return SlicedDetections(per_tile[0], 1, seconds)
    return SlicedDetections(merge_tiles(per_tile, windows, width, height, contract, slicing.edge_px), len(windows), seconds)


def cut_by_tile(det: np.ndarray, window: Rect, width: int, height: int, edge: float) -> np.ndarray:
    """Which boxes (image pixels) touch an edge of ``window`` that is not an edge of the image."""
    return (
        ((det[:, 0] <= window.x0 + edge) & (window.x0 > 0))
        | ((det[:, 1] <= window.y0 + edge) & (window.y0 > 0))
        | ((det[:, 2] >= window.x1 - edge) & (window.x1 < width))
        | ((det[:, 3] >= window.y1 - edge) & (window.y1 < height))
    )


def merge_tiles(
    per_tile: list[np.ndarray], windows: list[Rect], width: int, height: int, contract: Contract, edge: float
) -> np.ndarray:
    """One image's detections from per-tile detections already in image pixels."""
    if not any(len(d) for d in per_tile):
        return np.zeros((0, 6), np.float32)
    det = np.concatenate([d for d in per_tile if len(d)]).astype(np.float32)
    tile_of = np.concatenate([np.full(len(d), i) for i, d in enumerate(per_tile) if len(d)])
    cut = np.concatenate([cut_by_tile(d, w, width, height, edge) for d, w in zip(per_tile, windows) if len(d)])
    keep = np.ones(len(det), bool)
    whole = np.nonzero(~cut)[0]
    for i in np.nonzero(cut)[0]:
        others = whole[tile_of[whole] != tile_of[i]]
        if not len(others):
            continue
        b = det[i, :4]
        o = det[others, :4]
        iw = np.clip(np.minimum(b[2], o[:, 2]) - np.maximum(b[0], o[:, 0]), 0, None)
        ih = np.clip(np.minimum(b[3], o[:, 3]) - np.maximum(b[1], o[:, 1]), 0, None)
        area = max(float((b[2] - b[0]) * (b[3] - b[1])), 1e-12)
        if float((iw * ih).max()) / area >= CONTAINED:
            keep[i] = False
    det = det[keep]
    classes = None if contract.agnostic_nms else det[:, 5]
    order = nms(det[:, :4], det[:, 4], classes, contract.iou_threshold, contract.max_detections * len(windows))
    return det[order]
