from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeyolo.data.formats import (
    MSG_IMAGE_CORRUPT,
    MSG_IMAGE_MISSING,
    MSG_LABEL_ORPHAN,
    darknet_label_path,
    detect_format,
    load_dataset,
    read_image_size,
    ultralytics_label_path,
)
from edgeyolo.errors import InputFileError

from .tinyds import ITEMS, NAMES, by_stem, make_coco, make_darknet, make_ultralytics, make_voc, voc_xml, write_image


def _expect(item):
    boxes = np.array(item.boxes, np.float32).reshape(-1, 4)
    return boxes, np.array(item.classes, np.int64)


def test_every_format_loads_the_same_boxes(tmp_path):
    specs = {
        "darknet": make_darknet(tmp_path / "dn"),
        "ultralytics": make_ultralytics(tmp_path / "ul"),
        "coco": make_coco(tmp_path / "coco"),
        "voc": make_voc(tmp_path / "voc"),
    }
    for kind, spec in specs.items():
        assert detect_format(spec) == kind
        ds = load_dataset(spec, "val", names=NAMES if kind == "voc" else None)  # VOC: else sorted names
        assert ds.names == NAMES, kind
        samples = by_stem(ds)
        assert sorted(samples) == sorted(it.stem for it in ITEMS), kind
        for item in ITEMS:
            s = samples[item.stem]
            assert (s.width, s.height) == (item.width, item.height)
            boxes, classes = _expect(item)
            np.testing.assert_allclose(s.annotation.boxes, boxes, atol=1e-3, err_msg=kind)
            np.testing.assert_array_equal(s.annotation.classes, classes, err_msg=kind)
        if kind == "voc":
            assert samples["a001"].annotation.difficult.tolist() == [False, True]
        else:
            assert not any(s.annotation.difficult.any() for s in ds.samples)
        if kind == "coco":
            assert ds.category_ids == [3, 7, 11]
            assert [i.message for i in ds.issues] == ["note: dropped 1 iscrowd annotations (crowd regions are not boxes to detect)"]
            assert samples["a001"].image_id == 100
        else:
            assert ds.issues == [], kind


def test_darknet_label_rule():
    assert darknet_label_path("/d/images/x.jpg") == Path("/d/labels/x.txt")
    assert darknet_label_path("/d/JPEGImages/x.png") == Path("/d/labels/x.txt")
    assert darknet_label_path("/images/set/images/a.b.jpeg") == Path("/images/set/labels/a.b.txt")  # last one only
    assert darknet_label_path("/d/pics/x.jpg") == Path("/d/pics/x.txt")  # no images folder: beside the image
    assert darknet_label_path("/d/images.jpg") == Path("/d/images.txt")  # the file name is not a folder
    assert ultralytics_label_path("/d/images/train/x.jpg") == Path("/d/labels/train/x.txt")
    assert ultralytics_label_path("/d/JPEGImages/x.jpg") == Path("/d/JPEGImages/x.txt")


def test_darknet_paths_resolve_against_the_data_dir_then_cwd(tmp_path, monkeypatch):
    data = make_darknet(tmp_path / "repo" / "data")
    # list entries relative to the repo root, as the YOLOv3 pruning repos write them
    (data.parent / "valid.txt").write_text("".join(f"data/images/{it.stem}.jpg\n" for it in ITEMS))
    monkeypatch.chdir(tmp_path / "repo")
    ds = load_dataset(data, "val")
    assert len(ds.samples) == len(ITEMS) and not ds.issues
    monkeypatch.chdir(tmp_path)
    ds = load_dataset(data, "valid")  # the .data folder's parent is tried too
    assert len(ds.samples) == len(ITEMS)


def test_bad_label_lines_are_reported_with_file_and_line_and_skipped(tmp_path):
    data = make_darknet(tmp_path / "dn")
    label = tmp_path / "dn" / "labels" / "a002.txt"
    label.write_text(
        "2 0.375 0.541667 0.5 0.75\n"
        "3 0.5 0.5 0.1 0.1\n"
        "0 1.5 0.5 0.1 0.1\n"
        "\n"
        "0 0.5 0.5\n"
        "0 a 0.5 0.1 0.1\n"
        "1 0.5 0.5 0.1 0.1000001\n"  # within the 1e-6 tolerance? no: w/h fine, this one is valid
        "1.5 0.5 0.5 0.1 0.1\n"
        "0 0.5 0.5 0 0.1\n"
    )
    ds = load_dataset(data, "val")
    issues = [i for i in ds.issues if Path(i.path) == label]
    assert [i.line for i in issues] == [2, 3, 5, 6, 8, 9]
    assert "class 3 out of range" in issues[0].message
    assert "outside [0, 1]" in issues[1].message and "cx" in issues[1].message
    assert "expected 5 fields" in issues[2].message
    assert "non-numeric" in issues[3].message
    assert str(issues[0]).startswith(f"{label}:2: ")
    s = by_stem(ds)["a002"]
    assert s.annotation.classes.tolist() == [2, 1]  # the good lines survive
    assert len(ds.samples) == len(ITEMS)


def test_coordinate_tolerance(tmp_path):
    data = make_darknet(tmp_path / "dn")
    label = tmp_path / "dn" / "labels" / "a002.txt"
    label.write_text("0 0.5 0.5 1.0000005 0.5\n0 0.5 0.5 1.00001 0.5\n")
    ds = load_dataset(data, "val")
    assert [(i.line) for i in ds.issues] == [2]
    assert len(by_stem(ds)["a002"].annotation) == 1


