"""Latency-targeted pruning: per-layer widths chosen to meet a host latency (ms), least accuracy lost.

**The table** (:func:`latency_table`) — what each conv costs on this host, in onnxruntime, as a
function of its input and output widths. Timing one tiny graph per conv and width would take
minutes and miss the cache effects of the real network, so the whole model is timed instead, at a
few width assignments, with onnxruntime's per-node profiler on:

1. draw ``samples`` assignments of the prunable widths (multiples of ``multiple``): the unpruned
   model, every width at its minimum, and the rest around evenly spaced mean fractions with
   independent per-layer jitter, so each conv's input and output widths vary independently;
2. build each as a real pruned model (:func:`apply_plan`), export it as ``edgeyolo export onnx``
   does, and tag every node with its darknet layer so the profiler's per-node kernel times
   (Conv + BN + activation, fused by onnxruntime) can be summed per conv;
3. run all of them interleaved (A, B, C, A, B, C ...) — a profiled session and a plain one per
   assignment — so a noisy shared machine slows them alike; keep medians;
4. fit per conv ``a + b_out·co + b_in·ci + b_io·ci·co`` (normalised widths, non-negative
   coefficients, so the prediction is monotone in every width; see
   :mod:`edgeyolo.compress.prune.budget`), then the whole model as ``offset + scale·Σ convs``
   against the plain sessions' medians — this absorbs the profiler's overhead and the layers that
   are not convs (adds, concats, pools, the decode).

The table is keyed by (cfg sha256, img_size, multiple, threads, onnxruntime version, CPU model) and
cached as JSON when a cache folder is given; a key mismatch rebuilds it.

**The choice** (:func:`prune_to_latency`): greedy width selection against the table (budget.py),
graph surgery with β compensation, then a measured-latency correction: time the pruned model
interleaved with the unpruned one, express it on the table's clock (pruned / unpruned × the table's
unpruned latency — drift of the shared machine between table and check cancels), then re-aim
(:func:`next_aim`: rescale by target / measured until one aim measured below the target and one
above, then interpolate between them) and select again. A model within tolerance is timed a
second time before the loop stops on it; at most ``iterations`` rounds, the attempt whose median
measurement is closest wins.

:func:`latency_prune_bench` compares the result, at equal latency, with uniform-width pruning and
global-threshold pruning (``regular`` in normal mode, ``slim`` in slim mode).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import platform
import re
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeyolo.compress.prune import PruneConfig, apply_plan, prune
from edgeyolo.compress.prune.budget import (
    ConvCost,
    LatencyModel,
    SensitivityPath,
    Variable,
    conv_widths,
    fit_cost,
    input_expressions,
    nnls,
    parse_mode,
    select_widths,
    variable_scores,
    width_plan,
    width_variables,
)
from edgeyolo.compress.prune.importance import Importance
from edgeyolo.compress.prune.prunable import PruneMode
from edgeyolo.compress.prune.surgery import Plan
from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import Cfg, format_cfg, parse_cfg_text, total_bflops
from edgeyolo.model.darknet import Darknet

logger = logging.getLogger(__name__)

TABLE_VERSION = 1
_TAG = re.compile(r"^L(\d+)\|")


# --------------------------------------------------------------------------------------------- table


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@dataclass(frozen=True)
class TableKey:
    """What a latency table is valid for; any difference means measuring again."""

    cfg_sha256: str
    img_size: int
    multiple: int
    threads: int
    onnxruntime: str
    cpu: str
    version: int = TABLE_VERSION

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()


def cfg_sha256(cfg: Cfg) -> str:
    return hashlib.sha256(format_cfg(cfg).encode()).hexdigest()


def table_key(cfg: Cfg, img_size: int, multiple: int, threads: int) -> TableKey:
    import onnxruntime

    return TableKey(cfg_sha256(cfg), int(img_size), int(multiple), int(threads), onnxruntime.__version__, _cpu_model())


@dataclass(frozen=True)
class Sample:
    """One timed width assignment: conv → width (prunable convs only), plain median, per-conv medians."""

    widths: dict[int, int]
    total_ms: float
    conv_ms: dict[int, float]


@dataclass(frozen=True)
class LatencyTable:
    """Per-conv latency functions of this host plus the whole-model map; see the module doc."""

    key: TableKey
    cfg: Cfg
    costs: dict[int, ConvCost]
    offset: float
    scale: float
    samples: tuple[Sample, ...] = ()
    seconds: float = 0.0
    variables: tuple[Variable, ...] = ()  # the widths the samples varied
    model: LatencyModel = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", LatencyModel(self.cfg, self.costs, self.offset, self.scale))

    def predict(self, widths: Mapping[int, int] | None = None) -> float:
        """Predicted latency (ms) with the given conv output widths (the others unpruned)."""
        return self.model.predict(widths)

    def layer_ms(self, layer: int, widths: Mapping[int, int] | None = None) -> float:
        """One conv's share (ms, on the whole-model scale) under ``widths``."""
        widths = widths or {}
        full = {c.index: c.filters for c in self.cfg.conv_layers}
        return self.scale * self.costs[layer].ms(self.model.in_width(layer, widths), widths.get(layer, full[layer]))

    @property
    def full_ms(self) -> float:
        return self.predict()

    @property
    def fit_error(self) -> float:
        """Largest relative gap between the prediction and a timed sample (0 without samples)."""
        gaps = [abs(self.predict(s.widths) - s.total_ms) / s.total_ms for s in self.samples if s.total_ms > 0]
        return max(gaps, default=0.0)

    def to_dict(self) -> dict:
        return {
            "key": dataclasses.asdict(self.key),
            "cfg": format_cfg(self.cfg),
            "costs": {str(i): {"full_in": c.full_in, "full_out": c.full_out, "coef": list(c.coef)} for i, c in self.costs.items()},
            "offset": self.offset,
            "scale": self.scale,
            "seconds": self.seconds,
            "variables": [{"members": list(v.members), "full": v.full, "minimum": v.minimum} for v in self.variables],
            "samples": [
                {"widths": {str(k): w for k, w in s.widths.items()}, "total_ms": s.total_ms, "conv_ms": {str(k): t for k, t in s.conv_ms.items()}}
                for s in self.samples
            ],
        }

    @classmethod
    def from_dict(cls, data: dict) -> LatencyTable:
        return cls(
            TableKey(**data["key"]),
            parse_cfg_text(data["cfg"], "<latency table>"),
            {int(i): ConvCost(c["full_in"], c["full_out"], tuple(c["coef"])) for i, c in data["costs"].items()},
            float(data["offset"]),
            float(data["scale"]),
            tuple(
                Sample({int(k): int(w) for k, w in s["widths"].items()}, float(s["total_ms"]), {int(k): float(t) for k, t in s["conv_ms"].items()})
                for s in data.get("samples", [])
            ),
            float(data.get("seconds", 0.0)),
            tuple(Variable(tuple(v["members"]), v["full"], v["minimum"]) for v in data.get("variables", [])),
        )

    def save(self, path: str | Path) -> Path:
        from edgeyolo.fileio import atomic_write_text

        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> LatencyTable:
        return cls.from_dict(json.loads(Path(path).read_text()))


