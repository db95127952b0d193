"""Pruning methods: each is channel importance + channel selection; all share one graph surgery.

Which convs a method may touch is :func:`edgeyolo.compress.prune.prunable.prunable_bn`'s answer for the
method's ``--prune`` mode — the same set sparse training penalised — so training and pruning can
never disagree. The methods (compression-algorithms.md §2.3–2.8, §2.11):

* ``normal`` — mode 0 set, one global ranking; refuses a percent that empties a layer;
* ``regular`` — ``normal`` with every kept count rounded up to a multiple of ``--multiple``; a layer
  whose width is not such a multiple keeps all channels ("protected (width)");
* ``shortcut`` — mode 1 set; each residual channel space takes the mask of its source conv (the
  group's first conv: the stride-2 conv opening a Darknet-53 stage, the CSP split conv in YOLOv4);
* ``slim`` — mode 1 set; a layer left below ``--layer-keep`` keeps its best channels, and each
  residual channel space keeps the union of its members' masks;
* ``group`` — ``slim`` with one ranking per scale group (:func:`scale_groups`), each with its own
  percent (``--group-percent NAME=P``);
* ``layer`` — deletes the ``--shortcuts`` residual blocks whose last conv has the lowest mean score;
* ``layer-channel`` — ``slim``, then ``layer`` on the slimmed model.

:meth:`PruneMethod.check` refuses a cfg a method cannot prune before any work is done, and
:func:`applicability` asks every method at once.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import Tensor

from edgeyolo.compress.prune.importance import Importance, channel_scores
from edgeyolo.compress.prune.prunable import PrunableSet, PruneMode, prunable_bn
from edgeyolo.compress.prune.selection import (
    Ranking,
    count_to_percent,
    min_keep,
    percent_to_count,
    round_up,
    top_up,
    union,
)
from edgeyolo.compress.prune.surgery import Plan, apply_plan
from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import Cfg, RouteSpec, ScaleChannelsSpec, ShortcutSpec, YoloSpec, infer_shapes
from edgeyolo.model.darknet import Darknet
from edgeyolo.registry import Registry

logger = logging.getLogger(__name__)

AUTO = "auto"
SPARSE = "sparse"
#: |score| below which ``--percent sparse`` counts a channel as zeroed by sparse training
SPARSE_EPS = 1e-2
Percent = float | str  # a fraction in [0, 1], AUTO or SPARSE


@dataclass(frozen=True)
class PruneConfig:
    """Everything that decides a pruning run; written into the report next to the model.

    ``percent``: fraction of the ranked channels removed by the global ranking, ``"auto"`` for the
    largest safe one, None for the method's default. ``layer_keep``: the fewest channels a pruned
    layer keeps, as a fraction of its width (and at least one). ``group_percents``: per scale
    group percents for ``group`` (the others use ``percent``).
    """

    method: str
    percent: Percent | None = None
    multiple: int = 8
    shortcuts: int = 8
    layer_keep: float = 0.01
    importance: Importance = Importance.GAMMA
    group_percents: tuple[tuple[str, Percent], ...] = ()

    def __post_init__(self) -> None:
        METHODS.get(self.method)
        if self.method == "layer" and self.percent is not None:
            raise UsageError(
                "prune layer deletes whole residual blocks: --percent does not apply (use --shortcuts K, or layer-channel)"
            )
        if self.group_percents and self.method != "group":
            raise UsageError(f"--group-percent applies to the group method only, not {self.method}")
        _check_percent("--percent", self.percent)
        for name, value in self.group_percents:
            _check_percent(f"--group-percent {name}", value)
        if self.multiple < 1:
            raise UsageError(f"--multiple must be >= 1, got {self.multiple}")
        if self.shortcuts < 0:
            raise UsageError(f"--shortcuts must be >= 0, got {self.shortcuts}")
        if not 0.0 <= self.layer_keep <= 1.0:
            raise UsageError(f"--layer-keep must lie in [0, 1], got {self.layer_keep}")
        object.__setattr__(self, "importance", Importance.parse(self.importance))

    def to_dict(self) -> dict[str, object]:
        out = dataclasses.asdict(self)
        out["importance"] = self.importance.value
        out["group_percents"] = dict(self.group_percents)
        return out


def _check_percent(flag: str, value: Percent | None) -> None:
    if value is None or value in (AUTO, SPARSE):
        return
    if isinstance(value, str) or not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise UsageError(f"{flag} must be a fraction in [0, 1], 'auto' or 'sparse', got {value!r}")


def parse_percent(text: str, flag: str = "--percent") -> Percent:
    """A CLI percent: ``auto`` or a fraction in [0, 1]."""
    if text.strip().lower() in (AUTO, SPARSE):
        return text.strip().lower()
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag} must be a fraction in [0, 1], 'auto' or 'sparse', got {text!r}") from None
    _check_percent(flag, value)
    return value


@dataclass(frozen=True)
class RankingStats:
    """How one global ranking (one per scale group for ``group``) was cut."""

    layers: int
    channels: int
    percent: float  # fraction of the ranked channels the ranking removed
    safe_percent: float  # largest percent that leaves every ranked layer its minimum
    threshold: float | None  # score of the lowest channel kept (None: all removed)


@dataclass(frozen=True)
class Selection:
    """One pruning step's plan and what a report needs to explain it (layer numbers of its input)."""

    method: str
    plan: Plan
    protected: dict[int, str] = field(default_factory=dict)
    rankings: dict[str, RankingStats] = field(default_factory=dict)
    block_scores: dict[int, float] = field(default_factory=dict)  # layer: mean score of each block's last conv


