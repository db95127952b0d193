"""Real yolov3-tiny COCO weights: BN folding error, and pow2 int8 PTQ keeping the float detections.

PTQ calibration uses synthetic pictures (``edgeyolo.model.init.synthetic_images``: smooth colour
fields with rectangles and ellipses), never the photos in ``shared/images`` that it is scored on.
The float model's detections (score ≥ 0.25) on the photos are the ground truth; the quantized
model's detections are scored against them with mAP@0.5.
"""
import cv2
import numpy as np
import torch

from edgeyolo.compress.quant import QuantSpec, calibrate, fold_bn, prepare_qat
from edgeyolo.contract import Contract
from edgeyolo.data.types import Annotation
from edgeyolo.train.metrics import evaluate
from tests.compress.quant.conftest import synthetic_batches

SIZE = 416
MAP_FLOOR = 0.8  # pow2 int8 PTQ on 16 synthetic images; measured 1.00 (mAP@0.5:0.95 0.72)
MAP_95_FLOOR = 0.5


def test_bn_fold_real_weights(tiny_float, photos):
    contract = Contract(SIZE, SIZE)
    x = torch.from_numpy(np.concatenate([contract.preprocess(cv2.imread(str(p)))[0] for p in photos[:2]]))
    folded = fold_bn(tiny_float)
    assert all(b.bn is None for _, b in folded.conv_blocks())
    assert any(b.bn is not None for _, b in tiny_float.conv_blocks())  # the original is untouched
    with torch.no_grad():
        ref = torch.cat([h.flatten(1) for h in tiny_float.forward_raw(x)], 1)
        got = torch.cat([h.flatten(1) for h in folded.forward_raw(x)], 1)
    err = float((ref - got).abs().max() / ref.abs().max())
    print(f"\nBN fold on yolov3-tiny: max|Δ|/max|ref| = {err:.2e}")
    assert err <= 1e-5


def _detections(model, photos, conf):
    contract = Contract(SIZE, SIZE, conf_threshold=conf, iou_threshold=0.45)
    out = []
    with torch.no_grad():
        for p in photos:
            blob, box = contract.preprocess(cv2.imread(str(p)))
            out.append(contract.postprocess(model(torch.from_numpy(blob))[0].numpy(), box))
    return out


def test_pow2_ptq_keeps_detections(tiny_float, photos):
    reference = _detections(tiny_float, photos, 0.25)
    truth = [Annotation.of(d[:, :4], d[:, 5].astype(np.int64)) for d in reference]
    assert sum(len(t) for t in truth) >= 10  # real detections to keep, not an empty comparison
    float_map = evaluate(truth, _detections(tiny_float, photos, 0.001), 80, metric="coco").map50
    model = prepare_qat(tiny_float, QuantSpec("pow2"))
    calibrate(model, synthetic_batches(16, SIZE, seed=7, per_batch=4), "minmax")
    scored = evaluate(truth, _detections(model, photos, 0.001), 80, metric="coco")
    print(
        f"\npow2 int8 PTQ yolov3-tiny on shared/images, scored against the float detections: "
        f"mAP@0.5 {scored.map50:.3f}, mAP@0.5:0.95 {scored.map50_95:.3f} (float vs itself: {float_map:.3f})"
    )
    assert scored.map50 >= MAP_FLOOR and scored.map50_95 >= MAP_95_FLOOR