def cache_path(cache_dir: str | Path, key: TableKey) -> Path:
    return Path(cache_dir) / f"latency-{key.digest()[:16]}.json"


def _table_variables(cfg: Cfg, multiple: int) -> list[Variable]:
    """The widest set of widths any mode may change (slim's covers normal's), down to one block."""
    for mode in (PruneMode.SHORTCUT, PruneMode.NORMAL):
        try:
            return width_variables(cfg, mode, multiple, layer_keep=0.0)[0]
        except UsageError:
            continue
    raise UsageError(f"latency table: {cfg.path} has no conv whose channels may be pruned")


def _sample_widths(variables: Sequence[Variable], count: int, multiple: int, seed: int) -> list[dict[int, int]]:
    """Variable index → width: unpruned, all-minimum, then jittered around evenly spaced fractions."""
    rng = np.random.default_rng(seed)
    out = [{k: v.full for k, v in enumerate(variables)}, {k: v.minimum for k, v in enumerate(variables)}]
    for u in np.linspace(0.85, 0.2, max(count - 2, 0)):
        widths = {}
        for k, v in enumerate(variables):
            f = float(np.clip(u + rng.normal(0.0, 0.25), 0.0, 1.0))
            widths[k] = int(min(v.full, max(v.minimum, multiple * round((v.minimum + f * (v.full - v.minimum)) / multiple))))
        out.append(widths)
    return out[:count] if count >= 2 else out[:1]


