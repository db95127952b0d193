"""Rewrite a darknet model so a target runs all of it, keeping the weights wherever the rewrite is exact.

Exact rewrites (the float output is unchanged; verified on every run):

* ``[route] groups=G group_id=K`` of one layer (YOLOv4-tiny's CSP split) becomes a 1x1 linear conv
  whose weight is a fixed 0/1 selection matrix picking channels ``K*C/G .. (K+1)*C/G``; the DPU has
  no slice op, a 1x1 conv is its bread and butter, and 0/1 weights quantise exactly.
* a stride-1 "same" max-pool of size k > 8 (SPP's 9 and 13) on an ISA0 DPU becomes a chain of
  stride-1 max-pools whose sizes sum to k + n - 1 (9 = 5,5; 13 = 7,7): a max over a max of
  overlapping windows is the max over their union, and -inf padding keeps the borders equal. The
  Vitis AI YOLOv4 tutorial instead changed 5/9/13 to 5/6/8, which changes the function and needs
  retraining.

Changes of the function (reported with the measured output delta, not hidden):

* mish / swish -> leaky: the DPU has neither (they would run on the CPU). Fine-tune afterwards.
* leaky 0.1 -> 26/256: darknet's slope is fixed at 0.1 and the cfg cannot say otherwise, so the cfg
  keeps ``activation=leaky``; the DPU computes 26/256 whatever the cfg says (vai_q forces it). The
  delta of that substitution is measured here so it is a known number, not a surprise on the board.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeyolo.adapt.check import Finding, Severity, check_cfg
from edgeyolo.errors import VerificationError
from edgeyolo.model.cfg import (
    Cfg,
    ConvSpec,
    LayerSpec,
    MaxPoolSpec,
    RouteSpec,
    ScaleChannelsSpec,
    ShortcutSpec,
    infer_shapes,
)
from edgeyolo.targets.profiles import DARKNET_LEAKY_SLOPE, TargetProfile

if TYPE_CHECKING:
    import torch

    from edgeyolo.model.darknet import Darknet

EXACT_TOLERANCE = 1e-5  # max|Δ| / max|ref| allowed for a rewrite documented as exact (float32 reordering only)


@dataclass(frozen=True)
class Change:
    kind: str  # route-split-to-conv | pool-chain | activation | leaky-slope
    layers: tuple[int, ...]  # indices in the source cfg
    new_layers: tuple[int, ...]  # indices in the adapted cfg
    line: int | None
    before: str
    after: str
    exact: bool
    note: str = ""


@dataclass(frozen=True)
class AdaptPlan:
    target: str
    images: tuple[str, ...]
    source: Cfg
    exact_cfg: Cfg  # only the exact rewrites: computes what ``source`` computes
    cfg: Cfg  # every rewrite: what gets written
    changes: tuple[Change, ...]
    index_map: tuple[int, ...]  # source layer index -> adapted layer index
    selections: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # new conv -> (in_ch, start, count)
    leaky_slope: float | None = None  # the slope the target computes for 'leaky', when not darknet's
    remaining: tuple[Finding, ...] = ()  # what the target still cannot run after adapting

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "images": list(self.images),
            "layers": [len(self.source.layers), len(self.cfg.layers)],
            "changes": [dataclasses.asdict(c) for c in self.changes],
            "index_map": list(self.index_map),
            "remaining": [f.to_dict() for f in self.remaining],
        }


# --------------------------------------------------------------------------------------------- cfg surgery

Template = Callable[[int, Callable[[int], int]], LayerSpec]  # (new index, old->new map) -> layer


def _renumber(layer: LayerSpec, index: int, remap: Callable[[int], int]) -> LayerSpec:
    if isinstance(layer, RouteSpec):
        return dataclasses.replace(layer, index=index, layers=tuple(remap(i) for i in layer.layers))
    if isinstance(layer, (ShortcutSpec, ScaleChannelsSpec)):
        return dataclasses.replace(layer, index=index, source=remap(layer.source))
    return dataclasses.replace(layer, index=index)


def _rebuild(cfg: Cfg, replacements: dict[int, list[Template]]) -> tuple[Cfg, list[int]]:
    """``cfg`` with layer i replaced by the layers its templates make; the last one stands for i."""
    index_map: list[int] = []
    new = 0
    for layer in cfg.layers:
        new += len(replacements.get(layer.index, [None]))
        index_map.append(new - 1)

    def remap(old: int) -> int:
        return index_map[old]

    layers: list[LayerSpec] = []
    for layer in cfg.layers:
        templates = replacements.get(layer.index)
        if templates is None:
            layers.append(_renumber(layer, len(layers), remap))
        else:
            for template in templates:
                layers.append(template(len(layers), remap))
    return dataclasses.replace(cfg, layers=tuple(layers)), index_map


def _selection_conv(line: int, filters: int) -> Template:
    def make(index: int, remap: Callable[[int], int]) -> LayerSpec:
        options = {"size": "1", "stride": "1", "pad": "0", "filters": str(filters), "activation": "linear"}
        return ConvSpec(index, options, line, {}, filters=filters, size=1, stride=1, padding=0, activation="linear")

    return make


def _plain_route(line: int, source: int) -> Template:
    def make(index: int, remap: Callable[[int], int]) -> LayerSpec:
        return RouteSpec(index, {"layers": str(remap(source))}, line, {}, layers=(remap(source),))

    return make


def _pool(line: int, size: int) -> Template:
    def make(index: int, remap: Callable[[int], int]) -> LayerSpec:
        return MaxPoolSpec(index, {"stride": "1", "size": str(size)}, line, {}, size=size, stride=1, padding=size - 1)

    return make


def pool_chain(size: int, limit: int) -> list[int]:
    """Odd sizes <= limit, as equal as possible, whose stride-1 composition is a ``size`` window."""
    if size % 2 == 0:
        raise ValueError(f"only odd pool sizes have a symmetric chain, got {size}")
    largest = limit if limit % 2 else limit - 1
    if largest < 3:
        raise ValueError(f"no chain of pools <= {limit}")
    n = -(-(size - 1) // (largest - 1))  # each part of size s widens the window by s - 1
    total = size - 1 + n  # sum of the parts
    parts = [total // n] * n
    for i in range(total - sum(parts)):
        parts[i] += 1
    # keep every part odd: move units in pairs between neighbours
    for i in range(n - 1):
        if parts[i] % 2 == 0:
            parts[i] -= 1
            parts[i + 1] += 1
    assert sum(parts) == total and all(p % 2 and 3 <= p <= largest for p in parts), (size, limit, parts)
    return parts


def plan_adaptation(cfg: Cfg, profile: TargetProfile, vai: str | None = None) -> AdaptPlan:
    """The rewrites ``profile`` needs, as a new cfg plus a list of changes; pure cfg work, no torch."""
    images = profile.images(vai)
    rules = profile.rules
    shapes = infer_shapes(cfg)
    replacements: dict[int, list[Template]] = {}
    pending: list[tuple[str, int, int | None, str, str, bool, str]] = []
    selections: dict[int, tuple[int, int, int]] = {}  # keyed by source index until renumbered
    for layer in cfg.layers:
        if isinstance(layer, RouteSpec) and layer.groups > 1 and not rules.route_groups and len(layer.layers) == 1:
            src = layer.layers[0]
            channels = shapes[src][0]
            count = channels // layer.groups
            templates = [] if src == layer.index - 1 else [_plain_route(layer.line, src)]
            replacements[layer.index] = templates + [_selection_conv(layer.line, count)]
            selections[layer.index] = (channels, layer.group_id * count, count)
            pending.append((
                "route-split-to-conv", layer.index, layer.line_of("groups"),
                f"[route] layers={src} groups={layer.groups} group_id={layer.group_id}",
                (
                    f"[convolutional] size=1 filters={count} activation=linear, weight = rows "
                    f"{layer.group_id * count}..{(layer.group_id + 1) * count - 1} of the {channels}x{channels} identity"
                ),
                True, "0/1 weights and a zero bias: exact in float and in power-of-two INT8",
            ))
        if isinstance(layer, MaxPoolSpec):
            limits = [i.max_pool_kernel for i in images if layer.size > i.max_pool_kernel]
            if limits and layer.stride == 1 and layer.padding == layer.size - 1 and layer.size % 2:
                parts = pool_chain(layer.size, min(limits))
                replacements[layer.index] = [_pool(layer.line, p) for p in parts]
                pending.append((
                    "pool-chain", layer.index, layer.line_of("size"), f"[maxpool] size={layer.size} stride=1",
                    " -> ".join(f"[maxpool] size={p} stride=1" for p in parts), True,
                    "max of maxes over overlapping stride-1 windows = max over their union (sizes sum to k + n - 1)",
                ))
    exact_cfg, index_map = _rebuild(cfg, replacements)
    changes = [
        Change(kind, (old,), tuple(range(index_map[old] - len(replacements[old]) + 1, index_map[old] + 1)), line, b, a, ex, note)
        for kind, old, line, b, a, ex, note in pending
    ]
    final = exact_cfg
    for layer in cfg.layers:
        if isinstance(layer, (ConvSpec, ShortcutSpec)) and layer.activation not in rules.activations:
            new = final.layers[index_map[layer.index]]
            if "leaky" not in rules.activations:
                continue  # nothing sensible to swap to; check reports it
            swapped = dataclasses.replace(new, activation="leaky", options={**new.options, "activation": "leaky"})
            final = final.replace_layer(swapped)
            changes.append(Change(
                "activation", (layer.index,), (new.index,), layer.line_of("activation"),
                f"activation={layer.activation}", "activation=leaky", False,
                "changes the function; fine-tune the adapted model to recover accuracy",
            ))
    leaky = [
        layer.index for layer in final.layers if isinstance(layer, ConvSpec) and layer.activation == "leaky"
    ]
    slope = rules.leaky_slope if rules.leaky_slope not in (None, DARKNET_LEAKY_SLOPE) else None
    if slope is not None and leaky:
        source_of = {new: old for old, new in enumerate(index_map)}
        changes.append(Change(
            "leaky-slope", tuple(source_of.get(i, -1) for i in leaky), tuple(leaky), None,
            f"leaky slope {DARKNET_LEAKY_SLOPE}", f"leaky slope {slope} (26/256) on the target", False,
            "the cfg keeps activation=leaky (darknet's slope is fixed); vai_q computes 26/256 on the DPU",
        ))
    renumbered = {
        index_map[old]: sel for old, sel in selections.items()
    }
    remaining = tuple(
        f for f in check_cfg(final, profile, vai).findings if f.severity is Severity.UNSUPPORTED
    )
    return AdaptPlan(
        profile.name, tuple(i.label for i in images), cfg, exact_cfg, final, tuple(changes), tuple(index_map),
        renumbered, slope, remaining,
    )


# --------------------------------------------------------------------------------------------- weights


def transfer_weights(model: Darknet, plan: AdaptPlan) -> Darknet:
    """A model of ``plan.cfg`` carrying ``model``'s weights, with selection matrices in the new convs."""
    import torch

    from edgeyolo.model.darknet import ConvBlock, Darknet

    adapted = Darknet(plan.cfg)
    with torch.no_grad():
        for old, block in model.conv_blocks():
            target = adapted.module_list[plan.index_map[old]]
            assert isinstance(target, ConvBlock), (old, plan.index_map[old])
            target.load_state_dict(block.state_dict())
        for index, (channels, start, count) in plan.selections.items():
            conv = adapted.module_list[index].conv
            weight = torch.zeros(count, channels, 1, 1)
            weight[torch.arange(count), torch.arange(start, start + count)] = 1.0
            conv.weight.copy_(weight)
            conv.bias.zero_()
    if hasattr(model, "darknet_header"):
        adapted.darknet_header = model.darknet_header  # type: ignore[attr-defined]
    return adapted.eval()


