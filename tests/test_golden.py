"""Golden outputs of four README commands, recorded once and compared on every run.

Structure (cfg text, graph ops, tensor names and shapes, label files, the dry-run manifest) must match
exactly; float values within a tolerance, because a CPU with other SIMD widths rounds the calibration
forward passes of ``--random-init`` differently in the last bits.

Re-record only for an intended change of output: ``EDGEYOLO_RECORD_GOLDEN=1 pytest tests/test_golden.py``.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgeyolo.cli.app import main

from .data.tinyds import write_voc

GOLDEN = Path(__file__).parent / "golden" / "golden.json"
RECORD = os.environ.get("EDGEYOLO_RECORD_GOLDEN") == "1"
CHECKPOINT = Path(__file__).resolve().parents[1] / "edgeyolo" / "model" / "zoo" / "edgeyolo-res-synth.safetensors"
RTOL, ATOL = 1e-4, 1e-6


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _run(capsys, *args) -> str:
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


def _compare(name: str, got: dict) -> None:
    recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if RECORD:
        recorded[name] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n")
        return
    assert name in recorded, f"no golden output for {name}; record with EDGEYOLO_RECORD_GOLDEN=1"
    want = recorded[name]
    assert want.get("exact") == got.get("exact"), name
    for key, values in want.get("close", {}).items():
        assert key in got["close"], f"{name}: {key} missing"
        np.testing.assert_allclose(got["close"][key], values, rtol=RTOL, atol=ATOL, err_msg=f"{name}: {key}")
    assert set(want.get("close", {})) == set(got.get("close", {})), name


def _tensor_sums(tensors: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {k: [float(np.abs(v.astype(np.float64)).sum()), float(v.astype(np.float64).sum())] for k, v in sorted(tensors.items())}


def test_export_onnx_random_init(tmp_path, capsys):
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    out = tmp_path / "m.onnx"
    _run(capsys, "export", "onnx", "--cfg", "edgeyolo-res", "--random-init", "--seed", "0", "--img-size", "96", "--out", out)
    model = onnx.load(str(out))
    graph = model.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    structure = {
        "ops": [n.op_type for n in graph.node],
        "inputs": [str(i.type.tensor_type.shape) for i in graph.input],
        "outputs": [str(o.type.tensor_type.shape) for o in graph.output],
        "initializers": [[k, list(v.shape), str(v.dtype)] for k, v in sorted(inits.items())],
        "opset": [o.version for o in model.opset_import],
    }
    x = np.random.default_rng(0).random((1, 3, 96, 96), dtype=np.float32)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    close = {f"init:{k}": v for k, v in _tensor_sums(inits).items()}
    close["output:first64"] = y.reshape(-1)[:64].astype(float).tolist()
    close["output:stats"] = [float(np.abs(y).sum()), float(y.sum()), float(y.max())]
    _compare("export_onnx_random_init", {"exact": _sha(json.dumps(structure).encode()), "close": close})


def test_prune_of_the_demo_checkpoint(tmp_path, capsys):
    from safetensors.numpy import load_file

    out = tmp_path / "p"
    _run(capsys, "prune", "slim", "--weights", CHECKPOINT, "--percent", "0.3", "--out", out)
    tensors = load_file(str(out / "model.safetensors"))
    report = json.loads((out / "prune_report.json").read_text())
    structure = {
        "cfg": _sha((out / "model.cfg").read_bytes()),
        "files": sorted(p.name for p in out.iterdir()),
        "tensors": [[k, list(v.shape)] for k, v in sorted(tensors.items())],
        "weights_bytes": (out / "model.weights").stat().st_size,
    }
    close = {f"tensor:{k}": v for k, v in _tensor_sums(tensors).items()}
    close["report"] = _numbers(report)
    _compare("prune_slim_demo_checkpoint", {"exact": _sha(json.dumps(structure).encode()), "close": close})


def _numbers(obj) -> list[float]:
    """Every number in a JSON document, depth first in key order (timings excluded)."""
    found: list[float] = []
    if isinstance(obj, dict):
        for k in sorted(obj):
            if "seconds" in k or k.endswith("_s") or "time" in k:
                continue
            found.extend(_numbers(obj[k]))
    elif isinstance(obj, list):
        for v in obj:
            found.extend(_numbers(v))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        found.append(float(obj))
    return found


def test_build_demo_dry_run_manifest(tmp_path, capsys):
    text = _run(capsys, "build", "--target", "jetson-nano", "--demo", "--dry-run", "--out", tmp_path / "b")
    assert not (tmp_path / "b").exists()
    _compare("build_demo_dry_run", {"exact": text})


def test_data_convert_voc(tmp_path, capsys):
    src = tmp_path / "voc"
    seed = 0
    boxes = {"a": [("Tree", (4, 4, 20, 24)), ("Rock", (30, 8, 60, 40))], "b": [("Tree", (10, 12, 50, 44))], "c": [("Rock", (2, 2, 12, 14))]}
    for split, ids in (("train", ("a", "b")), ("val", ("c",))):
        for i in ids:
            seed += 1
            write_voc(src / split / "Annotations" / f"{i}.xml", src / split / "JPEGImages" / f"{i}.jpg", boxes[i], seed=seed)
    out = tmp_path / "yolo"
    _run(capsys, "data", "convert", "--from", "voc", "--src", src, "--out", out, "--copy")
    files = {
        str(p.relative_to(out)): _sha(p.read_bytes().replace(str(tmp_path).encode(), b"TMP"))
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.suffix != ".jpg"
    }
    images = sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg"))
    _compare("data_convert_voc", {"exact": {"files": files, "images": images}})


@pytest.mark.skipif(RECORD, reason="recording")
def test_a_changed_output_fails_the_comparison():
    recorded = json.loads(GOLDEN.read_text())
    name = "export_onnx_random_init"
    bent = dict(recorded[name]["close"])
    key = next(k for k in bent if k.startswith("init:"))
    bent[key] = [v * 1.01 for v in bent[key]]
    with pytest.raises(AssertionError):
        _compare(name, {"exact": recorded[name]["exact"], "close": bent})
