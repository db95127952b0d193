"""The synthetic dataset generator: layout, labels, tight boxes, determinism, overwrite rules, CLI."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import typer
import yaml
from typer.testing import CliRunner

from edgeyolo.cli.synth import synth
from edgeyolo.data.synth import (
    CLASS_NAMES,
    MAX_CLASSES,
    MIN_VISIBLE,
    _place_objects,
    _render_shape,
    make_synthetic,
    render_image,
    verify_synthetic,
)
from edgeyolo.errors import InputFileError, UsageError

SMALL = {"classes": 12, "train": 40, "val": 10, "img_size": 256, "seed": 0}


def _files(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "data.yaml"  # data.yaml holds the absolute folder path
    }


def _labels(root: Path, split: str) -> list[list[tuple[int, float, float, float, float]]]:
    out = []
    for path in sorted((root / "labels" / split).glob("*.txt")):
        rows = []
        for line in path.read_text().splitlines():
            fields = line.split()
            assert len(fields) == 5, f"{path}: {line!r}"
            assert all(len(f.split(".")[1]) == 6 for f in fields[1:]), f"{path}: not 6 decimals: {line!r}"
            rows.append((int(fields[0]), *map(float, fields[1:])))
        out.append(rows)
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    return out, make_synthetic(out, **SMALL)


def test_layout_and_data_yaml(dataset) -> None:
    out, summary = dataset
    for split, n in (("train", 40), ("val", 10)):
        images = sorted(p.name for p in (out / "images" / split).iterdir())
        labels = sorted(p.name for p in (out / "labels" / split).iterdir())
        assert images == [f"{i:06d}.png" for i in range(n)]
        assert labels == [f"{i:06d}.txt" for i in range(n)]
        img = cv2.imread(str(out / "images" / split / "000000.png"), cv2.IMREAD_UNCHANGED)
        assert img.shape == (256, 256, 3) and img.dtype == np.uint8
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert data == {
        "path": str(out.resolve()),
        "train": "images/train",
        "val": "images/val",
        "nc": 12,
        "names": dict(enumerate(CLASS_NAMES[:12])),
    }
    manifest = json.loads((out / "synth.json").read_text())
    assert manifest["complete"] is True
    assert {k: manifest["params"][k] for k in SMALL} == SMALL
    assert len(manifest["labels"]) == 50 and len(manifest["images"]) == 50
    assert summary.images == {"train": 40, "val": 10}
    assert summary.data_yaml == out / "data.yaml" and summary.manifest == out / "synth.json"
    assert sum(summary.per_class) == summary.total_objects == sum(summary.objects.values())
    assert summary.mean_objects == pytest.approx(summary.total_objects / 50)
    assert 0.0 <= summary.frac_lt16 <= summary.frac_lt32 <= 1.0
    assert verify_synthetic(out) == []


def test_labels_parse_and_are_in_range(dataset) -> None:
    out, summary = dataset
    counts = {}
    for split in ("train", "val"):
        per_image = _labels(out, split)
        assert all(1 <= len(rows) <= 15 for rows in per_image)
        counts[split] = sum(len(rows) for rows in per_image)
        for rows in per_image:
            for cls, cx, cy, w, h in rows:
                assert 0 <= cls < 12
                assert all(0.0 < v <= 1.0 for v in (cx, cy, w, h))
                assert cx - w / 2 >= -1e-6 and cx + w / 2 <= 1 + 1e-6
                assert cy - h / 2 >= -1e-6 and cy + h / 2 <= 1 + 1e-6
    assert counts == summary.objects


def test_labels_are_the_rendered_boxes(dataset) -> None:
    out, _ = dataset
    img, boxes = render_image(3, "val", classes=12, seed=0)
    assert np.array_equal(img, cv2.imread(str(out / "images" / "val" / "000003.png")))
    rows = _labels(out, "val")[3]
    assert len(rows) == len(boxes)
    for (cls, cx, cy, w, h), (c, x0, y0, x1, y1) in zip(rows, boxes):
        assert cls == c
        assert (cx - w / 2) * 256 == pytest.approx(x0, abs=1e-3) and (cx + w / 2) * 256 == pytest.approx(x1, abs=1e-3)
        assert (cy - h / 2) * 256 == pytest.approx(y0, abs=1e-3) and (cy + h / 2) * 256 == pytest.approx(y1, abs=1e-3)


def test_every_class_appears(dataset) -> None:
    out, summary = dataset
    assert all(n > 0 for n in summary.per_class), summary.per_class
    seen = {row[0] for split in ("train", "val") for rows in _labels(out, split) for row in rows}
    assert seen == set(range(12))


def test_every_class_shape_renders_at_all_sizes() -> None:
    assert MAX_CLASSES >= 20 and len(set(CLASS_NAMES)) == MAX_CLASSES
    rng = np.random.default_rng(0)
    for name in CLASS_NAMES:
        for size in (6.0, 15.0, 115.0):
            alpha = _render_shape(name, size, rng)
            assert alpha is not None, name
            mask = alpha >= 0.5
            h, w = mask.shape
            assert 3 <= max(h, w) <= size * 1.6 + 4, (name, size, mask.shape)


def test_deterministic_and_independent_of_workers(dataset, tmp_path: Path) -> None:
    out, _ = dataset
    again = make_synthetic(tmp_path / "w2", **SMALL, workers=2)
    assert _files(tmp_path / "w2") == _files(out)
    assert again.per_class == dataset[1].per_class
    # re-running into the same folder with the same parameters is allowed and changes nothing
    make_synthetic(tmp_path / "w2", **SMALL)
    assert _files(tmp_path / "w2") == _files(out)


def test_different_seeds_differ() -> None:
    a, boxes_a = render_image(0, seed=0)
    b, boxes_b = render_image(0, seed=1)
    assert not np.array_equal(a, b) and boxes_a != boxes_b
    assert not np.array_equal(render_image(0, "train")[0], render_image(0, "val")[0])
    assert not np.array_equal(render_image(0)[0], render_image(1)[0])


def test_scale_statistics_on_200_images() -> None:
    sizes, per_image = [], []
    for i in range(200):
        _, boxes = render_image(i, seed=0, img_size=256)
        per_image.append(len(boxes))
        sizes += [max(x1 - x0, y1 - y0) for _, x0, y0, x1, y1 in boxes]
    sizes = np.array(sizes)
    assert (sizes < 16).mean() >= 0.20
    assert (sizes >= 64).mean() >= 0.10  # and large ones too
    assert sizes.min() >= 4 and sizes.max() <= 0.45 * 256 * 1.5
    assert min(per_image) >= 1 and max(per_image) <= 15 and 5 <= np.mean(per_image) <= 10


def test_objects_keep_half_their_pixels_visible() -> None:
    for i in range(40):
        placed, owner = _place_objects(np.random.default_rng(i), 256, 12)
        for k, obj in enumerate(placed):
            h, w = obj.mask.shape
            visible = int((owner[obj.y0 : obj.y0 + h, obj.x0 : obj.x0 + w] == k).sum())
            assert visible >= MIN_VISIBLE * obj.mask.sum()
        assert int((owner >= 0).sum()) == sum(int((owner == k).sum()) for k in range(len(placed)))


def test_boxes_are_tight_on_the_rendered_pixels() -> None:
    """The difference to the same image rendered without objects shows each object's pixels."""
    checked = 0
    for i in range(40):
        img, boxes = render_image(i)
        bare, _ = render_image(i, draw_objects=False)
        diff = np.abs(img.astype(np.int16) - bare.astype(np.int16)).max(2)
        m = 4
        for k, (_, x0, y0, x1, y1) in enumerate(boxes):
            others = [b for j, b in enumerate(boxes) if j != k]
            if any(b[1] < x1 + 2 * m and b[3] > x0 - 2 * m and b[2] < y1 + 2 * m and b[4] > y0 - 2 * m for b in others):
                continue  # overlapping or near another object: its pixels are ambiguous
            wx0, wy0, wx1, wy1 = max(0, x0 - m), max(0, y0 - m), min(256, x1 + m), min(256, y1 + m)
            window = diff[wy0:wy1, wx0:wx1]
            peak = diff[y0:y1, x0:x1].max()
            assert peak >= 20, "object barely differs from its background"
            ys, xs = np.nonzero(window > 0.5 * peak)  # the object's solid pixels stay inside the box
            assert wx0 + xs.min() >= x0 - 1 and wx0 + xs.max() + 1 <= x1 + 1
            assert wy0 + ys.min() >= y0 - 1 and wy0 + ys.max() + 1 <= y1 + 1
            inside = diff[y0:y1, x0:x1] > 6  # and every border row / column of the box touches the object
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            checked += 1
    assert checked >= 40