def _tag_nodes(data: bytes) -> bytes:
    """The ONNX graph with every tensor made by darknet layer K's nodes renamed ``L{K}|...``: onnxruntime
    names a fused node after its output, so the profiler's per-node times can be told apart by layer."""
    import onnx

    proto = onnx.load_from_string(data)
    graph = proto.graph
    rename: dict[str, str] = {}
    for node in graph.node:
        m = re.match(r"^/module_list\.(\d+)/", node.name)
        if m:
            node.name = f"L{m.group(1)}|{node.name}"
            for o in node.output:
                rename[o] = f"L{m.group(1)}|{o}"
    for node in graph.node:
        node.input[:] = [rename.get(t, t) for t in node.input]
        node.output[:] = [rename.get(t, t) for t in node.output]
    for value in graph.output:
        value.name = rename.get(value.name, value.name)
    del graph.value_info[:]
    return proto.SerializeToString()


def _profiled_session(data: bytes, threads: int, prefix: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.enable_profiling = True
    options.profile_file_prefix = str(prefix)
    return ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])


def _conv_times(events: list[dict], convs: set[int], skip_runs: int) -> dict[int, float]:
    """Per conv layer, the median over the timed runs of the summed kernel time (ms) of its nodes."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")[skip_runs:]
    per_run: list[dict[int, float]] = [{} for _ in runs]
    starts = [r[0] for r in runs]
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time"):
            continue
        m = _TAG.match(e["name"])
        if not m or int(m.group(1)) not in convs:
            continue
        k = int(np.searchsorted(starts, e["ts"], side="right")) - 1
        if k < 0 or e["ts"] > runs[k][1]:
            continue  # a warm-up run
        layer = int(m.group(1))
        per_run[k][layer] = per_run[k].get(layer, 0.0) + e["dur"] / 1000.0
    return {i: float(np.median([r.get(i, 0.0) for r in per_run])) for i in convs if any(i in r for r in per_run)}


def latency_table(
    model: Darknet,
    img_size: int,
    multiple: int = 8,
    threads: int = 0,
    runs: int = 12,
    samples: int = 8,
    warmup: int = 2,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    progress: Callable[[range], range] | None = None,
) -> LatencyTable:
    """Measure (or load from ``cache_dir``) the per-conv latency table of ``model`` at ``img_size``."""
    from edgeyolo.export.onnx import export_onnx
    from edgeyolo.runtime.onnxruntime import make_session

    if runs < 1 or samples < 2 or warmup < 0:
        raise UsageError(f"latency table: need runs >= 1, samples >= 2 and warmup >= 0 (got {runs}, {samples}, {warmup})")
    key = table_key(model.cfg, img_size, multiple, threads)
    path = cache_path(cache_dir, key) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            cached = LatencyTable.load(path)
        except (ValueError, KeyError, TypeError) as error:
            logger.warning("latency table %s is unreadable (%s); measuring again", path, error)
        else:
            if cached.key == key:
                logger.info("latency table from %s", path)
                return cached
    start = time.perf_counter()
    cfg = model.cfg
    variables = _table_variables(cfg, multiple)
    scores = variable_scores(model, variables)
    assignments = _sample_widths(variables, samples, multiple, seed)
    convs = {c.index for c in cfg.conv_layers}
    rng = np.random.default_rng(seed)
    blob = rng.random((1, cfg.net.channels, img_size, img_size), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="edgeyolo-latency-") as tmp:
        sessions = []
        for k, chosen in enumerate(assignments):
            net = apply_plan(model, width_plan(variables, scores, chosen)).model.eval()
            onnx_path = export_onnx(net, Path(tmp) / f"w{k}.onnx", img_size).path
            data = onnx_path.read_bytes()
            plain = make_session(data, threads)
            profiled = _profiled_session(_tag_nodes(data), threads, Path(tmp) / f"profile{k}")
            sessions.append((plain, profiled))
        name = sessions[0][0].get_inputs()[0].name
        for plain, profiled in sessions:
            for _ in range(warmup):
                plain.run(None, {name: blob})
                profiled.run(None, {name: blob})
        times: list[list[float]] = [[] for _ in sessions]
        iterations = range(runs)
        for _ in progress(iterations) if progress else iterations:
            for k, (plain, profiled) in enumerate(sessions):
                t0 = time.perf_counter()
                plain.run(None, {name: blob})
                times[k].append(time.perf_counter() - t0)
                profiled.run(None, {name: blob})
        timed = []
        for k, (chosen, (_, profiled)) in enumerate(zip(assignments, sessions)):
            events = json.loads(Path(profiled.end_profiling()).read_text())
            conv_ms = _conv_times(events, convs, warmup)
            timed.append(Sample(conv_widths(variables, chosen), float(np.median(times[k])) * 1000.0, conv_ms))
    table = _fit(key, cfg, timed, tuple(variables), time.perf_counter() - start)
    logger.info("latency table of %s @ %d: %d samples in %.1f s, fit within %.1f%%", cfg.path, img_size, len(timed), table.seconds, 100 * table.fit_error)
    if path is not None:
        table.save(path)
    return table


def _fit(key: TableKey, cfg: Cfg, samples: Sequence[Sample], variables: tuple[Variable, ...], seconds: float) -> LatencyTable:
    full = {c.index: c.filters for c in cfg.conv_layers}
    inputs = input_expressions(cfg)

    def in_width(i: int, widths: Mapping[int, int]) -> float:
        return sum(v if k < 0 else v * widths.get(k, full[k]) for k, v in inputs[i].items())

    costs = {}
    for i in sorted(full):
        points = [(in_width(i, s.widths), s.widths.get(i, full[i]), s.conv_ms[i]) for s in samples if i in s.conv_ms]
        if points:
            costs[i] = fit_cost(points, int(round(in_width(i, {}))), full[i])
    bare = LatencyTable(key, cfg, costs, 0.0, 1.0)
    sums = np.array([bare.model.conv_ms(s.widths) for s in samples])
    totals = np.array([s.total_ms for s in samples])
    offset, scale = nnls(np.stack([np.ones_like(sums), sums], axis=1), totals)
    if scale <= 0:  # degenerate timings (all equal): keep the profiled shape, shift it onto the totals
        scale, offset = 1.0, max(0.0, float(np.median(totals - sums)))
    return LatencyTable(key, cfg, costs, float(offset), float(scale), tuple(samples), seconds, variables)


# --------------------------------------------------------------------------------------------- pruning


@dataclass(frozen=True)
class Attempt:
    """One round of the correction loop: what was aimed at, predicted and measured."""

    aim_ms: float  # the prediction target of this round
    predicted_ms: float
    measured_ms: float | None  # pruned model, interleaved median
    unpruned_ms: float | None  # the unpruned model in the same run
    widths: dict[int, int]

    def on_table_clock(self, table: LatencyTable) -> float | None:
        """The measurement as the table would have timed it: pruned / unpruned × the table's unpruned."""
        if self.measured_ms is None or not self.unpruned_ms:
            return None
        return self.measured_ms / self.unpruned_ms * table.full_ms


