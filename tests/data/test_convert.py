from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from edgeyolo.data.convert import coco_to_yolo, oxfordhand_to_yolo, voc_to_yolo, yolo_to_coco
from edgeyolo.data.formats import MSG_IMAGE_CORRUPT, load_dataset
from edgeyolo.errors import InputFileError, UsageError

from .tinyds import ITEMS, NAMES, Item, by_stem, make_coco, make_darknet, make_voc, write_image


def _boxes_by_stem(ds):
    return {stem: (s.annotation.boxes, s.annotation.classes) for stem, s in by_stem(ds).items()}


def test_voc_to_yolo_to_coco_round_trip_keeps_every_box(tmp_path):
    voc = make_voc(tmp_path / "voc", splits={"train": ["a001", "a002"], "val": ["a003", "a004"]})
    names_file = tmp_path / "names.txt"
    names_file.write_text("\n".join(NAMES))
    out = tmp_path / "yolo"
    result = voc_to_yolo(voc, out, names_file, keep_difficult=True)
    assert result.issues == [] and result.notes == []
    assert result.images == {"train": 2, "val": 2} and result.boxes == {"train": 3, "val": 3}
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["names"] == NAMES and data["nc"] == 3 and data["train"] == "images/train" and data["val"] == "images/val"
    assert (out / "images" / "train" / "a001.jpg").is_file() and (out / "labels" / "val" / "a003.txt").read_text() == ""

    truth = {it.stem: it for it in ITEMS}
    coco_boxes = {}
    for split in ("train", "val"):
        ds = load_dataset(out / "data.yaml", split)
        assert not ds.issues
        out_json = tmp_path / f"{split}.json"
        yolo_to_coco(ds, out_json)
        from pycocotools.coco import COCO

        api = COCO(str(out_json))  # loadable by the reference COCO API
        assert len(api.getAnnIds()) == sum(len(truth[Path(s.image).stem].boxes) for s in ds.samples)
        back = load_dataset(out_json)
        assert back.names == NAMES and not back.issues
        coco_boxes.update(_boxes_by_stem(back))
    for stem, item in truth.items():
        boxes, classes = coco_boxes[stem]
        np.testing.assert_allclose(boxes, np.array(item.boxes, np.float32).reshape(-1, 4), atol=1.0)
        assert classes.tolist() == item.classes


def test_voc_difficult_boxes_are_dropped_by_default(tmp_path):
    voc = make_voc(tmp_path / "voc", splits={"train": ["a001", "a002"], "val": ["a003", "a004"]})
    result = voc_to_yolo(voc, tmp_path / "yolo", NAMES)
    assert result.notes == ["dropped 1 difficult boxes (keep them with keep_difficult / --keep-difficult)"]
    ds = load_dataset(tmp_path / "yolo" / "data.yaml", "train")
    a001 = by_stem(ds)["a001"].annotation
    np.testing.assert_allclose(a001.boxes, [ITEMS[0].boxes[0]], atol=1e-3)  # the difficult dog is gone
    # kept: an ordinary box (YOLO labels have no difficult flag)
    voc_to_yolo(voc, tmp_path / "yolo2", NAMES, keep_difficult=True)
    a001 = by_stem(load_dataset(tmp_path / "yolo2" / "data.yaml", "train"))["a001"].annotation
    assert len(a001) == 2 and not a001.difficult.any()


def test_voc_xml_folder_is_split_by_stable_hash_and_bad_data_is_reported(tmp_path):
    voc = make_voc(tmp_path / "voc")
    (voc / "ImageSets" / "Main" / "val.txt").unlink()
    (voc / "ImageSets" / "Main").rmdir()
    (voc / "JPEGImages" / "a002.jpg").write_bytes(b"\x00garbage")
    xml = voc / "Annotations" / "a004.xml"
    xml.write_text(xml.read_text().replace("<xmin>21</xmin>", "<xmin>twenty</xmin>", 1))
    result = voc_to_yolo(voc, tmp_path / "yolo", val_fraction=0.5)
    assert {(Path(i.path).name, i.message) for i in result.issues if i.line is None} == {("a002.jpg", MSG_IMAGE_CORRUPT)}
    [bad] = [i for i in result.issues if i.line is not None]
    assert Path(bad.path).name == "a004.xml" and "non-numeric <bndbox>" in bad.message
    assert sum(result.images.values()) == 3
    again = voc_to_yolo(voc, tmp_path / "yolo_again", val_fraction=0.5)
    assert again.images == result.images  # the split is deterministic


def test_coco_to_yolo_keeps_every_non_crowd_box(tmp_path):
    coco = make_coco(tmp_path / "coco")
    out = tmp_path / "yolo"
    result = coco_to_yolo(coco, None, out, split="val")
    assert result.notes == ["dropped 1 iscrowd annotations (crowd regions are not boxes to detect)"]
    assert result.boxes == {"val": sum(len(it.boxes) for it in ITEMS)} and result.issues == []
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data["coco_category_ids"] == [3, 7, 11] and data["names"] == NAMES
    ds = load_dataset(out / "data.yaml", "val")
    assert ds.category_ids == [3, 7, 11]
    got = _boxes_by_stem(ds)
    for it in ITEMS:
        np.testing.assert_allclose(got[it.stem][0], np.array(it.boxes, np.float32).reshape(-1, 4), atol=1e-3)
        assert got[it.stem][1].tolist() == it.classes
    # back to COCO: the original category ids
    back = json.loads(yolo_to_coco(ds, tmp_path / "back.json").out.read_text())
    assert sorted(c["id"] for c in back["categories"]) == [3, 7, 11]
    assert {a["category_id"] for a in back["annotations"]} == {3, 7, 11}