def test_corrupt_and_missing_images_are_reported_not_fatal(tmp_path):
    data = make_darknet(tmp_path / "dn")
    bad = tmp_path / "dn" / "images" / "a002.jpg"
    bad.write_bytes(b"this is not a jpeg at all" * 10)
    (tmp_path / "dn" / "images" / "a003.jpg").unlink()
    ds = load_dataset(data, "val")
    assert sorted(by_stem(ds)) == ["a001", "a004"]
    messages = {Path(i.path).name: i.message for i in ds.issues}
    assert messages == {"a002.jpg": MSG_IMAGE_CORRUPT, "a003.jpg": MSG_IMAGE_MISSING}


def test_missing_label_file_means_no_objects(tmp_path):
    data = make_darknet(tmp_path / "dn")
    (tmp_path / "dn" / "labels" / "a001.txt").unlink()
    ds = load_dataset(data, "val")
    assert len(by_stem(ds)["a001"].annotation) == 0 and not ds.issues


def test_missing_dataset_and_split_raise_input_file_error(tmp_path):
    with pytest.raises(InputFileError, match="not found"):
        load_dataset(tmp_path / "nope.data")
    data = make_darknet(tmp_path / "dn")
    data.write_text("classes = 3\ntrain = train.txt\nnames = obj.names\n")
    with pytest.raises(InputFileError, match="no 'valid' split"):
        load_dataset(data, "val")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputFileError, match="unknown dataset file type"):
        load_dataset(tmp_path / "x.txt")
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{\n  'images': ")
    with pytest.raises(InputFileError, match=r"bad.json:2: not valid JSON"):
        load_dataset(bad_json)


def test_ultralytics_names_list_and_list_files(tmp_path):
    root = tmp_path / "ul"
    make_ultralytics(root, split="train")
    (root / "val.txt").write_text("".join(f"./images/train/{it.stem}.jpg\n" for it in ITEMS[:2]))
    yaml_path = root / "data.yaml"
    yaml_path.write_text("train: [images/train]\nval: val.txt\nnc: 3\nnames: [cat, dog, bird]\n")  # no 'path': the yaml's folder
    ds = load_dataset(yaml_path, "val")
    assert sorted(by_stem(ds)) == ["a001", "a002"] and ds.names == NAMES
    assert len(load_dataset(root, "train").samples) == len(ITEMS)  # a folder with data.yaml
    yaml_path.write_text("train: images/train\nnames: {0: cat, 2: bird}\n")
    ds = load_dataset(yaml_path, "train")
    assert ds.names == ["cat", "class1", "bird"]
    with pytest.raises(InputFileError, match="no 'test' split"):
        load_dataset(yaml_path, "test")


def test_voc_xml_folder_names_file_and_bad_xml(tmp_path):
    folder = tmp_path / "xmls"
    for i, item in enumerate(ITEMS[:2]):
        write_image(folder / f"{item.stem}.jpg", item.width, item.height, i)
        (folder / f"{item.stem}.xml").write_text(voc_xml(item))
    names = tmp_path / "names.txt"
    names.write_text("dog\nbird\n")  # 'cat' is not listed: its boxes are reported and skipped
    ds = load_dataset(folder, names=names)
    assert ds.names == ["dog", "bird"]
    s = by_stem(ds)
    assert s["a001"].annotation.classes.tolist() == [0]
    assert s["a002"].annotation.classes.tolist() == [1]
    [issue] = ds.issues
    assert issue.line == 10 and "'cat' is not in the names list" in issue.message  # the cat's <name> line
    assert load_dataset(folder).names == ["bird", "cat", "dog"]  # no names file: the sorted set found
    (folder / "a002.xml").write_text("<annotation>\n  <object>\n    <name>dog</oops>\n</annotation>\n")
    ds = load_dataset(folder)
    [issue] = [i for i in ds.issues if Path(i.path).name == "a002.xml"]
    assert issue.line == 3 and "malformed XML" in issue.message
    assert len(by_stem(ds)["a002"].annotation) == 0  # the image is kept, with no objects


def test_image_size_from_headers_matches_opencv(tmp_path):
    for suffix in (".jpg", ".png", ".bmp", ".webp", ".tif"):
        path = write_image(tmp_path / f"x{suffix}", 37, 21, 1)
        h, w = cv2.imread(str(path)).shape[:2]
        assert read_image_size(path) == (w, h) == (37, 21), suffix
    # a JPEG with EXIF orientation 6 (rotate 90°): OpenCV returns it rotated, and so do we
    plain = (tmp_path / "x.jpg").read_bytes()
    tiff = b"MM\x00\x2a" + struct.pack(">I", 8) + struct.pack(">H", 1) + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + b"\x00\x00\x00\x00"
    app1 = b"Exif\x00\x00" + tiff
    rotated = tmp_path / "rot.jpg"
    rotated.write_bytes(plain[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + plain[2:])
    h, w = cv2.imread(str(rotated)).shape[:2]
    assert read_image_size(rotated) == (w, h) == (21, 37)
    assert read_image_size(tmp_path / "missing.jpg") is None


def test_a_label_whose_image_is_gone_is_reported(tmp_path):
    data = make_ultralytics(tmp_path / "ul")
    gone = sorted((tmp_path / "ul" / "images" / "val").glob("*.jpg"))[0]
    gone.unlink()
    ds = load_dataset(data, "val")
    orphans = [i for i in ds.issues if i.message == MSG_LABEL_ORPHAN]
    assert [Path(i.path).name for i in orphans] == [gone.stem + ".txt"]
    assert len(ds.samples) == len(ITEMS) - 1
    assert not [i for i in load_dataset(make_ultralytics(tmp_path / "ok"), "val").issues if i.message == MSG_LABEL_ORPHAN]