@dataclass(frozen=True)
class LatencyPruneResult:
    """The compact model of the chosen widths, and how close it came to the target."""

    model: Darknet
    plan: Plan
    mode: PruneMode
    target_ms: float
    predicted_ms: float
    measured_ms: float | None
    unpruned_ms: float | None
    widths: dict[int, int]  # conv layer → kept width, for every conv the plan narrows
    full_widths: dict[int, int]
    protected: dict[int, str]
    attempts: tuple[Attempt, ...]
    table: LatencyTable
    proxy: float  # the accuracy proxy of what was removed (see budget.py)
    chosen: int = 0  # the attempt whose model this is

    @property
    def measured_on_table_ms(self) -> float | None:
        return self.attempts[self.chosen].on_table_clock(self.table)

    @property
    def error(self) -> float | None:
        """(measured on the table's clock − target) / target."""
        m = self.measured_on_table_ms
        return None if m is None else (m - self.target_ms) / self.target_ms


#: the most one correction round rescales the prediction target: a shared machine's timing noise
#: (15-25 % between runs, measured-facts.md) must not throw the next round far off
MAX_CORRECTION = 1.25


def _damped(factor: float) -> float:
    return min(MAX_CORRECTION, max(1.0 / MAX_CORRECTION, factor))


def next_aim(history: Sequence[tuple[float, float]], target: float, lowest: float, highest: float) -> float:
    """The next prediction target of the correction loop, from the (aim, measured) pairs so far.

    Once one aim measured below the target and another above, interpolate between the closest such
    pair (latency grows with the aim, so the answer lies between them); before that, rescale the
    last aim by target / measured, damped to ×1.25 per round. Always within [lowest, highest].
    """
    below = [(a, m) for a, m in history if m <= target]
    above = [(a, m) for a, m in history if m > target]
    if below and above:
        lo = max(below, key=lambda p: p[1])
        hi = min(above, key=lambda p: p[1])
        if hi[0] > lo[0] and hi[1] > lo[1]:
            aim = lo[0] + (target - lo[1]) * (hi[0] - lo[0]) / (hi[1] - lo[1])
            return min(highest, max(lowest, aim))
    aim, measured = history[-1]
    return min(highest, max(lowest, aim * _damped(target / measured)))


