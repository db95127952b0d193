"""The prunable set: which BN convs a pruning method may cut, derived from the cfg graph.

Network Slimming (Liu et al., ICCV 2017) ranks a conv's output channels by |γ| of the BN after it.
Only the channels that the chosen pruning method can actually remove are worth ranking, and worth
penalising in sparse training: a channel structurally tied to another layer (a residual sum, a
depthwise conv, an SPP concat ...) cannot be cut on its own. :func:`prunable_bn` computes the set
for a ``--prune`` mode (:class:`PruneMode`) from the cfg graph, so it is right for any cfg rather
than for the index lists of a few known models. The pruning methods (:mod:`.methods`) cut and
sparse training penalises this one set, so the two never disagree.
"""
from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from itertools import pairwise

from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import (
    AvgPoolSpec,
    Cfg,
    ConvSpec,
    DropoutSpec,
    MaxPoolSpec,
    RouteSpec,
    ScaleChannelsSpec,
    ShortcutSpec,
    UpsampleSpec,
    YoloSpec,
    infer_shapes,
)

logger = logging.getLogger(__name__)


class PruneMode(IntEnum):
    """``--prune``: which pruning family the sparse training prepares for."""

    NORMAL = 0  # normal / regular channel pruning: independent convs only
    SHORTCUT = 1  # shortcut / slim / layer-channel pruning: residual-tied convs too (masks merged)
    LAYER = 2  # layer pruning: last conv of each removable residual block

    @classmethod
    def parse(cls, value: int | PruneMode) -> PruneMode:
        try:
            return cls(int(value))
        except (ValueError, TypeError):
            names = ", ".join(f"{m.value} ({m.name.lower()})" for m in cls)
            raise UsageError(f"--prune must be one of {names}; got {value!r}") from None


class _Rule(Enum):
    """Why a conv's γ is left alone. ``SHORTCUT`` is the only rule that mode 1 lifts."""

    NO_BN = "no_bn"
    YOLO = "yolo"
    SHORTCUT = "shortcut"
    SPP = "spp"
    UPSAMPLE = "upsample"
    GROUPED_ROUTE = "grouped_route"
    GROUPED_CONV = "grouped_conv"
    FEEDS_GROUPED_CONV = "feeds_grouped_conv"
    SE = "se"
    SHORTCUT_GROUP = "shortcut_group"


@dataclass(frozen=True)
class PrunableSet:
    """The BN layers sparse training penalises for one cfg and ``--prune`` mode.

    ``layers``: darknet indices of the convs whose BN γ is penalised, ascending.
    ``excluded``: every other conv layer → the reason(s) it is left out, ``"; "``-joined.
    ``shortcut_groups``: convs whose output channels are tied through residual sums (each group is
    one channel space; shortcut and slim pruning must give all members one merged mask).
    """

    layers: tuple[int, ...]
    excluded: dict[int, str]
    mode: PruneMode
    shortcut_groups: tuple[tuple[int, ...], ...] = field(default=(), compare=False)

    def __len__(self) -> int:
        return len(self.layers)

    def __contains__(self, index: object) -> bool:
        return index in self.layers

    def __iter__(self):
        return iter(self.layers)


# --------------------------------------------------------------------------------------------- graph


