"""Anchor boxes by k-means on box shapes with the 1 - IoU distance, and writing them into a cfg.

Boxes are compared by shape only: both are placed with a corner at the origin, so
``IoU = min(w1, w2)·min(h1, h2) / (w1·h1 + w2·h2 - min(w1, w2)·min(h1, h2))``. Shapes are measured
in the pixels of the letterboxed network input: each image is scaled by ``img_size / max(W, H)``
(:func:`letterbox_wh`), which is what darknet-style training feeds the detector.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from edgeyolo.data.types import DetectionDataset
from edgeyolo.errors import CfgError, UsageError
from edgeyolo.model.cfg import Cfg, YoloSpec


def letterbox_wh(ds: DetectionDataset, img_size: int) -> np.ndarray:
    """Width/height [N, 2] (float64) of every box, in pixels of a letterboxed ``img_size`` input."""
    if img_size <= 0:
        raise UsageError(f"img_size must be positive, got {img_size}")
    parts = []
    for s in ds.samples:
        a = s.annotation
        side = max(s.width, s.height)
        if not len(a) or side <= 0:
            continue
        parts.append((a.boxes[:, 2:4] - a.boxes[:, 0:2]).astype(np.float64) * (img_size / side))
    return np.concatenate(parts) if parts else np.zeros((0, 2))


def iou_wh(wh: np.ndarray, anchors: np.ndarray) -> np.ndarray:
    """IoU [N, K] of box shapes [N, 2] and anchor shapes [K, 2] aligned at the origin."""
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    anchors = np.asarray(anchors, np.float64).reshape(-1, 2)
    inter = np.minimum(wh[:, None, 0], anchors[None, :, 0]) * np.minimum(wh[:, None, 1], anchors[None, :, 1])
    union = (wh[:, 0] * wh[:, 1])[:, None] + (anchors[:, 0] * anchors[:, 1])[None, :] - inter
    return inter / np.maximum(union, 1e-12)


def avg_best_iou(wh: np.ndarray, anchors: np.ndarray) -> float:
    """Mean over boxes of the IoU with their best-fitting anchor."""
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    if not len(wh):
        return 0.0
    return float(iou_wh(wh, anchors).max(axis=1).mean())


def anchor_recall(wh: np.ndarray, anchors: np.ndarray, threshold: float = 0.25) -> float:
    """Fraction of boxes whose best anchor has IoU above ``threshold``."""
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    if not len(wh):
        return 0.0
    return float((iou_wh(wh, anchors).max(axis=1) > threshold).mean())


def _seed_centers(wh: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with d = 1 - IoU."""
    centers = [wh[rng.integers(len(wh))]]
    best = iou_wh(wh, centers[0][None]).ravel()
    for _ in range(1, n):
        d = 1.0 - best
        weights = d * d
        total = weights.sum()
        if total <= 0:
            pick = rng.integers(len(wh))
        else:
            pick = rng.choice(len(wh), p=weights / total)
        centers.append(wh[pick])
        best = np.maximum(best, iou_wh(wh, wh[pick][None]).ravel())
    return np.array(centers, np.float64)


def _kmeans_once(wh: np.ndarray, n: int, rng: np.random.Generator, iters: int) -> np.ndarray:
    centers = _seed_centers(wh, n, rng)
    assign = None
    for _ in range(iters):
        iou = iou_wh(wh, centers)
        new_assign = iou.argmax(axis=1)
        if assign is not None and np.array_equal(new_assign, assign):
            break
        assign = new_assign
        for k in range(n):
            members = wh[assign == k]
            if len(members):
                centers[k] = members.mean(axis=0)
            else:  # an empty cluster restarts at the worst-covered box
                centers[k] = wh[iou.max(axis=1).argmin()]
    return centers