class PruneMethod(ABC):
    """A pruning method: one or more selection steps, each followed by graph surgery."""

    name: ClassVar[str]

    @abstractmethod
    def stages(self, config: PruneConfig) -> list[tuple[Step, PruneConfig]]:
        """The steps to run in order, each with the config it runs under."""

    def check(self, cfg: Cfg, config: PruneConfig) -> None:
        """Raise UsageError when the method cannot prune ``cfg`` at all, before any work is done.

        Only the cfg and the options decide this; whether a given percent is safe depends on the
        weights and is :meth:`Step.select`'s to refuse.
        """
        for step, stage_config in self.stages(config):
            step.check_cfg(cfg, stage_config, self.name)


class Step(PruneMethod):
    """A method that is a single selection step."""

    def stages(self, config: PruneConfig) -> list[tuple[Step, PruneConfig]]:
        return [(self, config)]

    @abstractmethod
    def check_cfg(self, cfg: Cfg, config: PruneConfig, method: str) -> None:
        """This step's part of :meth:`check`; errors name ``method``, the method the user asked for."""

    @abstractmethod
    def select(self, model: Darknet, config: PruneConfig) -> Selection:
        """The plan for ``model``; raises UsageError when the method does not apply or is unsafe."""


METHODS: Registry[type[PruneMethod]] = Registry("pruning method")


def _prunable(cfg: Cfg, mode: PruneMode, method: str) -> PrunableSet:
    try:
        return prunable_bn(cfg, mode)
    except UsageError:
        if mode is PruneMode.LAYER:
            hint = "no removable residual block (a [shortcut] closing a BN conv that no later layer reads inside)"
            alternatives = "normal, regular or slim"
        else:
            ties = "a head, SPP, upsample, grouped route, SE or depthwise layer"
            hint = f"no conv whose channels it may cut (every conv feeds {ties}"
            hint += ", or a shortcut)" if mode is PruneMode.NORMAL else ")"
            alternatives = "shortcut or slim" if mode is PruneMode.NORMAL else "layer"
        raise UsageError(f"prune {method}: {cfg.path} has {hint}; try {alternatives}") from None


