"""Tiny synthetic datasets: one set of images and boxes written in every supported format."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

NAMES = ["cat", "dog", "bird"]


@dataclass
class Item:
    stem: str
    width: int
    height: int
    boxes: list[tuple[int, int, int, int]]  # xyxy, 0-based continuous pixels (integers)
    classes: list[int]
    difficult: list[bool]


ITEMS = [
    Item("a001", 64, 48, [(4, 6, 30, 40), (33, 2, 60, 20)], [0, 1], [False, True]),
    Item("a002", 80, 60, [(10, 10, 50, 55)], [2], [False]),
    Item("a003", 50, 70, [], [], []),
    Item("a004", 64, 64, [(0, 0, 64, 64), (20, 20, 28, 30), (40, 41, 60, 62)], [1, 0, 2], [False, False, False]),
]


def write_image(path: Path, width: int, height: int, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), image)
    return path


def yolo_lines(item: Item) -> str:
    out = []
    for (x1, y1, x2, y2), c in zip(item.boxes, item.classes):
        out.append(f"{c} {(x1 + x2) / 2 / item.width:.6f} {(y1 + y2) / 2 / item.height:.6f} "
                   f"{(x2 - x1) / item.width:.6f} {(y2 - y1) / item.height:.6f}")
    return "".join(line + "\n" for line in out)


def make_darknet(root: Path, items=ITEMS) -> Path:
    for i, item in enumerate(items):
        write_image(root / "images" / f"{item.stem}.jpg", item.width, item.height, i)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"{item.stem}.txt").write_text(yolo_lines(item))
    (root / "valid.txt").write_text("".join(f"images/{it.stem}.jpg\n" for it in items))
    (root / "train.txt").write_text("".join(f"images/{it.stem}.jpg\n" for it in items))
    (root / "obj.names").write_text("\n".join(NAMES) + "\n")
    data = root / "obj.data"
    data.write_text(f"classes = {len(NAMES)}\ntrain = train.txt\nvalid = valid.txt\nnames = obj.names\nbackup = backup/\n")
    return data


def make_ultralytics(root: Path, items=ITEMS, split: str = "val") -> Path:
    for i, item in enumerate(items):
        write_image(root / "images" / split / f"{item.stem}.jpg", item.width, item.height, i)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split / f"{item.stem}.txt").write_text(yolo_lines(item))
    path = root / "data.yaml"
    names = "\n".join(f"  {i}: {n}" for i, n in enumerate(NAMES))
    path.write_text(f"path: {root}\ntrain: images/{split}\nval: images/{split}\nnames:\n{names}\n")
    return path


def make_coco(root: Path, items=ITEMS, crowd: bool = True) -> Path:
    images, anns = [], []
    cat_ids = [3, 7, 11]  # non-contiguous on purpose
    aid = 1
    for i, item in enumerate(items):
        write_image(root / "images" / f"{item.stem}.jpg", item.width, item.height, i)
        images.append({"id": 100 + i, "file_name": f"{item.stem}.jpg", "width": item.width, "height": item.height})
        for (x1, y1, x2, y2), c in zip(item.boxes, item.classes):
            anns.append({"id": aid, "image_id": 100 + i, "category_id": cat_ids[c], "bbox": [x1, y1, x2 - x1, y2 - y1],
                         "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
            aid += 1
    if crowd:
        anns.append({"id": aid, "image_id": 100, "category_id": 3, "bbox": [1, 1, 10, 10], "area": 100, "iscrowd": 1})
    cats = [{"id": cid, "name": n} for cid, n in zip(reversed(cat_ids), reversed(NAMES))]  # unsorted on purpose
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def voc_xml(item: Item, filename: str | None = None) -> str:
    objs = []
    for (x1, y1, x2, y2), c, d in zip(item.boxes, item.classes, item.difficult):
        objs.append(
            f"  <object>\n    <name>{NAMES[c]}</name>\n    <pose>Unspecified</pose>\n    <truncated>0</truncated>\n"
            f"    <difficult>{int(d)}</difficult>\n    <bndbox>\n      <xmin>{x1 + 1}</xmin>\n      <ymin>{y1 + 1}</ymin>\n"
            f"      <xmax>{x2 + 1}</xmax>\n      <ymax>{y2 + 1}</ymax>\n    </bndbox>\n  </object>\n"
        )
    return (
        f"<annotation>\n  <folder>VOC</folder>\n  <filename>{filename or item.stem + '.jpg'}</filename>\n"
        f"  <size>\n    <width>{item.width}</width>\n    <height>{item.height}</height>\n    <depth>3</depth>\n  </size>\n"
        + "".join(objs) + "</annotation>\n"
    )


def make_voc(root: Path, items=ITEMS, splits=None) -> Path:
    splits = splits or {"val": [it.stem for it in items]}
    for i, item in enumerate(items):
        write_image(root / "JPEGImages" / f"{item.stem}.jpg", item.width, item.height, i)
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{item.stem}.xml").write_text(voc_xml(item))
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for split, stems in splits.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(s + "\n" for s in stems))
    return root


def by_stem(ds):
    return {Path(s.image).stem: s for s in ds.samples}


def voc_object(name: str, box: tuple[int, int, int, int]) -> str:
    x1, y1, x2, y2 = box
    return (
        f"  <object>\n    <name>{name}</name>\n    <difficult>0</difficult>\n    <bndbox>\n"
        f"      <xmin>{x1 + 1}</xmin>\n      <ymin>{y1 + 1}</ymin>\n      <xmax>{x2 + 1}</xmax>\n      <ymax>{y2 + 1}</ymax>\n"
        "    </bndbox>\n  </object>\n"
    )


def write_voc(xml: Path, image: Path | None, objects: list[tuple[str, tuple[int, int, int, int]]], size=(64, 48), seed=0) -> None:
    """One VOC xml (and its image, unless None) with the given (class, xyxy) objects."""
    xml.parent.mkdir(parents=True, exist_ok=True)
    if image is not None:
        write_image(image, size[0], size[1], seed)
    name = image.name if image is not None else f"{xml.stem}.jpg"
    body = "".join(voc_object(n, b) for n, b in objects)
    xml.write_text(
        f"<annotation>\n  <filename>{name}</filename>\n  <size>\n    <width>{size[0]}</width>\n"
        f"    <height>{size[1]}</height>\n    <depth>3</depth>\n  </size>\n{body}</annotation>\n"
    )
