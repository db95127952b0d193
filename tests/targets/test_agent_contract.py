"""The board agent's copy of the contract computes exactly what edgeyolo.contract computes, and the
agent stays a one-file, Python-3.6, stdlib + numpy + cv2 program (imports checked by AST, syntax by vermin)."""
from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from dataclasses import replace

import cv2
import numpy as np
import pytest

from edgeyolo.contract import Contract, HeadSpec, decode_heads, nms
from edgeyolo.targets import agent
from edgeyolo.targets.deploy import agent_source

CONTRACTS = [
    Contract(416, 416),
    Contract(320, 256, resize="stretch", interpolation="nearest", channel_order="bgr", conf_threshold=0.05),
    Contract(224, 224, channel_order="gray", interpolation="area", pad_value=0.0, scale=1 / 127.5),
    Contract(256, 384, interpolation="cubic", conf_threshold=0.01, iou_threshold=0.6, classes=(0, 2, 5), max_detections=37),
    Contract(288, 288, agnostic_nms=True, conf_threshold=0.02, max_candidates=50),
]


def _twin(contract: Contract) -> "agent.Contract":
    return agent.Contract.from_json(contract.to_json())  # exactly what the board receives


def _variants(photo) -> list[np.ndarray]:
    image = cv2.imread(str(photo), cv2.IMREAD_COLOR)
    assert image is not None
    return [image, cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.cvtColor(image, cv2.COLOR_BGR2BGRA), image[:37, :301]]


def _predictions(contract: Contract, classes: int = 7, n: int = 4000, seed: int = 0) -> np.ndarray:
    """Decoded rows with clustered, overlapping boxes and scores around every threshold."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0, [contract.width, contract.height], (12, 2))
    pick = rng.integers(0, 12, n)
    xy = centres[pick] + rng.normal(0, 6, (n, 2))
    wh = rng.uniform(4, 120, (n, 2))
    obj = rng.uniform(0, 1, (n, 1)) ** 2
    probs = rng.dirichlet(np.ones(classes) * 0.3, n)
    return np.concatenate([xy, wh, obj, probs], axis=1).astype(np.float32)


@pytest.mark.parametrize("contract", CONTRACTS, ids=lambda c: f"{c.height}x{c.width}-{c.resize}-{c.channel_order}-{c.interpolation}")
def test_preprocess_and_postprocess_match_on_real_photos(contract, photos):
    twin = _twin(contract)
    found = 0
    for k, photo in enumerate(photos):
        for image in _variants(photo):
            blob, box = contract.preprocess(image)
            got_blob, got_box = twin.preprocess(image)
            assert got_blob.dtype == blob.dtype and np.array_equal(got_blob, blob), photo.name
            assert got_box.as_tuple() == (box.scale_x, box.scale_y, box.pad_x, box.pad_y, box.orig_h, box.orig_w)
            pred = _predictions(contract, seed=k)
            want = contract.postprocess(pred, box)
            got = twin.postprocess(pred, got_box)
            assert got.dtype == want.dtype and np.array_equal(got, want), photo.name
            found += len(want)
            assert np.array_equal(twin.postprocess(pred), contract.postprocess(pred))  # input-pixel boxes too
    assert len(photos) >= 5 and found > 0  # real detections were compared, not only empty arrays


def test_postprocess_edge_cases_match():
    c = Contract(416, 416)
    twin = _twin(c)
    empty = np.zeros((10, 8), np.float32)
    assert np.array_equal(twin.postprocess(empty), c.postprocess(empty))
    for tight in (replace(c, max_candidates=5), replace(c, conf_threshold=0.0, max_detections=1)):
        pred = _predictions(tight, seed=9)
        assert np.array_equal(_twin(tight).postprocess(pred), tight.postprocess(pred))


def test_nms_matches():
    rng = np.random.default_rng(1)
    for n in (0, 1, 2, 50, 500):
        xy = rng.uniform(0, 100, (n, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (n, 2))], axis=1).astype(np.float32)
        scores = rng.uniform(0, 1, n).astype(np.float32)
        scores[: n // 4] = 0.5  # ties: the stable order must agree too
        cls = rng.integers(0, 3, n)
        for classes in (None, cls):
            for keep in (None, 7):
                assert np.array_equal(agent.nms(boxes, scores, classes, 0.45, keep), nms(boxes, scores, classes, 0.45, keep))


def test_decode_heads_matches():
    rng = np.random.default_rng(2)
    heads = [
        HeadSpec(((10.0, 14.0), (23.0, 27.0), (37.0, 58.0)), 5, 1.0),
        HeadSpec(((81.0, 82.0), (135.0, 169.0), (344.0, 319.0)), 5, 1.05),
    ]
    raws = [rng.normal(0, 3, (2, 30, 13, 9)).astype(np.float32), rng.normal(0, 3, (2, 30, 26, 18)).astype(np.float32)]
    raws[0][0, 2, 0, 0] = 200.0  # an exp that would overflow without the clamp
    want = decode_heads(raws, heads, 416, 288)
    got = agent.decode_heads(raws, [(h.anchors, h.classes, h.scale_x_y) for h in heads], 416, 288)
    assert got.dtype == want.dtype and np.array_equal(got, want)


def test_contract_defaults_agree():
    """A contract JSON missing newer fields falls back to the same defaults on both sides."""
    host = json.loads(Contract().to_json())
    for key, value in agent.Contract.DEFAULTS.items():
        expected = host[key] if key != "classes" else None
        assert value == expected, key


# ---------------------------------------------------------------- the agent stays portable

# what the board may have besides the standard library (imported lazily, inside functions)
BOARD_MODULES = {"numpy", "cv2", "PIL", "onnxruntime", "tensorrt", "pycuda", "cuda", "xir", "vart"}


def test_agent_imports_only_allowed_modules():
    tree = ast.parse(agent_source().read_text())
    stdlib = set(sys.stdlib_module_names)
    top, everywhere, lazy = set(), set(), set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            top.update((a.name if isinstance(node, ast.Import) else node.module).split(".")[0] for a in node.names)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            everywhere.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import in the agent"
            everywhere.add(node.module.split(".")[0])
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_need":
            lazy.add(node.args[0].value.split(".")[0])
    named = {n.split(".")[0] for n in agent.MODULES}
    assert top <= stdlib, f"non-stdlib import at module level: {top - stdlib}"
    assert everywhere <= stdlib | BOARD_MODULES, f"unexpected imports: {everywhere - stdlib - BOARD_MODULES}"
    assert lazy | named <= BOARD_MODULES, f"unexpected lazily loaded modules: {(lazy | named) - BOARD_MODULES}"
    assert "edgeyolo" not in everywhere


def test_agent_runs_alone_without_edgeyolo(tmp_path):
    """Copied anywhere, it runs: no import of the package it came from."""
    copy = tmp_path / "agent.py"
    shutil.copy(agent_source(), copy)
    proc = subprocess.run([sys.executable, "-I", str(copy), "info", "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    state = json.loads(proc.stdout)
    assert state["python"].count(".") == 2 and state["disk"]["free"] > 0 and state["modules"]["numpy"]


def test_agent_is_python_36_syntax():
    vermin = shutil.which("vermin")
    if vermin is None:
        pytest.skip("vermin is not installed (pip install vermin, in the dev extra)")
    proc = subprocess.run([vermin, "--target=3.6", "--no-tips", "--violations", str(agent_source())], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
