"""data convert --from voc: the layouts in use, class maps, and every way a conversion must refuse."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from edgeyolo.cli.app import main
from edgeyolo.data.convert import find_voc_parts, split_by_hash, voc_to_yolo
from edgeyolo.data.formats import load_dataset
from edgeyolo.data.types import Annotation, Sample
from edgeyolo.errors import InputFileError

from .tinyds import write_voc


def split_folders(root: Path, counts: dict[str, int], lists: bool) -> Path:
    """``root/{train,val}/{JPEGImages,Annotations}`` (+ ``root/{split}.txt`` listing all but the last id)."""
    seed = 0
    for split, n in counts.items():
        ids = [f"{split}_{i:03d}" for i in range(n)]
        for i in ids:
            seed += 1
            write_voc(root / split / "Annotations" / f"{i}.xml", root / split / "JPEGImages" / f"{i}.jpg", [("Tree", (4, 4, 20, 24))], seed=seed)
        if lists:
            (root / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids[:-1]))
    return root


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def leftovers(parent: Path) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.endswith(".partial")]


# ------------------------------------------------------------------------------ layouts


def test_split_folders_with_id_lists_beside_them(tmp_path):
    src = split_folders(tmp_path / "tiles", {"train": 5, "val": 3}, lists=True)
    result = voc_to_yolo(src, tmp_path / "out")
    assert result.images == {"train": 4, "val": 2} and result.boxes == {"train": 4, "val": 2}  # lists leave one out each
    assert result.names == ["Tree"]
    data = yaml.safe_load((tmp_path / "out" / "data.yaml").read_text())
    assert data["names"] == ["Tree"] and data["names_file"] == "classes.names"
    assert (tmp_path / "out" / "classes.names").read_text() == "Tree\n"
    assert sorted(p.stem for p in (tmp_path / "out" / "images" / "val").iterdir()) == ["val_000", "val_001"]


def test_split_folders_without_lists(tmp_path):
    src = split_folders(tmp_path / "tiles", {"train": 5, "val": 3}, lists=False)
    parts = find_voc_parts(src)
    assert sorted(parts) == ["train", "val"] and [len(parts[k].xmls) for k in ("train", "val")] == [5, 3]
    assert voc_to_yolo(src, tmp_path / "out").images == {"train": 5, "val": 3}


def test_imagesets_root_and_flat_folder_with_images_in_a_sibling(tmp_path):
    root = tmp_path / "VOC"
    for i in range(4):
        write_voc(root / "Annotations" / f"im{i}.xml", root / "JPEGImages" / f"im{i}.jpg", [("cat", (1, 1, 30, 30))], seed=i)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "train.txt").write_text("im0\nim1\nim2\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("im3\n")
    assert voc_to_yolo(root, tmp_path / "a").images == {"train": 3, "val": 1}

    flat = tmp_path / "flat"
    for i in range(3):  # xml in annotations/, images in a sibling folder with another name
        write_voc(flat / "annotations" / f"p{i}.xml", flat / "pictures" / f"p{i}.png", [("cat", (2, 2, 12, 12))], seed=i)
    result = voc_to_yolo(flat / "annotations", tmp_path / "b", val_fraction=0.3)
    assert sum(result.images.values()) == 3 and result.images["val"] >= 1 and result.images["train"] >= 1


def test_one_split_folder_given_alone_still_gets_a_val_image(tmp_path):
    """The reported case: --src DIR/train hash-split 23 tiles and put none in val."""
    src = split_folders(tmp_path / "tiles", {"train": 23, "val": 3}, lists=False)
    result = voc_to_yolo(src / "train", tmp_path / "out", val_fraction=0.1)
    assert result.images["val"] >= 1 and result.images["train"] + result.images["val"] == 23
    assert any("give --src" in n and str(src) in n for n in result.notes)


def test_hash_split_keeps_both_splits_non_empty():
    samples = [Sample(Path(f"{i}.jpg"), f"img{i}", 8, 8, Annotation.empty()) for i in range(23)]
    for fraction in (0.01, 0.1, 0.99):
        parts = split_by_hash(samples, fraction)
        assert len(parts["val"]) >= 1 and len(parts["train"]) >= 1 and len(parts["val"]) + len(parts["train"]) == 23
    a, b = split_by_hash(samples, 0.1), split_by_hash(list(reversed(samples)), 0.1)
    assert {s.image_id for s in a["val"]} == {s.image_id for s in b["val"]}
    with pytest.raises(InputFileError, match="cannot be split"):
        split_by_hash(samples[:1], 0.1)


# ------------------------------------------------------------------------------ classes


def alive_dead_scene(root: Path) -> Path:
    write_voc(root / "train" / "Annotations" / "s1.xml", root / "train" / "JPEGImages" / "s1.jpg",
              [("Tree", (1, 1, 10, 10)), ("Alive", (20, 2, 30, 12)), ("Dead", (40, 5, 50, 15))], seed=1)
    write_voc(root / "val" / "Annotations" / "s2.xml", root / "val" / "JPEGImages" / "s2.jpg",
              [("Alive", (3, 3, 13, 13)), ("Alive", (30, 20, 40, 30))], seed=2)
    return root


def test_unmapped_class_is_an_error_at_its_first_box(tmp_path, capsys):
    src = alive_dead_scene(tmp_path / "scene")
    names = tmp_path / "tree.names"
    names.write_text("Tree\n")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "data", "convert", "--from", "voc", "--src", src, "--out", out, "--names", names)
    xml = src / "train" / "Annotations" / "s1.xml"
    line = next(i for i, text in enumerate(xml.read_text().splitlines(), start=1) if "<name>Alive</name>" in text)
    assert code != 0 and f"{xml}:{line}: class 'Alive' is not in the names (Tree)" in err and "--map Alive=" in err
    assert err.count("\n") == 1 and not out.exists() and not leftovers(tmp_path)


def test_map_merges_classes_and_names_come_after_mapping(tmp_path, capsys):
    src = alive_dead_scene(tmp_path / "scene")
    names = tmp_path / "tree.names"
    names.write_text("Tree\n")
    code, stdout, err = run_cli(capsys, "data", "convert", "--from", "voc", "--src", src, "--out", tmp_path / "a",
                                "--names", names, "--map", "Alive=Tree", "--map", "Dead=Tree")
    assert code == 0, err
    assert "train: 1 images / 3 boxes" in stdout and "val: 1 images / 2 boxes" in stdout
    # without a names file the names are the set found after mapping
    result = voc_to_yolo(src, tmp_path / "b", class_map=["Alive=Tree", "Dead=Snag"])
    assert result.names == ["Snag", "Tree"] and result.boxes == {"train": 3, "val": 2}
    labels = (tmp_path / "b" / "labels" / "train" / "s1.txt").read_text().splitlines()
    assert [line.split()[0] for line in labels] == ["1", "1", "0"]
    assert (tmp_path / "b" / "classes.names").read_text() == "Snag\nTree\n"


def test_drop_unknown_drops_only_when_asked(tmp_path):
    src = alive_dead_scene(tmp_path / "scene")
    result = voc_to_yolo(src, tmp_path / "out", ["Tree"], drop_unknown=True)
    assert result.boxes == {"train": 1, "val": 0}
    assert "dropped boxes of classes not in the names: Alive (3), Dead (1)" in result.notes


# ------------------------------------------------------------------------------ refusals


def test_no_image_at_all_fails_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "xmls"
    for i in range(3):
        write_voc(src / f"x{i}.xml", None, [("cat", (1, 1, 5, 5))])
    names = tmp_path / "n.names"
    names.write_text("cat\n")
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "data", "convert", "--from", "voc", "--src", src, "--out", out, "--names", names)
    assert code != 0 and "0 images could be read" in err and "image not found" in err
    assert not out.exists() and not leftovers(tmp_path)
    code, _, err = run_cli(capsys, "data", "convert", "--from", "voc", "--src", tmp_path / "nothing_here", "--out", out)
    assert code != 0 and "not found" in err


def test_a_folder_without_any_annotation_fails(tmp_path, capsys):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    code, _, err = run_cli(capsys, "data", "convert", "--from", "voc", "--src", tmp_path / "empty", "--out", tmp_path / "out")
    assert code != 0 and "no VOC annotations found" in err and not (tmp_path / "out").exists()


def test_empty_val_fails(tmp_path, capsys):
    src = split_folders(tmp_path / "tiles", {"train": 3, "val": 1}, lists=True)  # the val list leaves its only id out
    code, _, err = run_cli(capsys, "data", "convert", "--from", "voc", "--src", src, "--out", tmp_path / "out")
    assert code != 0 and "the val split has no readable image" in err
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path)
    single = tmp_path / "single"
    write_voc(single / "a.xml", single / "a.jpg", [("cat", (1, 1, 5, 5))])
    code, _, err = run_cli(capsys, "data", "convert", "--from", "voc", "--src", single, "--out", tmp_path / "out")
    assert code != 0 and "cannot be split into train and val" in err


# ------------------------------------------------------------------------------ the output stands alone


def test_dataset_survives_moving_the_source_and_has_no_symlinks(tmp_path):
    src = split_folders(tmp_path / "tiles", {"train": 3, "val": 2}, lists=False)
    src_image = src / "train" / "JPEGImages" / "train_000.jpg"
    os.symlink(src_image, src / "train" / "JPEGImages" / "linked.jpg")  # a source that is itself a symlink
    write_voc(src / "train" / "Annotations" / "linked.xml", None, [("Tree", (2, 2, 9, 9))])
    out = tmp_path / "out"
    voc_to_yolo(src, out)
    voc_to_yolo(src, tmp_path / "copied", link=False)
    files = [p for p in out.rglob("*") if not p.is_dir()]
    assert files and not any(p.is_symlink() for p in files)
    assert os.path.samefile(src_image, out / "images" / "train" / "train_000.jpg")
    assert not os.path.samefile(src_image, tmp_path / "copied" / "images" / "train" / "train_000.jpg")
    shutil.move(str(src), str(tmp_path / "moved"))
    for split, n in (("train", 4), ("val", 2)):
        ds = load_dataset(out / "data.yaml", split)
        assert len(ds.samples) == n and not ds.issues
        assert all(cv2.imread(str(s.image)) is not None for s in ds.samples)
    linked = cv2.imread(str(out / "images" / "train" / "linked.jpg"))
    assert linked is not None and np.array_equal(linked, cv2.imread(str(tmp_path / "moved" / "train" / "JPEGImages" / "train_000.jpg")))


def test_adding_a_split_to_an_existing_dataset_and_a_failed_run_leaves_it_intact(tmp_path):
    src = split_folders(tmp_path / "tiles", {"train": 3, "val": 2}, lists=False)
    out = tmp_path / "out"
    voc_to_yolo(src, out)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    empty_val = split_folders(tmp_path / "other", {"train": 2, "val": 1}, lists=True)
    with pytest.raises(InputFileError, match="val split has no readable image"):
        voc_to_yolo(empty_val, out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before and not leftovers(tmp_path)
    from edgeyolo.data.convert import write_yolo_dataset

    extra = load_dataset(out / "data.yaml", "val").samples
    result = write_yolo_dataset({"test": extra}, ["Tree"], out)  # a new split beside the old ones
    assert result.images == {"test": 2}
    data = yaml.safe_load((out / "data.yaml").read_text())
    assert [k for k in data if k in ("train", "val", "test")] == ["train", "val", "test"]
    assert len(load_dataset(out / "data.yaml", "train").samples) == 3 and not leftovers(tmp_path)


def test_a_root_with_only_a_test_list_becomes_val(tmp_path):
    root = tmp_path / "VOCtest"
    for i in range(2):
        write_voc(root / "Annotations" / f"t{i}.xml", root / "JPEGImages" / f"t{i}.jpg", [("cat", (1, 1, 9, 9))], seed=i)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "ImageSets" / "Main" / "test.txt").write_text("t0\nt1\n")
    result = voc_to_yolo(root, tmp_path / "out")
    assert result.images == {"val": 2} and any("no train images" in n for n in result.notes)
    assert load_dataset(tmp_path / "out" / "data.yaml", "train").samples == []
