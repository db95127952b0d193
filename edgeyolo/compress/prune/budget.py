"""Latency-budget channel selection: per-layer widths that meet a predicted latency, least accuracy lost.

This module is pure arithmetic (no runtime): the latency numbers come from a :class:`LatencyModel`
that :mod:`edgeyolo.bench.latency` measures on the host. The pieces:

* **Variables** (:func:`width_variables`): the prunable convs of a mode (``normal``: independent convs,
  ``slim``: residual-tied convs too), a residual channel space (shortcut group) being one variable
  whose members share one width and one mask. Widths move in steps of ``multiple``; a variable never
  goes below ``max(multiple, ceil(min_keep / multiple)·multiple)`` (the engine's ``--layer-keep``),
  and a conv whose width is not a multiple of ``multiple`` is protected, as ``regular`` does.
* **Cost model** (:class:`ConvCost`, :class:`LatencyModel`): each conv (with its BN and activation,
  fused by onnxruntime) costs ``a + b_out·co/Co + b_in·ci/Ci + b_io·ci·co/(Ci·Co)`` ms, all four
  coefficients ≥ 0, so the prediction is monotone in every width. A conv's input width is the output
  width of the conv(s) feeding it (through routes, which concatenate or split, and shortcuts, pools,
  upsample), so cutting one layer also makes its consumers cheaper. The whole model is
  ``offset + scale·Σ conv costs``, the affine map absorbing the layers that are not convs.
* **Accuracy proxy**: removing a channel costs its |γ| divided by the mean |γ| of its layer (a channel
  of average importance costs 1 in any layer, and γ scales that differ per layer do not bias the
  choice); a shortcut group's channel costs the sum over its members. A variable always loses its
  lowest-cost channels first.
* **Selection** (:func:`select_widths`): greedy — repeatedly remove the block of ``multiple`` channels
  with the smallest Δproxy / Δpredicted-latency until the prediction meets the target, then add back
  the blocks that the overshoot of the last steps left room for (largest Δproxy first).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from edgeyolo.compress.prune.importance import Importance, channel_scores
from edgeyolo.compress.prune.methods import METHODS, PruneConfig
from edgeyolo.compress.prune.selection import min_keep, top_channels
from edgeyolo.compress.prune.surgery import Plan
from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import Cfg, ConvSpec, RouteSpec, ScaleChannelsSpec
from edgeyolo.model.darknet import Darknet
from edgeyolo.train.sparsity import PruneMode

#: the methods whose candidate convs a mode uses (their protections and residual groups)
MODE_METHODS = {PruneMode.NORMAL: "normal", PruneMode.SHORTCUT: "slim"}

Widths = Mapping[int, int]  # conv layer → output width


def parse_mode(mode: PruneMode | str | int) -> PruneMode:
    """``normal`` / ``slim`` (or ``PruneMode.NORMAL`` / ``SHORTCUT``, 0 / 1)."""
    if isinstance(mode, str) and not mode.isdigit():
        by_name = {"normal": PruneMode.NORMAL, "regular": PruneMode.NORMAL, "slim": PruneMode.SHORTCUT, "shortcut": PruneMode.SHORTCUT}
        if mode.lower() not in by_name:
            raise UsageError(f"latency pruning mode must be normal or slim, got {mode!r}")
        return by_name[mode.lower()]
    parsed = PruneMode.parse(mode)
    if parsed not in MODE_METHODS:
        raise UsageError("latency pruning cuts channels: mode must be normal (0) or slim (1), not layer (2)")
    return parsed


# --------------------------------------------------------------------------------------------- graph


@dataclass(frozen=True)
class Variable:
    """Convs that share one output width (one residual channel space, or a single conv)."""

    members: tuple[int, ...]
    full: int
    minimum: int

    @property
    def name(self) -> str:
        return "+".join(map(str, self.members))


def width_variables(
    cfg: Cfg, mode: PruneMode | str = PruneMode.NORMAL, multiple: int = 8, layer_keep: float = 0.01
) -> tuple[list[Variable], dict[int, str]]:
    """The width variables of ``mode`` and the convs it leaves alone (with why)."""
    if multiple < 1:
        raise UsageError(f"--multiple must be >= 1, got {multiple}")
    method = MODE_METHODS[parse_mode(mode)]
    layers, protected, groups = METHODS.get(method)().candidates(cfg, PruneConfig(method, layer_keep=layer_keep), "latency")
    protected = dict(protected)
    width = {c.index: c.filters for c in cfg.conv_layers}
    grouped = {j for g in groups for j in g}
    units = [tuple(g) for g in groups if all(j in layers for j in g)] + [(i,) for i in layers if i not in grouped]
    variables = []
    for members in sorted(units):
        full = width[members[0]]
        lowest = max(multiple, math.ceil(min_keep(full, layer_keep) / multiple) * multiple)
        why = None
        if full % multiple:
            why = f"protected (width): {full} channels is not a multiple of --multiple {multiple}"
        elif lowest >= full:
            why = f"protected (width): {full} channels cannot lose a block of {multiple} and keep its minimum"
        if why:
            protected.update({j: why for j in members})
        else:
            variables.append(Variable(members, full, lowest))
    return variables, protected


def input_expressions(cfg: Cfg) -> dict[int, dict[int, float]]:
    """Per conv, its input width as ``Σ coef·width[conv]`` (key -1: a constant, the image channels).

    Routes add their inputs' expressions (divided by ``groups`` when they split), everything else but
    a conv passes its input's on — so the input width is linear in the output widths.
    """
    out: list[dict[int, float]] = []

    def prev(i: int) -> dict[int, float]:
        return out[i - 1] if i > 0 else {-1: float(cfg.net.channels)}

    inputs: dict[int, dict[int, float]] = {}
    for layer in cfg.layers:
        i = layer.index
        if isinstance(layer, ConvSpec):
            inputs[i] = dict(prev(i))
            out.append({i: 1.0})
        elif isinstance(layer, RouteSpec):
            expr: dict[int, float] = {}
            for j in layer.layers:
                for k, v in out[j].items():
                    expr[k] = expr.get(k, 0.0) + v / layer.groups
            out.append(expr)
        elif isinstance(layer, ScaleChannelsSpec):
            out.append(dict(out[layer.source]))
        else:  # shortcut (both inputs have one width), pools, upsample, dropout, yolo
            out.append(dict(prev(i)))
    return inputs


# --------------------------------------------------------------------------------------------- latency


@dataclass(frozen=True)
class ConvCost:
    """One conv's latency (ms) as a function of its input and output widths; see the module doc."""

    full_in: int
    full_out: int
    coef: tuple[float, float, float, float]  # a, b_out, b_in, b_io, all >= 0

    def ms(self, ci: float, co: float) -> float:
        a, b_out, b_in, b_io = self.coef
        x, y = ci / self.full_in, co / self.full_out
        return a + b_out * y + b_in * x + b_io * x * y


