"""Detection accuracy: COCO mAP (through pycocotools) and PASCAL VOC 2007 / 2012 AP.

One entry point, :func:`evaluate`, takes ground truth in the dataset shape every reader produces
(:class:`edgeyolo.data.types.Annotation`) and detections in the shape every runtime produces
(:meth:`edgeyolo.contract.Contract.postprocess`: float32 [M, 6] = x1, y1, x2, y2 in original pixels,
score, class), so host, exported and on-board numbers are computed by exactly the same code.

COCO numbers are delegated to pycocotools, because "COCO mAP" means whatever that library computes;
the VOC numbers are re-implemented from the published definitions (Everingham et al., IJCV 2010 for
the 11-point rule of VOC2007, the VOC2012 development-kit documentation for the all-point rule).
:func:`coco_json` and :func:`coco_detections_json` write the standard COCO files, so anyone can
re-check the COCO figures with pycocotools directly.
"""
from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeyolo.contract import box_iou
from edgeyolo.data.types import Annotation
from edgeyolo.errors import UsageError

METRICS = ("coco", "voc07", "voc12")
# COCO's IoU thresholds 0.50:0.05:0.95, built exactly as pycocotools builds them so the VOC
# mAP@0.5:0.95 uses bit-identical thresholds.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
TABLE_HEADER = ("class", "gt", "P", "R", "AP50", "AP50-95")


@dataclass(frozen=True)
class ClassAP:
    """Accuracy of one class. ``num_gt`` counts the boxes that recall is measured against
    (difficult boxes excluded under VOC metrics); every value is NaN when ``num_gt`` is 0."""

    cls: int
    name: str
    num_gt: int
    ap50: float
    ap50_95: float
    precision: float
    recall: float


@dataclass(frozen=True)
class EvalResult:
    """Dataset accuracy under one metric.

    ``map50`` / ``map50_95`` average the per-class APs over classes that have ground truth (a class
    without any is NaN and left out, as pycocotools does); NaN when no class has ground truth.
    ``precision`` / ``recall`` are means over the same classes of each class's precision and recall
    at the score threshold that maximises that class's F1 at IoU 0.5: a single operating point is
    what a deployment uses, and the F1-best one is the least arbitrary choice. ``num_detections``
    counts the detections that were scored, i.e. after the ``max_det`` cut.
    """

    metric: str
    map50: float
    map50_95: float
    precision: float
    recall: float
    per_class: tuple[ClassAP, ...]
    num_images: int
    num_detections: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict; NaN becomes None because strict JSON has no NaN."""
        return {
            "metric": self.metric,
            "map50": _json_float(self.map50),
            "map50_95": _json_float(self.map50_95),
            "precision": _json_float(self.precision),
            "recall": _json_float(self.recall),
            "num_images": self.num_images,
            "num_detections": self.num_detections,
            "per_class": [
                {
                    "cls": c.cls,
                    "name": c.name,
                    "num_gt": c.num_gt,
                    "ap50": _json_float(c.ap50),
                    "ap50_95": _json_float(c.ap50_95),
                    "precision": _json_float(c.precision),
                    "recall": _json_float(c.recall),
                }
                for c in self.per_class
            ],
        }

    def table(self) -> list[tuple[str, ...]]:
        """Rows of strings for a CLI table: :data:`TABLE_HEADER` first, one row per class, then
        ``all``. Values have three decimals; "-" marks NaN (a class without ground truth)."""
        rows: list[tuple[str, ...]] = [TABLE_HEADER]
        for c in self.per_class:
            rows.append((c.name, str(c.num_gt), *(_fmt(v) for v in (c.precision, c.recall, c.ap50, c.ap50_95))))
        total = sum(c.num_gt for c in self.per_class)
        rows.append(
            ("all", str(total), *(_fmt(v) for v in (self.precision, self.recall, self.map50, self.map50_95)))
        )
        return rows


@dataclass(frozen=True)
class _Image:
    """One image's validated inputs in float64 (detections already cut to ``max_det``)."""

    gt_boxes: np.ndarray
    gt_classes: np.ndarray
    gt_difficult: np.ndarray
    det_boxes: np.ndarray
    det_scores: np.ndarray
    det_classes: np.ndarray


