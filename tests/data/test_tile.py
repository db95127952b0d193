"""data tile: the tile grid, the min-visible rule, the region split (no object in two splits), the trees scene."""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from edgeyolo.cli.app import main
from edgeyolo.data.formats import load_dataset, parse_yolo_labels
from edgeyolo.data.tile import (
    Rect,
    TileConfig,
    clip_boxes,
    parse_overlap,
    split_regions,
    tile_dataset,
    tile_grid,
    tile_starts,
)
from edgeyolo.errors import UsageError
from tests.conftest import REPO, SHARED, shared_path

from .tinyds import make_coco, make_ultralytics, write_voc

W, H = 300, 260
VAL_Y, GAP = 180, 20  # val: rows >= 180; train: rows < 160
SCENE = {  # name -> xyxy; what each one tests is noted
    "A": (10, 10, 30, 30),  # train, whole
    "B": (50, 150, 70, 170),  # half above the train edge (160): kept in train at 0.5, in no val tile
    "C": (90, 155, 110, 185),  # 5/30 in train, 5/30 in val: lost
    "D": (130, 170, 150, 190),  # half in val: kept in val at 0.5
    "E": (170, 200, 190, 220),  # val, whole
    "F": (210, 165, 230, 175),  # inside the gap band: nowhere
    "G": (250, 172, 270, 196),  # 16/24 in val
}


def scene(tmp_path: Path, boxes=SCENE) -> Path:
    xml = tmp_path / "src" / "scene.xml"
    write_voc(xml, tmp_path / "src" / "scene.png", [("obj", b) for b in boxes.values()], size=(W, H), seed=5)
    return xml


def labels_in_image(out: Path, split: str) -> list[tuple[float, float, float, float]]:
    """Every label of a split mapped back into source-image pixels (the tile's origin is in its name)."""
    boxes = []
    for image in sorted((out / "images" / split).glob("*.png")):
        x0, y0 = (int(v) for v in re.search(r"_x(\d+)_y(\d+)$", image.stem).groups())
        h, w = cv2.imread(str(image)).shape[:2]
        ann, issues = parse_yolo_labels(out / "labels" / split / f"{image.stem}.txt", w, h, 1)
        assert not issues
        boxes.extend((x1 + x0, y1 + y0, x2 + x0, y2 + y0) for x1, y1, x2, y2 in ann.boxes.tolist())
    return boxes


def matches(boxes, name: str) -> int:
    """How many labels are (a clipped piece of) the scene's object ``name``."""
    x1, y1, x2, y2 = SCENE[name]
    return sum(1 for b in boxes if b[0] >= x1 - 0.01 and b[2] <= x2 + 0.01 and b[1] >= y1 - 0.01 and b[3] <= y2 + 0.01)