def test_coco_explicit_image_root_and_name_conflict(tmp_path):
    coco = make_coco(tmp_path / "coco")
    moved = tmp_path / "elsewhere"
    os.rename(tmp_path / "coco" / "images", moved)
    assert len(load_dataset(coco).samples) == 0  # images not found: reported, not fatal
    result = coco_to_yolo(coco, moved, tmp_path / "yolo")  # json named 'annotations': split defaults to train
    assert result.images == {"train": len(ITEMS)}
    voc = make_voc(tmp_path / "voc", splits={"train": ["a001", "a002"], "val": ["a003"]})
    with pytest.raises(UsageError, match="lists classes"):
        voc_to_yolo(voc, tmp_path / "yolo", ["bird", "cat", "dog"])


def test_images_are_hard_linked_or_copied(tmp_path):
    coco = make_coco(tmp_path / "coco")
    coco_to_yolo(coco, None, tmp_path / "linked", split="val")
    coco_to_yolo(coco, None, tmp_path / "copied", split="val", link=False)
    src = tmp_path / "coco" / "images" / "a001.jpg"
    linked, copied = tmp_path / "linked" / "images" / "val" / "a001.jpg", tmp_path / "copied" / "images" / "val" / "a001.jpg"
    assert linked.read_bytes() == copied.read_bytes() == src.read_bytes()
    assert os.path.samefile(src, linked) and not os.path.samefile(src, copied)
    assert not list((tmp_path / "linked").rglob("*.tmp"))


def test_oxfordhand_darknet_layout(tmp_path):
    root = tmp_path / "oxfordhand"
    hands = [Item(f"VOC2007_{i}", 60, 40, [(5 + i, 5, 25 + i, 30)], [0], [False]) for i in range(1, 4)]
    make_darknet(root, hands)
    (root / "obj.data").rename(root / "oxfordhand.data")
    (root / "oxfordhand.names").write_text("hand\n")
    (root / "oxfordhand.data").write_text("classes= 1\ntrain=train.txt\nvalid=valid.txt\nnames=oxfordhand.names\n")
    (root / "train.txt").write_text("".join(f"images/{h.stem}.jpg\n" for h in hands[:2]))
    (root / "valid.txt").write_text(f"images/{hands[2].stem}.jpg\n")
    (root / "labels" / "VOC2007_1.txt").write_text("0 0.25 0.4 0.3 0.6\n0 1.3 0.4 0.3 0.6\n")
    result = oxfordhand_to_yolo(root, tmp_path / "out")
    assert result.names == ["hand"] and result.images == {"train": 2, "val": 1}
    [issue] = result.issues
    assert issue.line == 2 and Path(issue.path).name == "VOC2007_1.txt"
    assert (tmp_path / "out" / "labels" / "train" / "VOC2007_1.txt").read_text().count("\n") == 1


def test_oxfordhand_mat_layout(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    root = tmp_path / "hand_dataset"
    for split, folder in (("training_dataset", "training_data"), ("validation_dataset", "validation_data")):
        base = root / split / folder
        write_image(base / "images" / "hand_1.jpg", 80, 60, 3)
        (base / "annotations").mkdir(parents=True)
        # two hands: an axis-aligned one and a rotated one; corners are 1-based [row, col]
        boxes = np.empty((1, 2), dtype=object)
        boxes[0, 0] = {"a": np.array([[11.0, 21.0]]), "b": np.array([[11.0, 41.0]]), "c": np.array([[31.0, 41.0]]), "d": np.array([[31.0, 21.0]])}
        boxes[0, 1] = {"a": np.array([[5.0, 60.0]]), "b": np.array([[15.0, 70.0]]), "c": np.array([[25.0, 60.0]]), "d": np.array([[15.0, 50.0]])}
        scipy_io.savemat(str(base / "annotations" / "hand_1.mat"), {"boxes": boxes})
    write_image(root / "training_dataset" / "training_data" / "images" / "hand_2.jpg", 80, 60, 4)
    (root / "training_dataset" / "training_data" / "annotations" / "hand_2.mat").write_bytes(b"not a mat file")
    result = oxfordhand_to_yolo(root, tmp_path / "out")
    assert result.images == {"train": 1, "val": 1} and result.boxes == {"train": 2, "val": 2}
    [issue] = result.issues
    assert Path(issue.path).name == "hand_2.mat" and "unreadable hand annotation" in issue.message
    ds = load_dataset(tmp_path / "out" / "data.yaml", "val")
    np.testing.assert_allclose(ds.samples[0].annotation.boxes, [[20, 10, 40, 30], [49, 4, 69, 24]], atol=1e-3)


def test_oxfordhand_unknown_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="not an Oxford hand dataset"):
        oxfordhand_to_yolo(tmp_path / "empty", tmp_path / "out")
