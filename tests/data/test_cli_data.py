from __future__ import annotations

from typer.testing import CliRunner

from edgeyolo.cli.data import app
from edgeyolo.errors import InputFileError
from edgeyolo.model.cfg import parse_cfg
from edgeyolo.model.zoo import ZOO_DIR

from .tinyds import NAMES, make_darknet, make_voc

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_check_shows_a_malformed_label_as_path_line(tmp_path):
    data = make_darknet(tmp_path / "dn")
    label = tmp_path / "dn" / "labels" / "a002.txt"
    label.write_text("2 0.375 0.541667 0.5 0.75\n7 0.5 0.5 0.1 0.1\n")
    result = _run("check", "--data", data, "--split", "val")
    assert result.exit_code == 0, result.output
    assert f"{label}:2: class 7 out of range" in result.output
    assert "duplicate image groups" in result.output and "bird" in result.output


def test_convert_stats_anchors(tmp_path):
    voc = make_voc(tmp_path / "voc", splits={"train": ["a001", "a002", "a004"], "val": ["a003"]})
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES))
    out = tmp_path / "yolo"
    result = _run("convert", "--from", "voc", "--to", "yolo", "--src", voc, "--out", out, "--names", names)
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'data.yaml'}" in result.output and "note: dropped 1 difficult boxes" in result.output
    data = out / "data.yaml"

    result = _run("convert", "--from", "yolo", "--to", "coco", "--src", data, "--split", "train", "--out", tmp_path / "train.json")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "train.json").is_file()

    plot = tmp_path / "boxes.png"
    result = _run("stats", "--data", data, "--split", "train", "--plot", plot)
    assert result.exit_code == 0, result.output
    assert plot.is_file() and "< 16 px" in result.output

    new_cfg = tmp_path / "new.cfg"
    result = _run("anchors", "--data", data, "--n", "6", "--img-size", "416", "--cfg", ZOO_DIR / "edgeyolo-mobile.cfg", "--out", new_cfg)
    # 5 boxes < 6 anchors: refused with a clear error
    assert result.exit_code != 0 and "distinct box shapes" in str(result.exception)
    result = _run("anchors", "--data", data, "--n", "3", "--img-size", "416")
    assert result.exit_code == 0, result.output
    assert "mean IoU of each box with its best anchor" in result.output


def test_anchors_written_into_a_cfg(tmp_path):
    root = tmp_path / "dn"
    data = make_darknet(root)
    lines = "".join(f"{i % 3} 0.5 0.5 {0.05 + 0.07 * i:.3f} {0.04 + 0.09 * i:.3f}\n" for i in range(10))
    (root / "labels" / "a003.txt").write_text(lines)
    new_cfg = tmp_path / "new.cfg"
    result = _run("anchors", "--data", data, "--cfg", ZOO_DIR / "edgeyolo-mobile.cfg", "--out", new_cfg)
    assert result.exit_code == 0, result.output
    assert "6 anchors for" in result.output and f"wrote {new_cfg}" in result.output
    cfg = parse_cfg(new_cfg)
    assert len(cfg.yolo_layers[0].anchors) == 6
    # a count that does not fit the masks is refused before clustering, naming the count that fits
    result = _run("anchors", "--data", data, "--n", "9", "--cfg", ZOO_DIR / "edgeyolo-mobile.cfg", "--out", tmp_path / "bad.cfg")
    assert result.exit_code != 0 and "compute 6 anchors" in str(result.exception)
    assert not (tmp_path / "bad.cfg").exists() and "anchors for" not in result.output


def test_unreadable_dataset_fails(tmp_path):
    result = _run("check", "--data", tmp_path / "missing.yaml")
    assert result.exit_code != 0 and isinstance(result.exception, InputFileError)
    result = _run("convert", "--from", "nope", "--src", tmp_path, "--out", tmp_path / "o")
    assert result.exit_code != 0