def measure_pair(model: Darknet, pruned: Darknet, img_size: int, threads: int, runs: int) -> tuple[float, float]:
    """(pruned, unpruned) onnxruntime medians (ms), the two interleaved run by run."""
    from edgeyolo.bench.prune import _time_models

    timed = _time_models({"unpruned": model, "pruned": pruned}, img_size, threads, runs)
    by = {r.backend: r.infer.median_ms for r in timed}
    return by["pruned"], by["unpruned"]


def _check_table(table: LatencyTable, model: Darknet, img_size: int, multiple: int) -> None:
    if table.key.cfg_sha256 != cfg_sha256(model.cfg):
        raise UsageError("the latency table was measured for another cfg; build one for this model (latency_table)")
    if table.key.img_size != img_size or table.key.multiple != multiple:
        raise UsageError(
            f"the latency table is for img_size {table.key.img_size}, multiple {table.key.multiple}; "
            f"asked for {img_size}, {multiple}"
        )


#: training images on which ``--rank loss`` measures each layer's sensitivity
DAMAGE_IMAGES = 64


def loss_damage(dataset, img_size: int, images: int = DAMAGE_IMAGES, batch_size: int = 16) -> Callable[[Darknet], float]:
    """The damage function of ``--rank loss``: a model's mean detection loss (the training loss, eval
    mode, no augmentation) on ``images`` training images spread evenly over ``dataset``, letterboxed
    once and held in memory."""
    import torch

    from edgeyolo.data.types import DetectionDataset
    from edgeyolo.train.data import YoloTrainDataset, batch_loader
    from edgeyolo.train.loss import YoloLoss

    if images <= 0:
        raise UsageError(f"the sensitivity needs at least one image, got {images}")
    picks = np.linspace(0, len(dataset.samples) - 1, min(images, len(dataset.samples))).round().astype(int)
    subset = DetectionDataset([dataset.samples[i] for i in sorted(set(picks.tolist()))], dataset.names, dataset.source)
    train = YoloTrainDataset(subset, img_size, None)
    keys = list(range(len(train)))
    batches = list(batch_loader(train, [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)], 0))

    @torch.no_grad()
    def damage(net: Darknet) -> float:
        net.eval()
        criterion = YoloLoss(net)
        total = 0.0
        for imgs, targets, *_ in batches:
            loss, _ = criterion(net.forward_raw(imgs), targets, imgs.shape[-2], imgs.shape[-1])
            total += float(loss) * imgs.shape[0]
        return total / len(keys)

    return damage


