"""The one pre/post-processing contract shared by every runtime, host and board alike.

A mismatch in letterbox, channel order, scale, decode or NMS between host and board is the usual
reason on-board mAP drops, so there is exactly one definition, recorded in every exported artifact
(ONNX metadata, bundle manifests) and read back by the runners. numpy only (cv2 imported lazily):
the board agent uses it without torch.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from edgeyolo.errors import UsageError

RESIZE_MODES = ("letterbox", "stretch")
INTERPOLATIONS = {"linear": 1, "nearest": 0, "area": 3, "cubic": 2}  # cv2.INTER_* values
CHANNEL_ORDERS = ("rgb", "bgr", "gray")


def channel_order_for(channels: int) -> str:
    """The contract's channel order for a cfg's ``[net] channels``: 1 -> gray, otherwise RGB."""
    return "gray" if channels == 1 else "rgb"


@dataclass(frozen=True)
class Letterbox:
    """How an original image maps into the network input: ``x_in = x_orig * scale + pad_x``."""

    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float
    orig_h: int
    orig_w: int


@dataclass(frozen=True)
class Contract:
    height: int = 416
    width: int = 416
    resize: str = "letterbox"  # darknet letterbox: aspect kept, centred, grey pad
    interpolation: str = "linear"
    pad_value: float = 0.5  # after scaling to [0, 1]
    channel_order: str = "rgb"
    scale: float = 1.0 / 255.0
    conf_threshold: float = 0.25
    iou_threshold: float = 0.45
    max_detections: int = 100
    agnostic_nms: bool = False
    score: str = "objectness*class"  # darknet's convention
    box_format: str = "cxcywh-input-pixels"
    classes: tuple[int, ...] | None = None  # keep only these class ids
    max_candidates: int = 30000  # highest-scoring (box, class) pairs that enter NMS
    version: int = field(default=1)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise UsageError(f"resize must be one of {RESIZE_MODES}, got '{self.resize}'")
        if self.interpolation not in INTERPOLATIONS:
            raise UsageError(f"interpolation must be one of {tuple(INTERPOLATIONS)}, got '{self.interpolation}'")
        if self.channel_order not in CHANNEL_ORDERS:
            raise UsageError(f"channel_order must be one of {CHANNEL_ORDERS}, got '{self.channel_order}'")
        if self.height <= 0 or self.width <= 0 or self.height % 32 or self.width % 32:
            raise UsageError(f"input size must be a positive multiple of 32, got {self.height}x{self.width}")
        if not 0.0 <= self.conf_threshold <= 1.0 or not 0.0 <= self.iou_threshold <= 1.0:
            raise UsageError("conf and iou thresholds must lie in [0, 1]")
        if self.max_detections <= 0:
            raise UsageError(f"max detections must be positive, got {self.max_detections}")

    @property
    def channels(self) -> int:
        return 1 if self.channel_order == "gray" else 3

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Contract":
        data: dict[str, Any] = json.loads(text)
        if data.get("classes") is not None:
            data["classes"] = tuple(data["classes"])
        return cls(**data)

    # ------------------------------------------------------------------ pre

    def letterbox_geometry(self, orig_h: int, orig_w: int) -> tuple[int, int, Letterbox]:
        """(new_h, new_w, mapping), with darknet's integer arithmetic for the resized size."""
        if self.resize == "stretch":
            return self.height, self.width, Letterbox(self.width / orig_w, self.height / orig_h, 0.0, 0.0, orig_h, orig_w)
        if self.width / orig_w < self.height / orig_h:
            new_w, new_h = self.width, (orig_h * self.width) // orig_w
        else:
            new_h, new_w = self.height, (orig_w * self.height) // orig_h
        new_w, new_h = max(new_w, 1), max(new_h, 1)
        pad_x, pad_y = (self.width - new_w) // 2, (self.height - new_h) // 2
        return new_h, new_w, Letterbox(new_w / orig_w, new_h / orig_h, float(pad_x), float(pad_y), orig_h, orig_w)

    def preprocess(self, image_bgr: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """BGR uint8 HxWx3 (OpenCV's imread) or HxW gray -> float32 [1, C, H, W] blob and the mapping."""
        import cv2

        if image_bgr.ndim == 2:
            image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
        if image_bgr.ndim != 3 or image_bgr.shape[2] not in (3, 4):
            raise UsageError(f"expected an HxWx3 image, got shape {image_bgr.shape}")
        if image_bgr.shape[2] == 4:
            image_bgr = cv2.cvtColor(image_bgr, cv2.COLOR_BGRA2BGR)
        h, w = image_bgr.shape[:2]
        new_h, new_w, box = self.letterbox_geometry(h, w)
        if self.channel_order == "rgb":
            image = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        elif self.channel_order == "gray":
            image = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)[:, :, None]
        else:
            image = image_bgr
        if (new_h, new_w) != (h, w):
            image = cv2.resize(image, (new_w, new_h), interpolation=INTERPOLATIONS[self.interpolation])
            if image.ndim == 2:
                image = image[:, :, None]
        canvas = np.full((self.height, self.width, self.channels), self.pad_value, dtype=np.float32)
        x0, y0 = int(box.pad_x), int(box.pad_y)
        canvas[y0 : y0 + new_h, x0 : x0 + new_w] = image.astype(np.float32) * self.scale
        return np.ascontiguousarray(canvas.transpose(2, 0, 1)[None]), box

    # ------------------------------------------------------------------ post

    def postprocess(self, prediction: np.ndarray, box: Letterbox | None = None) -> np.ndarray:
        """Decoded [N, 5+C] rows (cx, cy, w, h in input pixels, obj, class probs) -> detections.

        Returns float32 [M, 6]: x1, y1, x2, y2 (original pixels when ``box`` is given), score, class,
        sorted by score, at most ``max_detections``. Score = objectness × class probability; every
        class above the threshold yields a candidate (darknet's multi-label behaviour).
        """
        pred = np.asarray(prediction, dtype=np.float32)
        if pred.ndim != 2 or pred.shape[1] < 6:
            raise UsageError(f"expected decoded predictions [N, 5+C], got shape {pred.shape}")
        scores = pred[:, 4:5] * pred[:, 5:]
        rows, cls = np.nonzero(scores > self.conf_threshold)
        if self.classes is not None:
            keep = np.isin(cls, np.asarray(self.classes))
            rows, cls = rows[keep], cls[keep]
        if rows.size == 0:
            return np.zeros((0, 6), dtype=np.float32)
        if rows.size > self.max_candidates:
            top = np.argsort(-scores[rows, cls], kind="stable")[: self.max_candidates]
            rows, cls = rows[top], cls[top]
        p = pred[rows]
        xyxy = np.stack(
            [p[:, 0] - p[:, 2] / 2, p[:, 1] - p[:, 3] / 2, p[:, 0] + p[:, 2] / 2, p[:, 1] + p[:, 3] / 2], axis=1
        )
        score = scores[rows, cls]
        keep = nms(xyxy, score, None if self.agnostic_nms else cls, self.iou_threshold, self.max_detections)
        det = np.concatenate([xyxy[keep], score[keep, None], cls[keep, None].astype(np.float32)], axis=1)
        if box is not None:
            det[:, [0, 2]] = ((det[:, [0, 2]] - box.pad_x) / box.scale_x).clip(0, box.orig_w)
            det[:, [1, 3]] = ((det[:, [1, 3]] - box.pad_y) / box.scale_y).clip(0, box.orig_h)
        return det.astype(np.float32)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix of xyxy boxes [N, 4] × [M, 4]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray | None, iou_threshold: float, max_keep: int | None = None
) -> np.ndarray:
    """Greedy NMS; per class unless ``classes`` is None. Returns kept indices by descending score.

    Boxes are visited in score order, so the sweep can stop after ``max_keep`` survivors without
    changing them: later boxes never suppress earlier ones. With max_keep = max detections this keeps
    an untrained model's tens of thousands of candidates at conf 0.001 to milliseconds.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if classes is not None and boxes.size:
        # shift each class into its own region so one sweep suppresses within classes only
        boxes = boxes + (np.asarray(classes, dtype=np.float64) * (boxes.max() - boxes.min() + 1.0))[:, None]
    order = np.argsort(-np.asarray(scores), kind="stable")
    x1, y1, x2, y2 = (boxes[:, k] if boxes.size else np.zeros(0) for k in range(4))
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep: list[int] = []
    limit = len(order) if max_keep is None else max_keep
    while order.size and len(keep) < limit:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        if not rest.size:
            break
        # the IoU of box i with the rest, same arithmetic as box_iou
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        union = area[i] + area[rest] - inter
        ious = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[ious <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


@dataclass(frozen=True)
class HeadSpec:
    """What decoding one raw ``[yolo]`` head needs: its anchors (input pixels), class count, scale_x_y."""

    anchors: tuple[tuple[float, float], ...]
    classes: int
    scale_x_y: float = 1.0


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def decode_heads(raws: list[np.ndarray], heads: list[HeadSpec], img_h: int, img_w: int) -> np.ndarray:
    """numpy twin of the model's decode, for runtimes that return raw heads (OpenCV, TensorRT, VART).

    Raw head [B, A·(5+C), H, W] -> [B, N, 5+C] rows ordered (head, anchor, y, x): cx, cy, w, h in input
    pixels, objectness, class probabilities.
    """
    out = []
    for raw, head in zip(raws, heads):
        raw = np.asarray(raw, dtype=np.float32)
        b, _, h, w = raw.shape
        a = len(head.anchors)
        p = raw.reshape(b, a, head.classes + 5, h, w).transpose(0, 1, 3, 4, 2)
        s = head.scale_x_y
        xy = _sigmoid(p[..., 0:2]) * s - 0.5 * (s - 1.0)
        gx = np.arange(w, dtype=np.float32).reshape(1, 1, 1, w)
        gy = np.arange(h, dtype=np.float32).reshape(1, 1, h, 1)
        anchors = np.asarray(head.anchors, dtype=np.float32).reshape(1, a, 1, 1, 2)
        decoded = np.empty_like(p)
        decoded[..., 0] = (xy[..., 0] + gx) * (img_w / w)
        decoded[..., 1] = (xy[..., 1] + gy) * (img_h / h)
        decoded[..., 2:4] = np.exp(np.minimum(p[..., 2:4], 60.0)) * anchors
        decoded[..., 4:] = _sigmoid(p[..., 4:])
        out.append(decoded.reshape(b, -1, head.classes + 5))
    return np.concatenate(out, axis=1)