def _channel_sources(cfg: Cfg) -> list[frozenset[int]]:
    """For every layer, the convs whose output-channel choice shapes that layer's channels.

    Pruning any conv in ``sources[i]`` removes channels from layer i's output. A conv starts a new
    channel space; a grouped/depthwise conv also carries its input's (its channel k reads input
    group k); shortcuts and scale_channels multiply/add element-wise, so both inputs count; routes
    concatenate (or slice) theirs; pools, upsample, dropout and yolo pass channels through.
    """
    out: list[frozenset[int]] = []

    def prev(i: int) -> frozenset[int]:
        return out[i - 1] if i > 0 else frozenset()  # layer 0 reads the image: nothing to prune

    for layer in cfg.layers:
        i = layer.index
        if isinstance(layer, ConvSpec):
            out.append(frozenset({i}) | (prev(i) if layer.groups > 1 else frozenset()))
        elif isinstance(layer, RouteSpec):
            out.append(frozenset().union(*(out[j] for j in layer.layers)))
        elif isinstance(layer, (ShortcutSpec, ScaleChannelsSpec)):
            out.append(prev(i) | out[layer.source])
        else:  # maxpool, avgpool, upsample, dropout, yolo
            out.append(prev(i))
    return out


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)

    def groups(self) -> list[tuple[int, ...]]:
        by_root: dict[int, list[int]] = {}
        for x in self.parent:
            by_root.setdefault(self.find(x), []).append(x)
        return sorted(tuple(sorted(g)) for g in by_root.values())


def _channel_rules(cfg: Cfg) -> tuple[dict[int, list[tuple[_Rule, str]]], list[tuple[int, ...]]]:
    """Every structural reason each conv's channels cannot be chosen freely, and the shortcut groups."""
    sources = _channel_sources(cfg)
    shapes = infer_shapes(cfg)
    convs = {layer.index: layer for layer in cfg.layers if isinstance(layer, ConvSpec)}
    # conv -> (rule, message template) -> the layers it ties to, so one message lists them all
    notes: dict[int, dict[tuple[_Rule, str], list[int]]] = {i: {} for i in convs}

    def mark(targets: Iterable[int], rule: _Rule, template: str, layer: int | None = None) -> None:
        for j in sorted(targets):
            if j in notes:
                refs = notes[j].setdefault((rule, template), [])
                if layer is not None and layer not in refs:
                    refs.append(layer)

    def prev_sources(i: int) -> frozenset[int]:
        return sources[i - 1] if i > 0 else frozenset()

    for i, conv in convs.items():
        if not conv.batch_normalize:
            mark([i], _Rule.NO_BN, "no batch norm: no γ to sparsify")
    groups = _UnionFind()
    for layer in cfg.layers:
        i = layer.index
        if isinstance(layer, YoloSpec):
            mark(prev_sources(i), _Rule.YOLO, "feeds [yolo] {}: head width fixed by anchors x (5 + classes)", i)
        elif isinstance(layer, ShortcutSpec):
            tied = sorted(sources[i])
            mark(tied, _Rule.SHORTCUT, "channels tied by residual sums (shortcut {})", i)
            for j in tied:
                groups.find(j)
            for a, b in pairwise(tied):
                groups.union(a, b)
        elif isinstance(layer, UpsampleSpec):
            mark(prev_sources(i), _Rule.UPSAMPLE, "feeds upsample {}", i)
        elif isinstance(layer, RouteSpec):
            if layer.groups > 1:
                tied = frozenset().union(*(sources[j] for j in layer.layers))
                mark(tied, _Rule.GROUPED_ROUTE, "feeds grouped route {} (its groups split the channels)", i)
            if len(layer.layers) > 1:
                for j in layer.layers:
                    pool = cfg.layers[j]
                    if isinstance(pool, MaxPoolSpec) and pool.stride == 1:
                        mark(sources[j], _Rule.SPP, f"feeds SPP maxpools {{}} (concatenated by route {i})", j)
        elif isinstance(layer, ConvSpec) and layer.groups > 1:
            in_channels = shapes[i - 1][0] if i > 0 else cfg.net.channels
            kind = "depthwise conv" if layer.groups == in_channels else f"grouped conv (groups={layer.groups})"
            mark([i], _Rule.GROUPED_CONV, f"{kind}: its channels follow its input's")
            mark(prev_sources(i), _Rule.FEEDS_GROUPED_CONV, f"feeds {kind} {{}}: channels tied", i)
        elif isinstance(layer, ScaleChannelsSpec):
            template = "squeeze-excitation of scale_channels {}"
            mark(sources[layer.source] | prev_sources(i), _Rule.SE, template, i)
            # the squeeze conv(s) of the branch: walk back from the excite conv to the avgpool
            chain: list[int] = []
            j = i - 1
            while j > layer.source and isinstance(cfg.layers[j], (ConvSpec, DropoutSpec)):
                chain.append(j)
                j -= 1
            if j > layer.source and isinstance(cfg.layers[j], AvgPoolSpec):
                mark([c for c in chain if c in convs], _Rule.SE, template, i)
    reasons = {
        i: [(rule, template.format(", ".join(map(str, sorted(refs))))) for (rule, template), refs in by_rule.items()]
        for i, by_rule in notes.items()
    }
    return reasons, groups.groups()