class ChannelPruner(Step):
    """Global ranking of the prunable channels, then the method's structural adjustments.

    Subclasses choose the prunable set (``mode``), narrow it (:meth:`restrict`), split it into
    rankings (:meth:`partitions`) and adjust the ranked masks (:meth:`adjust`). ``tolerant`` methods
    top up a layer the ranking leaves below its minimum; the others refuse, naming the largest
    safe percent.
    """

    name: ClassVar[str]
    mode: ClassVar[PruneMode]
    default_percent: ClassVar[float]
    tolerant: ClassVar[bool] = False

    def restrict(self, cfg: Cfg, layers: list[int], protected: dict[int, str], config: PruneConfig) -> list[int]:
        return layers

    def partitions(self, cfg: Cfg, layers: list[int], config: PruneConfig) -> dict[str, tuple[list[int], Percent]]:
        percent = self.default_percent if config.percent is None else config.percent
        return {"all": (layers, percent)}

    def ranked_minimum(self, width: int, config: PruneConfig) -> int:
        """Fewest channels the ranking must leave a layer of ``width`` (before :meth:`adjust`)."""
        return min_keep(width, config.layer_keep)

    def followers(self, groups: list[tuple[int, ...]]) -> set[int]:
        """Layers whose mask the ranking does not decide (so its minimum does not bound the percent)."""
        return set()

    def adjust(
        self, masks: dict[int, Tensor], scores: dict[int, Tensor], groups: list[tuple[int, ...]], config: PruneConfig
    ) -> dict[int, Tensor]:
        return masks

    def candidates(
        self, cfg: Cfg, config: PruneConfig, method: str
    ) -> tuple[list[int], dict[int, str], list[tuple[int, ...]]]:
        """The convs the ranking sees, the protected convs (with why) and the residual groups."""
        prunable = _prunable(cfg, self.mode, method)
        protected = dict(prunable.excluded)
        groups = [g for g in prunable.shortcut_groups if all(j in prunable for j in g)]
        widths = {layer.index: layer.filters for layer in cfg.conv_layers}
        for g in [g for g in groups if len({widths[j] for j in g}) > 1]:
            groups.remove(g)
            for j in g:
                protected[j] = f"shortcut group {list(g)} joins convs of different widths through a route"
        layers = self.restrict(cfg, [i for i in prunable.layers if i not in protected], protected, config)
        if not layers:
            why = next(iter(protected.values()))
            raise UsageError(f"prune {method}: every prunable conv of {cfg.path} is protected ({why})")
        return layers, protected, groups

    def check_cfg(self, cfg: Cfg, config: PruneConfig, method: str) -> None:
        self.candidates(cfg, config, method)

    def select(self, model: Darknet, config: PruneConfig) -> Selection:
        cfg = model.cfg
        layers, protected, groups = self.candidates(cfg, config, self.name)
        scores = channel_scores(model, layers, config.importance)
        skip = self.followers(groups)
        masks: dict[int, Tensor] = {}
        rankings: dict[str, RankingStats] = {}
        for name, (part, percent) in self.partitions(cfg, layers, config).items():
            ranking = Ranking({i: scores[i] for i in part})
            checked = [i for i in part if i not in skip]
            safe = ranking.safe_count(checked, lambda width: self.ranked_minimum(width, config))
            if percent == AUTO:
                count = safe
            elif percent == SPARSE:  # what sparse training zeroed, never beyond the safe count
                count = min(safe, int((ranking.sorted < SPARSE_EPS).sum()))
            else:
                count = percent_to_count(percent, len(ranking))
            if count > safe and not self.tolerant:
                raise self._unsafe(name, percent, ranking, checked, count, safe, config)
            masks.update(ranking.keep_masks(count))
            total = len(ranking)
            rankings[name] = RankingStats(
                len(part), total, count / max(total, 1), count_to_percent(safe, total), ranking.threshold(count)
            )
        masks = self.adjust(masks, scores, groups, config)
        plan = Plan({i: m for i, m in sorted(masks.items()) if not bool(m.all())})
        return Selection(self.name, plan, protected, rankings)

    def _unsafe(
        self, name: str, percent: float, ranking: Ranking, checked: list[int], count: int, safe: int, config: PruneConfig
    ) -> UsageError:
        shown = f"--percent {percent:g}" if name == "all" else f"--group-percent {name}={percent:g}"
        for i in checked:
            width = ranking.ranks[i].numel()
            kept, need = int((ranking.ranks[i] >= count).sum()), self.ranked_minimum(width, config)
            if kept < need:
                break
        return UsageError(
            f"prune {self.name}: {shown} would leave layer {i} with {kept} of "
            f"{width} channels (minimum {need} at --layer-keep {config.layer_keep:g}); the largest safe percent is "
            f"{count_to_percent(safe, len(ranking)):g} (or pass 'auto')"
        )


@METHODS.register("normal")
class NormalPruner(ChannelPruner):
    name = "normal"
    mode = PruneMode.NORMAL
    default_percent = 0.5


