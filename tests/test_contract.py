"""The pre/post-processing contract: letterbox, channel order, decode-to-pixels, scoring and NMS."""
from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from edgeyolo.contract import Contract, Letterbox, box_iou, nms
from edgeyolo.errors import UsageError

# ---------------------------------------------------------------- helpers


def _image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A BGR uint8 image whose three channels differ everywhere, so channel swaps show."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    img[..., 0] = 10  # B constant, R and G random: B != R almost everywhere
    return img


def _row(box_xyxy_in: tuple[float, float, float, float], obj: float, probs: list[float]) -> list[float]:
    """One decoded prediction row (cx, cy, w, h in input pixels, obj, class probs) from an input-space xyxy box."""
    x1, y1, x2, y2 = box_xyxy_in
    return [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1, obj, *probs]


def _to_input(box: Letterbox, xyxy: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x1, y1, x2, y2 = xyxy
    return (
        x1 * box.scale_x + box.pad_x,
        y1 * box.scale_y + box.pad_y,
        x2 * box.scale_x + box.pad_x,
        y2 * box.scale_y + box.pad_y,
    )


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Plain-Python IoU of two xyxy boxes (independent of box_iou)."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reference_nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray | None, thr: float) -> list[int]:
    """Brute force: visit by descending score, keep a box unless a kept box of its class overlaps it > thr."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep: list[int] = []
    for i in order:
        rivals = [k for k in keep if classes is None or classes[k] == classes[i]]
        if all(_iou(boxes[i], boxes[k]) <= thr for k in rivals):
            keep.append(i)
    return keep


# ---------------------------------------------------------------- letterbox geometry


@pytest.mark.parametrize(
    ("orig_h", "orig_w", "net_h", "net_w", "expected"),
    [
        # landscape 640x480 -> 416: width-limited, 416x312, 52 rows of pad above and below
        (480, 640, 416, 416, (312, 416, 0.0, 52.0)),
        # portrait 480x640 (w x h) -> 416: height-limited, 312 wide, 52 columns of pad
        (640, 480, 416, 416, (416, 312, 52.0, 0.0)),
        # square: fills the input, no pad
        (500, 500, 416, 416, (416, 416, 0.0, 0.0)),
        (416, 416, 416, 416, (416, 416, 0.0, 0.0)),
        # darknet integer arithmetic truncates: 333*608//1000 = 202, pad (608-202)//2 = 203
        (333, 1000, 608, 608, (202, 608, 0.0, 203.0)),
        # odd pad splits with the extra pixel at the far side: 7*416//1000 = 2, pad (416-2)//2 = 207
        (7, 1000, 416, 416, (2, 416, 0.0, 207.0)),
        # non-square input 320x416 (h x w), a 640x480 landscape: width-limited (416/640 < 320/480)
        (480, 640, 320, 416, (312, 416, 0.0, 4.0)),
    ],
)
def test_letterbox_geometry(orig_h, orig_w, net_h, net_w, expected) -> None:
    new_h, new_w, box = Contract(height=net_h, width=net_w).letterbox_geometry(orig_h, orig_w)
    exp_h, exp_w, exp_px, exp_py = expected
    assert (new_h, new_w) == (exp_h, exp_w)
    assert (box.pad_x, box.pad_y) == (exp_px, exp_py)
    assert box.scale_x == pytest.approx(new_w / orig_w) and box.scale_y == pytest.approx(new_h / orig_h)
    assert (box.orig_h, box.orig_w) == (orig_h, orig_w)
    assert new_h <= net_h and new_w <= net_w


def test_letterbox_geometry_matches_darknet_formula_on_many_sizes() -> None:
    c = Contract(height=416, width=416)
    for orig_h, orig_w in itertools.product((1, 31, 240, 479, 480, 720, 1081), (1, 33, 320, 640, 641, 1920)):
        if c.width / orig_w < c.height / orig_h:
            exp_w, exp_h = c.width, (orig_h * c.width) // orig_w
        else:
            exp_h, exp_w = c.height, (orig_w * c.height) // orig_h
        exp_w, exp_h = max(exp_w, 1), max(exp_h, 1)
        new_h, new_w, box = c.letterbox_geometry(orig_h, orig_w)
        assert (new_h, new_w) == (exp_h, exp_w), (orig_h, orig_w)
        assert (box.pad_x, box.pad_y) == ((c.width - exp_w) // 2, (c.height - exp_h) // 2)


def test_stretch_geometry_has_no_pad() -> None:
    new_h, new_w, box = Contract(resize="stretch").letterbox_geometry(480, 640)
    assert (new_h, new_w) == (416, 416)
    assert (box.pad_x, box.pad_y) == (0.0, 0.0)
    assert (box.scale_x, box.scale_y) == (416 / 640, 416 / 480)


# ---------------------------------------------------------------- preprocess


def test_preprocess_landscape_pad_and_image_region() -> None:
    img = _image(480, 640)
    blob, box = Contract().preprocess(img)
    assert blob.shape == (1, 3, 416, 416) and blob.dtype == np.float32 and blob.flags["C_CONTIGUOUS"]
    assert (box.pad_x, box.pad_y) == (0.0, 52.0)
    # padded rows are exactly 0.5, on every channel
    assert np.all(blob[0, :, :52, :] == 0.5)
    assert np.all(blob[0, :, 52 + 312 :, :] == 0.5)
    # the image region is the linear resize of the RGB image, scaled to [0, 1]
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    expected = cv2.resize(rgb, (416, 312), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    np.testing.assert_allclose(blob[0, :, 52 : 52 + 312, :].transpose(1, 2, 0), expected, rtol=0, atol=1e-6)


def test_preprocess_portrait_pads_columns() -> None:
    img = _image(640, 480, seed=1)
    blob, box = Contract().preprocess(img)
    assert (box.pad_x, box.pad_y) == (52.0, 0.0)
    assert np.all(blob[0, :, :, :52] == 0.5) and np.all(blob[0, :, :, 52 + 312 :] == 0.5)
    rgb = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    expected = cv2.resize(rgb, (312, 416), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    np.testing.assert_allclose(blob[0, :, :, 52 : 52 + 312].transpose(1, 2, 0), expected, rtol=0, atol=1e-6)


def test_preprocess_same_size_is_not_resized() -> None:
    img = _image(416, 416, seed=2)
    blob, _ = Contract().preprocess(img)
    expected = cv2.cvtColor(img, cv2.COLOR_BGR2RGB).astype(np.float32) / 255.0
    np.testing.assert_allclose(blob[0].transpose(1, 2, 0), expected, rtol=0, atol=1e-6)


def test_preprocess_custom_pad_value() -> None:
    blob, _ = Contract(pad_value=0.0).preprocess(_image(480, 640))
    assert np.all(blob[0, :, :52, :] == 0.0)


def test_channel_order_rgb_bgr_gray() -> None:
    img = _image(480, 640, seed=3)
    rgb, _ = Contract(channel_order="rgb").preprocess(img)
    bgr, _ = Contract(channel_order="bgr").preprocess(img)
    gray, _ = Contract(channel_order="gray").preprocess(img)
    np.testing.assert_array_equal(rgb[0, ::-1], bgr[0])  # the same planes, reversed
    assert not np.array_equal(rgb, bgr)
    region = (slice(None), slice(None), slice(52, 52 + 312), slice(None))
    assert np.allclose(bgr[region][0, 0], 10 / 255.0)  # plane 0 is B in bgr order
    assert Contract(channel_order="gray").channels == 1
    assert gray.shape == (1, 1, 416, 416)
    expected = cv2.resize(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), (416, 312), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(gray[0, 0, 52 : 52 + 312], expected.astype(np.float32) / 255.0, rtol=0, atol=1e-6)
    assert np.all(gray[0, 0, :52] == 0.5)


def test_preprocess_accepts_gray_and_bgra_inputs() -> None:
    img = _image(480, 640, seed=4)
    from_gray, _ = Contract().preprocess(img[..., 1])
    assert from_gray.shape == (1, 3, 416, 416)
    np.testing.assert_array_equal(from_gray[0, 0], from_gray[0, 2])
    from_bgra, _ = Contract().preprocess(cv2.cvtColor(img, cv2.COLOR_BGR2BGRA))
    np.testing.assert_array_equal(from_bgra, Contract().preprocess(img)[0])
    with pytest.raises(UsageError):
        Contract().preprocess(np.zeros((4, 4, 2), dtype=np.uint8))


# ---------------------------------------------------------------- postprocess


@pytest.mark.parametrize(
    ("orig_h", "orig_w", "contract"),
    [
        (480, 640, Contract()),
        (640, 480, Contract()),
        (500, 500, Contract()),
        (333, 1000, Contract(height=608, width=608)),
        (480, 640, Contract(height=320, width=416)),
        (480, 640, Contract(resize="stretch")),
    ],
)
def test_postprocess_maps_boxes_back_to_original_pixels(orig_h, orig_w, contract) -> None:
    _, _, box = contract.letterbox_geometry(orig_h, orig_w)
    known = [
        (0.1 * orig_w, 0.2 * orig_h, 0.45 * orig_w, 0.6 * orig_h),
        (0.6 * orig_w, 0.5 * orig_h, 0.9 * orig_w, 0.95 * orig_h),
    ]
    pred = np.array(
        [_row(_to_input(box, known[0]), 0.9, [0.0, 1.0]), _row(_to_input(box, known[1]), 0.8, [1.0, 0.0])],
        dtype=np.float32,
    )
    det = contract.postprocess(pred, box)
    assert det.shape == (2, 6) and det.dtype == np.float32
    np.testing.assert_allclose(det[0, :4], known[0], rtol=0, atol=1e-3)
    np.testing.assert_allclose(det[1, :4], known[1], rtol=0, atol=1e-3)
    assert det[0, 5] == 1 and det[1, 5] == 0


def test_postprocess_without_mapping_stays_in_input_pixels_and_clips_with_mapping() -> None:
    pred = np.array([_row((10, 20, 110, 220), 1.0, [1.0])], dtype=np.float32)
    det = Contract().postprocess(pred)
    np.testing.assert_allclose(det[0, :4], [10, 20, 110, 220], atol=1e-4)
    # a box reaching into the pad is clipped to the original image
    _, _, box = Contract().letterbox_geometry(480, 640)
    det = Contract().postprocess(np.array([_row((-5, 10, 100, 400), 1.0, [1.0])], dtype=np.float32), box)
    x1, y1, x2, y2 = det[0, :4]
    assert x1 == 0 and y1 == 0 and y2 == 480 and x2 == pytest.approx(100 / 0.65, abs=1e-3)


def test_score_is_objectness_times_class_probability() -> None:
    pred = np.array([_row((0, 0, 50, 50), 0.8, [0.1, 0.6, 0.3])], dtype=np.float32)
    det = Contract(conf_threshold=0.2).postprocess(pred)
    # 0.8*0.1 = 0.08 dropped; 0.8*0.6 = 0.48 and 0.8*0.3 = 0.24 kept (multi-label), sorted by score
    assert det[:, 5].tolist() == [1.0, 2.0]
    np.testing.assert_allclose(det[:, 4], [0.48, 0.24], rtol=1e-6)


def test_conf_threshold() -> None:
    pred = np.array(
        [_row((0, 0, 50, 50), 0.5, [0.52]), _row((100, 100, 150, 150), 0.5, [0.48])], dtype=np.float32
    )  # scores 0.26 and 0.24
    det = Contract(conf_threshold=0.25).postprocess(pred)
    assert len(det) == 1 and det[0, 4] == pytest.approx(0.26)
    assert len(Contract(conf_threshold=0.2).postprocess(pred)) == 2
    out = Contract(conf_threshold=0.3).postprocess(pred)
    assert out.shape == (0, 6) and out.dtype == np.float32


def test_per_class_nms_keeps_other_classes_agnostic_suppresses() -> None:
    pred = np.array(
        [
            _row((100, 100, 200, 200), 0.9, [1.0, 0.0]),  # class 0
            _row((105, 105, 205, 205), 0.8, [0.0, 1.0]),  # class 1, IoU ~0.82 with the first
            _row((102, 102, 202, 202), 0.7, [1.0, 0.0]),  # class 0 again: suppressed in both modes
        ],
        dtype=np.float32,
    )
    per_class = Contract().postprocess(pred)
    assert sorted(per_class[:, 5].tolist()) == [0.0, 1.0]
    np.testing.assert_allclose(per_class[:, 4], [0.9, 0.8], rtol=1e-6)
    agnostic = Contract(agnostic_nms=True).postprocess(pred)
    assert len(agnostic) == 1 and agnostic[0, 5] == 0 and agnostic[0, 4] == pytest.approx(0.9)


def test_same_box_two_labels_survives_per_class_nms_only() -> None:
    pred = np.array([_row((10, 10, 60, 60), 0.9, [0.5, 0.6])], dtype=np.float32)
    assert len(Contract().postprocess(pred)) == 2
    assert len(Contract(agnostic_nms=True).postprocess(pred)) == 1


def test_max_detections_caps_to_the_best() -> None:
    rows = [_row((i * 30, 0, i * 30 + 20, 20), 0.3 + 0.05 * i, [1.0]) for i in range(10)]  # disjoint boxes
    pred = np.array(rows, dtype=np.float32)
    assert len(Contract().postprocess(pred)) == 10
    det = Contract(max_detections=3).postprocess(pred)
    assert len(det) == 3
    np.testing.assert_allclose(det[:, 4], [0.75, 0.7, 0.65], rtol=1e-6)


def test_classes_filter() -> None:
    rows = [_row((i * 30, 0, i * 30 + 20, 20), 0.9, np.eye(4)[i % 4].tolist()) for i in range(8)]
    pred = np.array(rows, dtype=np.float32)
    det = Contract(classes=(1, 3)).postprocess(pred)
    assert len(det) == 4 and set(det[:, 5].tolist()) == {1.0, 3.0}
    assert Contract(classes=(2,)).postprocess(pred)[:, 5].tolist() == [2.0, 2.0]
    assert Contract(classes=(7,)).postprocess(pred).shape == (0, 6)


def test_postprocess_rejects_bad_shapes() -> None:
    with pytest.raises(UsageError):
        Contract().postprocess(np.zeros((3, 5), dtype=np.float32))
    with pytest.raises(UsageError):
        Contract().postprocess(np.zeros((1, 3, 85), dtype=np.float32))


def test_postprocess_empty_prediction() -> None:
    assert Contract().postprocess(np.zeros((0, 85), dtype=np.float32)).shape == (0, 6)


# ---------------------------------------------------------------- nms


@pytest.mark.parametrize("agnostic", [False, True])
@pytest.mark.parametrize("thr", [0.1, 0.45, 0.7])
def test_nms_matches_brute_force_reference(agnostic: bool, thr: float) -> None:
    rng = np.random.default_rng(1234)
    n = 200
    xy = rng.uniform(0, 300, size=(n, 2))
    wh = rng.uniform(10, 120, size=(n, 2))
    boxes = np.concatenate([xy, xy + wh], axis=1).astype(np.float32)
    scores = rng.uniform(0, 1, size=n).astype(np.float32)
    classes = None if agnostic else rng.integers(0, 3, size=n)
    got = nms(boxes, scores, classes, thr)
    expected = _reference_nms(boxes.astype(np.float64), scores, classes, thr)
    assert got.dtype == np.int64
    assert got.tolist() == expected
    assert 0 < len(expected) < n  # the data exercise suppression


def test_nms_edge_cases() -> None:
    empty = nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), 0.5)
    assert empty.shape == (0,) and empty.dtype == np.int64
    assert nms(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), None, 0.5).shape == (0,)
    one = nms(np.array([[0, 0, 1, 1]], np.float32), np.array([0.3], np.float32), np.array([2]), 0.5)
    assert one.tolist() == [0]
    # identical boxes, equal scores: the first one wins (stable order)
    same = nms(np.array([[0, 0, 10, 10]] * 3, np.float32), np.full(3, 0.5, np.float32), None, 0.5)
    assert same.tolist() == [0]


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 0]], dtype=np.float64)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], dtype=np.float64)
    np.testing.assert_allclose(box_iou(a, b), [[50 / 150, 0, 1], [0, 0, 0]])


# ---------------------------------------------------------------- settings


@pytest.mark.parametrize(
    "contract",
    [
        Contract(),
        Contract(height=320, width=608, resize="stretch", interpolation="area", channel_order="gray"),
        Contract(classes=(0, 2, 5), agnostic_nms=True, conf_threshold=0.001, iou_threshold=0.6, max_detections=300),
    ],
)
def test_json_round_trip(contract: Contract) -> None:
    text = contract.to_json()
    assert isinstance(text, str)
    back = Contract.from_json(text)
    assert back == contract
    assert hash(back) == hash(contract)
    assert back.to_json() == text


@pytest.mark.parametrize(
    "kwargs",
    [
        {"height": 400},  # not a multiple of 32
        {"width": 415},
        {"height": 0},
        {"width": -32},
        {"resize": "crop"},  # unknown resize mode
        {"interpolation": "lanczos"},
        {"channel_order": "rgba"},
        {"conf_threshold": 1.5},
        {"iou_threshold": -0.1},
        {"max_detections": 0},
    ],
)
def test_invalid_settings_raise_usage_error(kwargs) -> None:
    with pytest.raises(UsageError):
        Contract(**kwargs)


def test_from_json_with_bad_values_raises_usage_error() -> None:
    text = Contract().to_json().replace('"resize": "letterbox"', '"resize": "fit"')
    with pytest.raises(UsageError, match="resize"):
        Contract.from_json(text)
