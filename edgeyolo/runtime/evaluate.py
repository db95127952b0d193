"""Accuracy of a runner on a dataset: the same contract and runners as ``detect``, scored by metrics."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

import numpy as np

from edgeyolo.contract import Contract, channel_order_for
from edgeyolo.data.types import DetectionDataset, LabelIssue, Sample
from edgeyolo.errors import UsageError
from edgeyolo.runtime.base import Runner
from edgeyolo.runtime.runners import make_runner
from edgeyolo.runtime.sliced import Slicing, detect_sliced
from edgeyolo.train.metrics import METRICS, EvalResult, evaluate

if TYPE_CHECKING:
    from edgeyolo.model.darknet import Darknet


@dataclass
class DatasetEvaluation:
    result: EvalResult
    detections: list[np.ndarray]
    samples: list[Sample]
    issues: list[LabelIssue] = field(default_factory=list)
    seconds_inference: float = 0.0
    img_size: int = 0  # the contract's input height


def evaluate_runner(
    runner: Runner,
    contract: Contract,
    dataset: DetectionDataset,
    metric: str = "coco",
    progress: Callable[[Iterable[Sample]], Iterator[Sample]] | None = None,
    slicing: Slicing | None = None,
) -> DatasetEvaluation:
    """Run every image of ``dataset`` and score the detections; unreadable images are reported, not fatal.

    With ``slicing`` every image runs as overlapping tiles merged in image coordinates and is scored
    whole; the contract's ``max_detections`` then applies per tile, so an image keeps up to that
    many times its tile count."""
    import cv2

    samples, detections, issues = [], [], list(dataset.issues)
    seconds = 0.0
    max_det = contract.max_detections
    items: Iterable[Sample] = progress(dataset.samples) if progress else dataset.samples
    for sample in items:
        image = cv2.imread(str(sample.image), cv2.IMREAD_COLOR)
        if image is None:
            issues.append(LabelIssue(sample.image, None, "not a readable image; skipped"))
            continue
        if slicing is not None:
            sliced = detect_sliced(runner, contract, image, slicing)
            detections.append(sliced.det)
            seconds += sliced.seconds_inference
            max_det = max(max_det, contract.max_detections * sliced.tiles)
        else:
            blob, box = contract.preprocess(image)
            detections.append(contract.postprocess(runner.infer(blob)[0], box))
            seconds += runner.last_inference_s
        samples.append(sample)
    result = evaluate(
        [s.annotation for s in samples],
        detections,
        dataset.num_classes,
        metric=metric,
        names=dataset.names,
        image_ids=[s.image_id for s in samples],
        max_det=max_det,
        category_ids=dataset.category_ids,
    )
    return DatasetEvaluation(result, detections, samples, issues, seconds, contract.height)


def evaluation_contract(size: int, channels: int, conf: float = 0.001, iou: float = 0.6) -> Contract:
    """The contract every mAP is scored with: a low score threshold keeps the whole precision-recall curve."""
    return Contract(size, size, channel_order=channel_order_for(channels), conf_threshold=conf, iou_threshold=iou, max_detections=100)


def evaluate_model(
    model: Darknet,
    dataset: DetectionDataset,
    img_size: int | None = None,
    backend: str = "onnxruntime",
    metric: str = "coco",
    conf: float = 0.001,
    iou: float = 0.6,
    threads: int = 0,
    progress: Callable[[Iterable[Sample]], Iterator[Sample]] | None = None,
    slicing: Slicing | None = None,
) -> DatasetEvaluation:
    """``edgeyolo test``'s measurement of a model (its runner, contract and scoring), for every command
    that reports mAP: the defaults keep the full precision-recall curve (a low score threshold)."""
    if metric not in METRICS:
        raise UsageError(f"--metric must be one of {', '.join(METRICS)}, got '{metric}'")
    if dataset.num_classes != model.num_classes:
        raise UsageError(f"{dataset.source} has {dataset.num_classes} classes but the model has {model.num_classes}")
    contract = evaluation_contract(img_size or model.cfg.net.height, model.cfg.net.channels, conf, iou)
    with make_runner(backend, model, contract, threads) as runner:
        return evaluate_runner(runner, contract, dataset, metric, progress, slicing)