# ------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("length,size,overlap", [(1000, 416, 64), (416, 416, 0), (300, 416, 64), (2299, 208, 48), (417, 416, 100)])
def test_tile_starts_cover_evenly_with_at_least_the_overlap(length, size, overlap):
    starts = tile_starts(length, size, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    if length <= size:
        assert starts == [0]
        return
    assert starts[-1] + size == length  # the last tile ends at the edge, none sticks out
    assert all(b - a <= size - overlap for a, b in itertools.pairwise(starts))  # neighbours overlap >= overlap
    assert len(starts) == int(np.ceil((length - overlap) / (size - overlap)))


def test_overlap_as_fraction_or_pixels():
    assert parse_overlap("0.25", 416) == 104 and parse_overlap("64", 416) == 64 and parse_overlap("64px", 416) == 64
    for bad in ("416", "-1", "x"):
        with pytest.raises(UsageError):
            parse_overlap(bad, 416)


def test_boxes_kept_or_dropped_by_visible_fraction():
    boxes = np.array([[90, 10, 110, 30], [94, 40, 104, 50], [50, 50, 60, 60]], np.float32)  # 50 %, 60 %, 100 % inside
    window = Rect(0, 0, 100, 100)
    local, keep, frac = clip_boxes(boxes, window, 0.5)
    assert keep.tolist() == [0, 1, 2] and np.allclose(frac, [0.5, 0.6, 1.0])
    assert np.allclose(local, [[90, 10, 100, 30], [94, 40, 100, 50], [50, 50, 60, 60]])
    assert clip_boxes(boxes, window, 0.55)[1].tolist() == [1, 2]
    assert clip_boxes(boxes, window, 0.7)[1].tolist() == [2]
    local, keep, _ = clip_boxes(boxes, Rect(50, 0, 150, 100), 0.5)  # window coordinates, not image coordinates
    assert keep.tolist() == [0, 1, 2] and np.allclose(local[0], [40, 10, 60, 30])


def test_train_is_the_image_minus_the_grown_val_region():
    val, train = split_regions(W, H, Rect(0, VAL_Y, W, H), GAP)
    assert val == Rect(0, 180, 300, 260) and train == [Rect(0, 0, 300, 160)]
    val, train = split_regions(400, 400, Rect(100, 100, 200, 200), 10)  # a region in the middle: four pieces
    assert train == [Rect(0, 0, 400, 90), Rect(0, 210, 400, 400), Rect(0, 90, 90, 210), Rect(210, 90, 400, 210)]
    assert all(not t.intersect(Rect(90, 90, 210, 210)).width * t.intersect(Rect(90, 90, 210, 210)).height for t in train)
    assert tile_grid(Rect(0, 0, 100, 50), 64, 16) == [Rect(0, 0, 64, 50), Rect(36, 0, 100, 50)]


# ------------------------------------------------------------------------------ the region split


def test_region_split_puts_no_object_in_two_splits(tmp_path):
    src = scene(tmp_path)
    out = tmp_path / "tiles"
    result = tile_dataset(src, out, TileConfig(size=64, overlap=16, val_below=VAL_Y, gap=GAP))
    train, val = labels_in_image(out, "train"), labels_in_image(out, "val")
    assert train and val
    assert max(b[3] for b in train) <= VAL_Y - GAP + 1e-3  # nothing of train reaches into the gap
    assert min(b[1] for b in val) >= VAL_Y - 1e-3  # nothing of val above the region
    assert {n for n in SCENE if matches(train, n)} == {"A", "B"}
    assert {n for n in SCENE if matches(val, n)} == {"D", "E", "G"}
    assert result.shared_objects == 0
    assert (result.counts["train"].objects, result.counts["val"].objects) == (2, 3)
    assert result.counts["train"].boxes == len(train) and result.counts["val"].boxes == len(val)
    # the whole val region: one image of its size with the clipped boxes
    [region] = (out / "images" / "val_region").glob("*.png")
    assert cv2.imread(str(region)).shape[:2] == (H - VAL_Y, W)
    ann, _ = parse_yolo_labels(out / "labels" / "val_region" / f"{region.stem}.txt", W, H - VAL_Y, 1)
    expected = [(130, 0, 150, 10), (170, 20, 190, 40), (250, 0, 270, 16)]
    assert np.allclose(sorted(ann.boxes.tolist()), expected, atol=0.01)
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["val_region"] == "images/val_region" and data["names"] == ["obj"]
    assert len(load_dataset(out / "data.yaml", "val_region").samples) == 1
    assert json.loads((out / "tile.json").read_text())["config"]["gap"] == GAP


def test_min_visible_changes_what_is_kept(tmp_path):
    result = tile_dataset(scene(tmp_path), tmp_path / "tiles", TileConfig(size=64, overlap=16, val_below=VAL_Y, gap=GAP, min_visible=0.6))
    train, val = labels_in_image(tmp_path / "tiles", "train"), labels_in_image(tmp_path / "tiles", "val")
    assert {n for n in SCENE if matches(train, n)} == {"A"}  # B (50 %) goes
    assert {n for n in SCENE if matches(val, n)} == {"E", "G"}  # D (50 %) goes, G (67 %) stays
    assert (result.counts["train"].objects, result.counts["val"].objects) == (1, 2)


def test_without_a_gap_an_object_on_the_line_is_reported_in_both(tmp_path):
    boxes = {"A": (10, 10, 30, 30), "S": (100, 170, 120, 190), "E": (170, 200, 190, 220)}  # S: half above row 180
    result = tile_dataset(scene(tmp_path, boxes), tmp_path / "tiles", TileConfig(size=64, overlap=16, val_below=VAL_Y))
    assert result.shared_objects == 1 and any("--gap" in n for n in result.notes)


def test_other_sources_and_splits(tmp_path):
    coco = make_coco(tmp_path / "coco")
    result = tile_dataset(coco, tmp_path / "a", TileConfig(size=32, overlap=8, val_fraction=0.5))
    assert result.names == ["cat", "dog", "bird"] and result.counts["train"].images and result.counts["val"].images
    assert all(max(cv2.imread(str(p)).shape[:2]) <= 32 for p in (tmp_path / "a" / "images").rglob("*.png"))
    yolo = make_ultralytics(tmp_path / "yolo")  # its own train and val splits are kept
    result = tile_dataset(yolo, tmp_path / "b", TileConfig(size=40, overlap=0))
    assert "val_region" not in result.counts and result.counts["val"].images == result.counts["train"].images


def test_bad_input_is_refused_and_leaves_nothing(tmp_path, capsys):
    src = scene(tmp_path)
    with pytest.raises(UsageError, match="how should the tiles be split"):
        tile_dataset(src, tmp_path / "a", TileConfig(size=64))
    with pytest.raises(UsageError, match="outside every image"):
        tile_dataset(src, tmp_path / "b", TileConfig(size=64, val_region=(400, 400, 500, 500)))
    with pytest.raises(UsageError, match="one of"):
        TileConfig(size=64, val_below=10, val_fraction=0.2)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    code = main(["data", "tile", "--src", str(src), "--out", str(tmp_path / "full"), "--val-below", "180"])
    assert code != 0 and "not an empty folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full", "src"]  # no tile folder, no staging folder


