"""The runner interface every backend implements: preprocessed blob in, decoded predictions out.

Public ``infer`` validates and times; subclasses implement ``infer_impl``. All runners return the
same thing — [B, N, 5+C] rows (cx, cy, w, h in input pixels, objectness, class probabilities) — so
one ``Contract.postprocess`` serves every backend, host and board alike.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod

import numpy as np

from edgeyolo.contract import Contract
from edgeyolo.errors import UsageError
from edgeyolo.registry import Registry


class Runner(ABC):
    name = "base"

    def __init__(self, contract: Contract):
        self.contract = contract
        self.last_inference_s = 0.0

    def infer(self, blob: np.ndarray) -> np.ndarray:
        expected = (self.contract.channels, self.contract.height, self.contract.width)
        if blob.ndim != 4 or tuple(blob.shape[1:]) != expected:
            raise UsageError(f"{self.name}: expected input [B, {expected[0]}, {expected[1]}, {expected[2]}], got {list(blob.shape)}")
        blob = np.ascontiguousarray(blob, dtype=np.float32)
        start = time.perf_counter()
        out = self.infer_impl(blob)
        self.last_inference_s = time.perf_counter() - start
        return out

    @abstractmethod
    def infer_impl(self, blob: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:
        """Release backend resources."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


RUNNERS: Registry[type] = Registry("backend")