def with_leaky_slope(model: Darknet, slope: float) -> Darknet:
    """A copy of ``model`` whose LeakyReLUs use ``slope``: what the DPU computes for a 'leaky' cfg."""
    import copy

    from torch import nn

    out = copy.deepcopy(model)
    for module in out.modules():
        if isinstance(module, nn.LeakyReLU):
            module.negative_slope = slope
    return out.eval()


def _raw(model: Darknet, batch: torch.Tensor) -> list[torch.Tensor]:
    import torch

    with torch.no_grad():
        return [t.float() for t in model.forward_raw(batch)]


def output_delta(reference: Sequence[torch.Tensor], other: Sequence[torch.Tensor]) -> dict[str, float]:
    """Largest absolute difference over all heads, and that relative to the largest reference value."""
    max_abs = max(float((a - b).abs().max()) for a, b in zip(reference, other))
    scale = max(float(a.abs().max()) for a in reference) or 1.0
    return {"max_abs": max_abs, "rel": max_abs / scale}


@dataclass(frozen=True)
class AdaptResult:
    plan: AdaptPlan
    model: Darknet
    deltas: dict[str, dict[str, float]]


def adapt_model(model: Darknet, plan: AdaptPlan, batch: torch.Tensor) -> AdaptResult:
    """Move the weights over, prove the exact rewrites exact on ``batch`` and measure the others.

    Deltas are raw head outputs versus the source model: ``exact`` (structural rewrites only; must be
    ~0), ``activation`` (plus mish/swish -> leaky), ``leaky_slope`` (plus 26/256, i.e. what the
    target computes) — each cumulative, so the last one is the whole model's deviation.
    """
    from edgeyolo.model.darknet import Darknet

    adapted = transfer_weights(model, plan)
    exact = Darknet(plan.exact_cfg)
    exact.load_state_dict(adapted.state_dict())
    exact.eval()
    reference = _raw(model, batch)
    deltas = {"exact": output_delta(reference, _raw(exact, batch))}
    if deltas["exact"]["rel"] > EXACT_TOLERANCE:
        raise VerificationError(
            f"the exact rewrites changed the output by {deltas['exact']['rel']:.3g} (relative; allowed "
            f"{EXACT_TOLERANCE}); this is a bug in edgeyolo adapt, please report the cfg"
        )
    if any(c.kind == "activation" for c in plan.changes):
        deltas["activation"] = output_delta(reference, _raw(adapted, batch))
    if plan.leaky_slope is not None:
        deltas["leaky_slope"] = output_delta(reference, _raw(with_leaky_slope(adapted, plan.leaky_slope), batch))
    return AdaptResult(plan, adapted, deltas)