def test_refuses_a_folder_made_otherwise(dataset, tmp_path: Path) -> None:
    out = tmp_path / "ds"
    make_synthetic(out, classes=4, train=6, val=2, seed=0)
    with pytest.raises(UsageError, match="seed 0 -> 1"):
        make_synthetic(out, classes=4, train=6, val=2, seed=1)
    with pytest.raises(UsageError, match="--overwrite"):
        make_synthetic(out, classes=4, train=3, val=2, seed=0)
    summary = make_synthetic(out, classes=4, train=3, val=2, seed=1, overwrite=True)
    assert summary.images == {"train": 3, "val": 2}
    assert sorted(p.name for p in (out / "images" / "train").iterdir()) == ["000000.png", "000001.png", "000002.png"]
    assert len(list((out / "labels" / "train").iterdir())) == 3
    assert verify_synthetic(out) == []
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        make_synthetic(foreign, classes=2, train=2, val=1)
    make_synthetic(foreign, classes=2, train=2, val=1, overwrite=True)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_verify_detects_a_changed_label(tmp_path: Path) -> None:
    out = tmp_path / "ds"
    make_synthetic(out, classes=3, train=3, val=1)
    (out / "labels" / "train" / "000001.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    assert verify_synthetic(out) == ["labels/train/000001.txt: content differs from the recorded sha256"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=f"1..{MAX_CLASSES}"):
        make_synthetic(tmp_path / "a", classes=MAX_CLASSES + 1, train=2, val=1)
    with pytest.raises(UsageError):
        make_synthetic(tmp_path / "a", train=0, val=1)
    with pytest.raises(UsageError):
        make_synthetic(tmp_path / "a", train=2, val=1, workers=0)
    with pytest.raises(InputFileError):
        make_synthetic(tmp_path / "a", train=2, val=1, backgrounds=tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputFileError, match="no images"):
        make_synthetic(tmp_path / "a", train=2, val=1, backgrounds=tmp_path / "empty")


def test_all_classes_and_photo_backgrounds(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(photos / f"p{i}.jpg"), img)
    out = tmp_path / "ds"
    summary = make_synthetic(out, classes=MAX_CLASSES, train=30, val=4, seed=3, backgrounds=photos)
    assert all(n > 0 for n in summary.per_class), summary.per_class
    params = json.loads((out / "synth.json").read_text())["params"]
    assert params["backgrounds"] == str(photos.resolve()) and params["backgrounds_fingerprint"]
    again = make_synthetic(tmp_path / "again", classes=MAX_CLASSES, train=30, val=4, seed=3, backgrounds=photos)
    assert _files(out) == _files(tmp_path / "again") and again.per_class == summary.per_class


def test_cli(tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(synth)
    runner = CliRunner()
    out = tmp_path / "cli"
    args = ["--out", str(out), "--classes", "3", "--train", "4", "--val", "2", "--img-size", "128", "--seed", "5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 4 train + 2 val images" in result.output and "< 16 px" in result.output
    assert yaml.safe_load((out / "data.yaml").read_text())["nc"] == 3
    assert len(list((out / "images" / "train").glob("*.png"))) == 4
    result = runner.invoke(app, [*args[:-1], "6"])
    assert isinstance(result.exception, UsageError)
    result = runner.invoke(app, [*args[:-1], "6", "--overwrite", "--workers", "2"])
    assert result.exit_code == 0, result.output
