"""Accuracy of a model on a board: the board's detections (``edgeyolo.targets.runner``) scored here,
on the host, with the metrics code ``edgeyolo test`` uses, so a board's mAP and the host's compare."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeyolo.targets.runner import DeviceDetections, detect_on_device
from edgeyolo.targets.transport import LineSink, Progress, Transport


@dataclass
class DeviceEvaluation:
    result: Any  # edgeyolo.train.metrics.EvalResult
    detections: list[Any]
    samples: list[Any]
    skipped: list[str]
    infer_seconds: float
    model: str


def score_detections(found: DeviceDetections, dataset: Any, metric: str = "coco", max_det: int = 100) -> DeviceEvaluation:
    """The board's detections on ``dataset`` (a DetectionDataset) scored with ``metric``."""
    from edgeyolo.train.metrics import evaluate

    result = evaluate(
        [s.annotation for s in found.samples], found.detections, dataset.num_classes, metric=metric, names=dataset.names,
        image_ids=[s.image_id for s in found.samples], max_det=max_det, category_ids=dataset.category_ids,
    )
    return DeviceEvaluation(result, found.detections, found.samples, found.skipped, found.infer_seconds, found.model)


def predict_on_device(
    transport: Transport,
    model: str | Path,
    dataset: Any,
    metric: str = "coco",
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 100,
    on_log: LineSink | None = None,
    progress: Progress | None = None,
    engine: bool | None = None,
    precision: str | None = None,
    calib_cache: str | Path | None = None,
    trtexec: str | None = None,
    build_timeout: float = 3600.0,
) -> DeviceEvaluation:
    """Detections on the board for every image of ``dataset``, scored here with the metrics ``edgeyolo
    test`` uses; the thresholds default to test's (full PR curve). An ``.onnx`` on a jetson-* device is
    scored as its TensorRT engine, as ``edgeyolo.targets.runner.bench_device`` times it."""
    found = detect_on_device(transport, model, dataset, conf, iou, max_det, on_log=on_log, progress=progress, engine=engine,
                             precision=precision, calib_cache=calib_cache, trtexec=trtexec, build_timeout=build_timeout)
    return score_detections(found, dataset, metric, max_det)
