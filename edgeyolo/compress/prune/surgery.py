"""Graph surgery: a :class:`Plan` (keep-masks per conv, residual blocks to delete) → a compact model.

Every pruning method ends here; the methods only differ in the plan they choose. The surgery walks
the cfg once and tracks, for every layer output, two things in the *original* channel space:

* ``keep`` — which of its channels survive in the compact model (a conv's own mask; routes
  concatenate or slice their inputs'; shortcuts, pools, upsample and dropout pass theirs on), which
  fixes how each conv's input axis is sliced;
* ``delta`` — a per-channel constant with ``original = embed(compact) + delta``. A removed channel
  whose γ is 0 outputs the constant ``act(β)`` everywhere (compression-algorithms.md §2.2), and a
  deleted residual block whose last conv has γ = 0 adds ``act(β)`` of that conv to every channel of
  its shortcut. Shortcuts add deltas, routes concatenate them, pools and upsample pass them (a max
  or a copy of ``x + d`` is the max or copy of ``x`` plus ``d``; darknet pads max-pools with -inf).

Each compact conv absorbs its input's delta: ``Σ_{c,kh,kw} W[o,c,kh,kw]·delta[c]`` is subtracted
from the BN running mean (or added to the bias of a conv without BN). That is exact where the
kernel does not overlap the zero padding, i.e. everywhere but a thin border — which is why pruning
γ≈0 channels needs no fine-tuning. Unlike the reference, which drops the offset at SPP routes
(§2.2), every layer type propagates the delta, so a constant removed anywhere is compensated at
every conv it reaches.

Route, shortcut and scale_channels references are renumbered when blocks are deleted; the cfg
writer keeps each reference relative or absolute as the file spelled it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import (
    Cfg,
    ConvSpec,
    Layer,
    RouteSpec,
    ScaleChannelsSpec,
    ShortcutSpec,
    YoloSpec,
    format_cfg,
    parse_cfg_text,
)
from edgeyolo.model.darknet import ConvBlock, Darknet, make_activation


@dataclass(frozen=True)
class Plan:
    """What one pruning step removes.

    ``masks``: conv layer → bool keep-mask over its output channels (convs not listed keep all).
    ``blocks``: shortcut layers whose residual block — the layers after the shortcut's ``from`` up
    to and including the shortcut — is deleted; readers of the shortcut then read its ``from``.
    """

    masks: Mapping[int, Tensor] = field(default_factory=dict)
    blocks: tuple[int, ...] = ()

    def removed_layers(self, cfg: Cfg) -> set[int]:
        removed: set[int] = set()
        for s in self.blocks:
            removed.update(range(cfg.layers[s].source + 1, s + 1))
        return removed


@dataclass(frozen=True)
class Compact:
    """The surgery's result. ``layer_map``: every surviving original layer → its compact index."""

    model: Darknet
    layer_map: dict[int, int]


def removed_channel_values(block: ConvBlock, removed: Tensor) -> Tensor:
    """What the removed channels of a BN conv output: ``act(β)``, exact when their γ is 0 (float64)."""
    return block.act(block.bn.bias.detach()[removed].double())


def _check_plan(cfg: Cfg, plan: Plan, removed: set[int]) -> None:
    for i, mask in plan.masks.items():
        layer = cfg.layers[i] if 0 <= i < len(cfg.layers) else None
        if not isinstance(layer, ConvSpec) or not layer.batch_normalize or layer.groups != 1:
            raise UsageError(f"layer {i}: only convolutional layers with batch norm and groups=1 can lose channels")
        if mask.dtype != torch.bool or mask.numel() != layer.filters:
            raise UsageError(f"layer {i}: the keep-mask must be {layer.filters} booleans, got {mask.numel()} {mask.dtype}")
        if not bool(mask.any()):
            raise UsageError(f"layer {i}: the plan removes all {layer.filters} channels; a layer keeps at least one")
        if i in removed:
            raise UsageError(f"layer {i}: the plan both deletes this layer and prunes its channels")
    for s in plan.blocks:
        layer = cfg.layers[s] if 0 <= s < len(cfg.layers) else None
        last = cfg.layers[s - 1] if isinstance(layer, ShortcutSpec) else None
        if not isinstance(last, ConvSpec) or not last.batch_normalize or layer.source >= s - 1:
            raise UsageError(f"layer {s}: a deleted residual block must end in a conv with batch norm and a [shortcut]")
        if layer.activation != "linear":
            raise UsageError(f"layer {s}: cannot delete the block of a shortcut with activation={layer.activation}")


