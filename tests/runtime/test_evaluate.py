"""edgeyolo test end to end, on answers known in advance."""
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from edgeyolo.contract import Contract
from edgeyolo.data.synth import make_synthetic
from edgeyolo.model.checkpoint import load_model
from edgeyolo.runtime.runners import make_runner
from edgeyolo.train.metrics import evaluate
from tests.conftest import cfg_path

CLI = [sys.executable, "-c", "import sys; from edgeyolo.cli.app import main; sys.exit(main())"]


@pytest.fixture(scope="module")
def self_labelled(tmp_path_factory, tiny_weights, photos):
    """Real photos labelled with yolov3-tiny's own detections (conf 0.25, NMS 0.6), Ultralytics layout."""
    root = tmp_path_factory.mktemp("selfds")
    (root / "images" / "val").mkdir(parents=True)
    (root / "labels" / "val").mkdir(parents=True)
    model = load_model(cfg_path("yolov3-tiny"), tiny_weights)
    contract = Contract(416, 416, conf_threshold=0.25, iou_threshold=0.6)
    runner = make_runner("onnxruntime", model, contract)
    boxes = 0
    for photo in photos:
        image = cv2.imread(str(photo))
        cv2.imwrite(str(root / "images" / "val" / f"{photo.stem}.png"), image)  # lossless copy
        blob, box = contract.preprocess(image)
        det = contract.postprocess(runner.infer(blob)[0], box)
        h, w = image.shape[:2]
        lines = [
            f"{int(c)} {(x1 + x2) / 2 / w:.8f} {(y1 + y2) / 2 / h:.8f} {(x2 - x1) / w:.8f} {(y2 - y1) / h:.8f}"
            for x1, y1, x2, y2, _, c in det
        ]
        boxes += len(lines)
        (root / "labels" / "val" / f"{photo.stem}.txt").write_text("\n".join(lines) + "\n")
    names = [line for line in (cfg_path("yolov3-tiny").parent / "coco.names").read_text().splitlines() if line]
    (root / "data.yaml").write_text(f"path: {root}\nval: images/val\nnames: {json.dumps(names)}\n")
    assert boxes >= 20
    return root / "data.yaml"


def run_test(data, weights, *extra):
    cmd = CLI + ["test", "--data", str(data), "--cfg", str(cfg_path("yolov3-tiny")), "--weights", str(weights), "--json", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_model_scores_perfectly_on_its_own_labels(self_labelled, tiny_weights):
    same = run_test(self_labelled, tiny_weights, "--conf", "0.25", "--iou", "0.6", "--metric", "voc12")
    assert same["map50"] > 0.999 and same["map50_95"] > 0.99
    coco = run_test(self_labelled, tiny_weights, "--conf", "0.25", "--iou", "0.6", "--metric", "coco", "--backend", "opencv")
    assert coco["map50"] > 0.97  # another runtime, the same contract: nearly the same boxes


def test_lower_threshold_changes_little_and_full_curve_is_used(self_labelled, tiny_weights):
    full = run_test(self_labelled, tiny_weights)  # defaults: conf 0.001, iou 0.6, coco
    assert 0.9 < full["map50"] <= 1.0
    assert full["num_detections"] > 3 * 20  # low-score candidates are scored too


def test_random_boxes_score_near_zero_on_synth(tmp_path):
    summary = make_synthetic(tmp_path / "synth", classes=12, train=1, val=40, img_size=256, seed=3)
    from edgeyolo.data.formats import load_dataset

    ds = load_dataset(summary.data_yaml, "val")
    rng = np.random.default_rng(0)
    dets = []
    for s in ds.samples:
        n = 30
        xy = rng.uniform(0, 256, (n, 2))
        wh = rng.uniform(4, 100, (n, 2))
        dets.append(np.concatenate([xy, xy + wh, rng.uniform(0, 1, (n, 1)), rng.integers(0, 12, (n, 1))], 1).astype(np.float32))
    perfect = [np.concatenate([s.annotation.boxes, np.ones((len(s.annotation), 1)), s.annotation.classes[:, None]], 1).astype(np.float32) for s in ds.samples]
    assert evaluate([s.annotation for s in ds.samples], perfect, 12).map50_95 == pytest.approx(1.0)
    result = evaluate([s.annotation for s in ds.samples], dets, 12)
    assert result.map50 < 0.02 and result.map50_95 < 0.01