# ---------------------------------------------------------------------------- public API


def evaluate(
    ground_truth: Sequence[Annotation],
    detections: Sequence[np.ndarray],
    num_classes: int,
    metric: str = "coco",
    names: Sequence[str] | None = None,
    image_ids: Sequence[int | str] | None = None,
    max_det: int = 100,
    category_ids: Sequence[int] | None = None,
) -> EvalResult:
    """Score ``detections[i]`` (float32 [M, 6]: x1, y1, x2, y2, score, class) against
    ``ground_truth[i]`` under ``metric``.

    Before any metric, each image keeps only its ``max_det`` highest-scoring detections (ties keep
    input order). pycocotools itself caps detections per image *and class*; the COCO challenge
    rule is 100 per image, so the cut happens here, for every metric alike.

    ``"coco"``: pycocotools' COCOeval on COCO structures built in memory, all-area range, at most
    ``max_det`` detections per image. ``map50`` is stats[1] and ``map50_95`` stats[0] (computed
    from the same ``eval['precision']`` array the per-class values come from). Difficult boxes are
    regular ground truth here: pycocotools overwrites an ``ignore`` flag with ``iscrowd``, and
    marking them crowd would change how they are matched, so they are counted (a miss on one costs
    recall), and are ignored only by the VOC metrics.

    ``"voc07"`` / ``"voc12"``: per class, detections of all images ranked by score (stable); each
    takes the *unmatched* ground-truth box of its image and class it overlaps most with IoU >= t
    (inclusive, as pycocotools; continuous coordinates without VOC's +1 pixel, matching the
    float boxes every runtime emits). If that box is difficult the detection is neither TP nor FP
    and the box stays available; otherwise it is a TP and the box is consumed; with no such box
    (including a repeat on a consumed box) it is a FP. Difficult boxes are not in the recall
    denominator. AP is the 11-point interpolated AP (voc07, recall levels 0, 0.1, ..., 1) or the
    area under the monotone precision envelope (voc12). ``map50`` uses t = 0.5; ``map50_95``
    averages the same AP over t = 0.50:0.05:0.95 (not part of VOC; given for comparison with COCO).

    ``names`` label the classes (default "0", "1", ...); ``image_ids`` only make error messages
    name the dataset's ids; ``category_ids`` map class i to a COCO category id (default i + 1) and
    do not change any number.
    """
    if metric not in METRICS:
        raise UsageError(f"metric must be one of {METRICS}, got '{metric}'")
    num_classes = _check_num_classes(num_classes)
    if isinstance(max_det, bool) or not isinstance(max_det, (int, np.integer)) or max_det < 1:
        raise UsageError(f"max_det must be a positive integer, got {max_det!r}")
    names = _check_names(names, num_classes)
    cat_ids = _check_category_ids(category_ids, num_classes)
    if len(ground_truth) != len(detections):
        raise UsageError(
            f"ground truth covers {len(ground_truth)} images but detections cover {len(detections)}; "
            "pass one detection array per image, in the same order (an empty [0, 6] array for none)"
        )
    if image_ids is not None:
        _check_image_ids(image_ids, len(ground_truth))
    images = [
        _prepare(i, gt, det, num_classes, int(max_det), image_ids)
        for i, (gt, det) in enumerate(zip(ground_truth, detections))
    ]
    if metric == "coco":
        per_class = _evaluate_coco(images, num_classes, names, cat_ids, int(max_det))
    else:
        per_class = _evaluate_voc(images, num_classes, names, eleven_point=metric == "voc07")
    return EvalResult(
        metric=metric,
        map50=_mean([c.ap50 for c in per_class]),
        map50_95=_mean([c.ap50_95 for c in per_class]),
        precision=_mean([c.precision for c in per_class]),
        recall=_mean([c.recall for c in per_class]),
        per_class=tuple(per_class),
        num_images=len(images),
        num_detections=sum(len(im.det_scores) for im in images),
    )


