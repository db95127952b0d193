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
* **Accuracy term**, one removal-cost curve per variable (``curve[r]``: the cost of removing its ``r``
  lowest-|γ| channels; a variable always loses those first):

  - ``gamma`` (:func:`gamma_curves`): each removed channel costs its |γ| divided by the mean |γ| of
    its layer (a channel of average importance costs 1 in any layer), summed over a shortcut group's
    members. Additive per channel, it cannot see what a layer already lost: at deep cuts it empties
    the few layers whose milliseconds are cheapest in γ and the model collapses.
  - ``loss`` (:func:`sensitivity_curves`): measured. Each variable alone is cut to a grid of widths
    (7/8 … 1/8 of it, and its minimum) and the increase of a damage function (the detection loss on a
    fixed set of training images) is recorded; between grid widths the curve is interpolated, and it
    never falls as more is removed. A layer whose last channels matter costs accordingly.
* **Selection** (:func:`select_widths`): greedy — repeatedly remove the block of ``multiple`` channels
  with the smallest Δcost / Δpredicted-latency until the prediction meets the target, then add back
  the blocks that the overshoot of the last steps left room for (largest Δproxy first).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from edgeyolo.compress.prune.importance import Importance, channel_scores
from edgeyolo.compress.prune.methods import METHODS, PruneConfig
from edgeyolo.compress.prune.prunable import PruneMode
from edgeyolo.compress.prune.selection import min_keep, top_channels
from edgeyolo.compress.prune.surgery import Plan
from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import Cfg, ConvSpec, RouteSpec, ScaleChannelsSpec
from edgeyolo.model.darknet import Darknet

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


SIZES = ("params", "bflops")


@dataclass(frozen=True)
class SizeModel:
    """The model's parameter count or BFLOPs for any assignment of conv output widths, exact: each conv
    costs ``a·ci·co + b·co`` (its weights, BN or bias; for BFLOPs 2·MAC over its output grid) and the
    layers that are not convs a constant, so the budget selection can target size instead of latency."""

    cfg: Cfg
    size: str
    coef: Mapping[int, tuple[float, float]]  # conv → (a, b)
    offset: float

    @classmethod
    def of(cls, cfg: Cfg, img_size: int, size: str = "params") -> SizeModel:
        from edgeyolo.model.cfg import layer_table

        if size not in SIZES:
            raise UsageError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
        rows = {r.index: r for r in layer_table(cfg, img_size)}
        coef: dict[int, tuple[float, float]] = {}
        for c in cfg.conv_layers:
            k2 = c.size * c.size / c.groups
            if size == "params":
                coef[c.index] = (k2, 2.0 if c.batch_normalize else 1.0)
            else:
                _, h, w = rows[c.index].output
                coef[c.index] = (2.0 * k2 * h * w / 1e9, 0.0)
        total = sum(r.params if size == "params" else r.bflops for r in rows.values())
        model = cls(cfg, size, coef, 0.0)
        return cls(cfg, size, coef, total - model.predict())

    def __post_init__(self) -> None:
        object.__setattr__(self, "_inputs", input_expressions(self.cfg))
        object.__setattr__(self, "_full", {c.index: c.filters for c in self.cfg.conv_layers})

    def predict(self, widths: Widths | None = None) -> float:
        widths, full = widths or {}, self._full
        out = self.offset
        for i, (a, b) in self.coef.items():
            ci = sum(v if k < 0 else v * widths.get(k, full[k]) for k, v in self._inputs[i].items())
            co = widths.get(i, full[i])
            out += a * ci * co + b * co
        return out


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


def gamma_curves(scores: Sequence[Tensor]) -> list[Tensor]:
    """Per variable, ``curve[r]``: the summed scores of its ``r`` lowest channels (r = 0 … full)."""
    return [torch.cat([torch.zeros(1, dtype=torch.float64), torch.sort(s).values.cumsum(0)]) for s in scores]


def sensitivity_widths(v: Variable, multiple: int, steps: int = 8, below: int | None = None) -> list[int]:
    """The widths at which :func:`sensitivity_curves` measures ``v``: ``k/steps`` of ``below`` (default:
    its full width; k = steps−1 … 1) rounded to ``multiple``, one block under ``below``, and its
    minimum; widest first, no repeats, all under ``below``."""
    top = v.full if below is None else below
    if top <= v.minimum:
        return []
    grid = {max(v.minimum, min(top - multiple, multiple * round(top * k / steps / multiple))) for k in range(1, steps)}
    return sorted(grid | {v.minimum, top - multiple}, reverse=True)


