"""Where quantization hurts: per-layer SQNR and one-layer-at-a-time sensitivity.

Two views, both in dB (higher is better, ∞ = identical):

* ``layer_sqnr`` — each quantized layer's *output* in the fully quantized model against the float
  model: the error accumulated up to that layer;
* ``sensitivity`` — the network's raw head outputs with *only* that layer quantized: how much that
  one layer costs. ``auto_keep_float`` picks the worst of these to leave in float.

mAP per layer needs a dataset and a runtime, so it lives with the CLI (it composes
``only_quantized`` with ``edgeyolo.runtime.evaluate``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from edgeyolo.compress.quant.modules import _require, only_quantized, quant_layers


def sqnr_db(signal: float, noise: float) -> float:
    if noise <= 0.0:
        return math.inf
    if signal <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def tensor_sqnr(ref: Tensor, got: Tensor) -> float:
    return sqnr_db(float(ref.double().pow(2).sum()), float((ref.double() - got.double()).pow(2).sum()))


@dataclass(frozen=True)
class LayerReport:
    layer: int
    kind: str  # convolutional | shortcut
    output_sqnr_db: float  # this layer's output, everything quantized, vs float
    solo_sqnr_db: float  # the heads, only this layer quantized, vs float


def _heads(model, batch: Tensor) -> Tensor:
    return torch.cat([h.flatten(1) for h in model.forward_raw(batch)], dim=1)


@torch.no_grad()
def layer_sqnr(model, batches: Sequence[Tensor]) -> dict[int, float]:
    model = _require(model).eval()
    layers = [i for i in quant_layers(model) if model.module_list[i].quantized]
    signal = dict.fromkeys(layers, 0.0)
    noise = dict.fromkeys(layers, 0.0)
    for batch in batches:
        with only_quantized(model, []):
            _, ref = model.run(batch, set(layers))
        _, got = model.run(batch, set(layers))
        for i in layers:
            signal[i] += float(ref[i].double().pow(2).sum())
            noise[i] += float((ref[i].double() - got[i].double()).pow(2).sum())
    return {i: sqnr_db(signal[i], noise[i]) for i in layers}


@torch.no_grad()
def sensitivity(model, batches: Sequence[Tensor], layers: Sequence[int] | None = None) -> dict[int, float]:
    model = _require(model).eval()
    layers = list(quant_layers(model) if layers is None else layers)
    with only_quantized(model, []):
        refs = [_heads(model, b) for b in batches]
    result = {}
    for i in layers:
        with only_quantized(model, [i]):
            signal = noise = 0.0
            for ref, batch in zip(refs, batches):
                got = _heads(model, batch)
                signal += float(ref.double().pow(2).sum())
                noise += float((ref.double() - got.double()).pow(2).sum())
        result[i] = sqnr_db(signal, noise)
    return result


def analyze(model, batches: Sequence[Tensor]) -> list[LayerReport]:
    model = _require(model)
    out = layer_sqnr(model, batches)
    solo = sensitivity(model, batches)
    return [
        LayerReport(i, model.cfg.layers[i].section, out.get(i, math.nan), solo[i])
        for i in quant_layers(model)
    ]


def auto_keep_float(solo_sqnr: dict[int, float], fraction: float = 0.05) -> list[int]:
    """The most sensitive layers (lowest solo SQNR): ⌈fraction · layers⌉ of them, at least one."""
    if not solo_sqnr:
        return []
    count = max(1, math.ceil(fraction * len(solo_sqnr)))
    return sorted(sorted(solo_sqnr, key=lambda i: solo_sqnr[i])[:count])