@METHODS.register("regular")
class RegularPruner(ChannelPruner):
    """Kept counts are multiples of ``--multiple``: GPU/DPU kernels tile channels in such blocks."""

    name = "regular"
    mode = PruneMode.NORMAL
    default_percent = 0.5

    def restrict(self, cfg: Cfg, layers: list[int], protected: dict[int, str], config: PruneConfig) -> list[int]:
        n = config.multiple
        out = []
        for i in layers:
            width = cfg.layers[i].filters
            if width < n or width % n:
                why = f"narrower than --multiple {n}" if width < n else f"not a multiple of --multiple {n}"
                protected[i] = f"protected (width): {width} channels is {why}"
            else:
                out.append(i)
        return out

    def ranked_minimum(self, width: int, config: PruneConfig) -> int:
        """Judged by the rounded count: ``k`` ranked channels become ``max(N, ceil(k / N)·N)``, so a layer
        needs only the fewest ``k`` whose rounding reaches its minimum (none when N already does)."""
        need, n = min_keep(width, config.layer_keep), config.multiple
        return 0 if n >= need else (math.ceil(need / n) - 1) * n + 1

    def adjust(
        self, masks: dict[int, Tensor], scores: dict[int, Tensor], groups: list[tuple[int, ...]], config: PruneConfig
    ) -> dict[int, Tensor]:
        return {i: round_up(m, scores[i], config.multiple) for i, m in masks.items()}


@METHODS.register("shortcut")
class ShortcutPruner(ChannelPruner):
    name = "shortcut"
    mode = PruneMode.SHORTCUT
    default_percent = 0.6

    def followers(self, groups: list[tuple[int, ...]]) -> set[int]:
        return {j for g in groups for j in g[1:]}

    def adjust(
        self, masks: dict[int, Tensor], scores: dict[int, Tensor], groups: list[tuple[int, ...]], config: PruneConfig
    ) -> dict[int, Tensor]:
        out = dict(masks)
        for g in groups:
            for j in g[1:]:
                out[j] = masks[g[0]].clone()
        return out


@METHODS.register("slim")
class SlimPruner(ChannelPruner):
    name = "slim"
    mode = PruneMode.SHORTCUT
    default_percent = 0.8
    tolerant = True

    def adjust(
        self, masks: dict[int, Tensor], scores: dict[int, Tensor], groups: list[tuple[int, ...]], config: PruneConfig
    ) -> dict[int, Tensor]:
        out = top_up(masks, scores, config.layer_keep)
        for g in groups:
            merged = union(out[j] for j in g)
            for j in g:
                out[j] = merged.clone()
        return out


def _readers(cfg: Cfg) -> dict[int, list[int]]:
    """Which layers read each layer's output (routes read only the layers they list)."""
    readers: dict[int, list[int]] = {}
    for layer in cfg.layers:
        i = layer.index
        if isinstance(layer, RouteSpec):
            refs: tuple[int, ...] = layer.layers
        elif isinstance(layer, (ShortcutSpec, ScaleChannelsSpec)):
            refs = (i - 1, layer.source)
        else:
            refs = (i - 1,) if i > 0 else ()
        for r in refs:
            readers.setdefault(r, []).append(i)
    return readers


def scale_groups(cfg: Cfg, layers: list[int]) -> dict[str, list[int]]:
    """Group channel pruning's groups (Chu et al. 2022 give no rule; this one follows the cfg graph).

    A conv whose output reaches a single ``[yolo]`` belongs to that head: ``head-s{stride}`` with the
    head's stride. The other convs (backbone and the neck shared by several heads) are grouped by
    their own output stride: ``s2``, ``s4`` ... ``s32``. Scales differ in how many channels they can
    spare, and one global threshold would strip the wide deep stages first.
    """
    shapes = infer_shapes(cfg)
    readers = _readers(cfg)
    reach: dict[int, frozenset[int]] = {}
    for layer in reversed(cfg.layers):
        i = layer.index
        own = frozenset({i}) if isinstance(layer, YoloSpec) else frozenset()
        reach[i] = own.union(*(reach[r] for r in readers.get(i, [])))
    groups: dict[str, list[int]] = {}
    for i in layers:
        if len(reach[i]) == 1:
            (head,) = reach[i]
            name = f"head-s{cfg.net.height // shapes[head][1]}"
        else:
            name = f"s{cfg.net.height // shapes[i][1]}"
        groups.setdefault(name, []).append(i)
    return groups


