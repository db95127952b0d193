"""``edgeyolo quantize`` and ``edgeyolo export qdq|bnfold`` end to end, and their refusals."""
import json

import cv2
import pytest

from edgeyolo.cli.app import main
from edgeyolo.model.init import synthetic_images
from tests.conftest import cfg_path
from tests.data.tinyds import make_darknet


@pytest.fixture
def calib_dir(tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for i, img in enumerate(synthetic_images(4, 160, 160, seed=5)):
        cv2.imwrite(str(folder / f"s{i}.png"), img)
    return folder


def test_quantize_then_export_qdq(tiny_weights, calib_dir, tmp_path, capsys):
    out = tmp_path / "q"
    args = ["quantize", "--cfg", str(cfg_path("yolov3-tiny")), "--weights", str(tiny_weights), "--calib", str(calib_dir),
            "--pow2", "--analyze", "--keep-float", "auto", "--img-size", "128", "--out", str(out)]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "calibrating (minmax) on 4 images of folder" in text and "one-layer SQNR dB" in text
    assert "--keep-float auto: keeping layers [" in text
    meta = json.loads((out / "quant.json").read_text())
    assert meta["spec"]["scheme"] == "pow2" and len(meta["float_layers"]) == 1 and meta["info"]["img_size"] == 128
    assert len(meta["info"]["analysis"]) == 13
    onnx_path = tmp_path / "q.onnx"
    assert main(["export", "qdq", "--model", str(out), "--out", str(onnx_path)]) == 0
    text = capsys.readouterr().out
    assert onnx_path.is_file() and "12 weight quantizers" in text and "min 100.0000%" in text
    assert main(["export", "bnfold", "--cfg", str(cfg_path("yolov3-tiny")), "--weights", str(tiny_weights),
                 "--img-size", "128", "--out", str(tmp_path / "f.onnx")]) == 0
    assert "BN folded" in capsys.readouterr().out


def test_refusals_are_one_line_and_write_nothing(tiny_weights, calib_dir, tmp_path, capsys):
    cfg = str(cfg_path("yolov3-tiny"))
    data = make_darknet(tmp_path / "ds")  # its train and val lists name the same images
    base = ["quantize", "--cfg", cfg, "--weights", str(tiny_weights), "--img-size", "64"]
    cases = [
        (["--calib", str(data), "--data", str(data)], "also evaluation images"),
        (["--calib", str(calib_dir), "--method", "kl"], "--method must be one of"),
        (["--calib", str(calib_dir), "--keep-float", "x,y"], "--keep-float takes"),
        (["--calib", str(calib_dir), "--keep-float", "17"], "carry no quantizer"),
        (["--calib", str(tmp_path / "missing")], "not found"),
        (["--calib", str(calib_dir), "--images", "0"], "--images must be positive"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        code = main(base + extra + ["--out", str(out)])
        err = capsys.readouterr().err
        assert code != 0 and message in err, (extra, err)
        assert len(err.strip().splitlines()) == 1
        assert not out.exists()
    assert main(["export", "qdq", "--model", str(tmp_path), "--out", str(tmp_path / "x.onnx")]) != 0
    assert "quant.json is missing" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