def prune_to_latency(
    model: Darknet,
    target_ms: float,
    img_size: int,
    multiple: int = 8,
    mode: PruneMode | str = PruneMode.NORMAL,
    table: LatencyTable | None = None,
    threads: int = 0,
    iterations: int = 6,
    tolerance: float = 0.04,
    runs: int = 30,
    layer_keep: float = 0.01,
    importance: Importance = Importance.GAMMA,
    cache_dir: str | Path | None = None,
    measure: Callable[[Darknet], tuple[float, float]] | None = None,
    damage: Callable[[Darknet], float] | None = None,
    path: SensitivityPath | None = None,
) -> LatencyPruneResult:
    """The pruned ``model`` (left unchanged) whose onnxruntime latency on this host meets ``target_ms``.

    ``iterations``: selection rounds, each followed by a measurement (0: select once against the
    table and measure nothing); the aim of the next round comes from :func:`next_aim`.
    ``tolerance``: relative gap to the target at which the loop stops early — but only once a
    second, independent measurement of the same model agrees, so one lucky timing cannot end it.
    ``measure``: (pruned, unpruned) ms of a model, interleaved (default: onnxruntime, ``runs`` each).
    ``damage``: rank by measured sensitivity (a :class:`SensitivityPath` of e.g. :func:`loss_damage`)
    instead of |γ|; ``path``: such a path built before for this model, mode and table (reused).
    """
    mode = parse_mode(mode)
    if not (math.isfinite(target_ms) and target_ms > 0):
        raise UsageError(f"latency target must be a positive number of ms, got {target_ms!r}")
    if table is None:
        table = latency_table(model, img_size, multiple, threads, cache_dir=cache_dir)
    _check_table(table, model, img_size, multiple)
    variables, protected = width_variables(model.cfg, mode, multiple, layer_keep)
    scores = variable_scores(model, variables, importance)
    if path is None and damage is not None:
        path = SensitivityPath(model, table.predict, variables, scores, damage, multiple)
    lowest = table.predict(conv_widths(variables, {k: v.minimum for k, v in enumerate(variables)}))
    if measure is None:
        def measure(pruned: Darknet) -> tuple[float, float]:
            return measure_pair(model, pruned, img_size, threads, runs)

    attempts: list[Attempt] = []
    clocks: dict[tuple, list[float]] = {}  # model (widths) -> its measurements on the table's clock
    results = {}
    history: list[tuple[float, float]] = []
    aim = target_ms
    for round_ in range(max(iterations, 1)):
        choice = path.select(aim) if path is not None else select_widths(table.predict, variables, scores, aim, multiple)
        widths = conv_widths(variables, choice.widths)
        signature = tuple(sorted(widths.items()))
        if signature not in results:
            plan = width_plan(variables, scores, choice.widths)
            results[signature] = (plan, apply_plan(model, plan).model.eval(), choice)
        if iterations <= 0:
            attempts.append(Attempt(aim, choice.predicted_ms, None, None, widths))
            break
        measured, unpruned = measure(results[signature][1])
        attempt = Attempt(aim, choice.predicted_ms, measured, unpruned, widths)
        attempts.append(attempt)
        clock = attempt.on_table_clock(table)
        clocks.setdefault(signature, []).append(clock)
        history.append((aim, float(np.median(clocks[signature]))))
        logger.info("latency round %d: aim %.2f ms, predicted %.2f, measured %.2f (table clock)", round_ + 1, aim, choice.predicted_ms, clock)
        if abs(history[-1][1] - target_ms) / target_ms <= tolerance:
            if len(clocks[signature]) >= 2:
                break  # two independent measurements of this model agree with the target
            continue  # measure the same model again before believing it (same aim, same widths)
        aim = next_aim(history, target_ms, lowest, table.full_ms)

    def typical(a: Attempt) -> float:  # a model measured more than once counts by its median
        key = tuple(sorted(a.widths.items()))
        return float(np.median(clocks[key])) if key in clocks else a.predicted_ms

    best = min(attempts, key=lambda a: abs(typical(a) - target_ms))
    plan, pruned, choice = results[tuple(sorted(best.widths.items()))]
    full = {c.index: c.filters for c in model.cfg.conv_layers}
    narrowed = {i: w for i, w in best.widths.items() if w < full[i]}
    return LatencyPruneResult(
        pruned, plan, mode, float(target_ms), best.predicted_ms, best.measured_ms, best.unpruned_ms, narrowed,
        {i: full[i] for i in narrowed}, protected, tuple(attempts), table, choice.proxy, attempts.index(best),
    )


# --------------------------------------------------------------------------------------------- baselines


def _model_widths(net: Darknet) -> dict[int, int]:
    return {c.index: c.filters for c in net.cfg.conv_layers}


def uniform_prune(model: Darknet, table: LatencyTable, target_pred_ms: float, mode: PruneMode, multiple: int, layer_keep: float = 0.01):
    """Every prunable width cut by one fraction (rounded to ``multiple``), the fraction bisected until
    the predicted latency matches ``target_pred_ms``; each layer keeps its highest-|γ| channels."""
    variables, _ = width_variables(model.cfg, mode, multiple, layer_keep)
    scores = variable_scores(model, variables)

    def widths(f: float) -> dict[int, int]:
        return {k: int(min(v.full, max(v.minimum, multiple * round(v.full * (1 - f) / multiple)))) for k, v in enumerate(variables)}

    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if table.predict(conv_widths(variables, widths(mid))) > target_pred_ms:
            lo = mid
        else:
            hi = mid
    f = min((lo, hi), key=lambda x: abs(table.predict(conv_widths(variables, widths(x))) - target_pred_ms))
    chosen = widths(f)
    net = apply_plan(model, width_plan(variables, scores, chosen)).model.eval()
    return net, f, table.predict(conv_widths(variables, chosen))