def features(ci: float, co: float, full_in: int, full_out: int) -> list[float]:
    x, y = ci / full_in, co / full_out
    return [1.0, y, x, x * y]


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a handful of unknowns: the best of all active sets.

    Exact (the optimum has some set of zero coefficients, and every set is tried); 2^n solves, which is
    nothing for the 2–4 unknowns used here.
    """
    n = a.shape[1]
    best, best_res = np.zeros(n), float(np.sum(b**2))
    for k in range(1, n + 1):
        for cols in itertools.combinations(range(n), k):
            sol, *_ = np.linalg.lstsq(a[:, cols], b, rcond=None)
            if np.any(sol < 0):
                continue
            res = float(np.sum((a[:, cols] @ sol - b) ** 2))
            if res < best_res - 1e-15:
                best, best_res = np.zeros(n), res
                best[list(cols)] = sol
    return best


def fit_cost(samples: Sequence[tuple[float, float, float]], full_in: int, full_out: int) -> ConvCost:
    """The non-negative cost function closest (least squares) to ``(ci, co, ms)`` samples."""
    a = np.array([features(ci, co, full_in, full_out) for ci, co, _ in samples], dtype=np.float64)
    b = np.array([ms for _, _, ms in samples], dtype=np.float64)
    return ConvCost(full_in, full_out, tuple(float(c) for c in nnls(a, b)))


@dataclass(frozen=True)
class LatencyModel:
    """Predicted whole-model latency (ms) for any assignment of conv output widths."""

    cfg: Cfg
    costs: Mapping[int, ConvCost]
    offset: float
    scale: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inputs", input_expressions(self.cfg))
        object.__setattr__(self, "_full", {c.index: c.filters for c in self.cfg.conv_layers})

    def in_width(self, layer: int, widths: Widths) -> float:
        full = self._full
        return sum(v if k < 0 else v * widths.get(k, full[k]) for k, v in self._inputs[layer].items())

    def conv_ms(self, widths: Widths) -> float:
        full = self._full
        return sum(c.ms(self.in_width(i, widths), widths.get(i, full[i])) for i, c in self.costs.items())

    def predict(self, widths: Widths | None = None) -> float:
        return self.offset + self.scale * self.conv_ms(widths or {})


# --------------------------------------------------------------------------------------------- choice


def variable_scores(model: Darknet, variables: Sequence[Variable], importance: Importance = Importance.GAMMA) -> list[Tensor]:
    """Per variable, each channel's removal cost: |γ| / the layer's mean |γ|, summed over members."""
    layers = [j for v in variables for j in v.members]
    raw = channel_scores(model, layers, importance)
    out = []
    for v in variables:
        total = torch.zeros(v.full, dtype=torch.float64)
        for j in v.members:
            s = raw[j]
            total += s / s.mean().clamp_min(1e-12)
        out.append(total)
    return out


@dataclass(frozen=True)
class WidthChoice:
    widths: dict[int, int]  # variable index → kept width
    predicted_ms: float
    proxy: float  # summed removal cost of everything removed


def conv_widths(variables: Sequence[Variable], chosen: Mapping[int, int]) -> dict[int, int]:
    return {j: chosen[k] for k, v in enumerate(variables) for j in v.members}


def select_widths(
    predict: Callable[[Widths], float],
    variables: Sequence[Variable],
    scores: Sequence[Tensor],
    target_ms: float,
    multiple: int,
) -> WidthChoice:
    """Widths (multiples of ``multiple``) whose predicted latency is at most ``target_ms``."""
    if not variables:
        raise UsageError("latency pruning: no conv of this model may lose channels in this mode")
    cum = [torch.cat([torch.zeros(1, dtype=torch.float64), torch.sort(s).values.cumsum(0)]) for s in scores]

    def removed_cost(k: int, w: int) -> float:
        return float(cum[k][variables[k].full - w])

    w = {k: v.full for k, v in enumerate(variables)}
    now = predict(conv_widths(variables, w))
    lowest = predict(conv_widths(variables, {k: v.minimum for k, v in enumerate(variables)}))
    if lowest > target_ms:
        raise UsageError(
            f"latency target {target_ms:.3g} ms is out of reach: the smallest reachable latency is {lowest:.3g} ms "
            f"(every prunable conv at its minimum width; unpruned {now:.3g} ms)"
        )
    while now > target_ms:
        best = None
        for k, v in enumerate(variables):
            if w[k] - multiple < v.minimum:
                continue
            trial = {**w, k: w[k] - multiple}
            after = predict(conv_widths(variables, trial))
            gain = now - after
            d_proxy = removed_cost(k, w[k] - multiple) - removed_cost(k, w[k])
            ratio = d_proxy / gain if gain > 1e-12 else math.inf
            key = (ratio, d_proxy, k)
            if best is None or key < best[0]:
                best = (key, k, after)
        assert best is not None, "the all-minimum model meets the target, so some step is left"
        _, k, now = best
        w[k] -= multiple
    while True:  # refill: the last steps may have overshot; give back what still fits
        best = None
        for k, v in enumerate(variables):
            if w[k] + multiple > v.full:
                continue
            trial = {**w, k: w[k] + multiple}
            after = predict(conv_widths(variables, trial))
            if after > target_ms:
                continue
            key = (-(removed_cost(k, w[k]) - removed_cost(k, w[k] + multiple)), k)
            if best is None or key < best[0]:
                best = (key, k, after)
        if best is None:
            break
        _, k, now = best
        w[k] += multiple
    proxy = sum(removed_cost(k, w[k]) for k in w)
    return WidthChoice(dict(w), now, proxy)


def width_plan(variables: Sequence[Variable], scores: Sequence[Tensor], widths: Mapping[int, int]) -> Plan:
    """Keep-masks: each variable keeps its ``widths[k]`` highest-scoring channels (one mask per group)."""
    masks: dict[int, Tensor] = {}
    for k, v in enumerate(variables):
        if widths[k] >= v.full:
            continue
        mask = top_channels(scores[k], widths[k])
        masks.update({j: mask.clone() for j in v.members})
    return Plan(dict(sorted(masks.items())))
