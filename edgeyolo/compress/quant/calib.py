"""Post-training calibration: activation ranges from a float pass over calibration batches.

Every activation quantizer gets a histogram of |x| (2048 bins whose range doubles, merging bin
pairs, whenever a larger value arrives, so one pass suffices and batches are never held in memory).
The range ``amax`` is then chosen by one of four registered methods (:data:`METHODS`, one
:class:`CalibMethod` class each):

* ``minmax`` — the largest |x| seen (nothing clips);
* ``percentile`` — the 99.99th percentile of |x|;
* ``entropy`` — TensorRT's KL-divergence search (the reference distribution with its clipped tail
  folded into the last bin, against its 2^(b−1)-level quantized version);
* ``mse`` — the range minimising the expected squared quantization error over the histogram.

The quantizer's scheme decides which of a method's answers applies
(:meth:`QuantScheme.calibrated_amax <edgeyolo.compress.quant.schemes.QuantScheme.calibrated_amax>`):
for ``pow2`` quantizers (``vitis-sim`` included) ``minmax`` rounds the range up to a power of two (the
reference's FPGA rule: no clipping), ``mse`` searches the power-of-two scales themselves, and
``percentile``/``entropy`` take the power of two nearest to their range in the log domain (the
reference HEAD's rule); schemes without ranges (``dorefa``) are not calibrated.
"""
from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Iterable, Iterator

import torch
from torch import Tensor

from edgeyolo.compress.quant.fakequant import pow2_ceil_exponent
from edgeyolo.compress.quant.modules import ActQuantizer, _require, act_quantizers
from edgeyolo.compress.quant.schemes import QuantScheme, get_scheme
from edgeyolo.contract import Contract
from edgeyolo.errors import UsageError
from edgeyolo.registry import Registry

log = logging.getLogger(__name__)

KEEP_IMAGES = 4  # single-image blobs image_batches keeps for --analyze / --keep-float auto
BINS = 2048
PERCENTILE = 99.99