def threshold_prune(model: Darknet, table: LatencyTable, target_pred_ms: float, mode: PruneMode, multiple: int):
    """The global-threshold method of ``mode`` (``regular`` / ``slim``) at the percent whose predicted
    latency is closest to ``target_pred_ms`` (bisection on the removal count, as ``match_regular``)."""
    from edgeyolo.compress.prune import AUTO

    method = "regular" if mode is PruneMode.NORMAL else "slim"
    first = prune(model, PruneConfig(method, percent=AUTO if method == "regular" else 0.0, multiple=multiple))
    ranking = first.stages[0].selection.rankings["all"]
    total = ranking.channels
    hi_count = round(ranking.percent * total) if method == "regular" else total - 1
    tried: dict[int, tuple[Darknet, float]] = {}

    def at(count: int) -> tuple[Darknet, float]:
        if count not in tried:
            net = prune(model, PruneConfig(method, percent=count / total, multiple=multiple)).model.eval()
            tried[count] = (net, table.predict(_model_widths(net)))
        return tried[count]

    lo, hi = 0, hi_count
    while lo < hi:
        mid = (lo + hi) // 2
        if at(mid)[1] <= target_pred_ms:
            hi = mid
        else:
            lo = mid + 1
    count = min([lo] + ([lo - 1] if lo > 0 else []), key=lambda c: abs(at(c)[1] - target_pred_ms))
    net, predicted = at(count)
    return net, count / total, predicted, method


@dataclass(frozen=True)
class LatencyBenchRow:
    """One model of ``bench latency-prune``; the three rows of a target share its final timing run."""

    target: str  # e.g. "0.65x" or "4.0 ms"
    method: str  # "latency", "uniform" or the threshold method
    target_ratio: float  # requested latency / unpruned (on the table's clock)
    predicted_ms: float
    measured_ms: float
    unpruned_ms: float
    params: int
    bflops: float
    setting: str  # what was searched: widths changed, the uniform fraction, the percent
    map50: float | None = None
    map50_finetuned: float | None = None  # after the bench's short fine-tune (latency and uniform rows)

    @property
    def ratio(self) -> float:
        return self.measured_ms / self.unpruned_ms

    @property
    def error(self) -> float:
        """(measured ratio − requested ratio) / requested ratio."""
        return (self.ratio - self.target_ratio) / self.target_ratio


@dataclass(frozen=True)
class LatencyBench:
    table: LatencyTable
    unpruned: LatencyBenchRow
    rows: tuple[LatencyBenchRow, ...]
    results: tuple[LatencyPruneResult, ...]
    refused: dict[str, str] = field(default_factory=dict)  # target label → why it was not attempted


def _match_measured(
    model: Darknet,
    table: LatencyTable,
    build: Callable[[float], tuple[Darknet, float, str, str]],
    aim: float,
    goal_ms: float,
    img_size: int,
    threads: int,
    runs: int,
    rounds: int,
    tolerance: float = 0.03,
) -> tuple[Darknet, float, str, str]:
    """``build(aim)`` whose measured latency (table clock) is closest to ``goal_ms`` in ``rounds`` tries,
    starting from the prediction ``aim``; each try re-aims as :func:`next_aim` does."""
    best = None
    history: list[tuple[float, float]] = []
    for _ in range(max(rounds, 1)):
        built = build(aim)
        if rounds <= 1:
            return built
        measured, unpruned = measure_pair(model, built[0], img_size, threads, runs)
        clock = measured / unpruned * table.full_ms
        if best is None or abs(clock - goal_ms) < best[0]:
            best = (abs(clock - goal_ms), built)
        if abs(clock - goal_ms) / goal_ms <= tolerance:
            break
        history.append((aim, clock))
        aim = next_aim(history, goal_ms, 0.01 * table.full_ms, table.full_ms)
    return best[1]