def test_cli_prints_counts_per_split(tmp_path, capsys):
    code = main(["data", "tile", "--src", str(scene(tmp_path)), "--out", str(tmp_path / "t"), "--size", "64", "--overlap", "16px",
                 "--val-below", str(VAL_Y), "--gap", str(GAP)])
    out = capsys.readouterr().out
    assert code == 0, out
    assert re.search(r"train: \d+ tiles, \d+ boxes of 2 objects", out) and re.search(r"val: \d+ tiles, \d+ boxes of 3 objects", out)
    assert "val_region: 1 image, 3 boxes of 3 objects" in out and "objects in both train and val: 0" in out


# ------------------------------------------------------------------------------ the trees scene


def run_prepare(out: Path, *extra: str) -> dict:
    shared_path("datasets", "trees")
    env = {**os.environ, "EDGEYOLO_SHARED": str(SHARED), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(["bash", str(REPO / "examples" / "trees" / "prepare.sh"), str(out), *extra],
                          capture_output=True, text=True, env=env, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "tile.json").read_text())


def test_trees_split_as_committed(tmp_path):
    """examples/trees/prepare.sh: rows >= 1854 val, a 64 px band dropped, 416 px tiles."""
    record = run_prepare(tmp_path / "trees")
    counts = record["counts"]
    assert record["config"]["val_below"] == 1854 and record["config"]["gap"] == 64 and record["config"]["size"] == 416
    assert counts["val_region"]["whole"] == 156  # the trees wholly inside the val rows
    assert (counts["train"]["images"], counts["train"]["boxes"], counts["train"]["objects"]) == (35, 635, 404)
    assert (counts["val"]["images"], counts["val"]["boxes"], counts["val"]["objects"]) == (14, 274, 159)
    assert record["shared_objects"] == 0
    region = next((tmp_path / "trees" / "images" / "val_region").glob("*.png"))
    assert cv2.imread(str(region)).shape[:2] == (2472 - 1854, 2299)


def test_trees_in_208_px_tiles(tmp_path):
    record = run_prepare(tmp_path / "trees208", "208")
    assert record["config"]["size"] == 208 and record["counts"]["train"]["images"] > 35 and record["shared_objects"] == 0
    sizes = {cv2.imread(str(p)).shape[:2] for p in (tmp_path / "trees208" / "images" / "train").glob("*.png")}
    assert max(max(s) for s in sizes) == 208