def sensitivity_curves(
    model: Darknet,
    variables: Sequence[Variable],
    scores: Sequence[Tensor],
    damage: Callable[[Darknet], float],
    multiple: int,
    progress: Callable[[range], Iterable[int]] | None = None,
    start: Mapping[int, int] | None = None,
) -> list[Tensor]:
    """Per variable, ``curve[r]``: how much ``damage`` rises when that variable alone loses its ``r``
    lowest-|γ| channels (β compensated, as the final model is), measured at
    :func:`sensitivity_widths` and linearly interpolated between them; non-decreasing in ``r``.

    ``start`` (variable → width): measure around that partly pruned model instead — every other
    variable at its ``start`` width, the rise counted from the ``start`` model, and the channels it
    already removed cost nothing."""
    from edgeyolo.compress.prune.surgery import apply_plan

    at = {k: v.full for k, v in enumerate(variables)} if start is None else dict(start)

    def build(widths: Mapping[int, int]) -> Darknet:
        if all(widths[k] >= v.full for k, v in enumerate(variables)):
            return model
        return apply_plan(model, width_plan(variables, scores, widths)).model.eval()

    base = damage(build(at))
    todo = [(k, w) for k, v in enumerate(variables) for w in sensitivity_widths(v, multiple, below=at[k])]
    measured: dict[int, dict[int, float]] = {k: {r: 0.0 for r in range(v.full - at[k] + 1)} for k, v in enumerate(variables)}
    steps = range(len(todo))
    for n in progress(steps) if progress else steps:
        k, w = todo[n]
        measured[k][variables[k].full - w] = max(0.0, damage(build({**at, k: w})) - base)
    curves = []
    for k, v in enumerate(variables):
        removed = sorted(measured[k])
        values = np.maximum.accumulate([measured[k][r] for r in removed])
        r_max = v.full - v.minimum
        curve = np.interp(np.arange(v.full + 1), removed, values)
        curve[r_max + 1 :] = math.inf  # never asked for: below the minimum
        curves.append(torch.from_numpy(curve))
    return curves


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
    curves: Sequence[Tensor] | None = None,
    start: Mapping[int, int] | None = None,
) -> WidthChoice:
    """Widths (multiples of ``multiple``) whose predicted latency is at most ``target_ms``, removing
    what costs least by ``curves`` (default: :func:`gamma_curves` of ``scores``), from the full
    widths or from ``start`` (variable → width; never wider than it)."""
    if not variables:
        raise UsageError("latency pruning: no conv of this model may lose channels in this mode")
    cum = list(curves) if curves is not None else gamma_curves(scores)

    def removed_cost(k: int, w: int) -> float:
        return float(cum[k][variables[k].full - w])

    ceiling = {k: v.full for k, v in enumerate(variables)} if start is None else dict(start)
    w = dict(ceiling)
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
            if w[k] + multiple > ceiling[k]:
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


#: the progressive path's step, as a fraction of the unpruned predicted latency
PATH_STEP = 0.1


class SensitivityPath:
    """Latency-targeted widths whose sensitivity is measured again as the cut deepens.

    One measurement at full width cannot see how layers interact once several are thin, so the path
    walks down in steps of ``step`` × the unpruned predicted latency: at each step it measures
    :func:`sensitivity_curves` around the model of the previous step and selects the next step's
    widths from there. A target is then met from the last step above it, with that step's curves.
    Steps are kept, so the targets of one model (and a correction loop's re-aims) share them.
    """

    def __init__(
        self,
        model: Darknet,
        predict: Callable[[Widths], float],
        variables: Sequence[Variable],
        scores: Sequence[Tensor],
        damage: Callable[[Darknet], float],
        multiple: int,
        step: float = PATH_STEP,
        progress: Callable[[range], Iterable[int]] | None = None,
    ) -> None:
        self.model, self.predict, self.variables, self.scores = model, predict, variables, scores
        self.damage, self.multiple, self.progress = damage, multiple, progress
        full = {k: v.full for k, v in enumerate(variables)}
        self.full_ms = predict(conv_widths(variables, full))
        self.step = step * self.full_ms
        self.steps: list[tuple[float, dict[int, int], list[Tensor]]] = []  # (aim, widths, curves around them)
        self._add(self.full_ms, full)

    def _add(self, aim: float, widths: dict[int, int]) -> None:
        curves = sensitivity_curves(self.model, self.variables, self.scores, self.damage, self.multiple, self.progress, start=widths)
        self.steps.append((aim, widths, curves))

    def select(self, target_ms: float) -> WidthChoice:
        while self.steps[-1][0] - self.step > target_ms:
            aim, widths, curves = self.steps[-1]
            nxt = select_widths(self.predict, self.variables, self.scores, aim - self.step, self.multiple, curves, widths)
            self._add(aim - self.step, nxt.widths)
        _, widths, curves = min((s for s in self.steps if s[0] >= target_ms), key=lambda s: s[0])
        return select_widths(self.predict, self.variables, self.scores, target_ms, self.multiple, curves, widths)


def width_plan(variables: Sequence[Variable], scores: Sequence[Tensor], widths: Mapping[int, int]) -> Plan:
    """Keep-masks: each variable keeps its ``widths[k]`` highest-scoring channels (one mask per group)."""
    masks: dict[int, Tensor] = {}
    for k, v in enumerate(variables):
        if widths[k] >= v.full:
            continue
        mask = top_channels(scores[k], widths[k])
        masks.update({j: mask.clone() for j in v.members})
    return Plan(dict(sorted(masks.items())))
