"""Host latency benchmark: the same images through every backend, end to end and per stage.

Backends are interleaved run by run (A, B, C, A, B, C, ...) so slow drifts of a shared machine
hit them alike; report ratios from one run rather than absolute times across runs.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable, Mapping, Sequence

import numpy as np

from edgeyolo.contract import Contract
from edgeyolo.runtime.base import Runner


@dataclass(frozen=True)
class StageStats:
    median_ms: float
    p90_ms: float

    @staticmethod
    def of(samples_s: Sequence[float]) -> "StageStats":
        a = np.asarray(samples_s) * 1000.0
        return StageStats(float(np.median(a)), float(np.percentile(a, 90)))


@dataclass(frozen=True)
class BackendResult:
    backend: str
    threads: int
    runs: int
    pre: StageStats
    infer: StageStats
    post: StageStats
    total: StageStats
    gflops_per_s: float  # conv FLOPs (2·MAC) / median inference time
    detections_per_image: float

    def to_dict(self) -> dict:
        return asdict(self)


def gemm_gflops(threads: int, n: int = 1024, repeats: int = 10) -> float:
    """The machine's fp32 GEMM rate on ``threads`` threads: the ceiling a conv net can approach."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(n, n)
        b = torch.randn(n, n)
        for _ in range(2):
            torch.mm(a, b)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - t0)
    finally:
        torch.set_num_threads(previous)
    return 2.0 * n**3 / best / 1e9


def bench_host(
    runners: dict[str, Runner],
    contract: Contract,
    images: Sequence[np.ndarray],
    gflops: float | Mapping[str, float],
    runs: int = 50,
    warmup: int = 3,
    threads: int = 0,
    pause_s: float = 0.0,
    progress: Callable[[range], range] | None = None,
) -> list[BackendResult]:
    """Time preprocess, inference and postprocess of ``runs`` images per backend.

    ``gflops``: the model's conv FLOPs, or one value per runner when the runners run different models.
    """
    times: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runners}
    found: dict[str, int] = {name: 0 for name in runners}
    for name, runner in runners.items():  # warm caches, allocators and JITs outside the timing
        for k in range(warmup):
            blob, _ = contract.preprocess(images[k % len(images)])
            runner.infer(blob)
    iterations = range(runs)
    for i in progress(iterations) if progress else iterations:
        image = images[i % len(images)]
        for name, runner in runners.items():
            t0 = time.perf_counter()
            blob, box = contract.preprocess(image)
            t1 = time.perf_counter()
            pred = runner.infer(blob)
            t2 = time.perf_counter()
            det = contract.postprocess(pred[0], box)
            t3 = time.perf_counter()
            times[name].append((t1 - t0, t2 - t1, t3 - t2))
            found[name] += len(det)
            if pause_s:
                time.sleep(pause_s)
    results = []
    for name, samples in times.items():
        pre, inf, post = (list(col) for col in zip(*samples))
        total = [a + b + c for a, b, c in samples]
        infer = StageStats.of(inf)
        results.append(
            BackendResult(
                name,
                threads,
                runs,
                StageStats.of(pre),
                infer,
                StageStats.of(post),
                StageStats.of(total),
                (gflops[name] if isinstance(gflops, Mapping) else gflops) / (infer.median_ms / 1000.0),
                found[name] / runs,
            )
        )
    return results