@METHODS.register("group")
class GroupPruner(SlimPruner):
    name = "group"

    def partitions(self, cfg: Cfg, layers: list[int], config: PruneConfig) -> dict[str, tuple[list[int], Percent]]:
        groups = scale_groups(cfg, layers)
        given = dict(config.group_percents)
        unknown = sorted(set(given) - set(groups))
        if unknown:
            known = ", ".join(groups)
            raise UsageError(f"prune group: unknown group {unknown[0]!r} in --group-percent; this cfg's groups: {known}")
        percent = self.default_percent if config.percent is None else config.percent
        return {name: (part, given.get(name, percent)) for name, part in groups.items()}


@METHODS.register("layer")
class LayerPruner(Step):
    """Deletes whole residual blocks: fewer layers cut latency where narrower ones may not (§7.12)."""

    name = "layer"
    mode = PruneMode.LAYER

    def check_cfg(self, cfg: Cfg, config: PruneConfig, method: str) -> None:
        _prunable(cfg, PruneMode.LAYER, method)

    def select(self, model: Darknet, config: PruneConfig) -> Selection:
        cfg = model.cfg
        prunable = _prunable(cfg, PruneMode.LAYER, self.name)
        scores = channel_scores(model, prunable.layers, config.importance)
        block_scores = {i: float(scores[i].mean()) for i in prunable.layers}
        if config.shortcuts > len(block_scores):
            raise UsageError(
                f"prune {self.name}: --shortcuts {config.shortcuts}, but {cfg.path} has only {len(block_scores)} "
                f"removable residual blocks"
            )
        chosen = sorted(block_scores, key=lambda i: (block_scores[i], i))[: config.shortcuts]
        return Selection(self.name, Plan(blocks=tuple(sorted(i + 1 for i in chosen))), block_scores=block_scores)


@METHODS.register("layer-channel")
class LayerChannelPruner(PruneMethod):
    """Slim first (its percent defaults to 0.6, as in the reference), then layer pruning."""

    name = "layer-channel"
    mode = PruneMode.SHORTCUT  # the family of its channel step (slim)
    default_percent = 0.6

    def stages(self, config: PruneConfig) -> list[tuple[Step, PruneConfig]]:
        percent = self.default_percent if config.percent is None else config.percent
        return [(SlimPruner(), dataclasses.replace(config, percent=percent)), (LayerPruner(), config)]


@dataclass(frozen=True)
class Stage:
    """One applied step: its selection, the cfg it was applied to, and the layer renumbering."""

    selection: Selection
    cfg: Cfg
    layer_map: dict[int, int]


@dataclass(frozen=True)
class PruneResult:
    config: PruneConfig
    source: Cfg
    model: Darknet
    stages: tuple[Stage, ...]
    seconds: float

    def origin(self) -> dict[int, int]:
        """Final compact layer → original layer."""
        current = {i: i for i in range(len(self.source.layers))}
        for stage in self.stages:
            current = {stage.layer_map[i]: o for i, o in current.items() if i in stage.layer_map}
        return current


def prune(model: Darknet, config: PruneConfig) -> PruneResult:
    """Prune ``model`` (left unchanged) as ``config`` says; nothing is written."""
    start = time.perf_counter()
    method = METHODS.get(config.method)()
    method.check(model.cfg, config)
    stages = []
    current = model
    with torch.no_grad():
        for selector, stage_config in method.stages(config):
            selection = selector.select(current, stage_config)
            compact = apply_plan(current, selection.plan)
            stages.append(Stage(selection, current.cfg, compact.layer_map))
            current = compact.model
    seconds = time.perf_counter() - start
    logger.info("prune %s of %s: %d stage(s) in %.2f s", config.method, model.cfg.path, len(stages), seconds)
    return PruneResult(config, model.cfg, current, tuple(stages), seconds)


def applicability(cfg: Cfg) -> dict[str, str | None]:
    """Per method: None when it can prune ``cfg`` (at its default options), else the UsageError it raises.

    Structural only (no weights needed): a method that applies may still refuse a percent that would
    empty a layer of a particular model.
    """
    answers: dict[str, str | None] = {}
    for name in METHODS.names():
        try:
            METHODS.get(name)().check(cfg, PruneConfig(name))
        except UsageError as error:
            answers[name] = str(error)
        else:
            answers[name] = None
    return answers