class HistogramObserver:
    """Histogram of |x| over [0, top] with ``top`` a power of two that grows as needed."""

    def __init__(self, bins: int = BINS):
        self.bins = bins
        self.hist: Tensor | None = None
        self.top = 0.0
        self.amax = 0.0
        self.count = 0

    def update(self, x: Tensor) -> None:
        a = x.detach().abs().float().flatten().cpu()
        self.count += 1
        if a.numel() == 0:
            return
        m = float(a.max())
        if not math.isfinite(m):
            raise UsageError("a calibration batch produced inf/nan activations; check the weights and the input scaling")
        self.amax = max(self.amax, m)
        if m == 0.0:
            if self.hist is not None:
                self.hist[0] += a.numel()
            return
        if self.hist is None:
            self.top = 2.0 ** math.ceil(math.log2(m))
            self.hist = torch.zeros(self.bins, dtype=torch.float64)
        while m > self.top:
            merged = self.hist.view(-1, 2).sum(dim=1)
            self.hist = torch.cat([merged, torch.zeros(self.bins // 2, dtype=torch.float64)])
            self.top *= 2
        self.hist += torch.histc(a, bins=self.bins, min=0.0, max=self.top).double()

    @property
    def width(self) -> float:
        return self.top / self.bins


def _percentile_amax(obs: HistogramObserver, pct: float = PERCENTILE) -> float:
    cdf = torch.cumsum(obs.hist, 0) / obs.hist.sum()
    i = int(torch.searchsorted(cdf, torch.tensor(pct / 100.0, dtype=torch.float64)))
    return min((i + 1) * obs.width, obs.amax)


def _expected_mse(obs: HistogramObserver, scales: Tensor, qmax: int) -> Tensor:
    """Expected squared error of quantizing the histogram's bin centres with each candidate scale."""
    centres = (torch.arange(obs.bins, dtype=torch.float64) + 0.5) * obs.width
    s = scales.double().view(-1, 1)
    q = torch.clamp(torch.round(centres / s), 0, qmax) * s
    return ((centres - q) ** 2 * obs.hist).sum(dim=1)


def _mse_amax(obs: HistogramObserver, bits: int) -> float:
    qmax = 2 ** (bits - 1) - 1
    candidates = torch.arange(obs.bins // 64, obs.bins + 1, 8, dtype=torch.float64) * obs.width
    errors = _expected_mse(obs, candidates / qmax, qmax)
    return float(candidates[int(torch.argmin(errors))])


def _entropy_amax(obs: HistogramObserver, bits: int) -> float:
    levels = 2 ** (bits - 1)
    hist = obs.hist.clone()
    hist[0] = 0  # exact zeros (ReLU-like outputs, padding) say nothing about the range
    best, best_i = float("inf"), obs.bins
    for i in range(levels, obs.bins + 1, 16):
        p = hist[:i].clone()
        p[-1] += hist[i:].sum()
        if p.sum() == 0:
            continue
        # quantize the first i bins into ``levels`` groups; spread each group's mass over its non-empty bins
        edges = torch.linspace(0, i, levels + 1).round().long()
        q = torch.zeros_like(p)
        for j in range(levels):
            a, b = int(edges[j]), int(edges[j + 1])
            if b <= a:
                continue
            chunk = hist[a:b]
            nonzero = chunk > 0
            if nonzero.any():
                q[a:b][nonzero] = chunk.sum() / nonzero.sum()
        pn, qn = p / p.sum(), q / max(float(q.sum()), 1e-30)
        mask = pn > 0
        kl = float((pn[mask] * torch.log(pn[mask] / qn[mask].clamp_min(1e-30))).sum())
        if kl < best:
            best, best_i = kl, i
    return best_i * obs.width


class CalibMethod(ABC):
    """How one quantizer's range is chosen from its |x| histogram (see the module docstring)."""

    description: ClassVar[str] = ""

    @abstractmethod
    def amax(self, obs: HistogramObserver, bits: int) -> float:
        """The range for a quantizer with any float scale."""

    def pow2_amax(self, obs: HistogramObserver, bits: int) -> float:
        """A range that is a power of two times 2^(b−1), so the scale is exactly a power of two: by
        default the power of two nearest to :meth:`amax` in the log domain."""
        return 2.0 ** round(math.log2(max(self.amax(obs, bits), 1e-30)))


METHODS: Registry[type[CalibMethod]] = Registry("calibration method")


@METHODS.register("minmax")
class MinMaxMethod(CalibMethod):
    description = "the largest |x| seen (nothing clips)"

    def amax(self, obs: HistogramObserver, bits: int) -> float:
        return obs.amax

    def pow2_amax(self, obs: HistogramObserver, bits: int) -> float:
        return 2.0 ** float(pow2_ceil_exponent(torch.tensor(obs.amax)))


@METHODS.register("percentile")
class PercentileMethod(CalibMethod):
    description = f"the {PERCENTILE}th percentile of |x|"

    def amax(self, obs: HistogramObserver, bits: int) -> float:
        return _percentile_amax(obs)


@METHODS.register("entropy")
class EntropyMethod(CalibMethod):
    description = "TensorRT's KL-divergence search"

    def amax(self, obs: HistogramObserver, bits: int) -> float:
        return _entropy_amax(obs, bits)


@METHODS.register("mse")
class MseMethod(CalibMethod):
    description = "the range minimising the expected squared quantization error"

    def amax(self, obs: HistogramObserver, bits: int) -> float:
        return _mse_amax(obs, bits)

    def pow2_amax(self, obs: HistogramObserver, bits: int) -> float:
        top = int(pow2_ceil_exponent(torch.tensor(obs.amax)))
        exps = torch.arange(top - 8, top + 1)
        scales = torch.pow(2.0, exps.double()) / 2 ** (bits - 1)
        return 2.0 ** float(exps[int(torch.argmin(_expected_mse(obs, scales, 2 ** (bits - 1) - 1)))])


def method_names() -> list[str]:
    """Registered calibration methods in registration order (the order messages list them)."""
    return [name for name, _ in METHODS.in_order()]


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise UsageError(f"unknown calibration method '{method}'; expected one of {', '.join(method_names())}")


def choose_amax(obs: HistogramObserver, method: str, bits: int, scheme: str | QuantScheme) -> float:
    """The range for one quantizer from its histogram (see the module docstring); ``scheme`` is the
    quantizer's scheme object or a registered name."""
    _check_method(method)
    if obs.hist is None:  # only zeros were seen: any positive range codes them exactly
        return 1.0
    scheme_obj = get_scheme(scheme) if isinstance(scheme, str) else scheme
    return scheme_obj.calibrated_amax(obs, METHODS.get(method)(), bits)


@torch.no_grad()
def image_batches(paths: Iterable[str | Path], contract: Contract, batch: int, keep: list[Tensor] | None = None) -> Iterator[Tensor]:
    """Calibration batches of ``batch`` images preprocessed by ``contract``; unreadable files are
    skipped with a warning. ``keep`` collects the first few single-image blobs (for analysis)."""
    import numpy as np

    from edgeyolo.model.io import read_image

    blobs: list[np.ndarray] = []
    for path in paths:
        image = read_image(path)
        if image is None:
            log.warning("%s: not a readable image; skipped", path)
            continue
        blob = contract.preprocess(image)[0]
        if keep is not None and len(keep) < KEEP_IMAGES:
            keep.append(torch.from_numpy(blob))
        blobs.append(blob)
        if len(blobs) == batch:
            yield torch.from_numpy(np.concatenate(blobs))
            blobs = []
    if blobs:
        yield torch.from_numpy(np.concatenate(blobs))


def calibrate(model: torch.nn.Module, batches: Iterable[Tensor], method: str = "minmax") -> int:
    """Set every activation quantizer's range from a float pass over ``batches``; returns the number
    of batches seen. The model is left in eval mode."""
    model = _require(model)
    _check_method(method)
    quantizers: dict[str, ActQuantizer] = {n: q for n, q in act_quantizers(model).items() if q.scheme_obj.uses_ranges}
    observers = {name: HistogramObserver() for name in quantizers}
    model.eval()
    seen = 0
    try:
        for name, q in quantizers.items():
            q.observer = observers[name]
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        for batch in batches:
            model.forward_raw(batch.to(device))
            seen += 1
    finally:
        for q in quantizers.values():
            q.observer = None
    if seen == 0:
        raise UsageError("calibration got no batches; give at least one image")
    for name, q in quantizers.items():
        obs = observers[name]
        if obs.count == 0:
            continue  # a quantizer the graph never reaches keeps its range
        q.amax.fill_(choose_amax(obs, method, q.bits, q.scheme_obj))
    return seen