def latency_prune_bench(
    model: Darknet,
    img_size: int,
    fractions: Sequence[float] = (),
    targets_ms: Sequence[float] = (),
    multiple: int = 8,
    mode: PruneMode | str = PruneMode.NORMAL,
    threads: int = 2,
    runs: int = 30,
    dataset=None,
    table: LatencyTable | None = None,
    cache_dir: str | Path | None = None,
    iterations: int = 6,
    match_rounds: int = 4,
    progress: Callable[[range], range] | None = None,
    damage: Callable[[Darknet], float] | None = None,
    finetune=None,
) -> LatencyBench:
    """Per target: latency-targeted pruning, uniform-width and global-threshold pruning at the same
    measured latency; all models then timed in one interleaved run (with --data: mAP@0.5 too).

    A baseline is first matched on the table's prediction, then (``match_rounds`` > 1) corrected on
    its own measurement as :func:`prune_to_latency` corrects itself: unaligned widths (``slim``) run
    slower than the table, fit on multiples of ``multiple``, predicts.

    ``damage``: the latency-targeted rows rank by measured sensitivity (:func:`loss_damage`), measured
    once for all targets. ``finetune`` (a :class:`edgeyolo.bench.prune.FineTune`, needs ``dataset``):
    the latency-targeted and uniform models are also scored after that short fine-tune each."""
    from edgeyolo.bench.prune import _finetune, _time_models

    mode = parse_mode(mode)
    if not fractions and not targets_ms:
        raise UsageError("give latency targets: fractions of the unpruned latency, or milliseconds")
    for f in fractions:
        if not 0 < f < 1:
            raise UsageError(f"--targets are fractions of the unpruned latency in (0, 1), got {f:g}")
    if table is None:
        table = latency_table(model, img_size, multiple, threads, cache_dir=cache_dir, progress=progress)
    goals = [(f"{f:g}x", f * table.full_ms) for f in fractions] + [(f"{t:g} ms", float(t)) for t in targets_ms]
    if finetune is not None and dataset is None:
        raise UsageError("the fine-tune columns need a dataset to score (--data)")
    path = None
    if damage is not None:
        variables, _ = width_variables(model.cfg, mode, multiple)
        path = SensitivityPath(model, table.predict, variables, variable_scores(model, variables), damage, multiple, progress=progress)
    models: dict[str, Darknet] = {"unpruned": model}
    info: dict[str, tuple[str, str, float, float, str]] = {}  # name → target label, method, ratio, predicted, setting
    results = []
    refused: dict[str, str] = {}
    for label, goal in goals:
        ratio = goal / table.full_ms
        try:
            res = prune_to_latency(model, goal, img_size, multiple, mode, table, threads, iterations, runs=runs, path=path)
        except UsageError as error:  # e.g. below the smallest reachable latency: report, go on
            refused[label] = str(error)
            continue
        results.append(res)
        models[f"{label} latency"] = res.model
        info[f"{label} latency"] = (label, "latency", ratio, res.predicted_ms, f"{len(res.widths)} convs narrowed, rank {'loss' if path else 'gamma'}")
        reached = res.measured_on_table_ms or res.predicted_ms  # the baselines match what ours measured

        def uniform(aim: float) -> tuple[Darknet, float, str, str]:
            net, f, predicted = uniform_prune(model, table, aim, mode, multiple)
            return net, predicted, "uniform", f"cut {f:.3f}"

        def threshold(aim: float) -> tuple[Darknet, float, str, str]:
            net, percent, predicted, method = threshold_prune(model, table, aim, mode, multiple)
            return net, predicted, method, f"percent {percent:.3f}"

        for build in (uniform, threshold):
            net, predicted, method, setting = _match_measured(model, table, build, res.predicted_ms, reached, img_size, threads, runs, match_rounds)
            models[f"{label} {method}"] = net
            info[f"{label} {method}"] = (label, method, ratio, predicted, setting)
    timed = {r.backend: r.infer.median_ms for r in _time_models(models, img_size, threads, runs, progress=progress)}

    def score(net: Darknet) -> float | None:
        if dataset is None:
            return None
        from edgeyolo.runtime.evaluate import evaluate_model

        return float(evaluate_model(net, dataset, img_size, "onnxruntime", "coco", threads=threads).result.map50)

    def tuned(net: Darknet, method: str) -> float | None:
        if finetune is None or method not in ("latency", "uniform"):
            return None
        with tempfile.TemporaryDirectory(prefix="edgeyolo-finetune-") as tmp:
            return score(_finetune(net, finetune, img_size, Path(tmp))[0])

    base = timed["unpruned"]
    unpruned = LatencyBenchRow("", "unpruned", 1.0, table.full_ms, base, base, model.parameter_count(), total_bflops(model.cfg, img_size), "", score(model))
    rows = []
    for name, (label, method, ratio, predicted, setting) in info.items():
        net = models[name]
        rows.append(
            LatencyBenchRow(
                label, method, ratio, predicted, timed[name], base, net.parameter_count(), total_bflops(net.cfg, img_size), setting,
                score(net), tuned(net, method),
            )
        )
    return LatencyBench(table, unpruned, tuple(rows), tuple(results), refused)
