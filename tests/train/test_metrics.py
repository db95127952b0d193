"""Detection metrics on cases whose answers are known by hand, and COCO against pycocotools on files."""
from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest

from edgeyolo.data.types import Annotation
from edgeyolo.errors import UsageError
from edgeyolo.train.metrics import (
    TABLE_HEADER,
    EvalResult,
    coco_detections_json,
    coco_json,
    evaluate,
)

METRICS = ("coco", "voc07", "voc12")


def grid_boxes(n: int, size: float = 40.0, step: float = 60.0) -> np.ndarray:
    """n disjoint square boxes on a row-major grid (no two overlap, so matches are unambiguous)."""
    idx = np.arange(n)
    x1 = (idx % 10) * step + 5.0
    y1 = (idx // 10) * step + 5.0
    return np.stack([x1, y1, x1 + size, y1 + size], axis=1).astype(np.float32)


def dets(boxes: np.ndarray, scores, classes) -> np.ndarray:
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.broadcast_to(np.asarray(scores, np.float32), (len(boxes),))
    classes = np.broadcast_to(np.asarray(classes, np.float32), (len(boxes),))
    return np.concatenate([boxes, scores[:, None], classes[:, None]], axis=1).astype(np.float32)


def descending(n: int, top: float = 0.9, bottom: float = 0.5) -> np.ndarray:
    return np.linspace(top, bottom, n)


# ---------------------------------------------------------------- known answers


@pytest.mark.parametrize("metric", METRICS)
def test_perfect_predictions_score_one(metric: str) -> None:
    gts, preds = [], []
    for i in range(4):
        boxes = grid_boxes(5)
        classes = np.arange(5) % 3
        gts.append(Annotation.of(boxes, classes))
        preds.append(dets(boxes, descending(5, 0.9 - 0.1 * i, 0.5 - 0.1 * i), classes))
    result = evaluate(gts, preds, num_classes=3, metric=metric)
    assert result.map50 == pytest.approx(1.0, abs=1e-12)
    assert result.map50_95 == pytest.approx(1.0, abs=1e-12)
    assert result.precision == 1.0 and result.recall == 1.0
    assert result.num_images == 4 and result.num_detections == 20
    assert [c.num_gt for c in result.per_class] == [8, 8, 4]


@pytest.mark.parametrize("metric", METRICS)
def test_known_iou_passes_exactly_three_of_ten_thresholds(metric: str) -> None:
    # a 100-wide box shifted by s along x has IoU (100 - s) / (100 + s); 0.62 is clear of 0.60 and 0.65
    iou = 0.62
    shift = 100.0 * (1 - iou) / (1 + iou)
    gt_boxes = np.array([[10, 10, 110, 60], [200, 10, 300, 90], [10, 200, 110, 230]], np.float32)
    moved = gt_boxes + np.array([shift, 0, shift, 0], np.float32)
    result = evaluate([Annotation.of(gt_boxes, [0, 0, 0])], [dets(moved, [0.9, 0.8, 0.7], 0)], 1, metric)
    assert result.map50 == pytest.approx(1.0, abs=1e-12)
    assert result.map50_95 == pytest.approx(0.3, abs=1e-12)  # 0.50, 0.55, 0.60 pass; 0.65 ... 0.95 fail


@pytest.mark.parametrize("metric", METRICS)
def test_iou_exactly_at_a_threshold_counts_as_a_match(metric: str) -> None:
    # [0, 0, 2, 1] inside [0, 0, 4, 1]: IoU = 2 / 4 = 0.5 exactly in floating point; the threshold
    # is inclusive (pycocotools' rule), so it matches at 0.50 and at no higher threshold
    result = evaluate([Annotation.of([[0, 0, 4, 1]], [0])], [dets([[0, 0, 2, 1]], 0.9, 0)], 1, metric)
    assert result.map50 == pytest.approx(1.0, abs=1e-12)
    assert result.map50_95 == pytest.approx(0.1, abs=1e-12)


@pytest.mark.parametrize("metric", METRICS)
def test_precision_and_recall_come_from_a_score_threshold(metric: str) -> None:
    # a TP and a FP with the same score: no threshold keeps one without the other, so the F1-best
    # operating point is precision 1/2, recall 1 (a cut between them would claim precision 1)
    boxes = grid_boxes(2)
    result = evaluate([Annotation.of(boxes[:1], [0])], [dets(boxes, [0.9, 0.9], 0)], 1, metric)
    assert (result.precision, result.recall) == (0.5, 1.0)


@pytest.mark.parametrize(("metric", "ap"), [("voc12", 0.5), ("voc07", 6 / 11), ("coco", 51 / 101)])
def test_half_the_objects_missed(metric: str, ap: float) -> None:
    # 10 objects over two images, the 5 found are found perfectly: precision 1 up to recall 0.5.
    # voc07 samples recall 0, 0.1, ..., 0.5 -> 6 of 11 points; COCO 0, 0.01, ..., 0.50 -> 51 of 101.
    gts = [Annotation.of(grid_boxes(6), [0] * 6), Annotation.of(grid_boxes(4), [0] * 4)]
    preds = [dets(grid_boxes(6)[:3], [0.9, 0.8, 0.7], 0), dets(grid_boxes(4)[:2], [0.85, 0.75], 0)]
    result = evaluate(gts, preds, 1, metric)
    assert result.map50 == pytest.approx(ap, abs=1e-12)
    assert result.map50_95 == pytest.approx(ap, abs=1e-12)
    assert result.recall == pytest.approx(0.5) and result.precision == 1.0


@pytest.mark.parametrize("metric", METRICS)
def test_false_positives_below_every_true_positive_change_nothing(metric: str) -> None:
    boxes = grid_boxes(4)
    gts = [Annotation.of(boxes, [0] * 4)]
    clean = dets(boxes, [0.9, 0.8, 0.7, 0.6], 0)
    noise = dets(grid_boxes(8)[4:], [0.5, 0.4, 0.3, 0.2], 0)  # nowhere near any object
    result = evaluate(gts, [np.concatenate([clean, noise])], 1, metric)
    assert result.map50 == pytest.approx(1.0, abs=1e-12)
    assert result.precision == 1.0 and result.recall == 1.0  # the F1-best cut is above the noise


@pytest.mark.parametrize("metric", METRICS)
def test_one_false_positive_above_two_true_positives(metric: str) -> None:
    # ranking FP, TP, TP over 2 objects: precision 0, 1/2, 2/3 at recall 0, 1/2, 1. The precision
    # envelope is 2/3 at every recall level, so every AP definition gives 2/3.
    boxes = grid_boxes(3)
    result = evaluate([Annotation.of(boxes[:2], [0, 0])], [dets(boxes[[2, 0, 1]], [0.9, 0.8, 0.7], 0)], 1, metric)
    assert result.map50 == pytest.approx(2 / 3, abs=1e-12)
    assert result.precision == pytest.approx(2 / 3) and result.recall == 1.0


@pytest.mark.parametrize("metric", METRICS)
def test_the_higher_score_claims_the_object_whatever_the_input_order(metric: str) -> None:
    # listed first: a perfect box with a low score; second: an IoU-0.7 box with a high score.
    # The high score takes the object (TP) and the perfect box is a duplicate ranked after it.
    gt = Annotation.of([[0, 0, 100, 100]], [0])
    pred = dets([[0, 0, 100, 100], [0, 0, 100, 70]], [0.3, 0.9], 0)
    assert evaluate([gt], [pred], 1, metric).map50 == pytest.approx(1.0, abs=1e-12)


def test_voc07_samples_recall_levels_exactly() -> None:
    # 10 objects; ranking TP TP TP FP TP: precision 1 up to recall 0.3 exactly, then 4/5 at 0.4.
    # The level 0.3 must see precision 1 (accumulating 0.1 steps would give 0.30000000000000004).
    boxes = grid_boxes(11)
    pred = dets(boxes[[0, 1, 2, 10, 3]], descending(5), 0)
    result = evaluate([Annotation.of(boxes[:10], [0] * 10)], [pred], 1, "voc07")
    assert result.map50 == pytest.approx((4 * 1.0 + 0.8) / 11, abs=1e-12)


@pytest.mark.parametrize(
    ("metric", "ap"), [("voc12", 5 / 6), ("voc07", (6 + 5 * 2 / 3) / 11), ("coco", (51 + 50 * 2 / 3) / 101)]
)
def test_a_duplicate_detection_is_a_false_positive(metric: str, ap: float) -> None:
    # ranking TP(A), duplicate(A), TP(B) over 2 objects: if the duplicate counted it would not cost
    # precision; as a FP, precision is 1 up to recall 1/2 and 2/3 beyond.
    boxes = grid_boxes(2)
    preds = dets(boxes[[0, 0, 1]] + np.array([[0, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], np.float32), [0.9, 0.8, 0.7], 0)
    result = evaluate([Annotation.of(boxes, [0, 0])], [preds], 1, metric)
    assert result.map50 == pytest.approx(ap, abs=1e-12)


def _difficult_case() -> tuple[np.ndarray, Annotation]:
    boxes = grid_boxes(3)
    return boxes, Annotation.of(boxes, [0, 0, 0], difficult=[False, False, True])


@pytest.mark.parametrize("metric", ["voc07", "voc12"])
def test_a_detection_on_a_difficult_box_neither_helps_nor_hurts_under_voc(metric: str) -> None:
    boxes, gt = _difficult_case()
    # the difficult box is found first and by two detections: both must be ignored, not FPs
    found = evaluate([gt], [dets(boxes[[2, 2, 0, 1]], [0.99, 0.95, 0.8, 0.7], 0)], 1, metric)
    assert found.map50 == pytest.approx(1.0, abs=1e-12) and found.precision == 1.0
    assert found.per_class[0].num_gt == 2
    # missing it costs no recall
    missed = evaluate([gt], [dets(boxes[:2], [0.8, 0.7], 0)], 1, metric)
    assert missed.recall == 1.0 and missed.map50 == pytest.approx(1.0, abs=1e-12)


def test_difficult_boxes_are_ordinary_ground_truth_under_coco() -> None:
    boxes, gt = _difficult_case()
    missed = evaluate([gt], [dets(boxes[:2], [0.8, 0.7], 0)], 1, "coco")
    assert missed.per_class[0].num_gt == 3
    assert missed.recall == pytest.approx(2 / 3)
    assert missed.map50 == pytest.approx(67 / 101, abs=1e-12)  # precision 1 at recall 0 .. 0.66


@pytest.mark.parametrize(
    ("metric", "half"), [("voc12", 0.5), ("voc07", 6 / 11), ("coco", 51 / 101)]
)
def test_per_class_values_and_a_class_without_ground_truth(metric: str, half: float) -> None:
    # class 0 found perfectly, class 1 half found, class 2 has no objects but one false detection
    b = grid_boxes(6)
    gt = Annotation.of(b, [0, 0, 1, 1, 1, 1])
    pred = np.concatenate([dets(b[:2], [0.9, 0.8], 0), dets(b[2:4], [0.7, 0.6], 1), dets(grid_boxes(8)[7], 0.95, 2)])
    result = evaluate([gt], [pred], 3, metric, names=["cat", "dog", "emu"])
    cat, dog, emu = result.per_class
    assert (cat.name, cat.num_gt, cat.ap50) == ("cat", 2, pytest.approx(1.0, abs=1e-12))
    assert (dog.name, dog.num_gt, dog.ap50, dog.recall) == ("dog", 4, pytest.approx(half, abs=1e-12), 0.5)
    assert emu.num_gt == 0 and all(math.isnan(v) for v in (emu.ap50, emu.ap50_95, emu.precision, emu.recall))
    assert result.map50 == pytest.approx((1.0 + half) / 2, abs=1e-12)
    assert result.recall == pytest.approx(0.75)
    rows = result.table()
    assert rows[0] == TABLE_HEADER and [r[0] for r in rows] == ["class", "cat", "dog", "emu", "all"]
    assert rows[3][4] == "-" and rows[4][1] == "6"
    data = result.to_dict()
    json.dumps(data, allow_nan=False)
    assert data["per_class"][2]["ap50"] is None and data["map50"] == pytest.approx((1.0 + half) / 2)


# ---------------------------------------------------------------- COCO against pycocotools on files


def _random_dataset(seed: int = 0, images: int = 20, classes: int = 3) -> tuple[list[Annotation], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for _ in range(images):
        n = int(rng.integers(0, 8))
        xy = rng.uniform(0, 500, (n, 2))
        wh = rng.uniform(4, 150, (n, 2))  # spans COCO's small, medium and large
        boxes = np.concatenate([xy, xy + wh], axis=1)
        cls = rng.integers(0, classes, n)
        gts.append(Annotation.of(boxes, cls, rng.random(n) < 0.15))
        keep = rng.random(n) < 0.8
        noisy = boxes[keep] + rng.normal(0, 0.12, (int(keep.sum()), 4)) * np.tile(wh[keep], 2)
        dcls = np.where(rng.random(int(keep.sum())) < 0.1, rng.integers(0, classes, int(keep.sum())), cls[keep])
        m = int(rng.integers(0, 6))
        fxy = rng.uniform(0, 500, (m, 2))
        false = np.concatenate([fxy, fxy + rng.uniform(4, 150, (m, 2))], axis=1)
        d = np.concatenate(
            [
                dets(noisy, rng.uniform(0.3, 1.0, len(noisy)), dcls),
                np.concatenate([false, rng.uniform(0.0, 0.8, (m, 1)), rng.integers(0, classes, (m, 1))], axis=1),
            ]
        )
        preds.append(d.astype(np.float32))
    return gts, preds


def _pycocotools_on_files(tmp_path, gts, preds, image_ids, category_ids, cat_filter=None) -> np.ndarray:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt_file, dt_file = tmp_path / "gt.json", tmp_path / "dt.json"
    names = [f"c{i}" for i in range(len(category_ids))]
    sizes = [(640, 480)] * len(gts)
    gt_file.write_text(json.dumps(coco_json(gts, image_ids, sizes, names, category_ids)))
    dt_file.write_text(json.dumps(coco_detections_json(preds, image_ids, category_ids)))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_file))
        coco_dt = coco_gt.loadRes(str(dt_file))
        coco_eval = COCOeval(coco_gt, coco_dt, "bbox")
        if cat_filter is not None:
            coco_eval.params.catIds = [cat_filter]
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


def test_coco_equals_pycocotools_run_on_json_files(tmp_path) -> None:
    gts, preds = _random_dataset()
    assert sum(len(p) for p in preds) > 50 and all(len(p) <= 100 for p in preds)
    image_ids = [1000 + 7 * i for i in range(len(gts))]
    category_ids = [5, 2, 9]  # unsorted on purpose: pycocotools orders its category axis by id
    ours = evaluate(gts, preds, 3, "coco", image_ids=image_ids, category_ids=category_ids)
    stats = _pycocotools_on_files(tmp_path, gts, preds, image_ids, category_ids)
    assert 0.05 < stats[0] < 0.95  # a non-trivial case
    assert ours.map50_95 == pytest.approx(stats[0], abs=1e-12)
    assert ours.map50 == pytest.approx(stats[1], abs=1e-12)
    for c, cid in enumerate(category_ids):
        alone = _pycocotools_on_files(tmp_path, gts, preds, image_ids, category_ids, cat_filter=cid)
        assert ours.per_class[c].ap50_95 == pytest.approx(alone[0], abs=1e-12)
        assert ours.per_class[c].ap50 == pytest.approx(alone[1], abs=1e-12)


def test_coco_json_shapes() -> None:
    gt = Annotation.of([[10, 20, 40, 60]], [1], [True])
    data = coco_json([gt], ["a"], [(640, 480)], ["x", "y"])
    assert data["images"] == [{"id": "a", "width": 640, "height": 480}]
    assert data["annotations"] == [
        {"id": 1, "image_id": "a", "category_id": 2, "bbox": [10.0, 20.0, 30.0, 40.0], "area": 1200.0, "iscrowd": 0}
    ]
    assert data["categories"] == [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]
    results = coco_detections_json([dets([[1, 2, 4, 8]], 0.5, 1)], [7], category_ids=[3, 11])
    assert results == [{"image_id": 7, "category_id": 11, "bbox": [1.0, 2.0, 3.0, 6.0], "score": 0.5}]


# ---------------------------------------------------------------- max_det and edge cases


@pytest.mark.parametrize("metric", METRICS)
def test_only_the_top_max_det_detections_per_image_count(metric: str) -> None:
    # 150 objects, all found perfectly: 100 of class 0 scored above 50 of class 1. pycocotools alone
    # caps per image *and class* and would keep all 150; the per-image cap drops class 1 entirely.
    boxes = grid_boxes(150, size=8.0, step=10.0)
    classes = np.array([0] * 100 + [1] * 50)
    gt = Annotation.of(boxes, classes)
    pred = dets(boxes, descending(150), classes)
    capped = evaluate([gt], [pred[::-1].copy()], 2, metric)  # input order must not matter
    assert capped.num_detections == 100
    assert [c.ap50 for c in capped.per_class] == [pytest.approx(1.0, abs=1e-12), 0.0]
    assert capped.map50 == pytest.approx(0.5, abs=1e-12)
    assert evaluate([gt], [pred], 2, metric, max_det=150).map50 == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("metric", METRICS)
def test_no_detections_and_no_ground_truth(metric: str) -> None:
    gts = [Annotation.of(grid_boxes(2), [0, 1]), Annotation.empty()]
    empty = evaluate(gts, [np.zeros((0, 6), np.float32)] * 2, 2, metric)
    assert empty.map50 == 0.0 and empty.map50_95 == 0.0 and empty.recall == 0.0
    nothing = evaluate([Annotation.empty()], [dets(grid_boxes(1), 0.9, 0)], 2, metric)
    assert math.isnan(nothing.map50) and math.isnan(nothing.precision)
    assert isinstance(nothing, EvalResult) and nothing.to_dict()["map50"] is None


def test_bad_input_raises_usage_error() -> None:
    gt = [Annotation.of(grid_boxes(1), [0]), Annotation.of(grid_boxes(1), [1])]
    good = [dets(grid_boxes(1), 0.9, 0), dets(grid_boxes(1), 0.9, 1)]
    evaluate(gt, good, 2)  # the baseline is accepted
    with pytest.raises(UsageError, match="2 images but detections cover 1"):
        evaluate(gt, good[:1], 2)
    with pytest.raises(UsageError, match=r"image 1: detections must be \[M, 6\]"):
        evaluate(gt, [good[0], good[1][:, :5]], 2)
    with pytest.raises(UsageError, match="image 1: detection class id 2 is outside"):
        evaluate(gt, [good[0], dets(grid_boxes(1), 0.9, 2)], 2)
    with pytest.raises(UsageError, match=r"image 1 \(id 'b'\): ground-truth class id 1 is outside"):
        evaluate(gt, [good[0], good[0]], 1, image_ids=["a", "b"])  # the ground truth's class 1
    with pytest.raises(UsageError, match="whole numbers"):
        evaluate(gt, [good[0], dets(grid_boxes(1), 0.9, 0.5)], 2)
    with pytest.raises(UsageError, match="NaN"):
        evaluate(gt, [good[0], dets(grid_boxes(1), np.nan, 0)], 2)
    with pytest.raises(UsageError, match="metric"):
        evaluate(gt, good, 2, metric="voc10")
    with pytest.raises(UsageError, match="names"):
        evaluate(gt, good, 2, names=["a"])
    with pytest.raises(UsageError, match="max_det"):
        evaluate(gt, good, 2, max_det=0)
    with pytest.raises(UsageError, match="num_classes"):
        evaluate(gt, good, 0)
    with pytest.raises(UsageError, match="category_ids"):
        evaluate(gt, good, 2, category_ids=[1, 1])
    with pytest.raises(UsageError, match="image_ids"):
        evaluate(gt, good, 2, image_ids=[1])
    with pytest.raises(UsageError, match="sizes"):
        coco_json(gt, [1, 2], [(10, 10)], ["a", "b"])