def coco_json(
    ground_truth: Sequence[Annotation],
    image_ids: Sequence[int | str],
    sizes: Sequence[tuple[int, int]],
    names: Sequence[str],
    category_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Ground truth as a COCO instances dict (``json.dump`` it to get a file ``COCO()`` reads).

    ``sizes[i]`` is image i's (width, height), the order of COCO's fields and of ``Sample`` (0 when
    unknown; pycocotools does not use it for boxes). Boxes become [x, y, w, h] with area w * h and
    iscrowd 0; annotation ids start at 1 because pycocotools treats id 0 as "unmatched". Difficult
    boxes are written as regular boxes: COCO has no such flag (see :func:`evaluate`).
    """
    names = list(names)
    num_classes = _check_num_classes(len(names))
    cat_ids = _check_category_ids(category_ids, num_classes)
    _check_image_ids(image_ids, len(ground_truth))
    if len(sizes) != len(ground_truth):
        raise UsageError(f"sizes has {len(sizes)} entries for {len(ground_truth)} images; give (width, height) each")
    images = [_prepare_gt(i, gt, num_classes, image_ids) for i, gt in enumerate(ground_truth)]
    dims: list[tuple[int, int]] = []
    for i, size in enumerate(sizes):
        try:
            width, height = (int(v) for v in size)
        except (TypeError, ValueError):
            raise UsageError(f"sizes[{i}] must be (width, height), got {size!r}") from None
        dims.append((width, height))
    return _coco_gt_dataset(images, list(image_ids), dims, cat_ids, names)


def coco_detections_json(
    detections: Sequence[np.ndarray],
    image_ids: Sequence[int | str],
    category_ids: Sequence[int] | None = None,
) -> list[dict[str, Any]]:
    """Detections as a COCO results list (``COCO.loadRes`` reads it): image_id, category_id,
    bbox [x, y, w, h], score. Every detection is written; pycocotools then keeps at most 100 per
    image and class, whereas :func:`evaluate` keeps 100 per image (equal whenever no image has
    more than 100 detections)."""
    _check_image_ids(image_ids, len(detections))
    if category_ids is not None:
        cat_ids = _check_category_ids(category_ids, len(category_ids))
        num_classes: int | None = len(cat_ids)
    else:
        cat_ids, num_classes = None, None
    records: list[dict[str, Any]] = []
    for i, det in enumerate(detections):
        boxes, scores, classes = _prepare_det(i, det, num_classes, image_ids)
        records.extend(_coco_det_records(boxes, scores, classes, image_ids[i], cat_ids))
    return records


# ---------------------------------------------------------------------------- validation


def _where(i: int, image_ids: Sequence[int | str] | None) -> str:
    return f"image {i}" if image_ids is None else f"image {i} (id {image_ids[i]!r})"


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise UsageError(f"num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def _check_names(names: Sequence[str] | None, num_classes: int) -> list[str]:
    if names is None:
        return [str(c) for c in range(num_classes)]
    names = [str(n) for n in names]
    if len(names) != num_classes:
        raise UsageError(f"names has {len(names)} entries but num_classes is {num_classes}")
    return names


def _check_category_ids(category_ids: Sequence[int] | None, num_classes: int) -> list[int]:
    if category_ids is None:
        return list(range(1, num_classes + 1))
    ids = list(category_ids)
    if len(ids) != num_classes:
        raise UsageError(f"category_ids has {len(ids)} entries but there are {num_classes} classes")
    if any(isinstance(c, bool) or not isinstance(c, (int, np.integer)) for c in ids):
        raise UsageError(f"category_ids must be integers, got {ids!r}")
    ids = [int(c) for c in ids]
    if len(set(ids)) != len(ids):
        raise UsageError(f"category_ids must be unique, got {ids!r}")
    return ids


def _check_image_ids(image_ids: Sequence[int | str], count: int) -> None:
    if len(image_ids) != count:
        raise UsageError(f"image_ids has {len(image_ids)} entries for {count} images")
    if len(set(image_ids)) != len(image_ids):
        raise UsageError("image_ids must be unique")


def _prepare_gt(
    i: int, gt: Annotation, num_classes: int, image_ids: Sequence[int | str] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        boxes = np.asarray(gt.boxes, dtype=np.float64).reshape(-1, 4)
        classes = np.asarray(gt.classes).reshape(-1)
        difficult = np.asarray(gt.difficult, dtype=bool).reshape(-1)
    except (AttributeError, ValueError, TypeError) as exc:
        raise UsageError(f"{_where(i, image_ids)}: ground truth is not a valid Annotation ({exc})") from None
    if not len(boxes) == len(classes) == len(difficult):
        raise UsageError(
            f"{_where(i, image_ids)}: ground truth has {len(boxes)} boxes, {len(classes)} classes and "
            f"{len(difficult)} difficult flags"
        )
    if not np.isfinite(boxes).all():
        raise UsageError(f"{_where(i, image_ids)}: ground-truth boxes contain NaN or infinity")
    classes = _class_ids(classes, num_classes, f"{_where(i, image_ids)}: ground-truth")
    return boxes, classes, difficult


def _prepare_det(
    i: int, det: np.ndarray, num_classes: int | None, image_ids: Sequence[int | str] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    try:
        arr = np.asarray(det, dtype=np.float64)
    except (ValueError, TypeError) as exc:
        raise UsageError(f"{_where(i, image_ids)}: detections are not numeric ({exc})") from None
    if arr.size == 0:
        arr = arr.reshape(0, 6)
    if arr.ndim != 2 or arr.shape[1] != 6:
        raise UsageError(
            f"{_where(i, image_ids)}: detections must be [M, 6] (x1, y1, x2, y2, score, class), "
            f"got shape {arr.shape}"
        )
    if not np.isfinite(arr).all():
        raise UsageError(f"{_where(i, image_ids)}: detections contain NaN or infinity")
    classes = _class_ids(arr[:, 5], num_classes, f"{_where(i, image_ids)}: detection")
    return arr[:, :4], arr[:, 4], classes


def _class_ids(values: np.ndarray, num_classes: int | None, what: str) -> np.ndarray:
    values = np.asarray(values)
    if values.size and not np.all(np.equal(np.mod(values, 1), 0)):
        raise UsageError(f"{what} class ids must be whole numbers, got {values[np.mod(values, 1) != 0][:3]}")
    classes = values.astype(np.int64)
    upper = num_classes if num_classes is not None else np.iinfo(np.int64).max
    bad = (classes < 0) | (classes >= upper)
    if bad.any():
        allowed = f"[0, {num_classes})" if num_classes is not None else "non-negative"
        raise UsageError(f"{what} class id {int(classes[bad][0])} is outside {allowed}")
    return classes


def _prepare(
    i: int,
    gt: Annotation,
    det: np.ndarray,
    num_classes: int,
    max_det: int,
    image_ids: Sequence[int | str] | None,
) -> _Image:
    gt_boxes, gt_classes, gt_difficult = _prepare_gt(i, gt, num_classes, image_ids)
    det_boxes, det_scores, det_classes = _prepare_det(i, det, num_classes, image_ids)
    if len(det_scores) > max_det:
        # the top max_det by score, kept in input order so ties behave as in pycocotools
        keep = np.sort(np.argsort(-det_scores, kind="stable")[:max_det])
        det_boxes, det_scores, det_classes = det_boxes[keep], det_scores[keep], det_classes[keep]
    return _Image(gt_boxes, gt_classes, gt_difficult, det_boxes, det_scores, det_classes)


# ---------------------------------------------------------------------------- COCO


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _coco_gt_dataset(
    images: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    image_ids: Sequence[int | str],
    sizes: Sequence[tuple[int, int]],
    cat_ids: Sequence[int],
    names: Sequence[str],
) -> dict[str, Any]:
    annotations: list[dict[str, Any]] = []
    for (boxes, classes, _difficult), image_id in zip(images, image_ids):
        for box, cls in zip(boxes, classes):
            bbox = _xywh(box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cat_ids[int(cls)],
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": 0,
                }
            )
    return {
        "images": [{"id": image_id, "width": w, "height": h} for image_id, (w, h) in zip(image_ids, sizes)],
        "annotations": annotations,
        "categories": [{"id": cid, "name": name} for cid, name in zip(cat_ids, names)],
    }


def _coco_det_records(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, image_id: int | str, cat_ids: Sequence[int] | None
) -> list[dict[str, Any]]:
    """COCO results; class c becomes ``cat_ids[c]``, or c + 1 without a mapping."""
    return [
        {
            "image_id": image_id,
            "category_id": int(c) + 1 if cat_ids is None else cat_ids[int(c)],
            "bbox": _xywh(b),
            "score": float(s),
        }
        for b, s, c in zip(boxes, scores, classes)
    ]


def _evaluate_coco(
    images: list[_Image], num_classes: int, names: list[str], cat_ids: list[int], max_det: int
) -> list[ClassAP]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = list(range(1, len(images) + 1))  # internal ids: unique, positive, independent of the dataset's
    gt_dataset = _coco_gt_dataset(
        [(im.gt_boxes, im.gt_classes, im.gt_difficult) for im in images], ids, [(0, 0)] * len(images), cat_ids, names
    )
    results: list[dict[str, Any]] = []
    for im, image_id in zip(images, ids):
        results.extend(_coco_det_records(im.det_boxes, im.det_scores, im.det_classes, image_id, cat_ids))
    for n, r in enumerate(results, start=1):  # what COCO.loadRes adds to each bbox result
        r.update(id=n, area=r["bbox"][2] * r["bbox"][3], iscrowd=0)

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO()
        gt.dataset = gt_dataset
        gt.createIndex()
        # built directly rather than via loadRes, which fails on an empty result list
        dt = COCO()
        dt.dataset = {"images": gt_dataset["images"], "categories": gt_dataset["categories"], "annotations": results}
        dt.createIndex()
        coco_eval = COCOeval(gt, dt, iouType="bbox")
        params = coco_eval.params
        params.imgIds = ids
        params.catIds = sorted(cat_ids)
        params.maxDets = [max_det]  # already cut per image, so this per-image-and-class cap never binds
        params.areaRng = [params.areaRng[params.areaRngLbl.index("all")]]  # stats[0]/[1] use "all" only
        params.areaRngLbl = ["all"]
        coco_eval.evaluate()
        coco_eval.accumulate()
    precision = coco_eval.eval["precision"][:, :, :, 0, 0]  # [IoU thresholds, recall thresholds, categories]
    k_of = {cid: k for k, cid in enumerate(params.catIds)}

    matches = _match_all(images, num_classes, np.array([0.5]), use_difficult=False)
    per_class: list[ClassAP] = []
    for c in range(num_classes):
        p = precision[:, :, k_of[cat_ids[c]]]
        num_gt = sum(int((im.gt_classes == c).sum()) for im in images)
        if num_gt == 0:
            per_class.append(ClassAP(c, names[c], 0, math.nan, math.nan, math.nan, math.nan))
            continue
        scores, labels = matches[c]
        prec, rec = _best_f1(scores, labels[0], num_gt)
        per_class.append(
            ClassAP(c, names[c], num_gt, _valid_mean(p[0]), _valid_mean(p), prec, rec)
        )
    return per_class


def _valid_mean(values: np.ndarray) -> float:
    """pycocotools' mean: -1 marks 'no ground truth' and is left out."""
    valid = values[values > -1]
    return float(valid.mean()) if valid.size else math.nan


# ---------------------------------------------------------------------------- VOC


def _evaluate_voc(images: list[_Image], num_classes: int, names: list[str], eleven_point: bool) -> list[ClassAP]:
    matches = _match_all(images, num_classes, IOU_THRESHOLDS, use_difficult=True)
    per_class: list[ClassAP] = []
    for c in range(num_classes):
        num_gt = sum(int(((im.gt_classes == c) & ~im.gt_difficult).sum()) for im in images)
        if num_gt == 0:
            per_class.append(ClassAP(c, names[c], 0, math.nan, math.nan, math.nan, math.nan))
            continue
        scores, labels = matches[c]
        aps = [_voc_ap(labels[t], num_gt, eleven_point) for t in range(len(IOU_THRESHOLDS))]
        prec, rec = _best_f1(scores, labels[0], num_gt)
        per_class.append(ClassAP(c, names[c], num_gt, aps[0], float(np.mean(aps)), prec, rec))
    return per_class


def _match_all(
    images: list[_Image], num_classes: int, thresholds: np.ndarray, use_difficult: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class: (scores [D], labels [T, D]) over all images, ranked by score (stable, image order
    then input order). Labels are 1 TP, 0 FP, -1 ignored (best match is a difficult box)."""
    scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    labels: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    for im in images:
        for c in np.unique(im.det_classes):
            d = np.nonzero(im.det_classes == c)[0]
            d = d[np.argsort(-im.det_scores[d], kind="stable")]
            g = im.gt_classes == c
            difficult = im.gt_difficult[g] if use_difficult else np.zeros(int(g.sum()), bool)
            ious = box_iou(im.det_boxes[d], im.gt_boxes[g]).astype(np.float64)
            scores[c].append(im.det_scores[d])
            labels[c].append(_match(ious, difficult, thresholds))
    out: list[tuple[np.ndarray, np.ndarray]] = []
    for c in range(num_classes):
        if not scores[c]:
            out.append((np.zeros(0), np.zeros((len(thresholds), 0), np.int8)))
            continue
        s = np.concatenate(scores[c])
        lab = np.concatenate(labels[c], axis=1)
        order = np.argsort(-s, kind="stable")
        out.append((s[order], lab[:, order]))
    return out


def _match(ious: np.ndarray, difficult: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Greedy matching of one image and class; ``ious`` [D, G] with detections by descending score."""
    num_t, (num_d, num_g) = len(thresholds), ious.shape
    labels = np.zeros((num_t, num_d), np.int8)
    if num_g == 0:
        return labels
    consumed = np.zeros((num_t, num_g), bool)
    rows = np.arange(num_t)
    for j in range(num_d):
        candidate = (ious[j][None, :] >= thresholds[:, None]) & ~consumed
        masked = np.where(candidate, ious[j][None, :], -1.0)
        best = masked.argmax(axis=1)
        found = candidate[rows, best]
        hit_difficult = found & difficult[best]
        tp = found & ~hit_difficult
        labels[:, j] = np.where(tp, 1, np.where(hit_difficult, -1, 0))
        consumed[rows[tp], best[tp]] = True
    return labels


def _pr_curve(labels: np.ndarray, num_gt: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept mask, precision, recall) along the ranking, ignored detections removed."""
    kept = labels >= 0
    tp = np.cumsum(labels[kept] == 1, dtype=np.float64)
    fp = np.cumsum(labels[kept] == 0, dtype=np.float64)
    return kept, tp / np.maximum(tp + fp, 1.0), tp / num_gt


def _voc_ap(labels: np.ndarray, num_gt: int, eleven_point: bool) -> float:
    _, prec, rec = _pr_curve(labels, num_gt)
    if eleven_point:
        # recall levels as k / 10 (not a running sum of 0.1) so a recall of exactly 0.3 reaches 0.3
        levels = np.arange(11) / 10.0
        return float(np.mean([prec[rec >= t].max() if (rec >= t).any() else 0.0 for t in levels]))
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _best_f1(scores: np.ndarray, labels: np.ndarray, num_gt: int) -> tuple[float, float]:
    """(precision, recall) at the score threshold with the highest F1 at IoU 0.5. Only cut points
    between distinct scores count: a score threshold cannot split tied detections."""
    kept, prec, rec = _pr_curve(labels, num_gt)
    if prec.size == 0:
        return 0.0, 0.0
    s = scores[kept]
    cut = np.append(s[1:] != s[:-1], True)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    f1 = np.where(cut, f1, -1.0)
    best = int(np.argmax(f1))
    return float(prec[best]), float(rec[best])


# ---------------------------------------------------------------------------- helpers


def _mean(values: Sequence[float]) -> float:
    valid = [v for v in values if not math.isnan(v)]
    return float(sum(valid) / len(valid)) if valid else math.nan


def _json_float(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def _fmt(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.3f}"