def write_adapted(
    out_dir: str | Path,
    plan: AdaptPlan,
    result: AdaptResult | None = None,
    provenance: dict[str, Any] | None = None,
) -> list[Path]:
    """``model.cfg`` (+ ``model.weights`` when a model was adapted) and ``adapt.json`` listing each change."""
    from edgeyolo.fileio import atomic_write_text
    from edgeyolo.model.cfg import format_cfg, parse_cfg

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [atomic_write_text(out / "model.cfg", format_cfg(plan.cfg))]
    back = parse_cfg(written[0])
    if [type(a) for a in back.layers] != [type(b) for b in plan.cfg.layers] or back.layers != plan.cfg.layers:
        raise VerificationError(f"{written[0]}: the written cfg does not parse back to the adapted layers")
    report = plan.to_dict() | {"source": provenance or {}}
    if result is not None:
        from edgeyolo.model.weights import save_darknet_weights

        written.append(save_darknet_weights(result.model, out / "model.weights"))
        report["output_delta"] = result.deltas
    written.append(atomic_write_text(out / "adapt.json", json.dumps(report, indent=1) + "\n"))
    return written


def adapt_model_files(
    profile: TargetProfile,
    cfg: str | Path,
    weights: str | Path | None,
    out_dir: str | Path,
    vai: str | None = None,
    seed: int = 0,
    img_size: int | None = None,
) -> tuple[Change, ...]:
    """Adapt a cfg (+ weights) on disk into ``out_dir``; the file-level entry point for pipelines.

    The output deltas are measured on seeded synthetic images at ``img_size`` (default: the cfg's).
    """
    from edgeyolo.contract import Contract, channel_order_for
    from edgeyolo.model.cfg import parse_cfg
    from edgeyolo.model.checkpoint import load_model
    from edgeyolo.model.init import calibration_batch, synthetic_images

    plan = plan_adaptation(parse_cfg(cfg), profile, vai)
    result = None
    provenance: dict[str, Any] = {"cfg": str(cfg)}
    if weights is not None:
        model = load_model(cfg, weights)
        size = img_size or model.cfg.net.height
        contract = Contract(size, size, channel_order=channel_order_for(model.cfg.net.channels))
        result = adapt_model(model, plan, calibration_batch(contract, synthetic_images(2, size, size, seed)))
        provenance["weights"] = str(weights)
    write_adapted(out_dir, plan, result, provenance)
    return plan.changes