def _removable_blocks(cfg: Cfg) -> tuple[list[int], dict[int, str]]:
    """Last conv of every residual block that layer pruning can delete, and why others cannot."""
    readers: dict[int, list[int]] = {}
    for layer in cfg.layers:
        refs: tuple[int, ...] = ()
        if isinstance(layer, RouteSpec):
            refs = layer.layers
        elif isinstance(layer, (ShortcutSpec, ScaleChannelsSpec)):
            refs = (layer.source,)
        for r in refs:
            readers.setdefault(r, []).append(layer.index)
    found: list[int] = []
    blocked: dict[int, str] = {}
    for layer in cfg.layers:
        if not isinstance(layer, ShortcutSpec):
            continue
        s = layer.index
        last = s - 1
        conv = cfg.layers[last]
        if not isinstance(conv, ConvSpec) or layer.source >= last:
            continue  # nothing between the source and the shortcut that ends in a conv
        block = range(layer.source + 1, s)
        outside = sorted(r for j in block for r in readers.get(j, []) if not layer.source < r <= s)
        if outside:
            blocked[last] = (
                f"last conv of residual block {block.start}..{s} (shortcut {s}), but layer {outside[0]} reads "
                f"inside the block, so it cannot be removed"
            )
        elif not conv.batch_normalize:
            blocked[last] = "no batch norm: no γ to sparsify"
        else:
            found.append(last)
    return found, blocked


