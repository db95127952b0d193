"""``test`` and ``detect`` take quantized models through ``--weights``: a quantized folder (fake-quant
torch, or its QDQ int8 export in onnxruntime) and an exported ``.onnx`` file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgeyolo.cli.app import main


@pytest.fixture(scope="module")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    from edgeyolo.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("q")
    data = make_synthetic(root / "synth", classes=12, train=8, val=4, img_size=64, seed=0).data_yaml
    assert main(["export", "darknet", "--cfg", "edgeyolo-res", "--random-init", "--out", str(root / "float")]) == 0
    qdir = root / "q"
    code = main(["quantize", "--cfg", str(root / "float" / "model.cfg"), "--weights", str(root / "float" / "model.weights"),
                 "--calib", str(data), "--images", "8", "--pow2", "--img-size", "64", "--out", str(qdir)])
    assert code == 0
    onnx_path = root / "q.onnx"
    assert main(["export", "qdq", "--model", str(qdir), "--out", str(onnx_path)]) == 0
    return data, qdir, onnx_path


def _detections(path: Path) -> np.ndarray:
    records = json.loads(path.read_text())
    return np.array([[r["image_id"] if isinstance(r["image_id"], int) else hash(r["image_id"]) % 1000, r["category_id"], *r["bbox"], r["score"]] for r in records])


def test_a_quantized_folder_and_its_qdq_onnx_score_alike(quantized, tmp_path: Path, capsys) -> None:
    data, qdir, onnx_path = quantized
    runs = {}
    for name, weights, backend in (("torch", qdir, "torch"), ("ort", qdir, "onnxruntime"), ("file", onnx_path, "onnxruntime")):
        out = tmp_path / f"{name}.json"
        code = main(["test", "--data", str(data), "--weights", str(weights), "--backend", backend, "--img-size", "64",
                     "--save-json", str(out), "--json"])
        assert code == 0, capsys.readouterr().err
        capsys.readouterr()
        runs[name] = _detections(out)
    assert len(runs["torch"]) > 0  # the low score threshold keeps a full curve
    # the QDQ file written by `export qdq` and the folder run through onnxruntime are the same model
    assert np.array_equal(runs["ort"], runs["file"])
    # pow2 fake-quant torch and its int8 QDQ export give the same detections (scores to float precision)
    assert runs["torch"].shape == runs["ort"].shape
    assert np.allclose(runs["torch"], runs["ort"], atol=1e-3)


def test_detect_runs_a_qdq_onnx_and_opencv_refuses_a_quantized_model(quantized, tmp_path: Path, capsys) -> None:
    _, qdir, onnx_path = quantized
    from edgeyolo.model.init import synthetic_images
    import cv2

    image = tmp_path / "img.png"
    cv2.imwrite(str(image), synthetic_images(1, 64, 64, 0)[0])
    code = main(["detect", "--weights", str(onnx_path), "--backend", "onnxruntime", "--source", str(image),
                 "--output", str(tmp_path / "out"), "--conf", "0.001", "--save-json"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "out" / "detections.json").exists()
    code = main(["test", "--data", str(quantized[0]), "--weights", str(qdir), "--backend", "opencv"])
    assert code != 0
    assert "OpenCV DNN reads darknet files, which carry no quantization" in capsys.readouterr().err
    code = main(["test", "--data", str(quantized[0]), "--weights", str(onnx_path), "--backend", "torch"])
    assert code != 0 and "runs on --backend onnxruntime" in capsys.readouterr().err
