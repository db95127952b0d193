from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgeyolo.data.anchors import avg_best_iou, iou_wh, kmeans_anchors, letterbox_wh, write_anchors
from edgeyolo.data.check import check_dataset
from edgeyolo.data.formats import load_dataset
from edgeyolo.data.stats import box_stats, plot_box_stats
from edgeyolo.data.types import Annotation, DetectionDataset, Sample
from edgeyolo.errors import CfgError, DatasetError, UsageError
from edgeyolo.model.cfg import format_cfg, parse_cfg
from edgeyolo.model.zoo import ZOO_DIR

from .tinyds import make_darknet


def test_check_finds_duplicates_and_counts_classes(tmp_path):
    data = make_darknet(tmp_path / "dn")
    images = tmp_path / "dn" / "images"
    shutil.copy(images / "a001.jpg", images / "a005.jpg")  # same bytes, different name
    (tmp_path / "dn" / "labels" / "a005.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2 0.2\n")
    jpeg = (images / "a002.jpg").read_bytes()
    (images / "a006.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # header fine, data cut off
    (tmp_path / "dn" / "valid.txt").write_text("".join(f"images/{s}.jpg\n" for s in ("a001", "a002", "a003", "a004", "a005", "a006")))
    report = check_dataset(load_dataset(data, "val"))
    assert report.duplicates == [[images / "a001.jpg", images / "a005.jpg"]]
    # boxes per class: a001 cat+dog, a002 bird, a004 dog+cat+bird, a005 cat x2; a003 and a006 have none
    assert report.class_histogram == [4, 2, 2]
    assert report.images_per_class == [3, 2, 2]
    # a006's header reads fine at load time; decoding finds it broken (OpenCV refuses it, or it lacks its end marker)
    assert report.corrupt_images == [images / "a006.jpg"]
    assert [Path(i.path).name for i in report.issues if i.line is None and ("JPEG" in i.message or "unreadable" in i.message)] == ["a006.jpg"]
    assert report.num_images in (5, 6) and report.num_boxes == 8
    assert report.empty_images == report.num_images - 4 and report.boxes_per_image[3] == 1
    messages = [str(i) for i in report.issues]
    assert f"{images / 'a005.jpg'}: 1 duplicate box(es) (same class and coordinates) in this image" in messages
    assert not report.ok
    assert check_dataset(load_dataset(make_darknet(tmp_path / "clean"), "val")).ok


def test_strict_check_raises_on_any_label_issue(tmp_path):
    """The build pipeline's gate: check_dataset(path, split=..., strict=True) passes a clean dataset
    and refuses broken labels with one line naming the first problem (by file:line)."""
    data = make_darknet(tmp_path / "dn")
    clean = check_dataset(data, split="train", strict=True, decode=False)
    assert clean.num_images == 4 and clean.problems == []
    label = tmp_path / "dn" / "labels" / "a002.txt"
    label.write_text("2 0.5 0.5 0.6\n7 0.5 0.5 0.2 0.2\n0 -0.4 0.5 0.2 0.2\n")
    report = check_dataset(data, split="train", decode=False)  # not strict: a report, no error
    assert [i.line for i in report.problems] == [1, 2, 3]
    with pytest.raises(DatasetError) as info:
        check_dataset(data, split="train", strict=True, decode=False)
    message = str(info.value)
    assert message.startswith(f"{data}: 3 label issue(s) and 0 missing or corrupt image(s), first: {label}:1: expected 5 fields")
    assert "\n" not in message and info.value.exit_code != 0


def test_strict_check_ignores_loader_notes(tmp_path):
    from .tinyds import make_coco

    ann = make_coco(tmp_path / "coco")
    data = json.loads(ann.read_text())
    data["annotations"][0]["iscrowd"] = 1  # dropped with a note, not a label problem
    ann.write_text(json.dumps(data))
    report = check_dataset(ann, strict=True, decode=False)
    assert any(i.message.startswith("note: ") for i in report.issues) and report.problems == []


def test_box_stats_and_plot(tmp_path):
    ds = load_dataset(make_darknet(tmp_path / "dn"), "val")
    report = box_stats(ds)
    cat, dog, bird = report.per_class
    # cats: 26x34 and 8x10 px; dogs: 27x18 (a001) and 64x64; birds: 40x45 and 20x21
    assert cat.count == 2 and cat.width == pytest.approx((8, 17, 26), abs=1e-3) and cat.height == pytest.approx((10, 22, 34), abs=1e-3)
    assert cat.frac_lt16 == 0.5 and cat.frac_lt32 == 1.0
    assert dog.width == pytest.approx((27, 45.5, 64), abs=1e-3) and dog.frac_lt32 == 0.5
    assert bird.frac_lt16 == 0.0 and bird.frac_lt32 == 0.5
    assert report.overall.count == 6
    scaled = box_stats(ds, img_size=128)  # a004 is 64x64: its 8x10 cat becomes 16x20
    assert scaled.per_class[0].width[0] == pytest.approx(16, abs=1e-3)
    png = plot_box_stats(ds, tmp_path / "plots" / "boxes.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def _planted(rng, centers, per=400, spread=0.03):
    parts = [np.array(c) * (1 + rng.normal(0, spread, (per, 2))) for c in centers]
    return np.concatenate(parts)


def test_kmeans_recovers_planted_anchors():
    rng = np.random.default_rng(1)
    planted = np.array([[12.0, 16.0], [60.0, 40.0], [150.0, 260.0]])
    wh = _planted(rng, planted)
    anchors = kmeans_anchors(wh, 3, 416, seed=0)
    np.testing.assert_allclose(anchors, planted, rtol=0.05)
    assert np.all(np.diff(anchors[:, 0] * anchors[:, 1]) > 0)  # sorted by area
    assert avg_best_iou(wh, anchors) > 0.85
    np.testing.assert_array_equal(kmeans_anchors(wh, 3, 416, seed=0), anchors)  # deterministic
    assert iou_wh(np.array([[10, 20]]), np.array([[20, 10], [10, 20]])).tolist() == [[pytest.approx(1 / 3), 1.0]]
    with pytest.raises(UsageError, match="distinct box shapes"):
        kmeans_anchors(np.array([[5.0, 5.0]] * 10), 3, 416)


def test_letterbox_scaling():
    ann = Annotation.of([[0, 0, 100, 50]], [0])
    ds = DetectionDataset([Sample(Path("x.jpg"), "x", 800, 400, ann), Sample(Path("y.jpg"), "y", 200, 400, ann)], ["a"])
    np.testing.assert_allclose(letterbox_wh(ds, 416), [[52, 26], [104, 52]])


def test_write_anchors_into_a_cfg(tmp_path):
    cfg = parse_cfg(ZOO_DIR / "edgeyolo-mobile.cfg")
    anchors = np.array([[5.24, 7.0], [11, 14], [20, 25], [40, 38], [70, 90], [160, 150.55]])
    new = write_anchors(cfg, anchors)
    path = tmp_path / "new.cfg"
    path.write_text(format_cfg(new))
    again = parse_cfg(path)
    for head, old in zip(again.yolo_layers, cfg.yolo_layers):
        np.testing.assert_allclose(head.anchors, np.round(anchors, 1))
        assert head.mask == old.mask and head.classes == old.classes
    assert "anchors=5.2,7, 11,14, 20,25, 40,38, 70,90, 160,150.6" in format_cfg(new)
    assert len(cfg.layers) == len(again.layers)
    with pytest.raises(CfgError, match="masks use 6 anchors"):
        write_anchors(cfg, anchors[:5].tolist() + [[1, 1], [2, 2], [3, 3]])
    with pytest.raises(CfgError, match="refers to anchor 5"):
        write_anchors(cfg, anchors[:5])