def _fold(weight: Tensor, delta: Tensor, groups: int) -> Tensor:
    """Per output channel, what a constant input ``delta`` adds to the conv away from the border."""
    if not bool(delta.any()):
        return torch.zeros(weight.shape[0], dtype=torch.float64)
    kernel = weight.detach().double().sum(dim=(2, 3), keepdim=True)
    return F.conv2d(delta.view(1, -1, 1, 1), kernel, groups=groups).flatten()


def _take(tensor: Tensor, keep: Tensor, dim: int = 0) -> Tensor:
    """The kept slices along ``dim``, always a new tensor (the compact model shares nothing)."""
    return tensor.clone() if bool(keep.all()) else tensor.index_select(dim, keep.nonzero().flatten())


def apply_plan(model: Darknet, plan: Plan) -> Compact:
    """The compact model of ``plan``: sliced weights, compensated biases, renumbered cfg."""
    cfg = model.cfg
    removed = plan.removed_layers(cfg)
    _check_plan(cfg, plan, removed)
    blocks = set(plan.blocks)
    keep: dict[int, Tensor] = {}
    delta: dict[int, Tensor] = {}
    layer_map: dict[int, int] = {}
    old_state = model.state_dict()
    state: dict[str, Tensor] = {}

    def fail(i: int, message: str) -> UsageError:
        return UsageError(f"layer {i} ([{cfg.layers[i].section}]): {message}")

    def ref(j: int) -> int:
        if j in layer_map:
            return layer_map[j]
        if j in blocks:  # a deleted block's shortcut outputs its from-layer (plus a constant)
            return ref(cfg.layers[j].source)
        raise UsageError(f"layer {j} is deleted by the plan but read by a later layer")

    for layer in cfg.layers:
        i = layer.index
        if i in removed:
            if i in blocks and layer.source in keep:  # (not when it lies inside a larger deleted block)
                everything = torch.ones(cfg.layers[i - 1].filters, dtype=torch.bool)
                keep[i] = keep[layer.source]
                delta[i] = delta[layer.source] + removed_channel_values(model.module_list[i - 1], everything)
            continue
        layer_map[i] = len(layer_map)
        if i == 0:
            in_keep = torch.ones(cfg.net.channels, dtype=torch.bool)
            in_delta = torch.zeros(cfg.net.channels, dtype=torch.float64)
        else:
            in_keep, in_delta = keep[i - 1], delta[i - 1]
        if isinstance(layer, ConvSpec):
            block = model.module_list[i]
            mask = plan.masks.get(i, torch.ones(layer.filters, dtype=torch.bool))
            if layer.groups > 1 and not bool(in_keep.all()):
                raise fail(i, f"a grouped conv (groups={layer.groups}) cannot lose input channels")
            fold = _fold(block.conv.weight, in_delta, layer.groups)
            prefix = f"module_list.{layer_map[i]}."
            weight = _take(old_state[f"module_list.{i}.conv.weight"], mask)
            state[prefix + "conv.weight"] = weight if layer.groups > 1 else _take(weight, in_keep, dim=1)
            if block.bn is not None:
                for name in ("weight", "bias", "running_var", "num_batches_tracked"):
                    value = old_state[f"module_list.{i}.bn.{name}"]
                    state[prefix + f"bn.{name}"] = _take(value, mask) if value.dim() else value.clone()
                mean = old_state[f"module_list.{i}.bn.running_mean"]
                state[prefix + "bn.running_mean"] = _take((mean.double() - fold).to(mean.dtype), mask)
            else:
                bias = old_state[f"module_list.{i}.conv.bias"]
                state[prefix + "conv.bias"] = _take((bias.double() + fold).to(bias.dtype), mask)
            out_delta = torch.zeros(layer.filters, dtype=torch.float64)
            if not bool(mask.all()):
                out_delta[~mask] = removed_channel_values(block, ~mask)
            keep[i], delta[i] = mask, out_delta
        elif isinstance(layer, RouteSpec):
            masks, deltas = [], []
            for j in layer.layers:
                m, d = keep[j], delta[j]
                if layer.groups > 1:
                    counts = {int(c.sum()) for c in m.chunk(layer.groups)}
                    if len(counts) > 1:
                        raise fail(i, f"its groups={layer.groups} split layer {j}, whose kept channels differ per group")
                    m, d = m.chunk(layer.groups)[layer.group_id], d.chunk(layer.groups)[layer.group_id]
                masks.append(m)
                deltas.append(d)
            keep[i], delta[i] = torch.cat(masks), torch.cat(deltas)
        elif isinstance(layer, ShortcutSpec):
            if not torch.equal(in_keep, keep[layer.source]):
                raise fail(i, f"its inputs (layers {i - 1} and {layer.source}) keep different channels")
            summed = in_delta + delta[layer.source]
            if layer.activation != "linear":
                if bool(summed[in_keep].any()):
                    raise fail(i, f"a constant cannot be carried through activation={layer.activation}")
                act = make_activation(layer.activation)
                summed = torch.where(in_keep, summed, act(summed))
            keep[i], delta[i] = in_keep, summed
        elif isinstance(layer, ScaleChannelsSpec):
            if not torch.equal(in_keep, keep[layer.source]):
                raise fail(i, f"its inputs (layers {i - 1} and {layer.source}) keep different channels")
            if bool(in_delta.any()) or bool(delta[layer.source].any()):
                raise fail(i, "a constant cannot be carried through a channel product")
            keep[i], delta[i] = in_keep, in_delta
        elif isinstance(layer, YoloSpec):
            if not bool(in_keep.all()) or bool(in_delta.any()):
                raise fail(i, "the conv feeding a [yolo] layer cannot lose channels")
            keep[i], delta[i] = in_keep, in_delta
        else:  # maxpool, avgpool, upsample, dropout: per-channel constants pass through
            keep[i], delta[i] = in_keep, in_delta
    compact_cfg = _compact_cfg(cfg, layer_map, keep, ref)
    with torch.device("meta"):  # no random init of weights that are replaced right away
        compact = Darknet(compact_cfg)
    compact.load_state_dict(state, strict=True, assign=True)
    compact.train(model.training)
    header = getattr(model, "darknet_header", None)
    if header is not None:
        compact.darknet_header = header  # type: ignore[attr-defined]
    return Compact(compact, layer_map)


def _compact_cfg(cfg: Cfg, layer_map: dict[int, int], keep: dict[int, Tensor], ref) -> Cfg:
    """The renumbered, narrowed cfg, written and parsed back so that it is exactly what gets saved."""
    layers: list[Layer] = []
    for i, new in layer_map.items():
        layer = cfg.layers[i]
        changes: dict[str, object] = {"index": new}
        if isinstance(layer, ConvSpec):
            changes["filters"] = int(keep[i].sum())
        elif isinstance(layer, RouteSpec):
            changes["layers"] = tuple(ref(j) for j in layer.layers)
        elif isinstance(layer, (ShortcutSpec, ScaleChannelsSpec)):
            changes["source"] = ref(layer.source)
        layers.append(dataclasses.replace(layer, **changes))
    text = format_cfg(dataclasses.replace(cfg, layers=tuple(layers)))
    return parse_cfg_text(text, cfg.path)