def prunable_bn(cfg: Cfg, mode: int | PruneMode) -> PrunableSet:
    """The convs whose BN γ ``--prune mode`` sparsifies, derived from the cfg graph.

    A conv's output channels can be cut on their own only when nothing else fixes their number or
    order. The reference (SpursLipu's ``parse_module_defs*``, compression-algorithms.md §1.2) checks
    the cfg neighbours of each conv; here each rule is applied through the graph — a conv counts as
    feeding a layer when it shapes that layer's channels through any chain of routes, pools,
    upsamples, shortcuts and depthwise convs (:func:`_channel_sources`) — so it holds for any cfg.

    Mode 0 (normal and regular pruning) sparsifies every conv with BN except:

    * **no BN** — nothing to rank (the 1x1 convs feeding ``[yolo]``);
    * **feeds ``[yolo]``** — head width is ``len(mask)·(5 + classes)``, fixed by the anchors;
    * **shortcut** — both inputs of a residual add must keep equal, aligned channels: the conv just
      before each shortcut, the ``from`` conv, and transitively a shortcut's ``from`` shortcut's
      inputs (for Darknet-53 the stride-2 conv starting a stage and the last conv of every block);
    * **SPP input** — the conv whose output is max-pooled (stride 1) and concatenated with its own
      pooled copies; the reference excludes it (its activation-offset compensation stops at the
      SPP route). Stride-2 tiny-model maxpools are ordinary downsampling and do not count;
    * **feeds upsample** — the reference excludes the 1x1 conv before each upsample (CL's YOLOv3
      layers 84/96); kept for parity, the upsampled map is concatenated into the neck;
    * **feeds a grouped route** — ``groups>1`` hands out fixed halves (YOLOv4-tiny's CSP split), so
      cutting the feeder moves channels between the halves;
    * **depthwise / grouped conv**, and the convs feeding one — a depthwise conv has one filter per
      input channel: its channels are its input's (mobilenet expansion conv + depthwise);
    * **squeeze-excitation** — ``scale_channels`` multiplies a map by a per-channel vector: the
      scaled map's convs and the excite conv are tied; the squeeze conv is left alone too, as the
      reference treats an SE block as one unprunable unit (and it runs on a 1x1 map: nothing to gain).

    Mode 1 (shortcut, slim, layer-channel pruning) also sparsifies the shortcut-tied convs: those
    methods give every conv of a shortcut group (:attr:`PrunableSet.shortcut_groups`) one merged
    mask. A group is still left out whole when any member is excluded for another reason (or has no
    BN): that member keeps all channels, so the merged mask would keep all of them too.

    Mode 2 (layer pruning) sparsifies only the last conv of each residual block (the conv right
    before a ``[shortcut]``), whose mean |γ| ranks the block for removal. A block is the layers
    between the shortcut's ``from`` and the shortcut; it is removable only when no layer after it
    reads inside it. Inverted-residual blocks (expansion, depthwise, projection) qualify too.

    Raises UsageError when the mode finds nothing (e.g. mode 2 on a cfg without shortcuts).
    """
    mode = PruneMode.parse(mode)
    convs = [layer for layer in cfg.layers if isinstance(layer, ConvSpec)]
    reasons, shortcut_groups = _channel_rules(cfg)
    excluded: dict[int, str] = {}
    rule_counts: Counter[str] = Counter()
    if mode is PruneMode.LAYER:
        chosen, blocked = _removable_blocks(cfg)
        for conv in convs:
            if conv.index not in chosen:
                excluded[conv.index] = blocked.get(conv.index, "not the last conv of a removable residual block")
        rule_counts["not a removable block's last conv"] = len(excluded)
    else:
        active = {
            i: [r for r in rs if mode is PruneMode.NORMAL or r[0] is not _Rule.SHORTCUT] for i, rs in reasons.items()
        }
        if mode is PruneMode.SHORTCUT:
            for group in shortcut_groups:
                frozen = [j for j in group if active[j]]
                if frozen:
                    why = active[frozen[0]][0][1]
                    for j in group:
                        if not active[j]:
                            active[j].append(
                                (_Rule.SHORTCUT_GROUP, f"shortcut group {list(group)} is frozen by layer {frozen[0]} ({why})")
                            )
        chosen = [i for i, rs in active.items() if not rs]
        excluded = {i: "; ".join(text for _, text in rs) for i, rs in active.items() if rs}
        rule_counts.update(rule.value for rs in active.values() for rule in {r for r, _ in rs})
    result = PrunableSet(tuple(sorted(chosen)), dict(sorted(excluded.items())), mode, tuple(shortcut_groups))
    bn_count = sum(1 for c in convs if c.batch_normalize)
    if not result.layers:
        hint = (
            "it has no removable residual block ([shortcut] after a conv); use --prune 0 or 1"
            if mode is PruneMode.LAYER
            else "every conv is tied to a shortcut, head, SPP, upsample, grouped route, depthwise or SE layer"
            + ("; try --prune 1" if mode is PruneMode.NORMAL and shortcut_groups else "")
        )
        raise UsageError(f"{cfg.path}: --prune {int(mode)} ({mode.name.lower()}) finds no prunable BN layer: {hint}")
    logger.info(
        "%s --prune %d (%s): %d of %d BN convs sparsified; %d convs excluded (%s)",
        cfg.path, int(mode), mode.name.lower(), len(result.layers), bn_count, len(excluded),
        ", ".join(f"{why}: {n}" for why, n in sorted(rule_counts.items())) or "none",
    )
    return result