def kmeans_anchors(
    wh: np.ndarray, n: int, img_size: int, seed: int = 0, iters: int = 300, restarts: int = 4, max_boxes: int = 200_000
) -> np.ndarray:
    """``n`` anchors [n, 2] (float64, input pixels, sorted by area) for box shapes ``wh`` [N, 2].

    ``wh`` is in pixels of the letterboxed ``img_size`` input (see :func:`letterbox_wh`); shapes are
    clipped to ``[0, img_size]`` and degenerate (zero) ones dropped. k-means with the 1 - IoU
    distance, k-means++-style seeding, mean update; ``restarts`` seeded runs, the one with the best
    mean best-anchor IoU wins. Deterministic for a given ``seed``. More than ``max_boxes`` boxes are
    subsampled (seeded) for speed.
    """
    if n <= 0:
        raise UsageError(f"the number of anchors must be positive, got {n}")
    if img_size <= 0:
        raise UsageError(f"img_size must be positive, got {img_size}")
    wh = np.asarray(wh, np.float64).reshape(-1, 2)
    wh = wh[np.isfinite(wh).all(axis=1)]
    wh = np.minimum(wh, float(img_size))
    wh = wh[(wh > 0).all(axis=1)]
    if len(np.unique(wh, axis=0)) < n:
        raise UsageError(f"{n} anchors need at least {n} distinct box shapes; the dataset has {len(np.unique(wh, axis=0))}")
    rng = np.random.default_rng(seed)
    if len(wh) > max_boxes:
        wh = wh[rng.choice(len(wh), max_boxes, replace=False)]
    best, best_fit = None, -1.0
    for _ in range(max(1, restarts)):
        centers = _kmeans_once(wh, n, rng, iters)
        fit = avg_best_iou(wh, centers)
        if fit > best_fit + 1e-12:
            best, best_fit = centers, fit
    order = np.argsort(best[:, 0] * best[:, 1], kind="stable")
    return best[order]


def _num(value: float, decimals: int) -> str:
    text = f"{round(float(value), decimals):.{decimals}f}" if decimals > 0 else str(round(float(value)))
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def write_anchors(cfg: Cfg, anchors: np.ndarray, decimals: int = 1) -> Cfg:
    """A copy of ``cfg`` whose every [yolo] layer has ``anchors`` (rounded to ``decimals``) and ``num``.

    Masks are kept; they must stay valid: every mask index < n and the masks together use exactly
    n anchors (e.g. 3 heads x 3 = 9). Otherwise CfgError, naming the count that would fit.
    """
    anchors = np.asarray(anchors, np.float64).reshape(-1, 2)
    n = len(anchors)
    if n == 0 or not np.isfinite(anchors).all() or (anchors <= 0).any():
        raise UsageError("anchors must be positive finite (w, h) pairs")
    check_anchor_layout(cfg, n)
    pairs = tuple((float(_num(w, decimals)), float(_num(h, decimals))) for w, h in anchors)
    text = ", ".join(f"{_num(w, decimals)},{_num(h, decimals)}" for w, h in anchors)
    for head in cfg.yolo_layers:
        options = dict(head.options)
        options["anchors"] = text
        options["num"] = str(n)
        new: YoloSpec = dataclasses.replace(head, options=options, anchors=pairs)
        cfg = cfg.replace_layer(new)
    return cfg


def check_anchor_layout(cfg: Cfg, n: int) -> None:
    """CfgError unless ``n`` anchors fit the cfg's [yolo] masks (all indices < n, n used in total)."""
    heads = cfg.yolo_layers
    if not heads:
        raise CfgError("the cfg has no [yolo] layers to write anchors into", cfg.path)
    used = sum(len(h.mask) for h in heads)
    for h in heads:
        bad = [m for m in h.mask if m >= n]
        if bad:
            raise CfgError(
                f"[yolo] mask={','.join(map(str, h.mask))} refers to anchor {bad[0]} but only {n} anchors were given; "
                f"compute {used} anchors", cfg.path, h.line_of("mask")
            )
    if used != n:
        layout = " + ".join(str(len(h.mask)) for h in heads)
        raise CfgError(
            f"the [yolo] masks use {used} anchors ({layout}) but {n} anchors were given; compute {used} anchors (--n {used})",
            cfg.path,
            heads[0].line_of("mask"),
        )
