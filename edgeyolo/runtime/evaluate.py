"""Accuracy of a runner on a dataset: the same contract and runners as ``detect``, scored by metrics."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

from edgeyolo.contract import Contract
from edgeyolo.data.types import DetectionDataset, LabelIssue, Sample
from edgeyolo.runtime.base import Runner
from edgeyolo.train.metrics import EvalResult, evaluate


@dataclass
class DatasetEvaluation:
    result: EvalResult
    detections: list[np.ndarray]
    samples: list[Sample]
    issues: list[LabelIssue] = field(default_factory=list)
    seconds_inference: float = 0.0


def evaluate_runner(
    runner: Runner,
    contract: Contract,
    dataset: DetectionDataset,
    metric: str = "coco",
    progress: Callable[[Iterable[Sample]], Iterator[Sample]] | None = None,
) -> DatasetEvaluation:
    """Run every image of ``dataset`` and score the detections; unreadable images are reported, not fatal."""
    import cv2

    samples, detections, issues = [], [], list(dataset.issues)
    seconds = 0.0
    items: Iterable[Sample] = progress(dataset.samples) if progress else dataset.samples
    for sample in items:
        image = cv2.imread(str(sample.image), cv2.IMREAD_COLOR)
        if image is None:
            issues.append(LabelIssue(sample.image, None, "not a readable image; skipped"))
            continue
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
        max_det=contract.max_detections,
        category_ids=dataset.category_ids,
    )
    return DatasetEvaluation(result, detections, samples, issues, seconds)
