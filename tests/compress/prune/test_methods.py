"""Pruning methods on the real darknet and zoo cfgs: invariance, identity, structure, safety."""
from __future__ import annotations

import math
import re

import pytest
import torch

from edgeyolo.compress.prune import METHODS, Importance, PruneConfig, applicability, apply_plan, prune
from edgeyolo.compress.prune.methods import LayerPruner, SlimPruner, scale_groups
from edgeyolo.compress.prune.prunable import prunable_bn
from edgeyolo.compress.prune.selection import min_keep
from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import format_cfg, parse_cfg, parse_cfg_text
from tests.compress.prune.helpers import (
    NOT_APPLICABLE,
    TOLERANCE,
    heads,
    images,
    quick_model,
    rel_error,
    zero_removed,
)
from tests.conftest import DARKNET_CFGS, OWN_CFGS, cfg_path

SIZE = 128
CHANNEL_METHODS = ("normal", "regular", "shortcut", "slim", "group")
RESIDUAL_CFGS = ("yolov3", "edgeyolo-res")  # the others have no removable residual block
_models: dict[str, object] = {}


def model_of(name: str):
    """One random model per cfg for the whole module (yolov3 takes seconds to build)."""
    if name not in _models:
        _models[name] = quick_model(parse_cfg(cfg_path(name)), SIZE, seed=3)
    return _models[name]


def widths(cfg) -> dict[int, int]:
    return {c.index: c.filters for c in cfg.conv_layers}


CASES = [(n, m) for n in ("yolov3-tiny", "yolov4-tiny", "edgeyolo-res", "yolov3") for m in CHANNEL_METHODS] + [
    (n, m) for n in RESIDUAL_CFGS for m in ("layer", "layer-channel")
]


def test_applicability_matrix():
    """Every method either applies to each cfg or names, in one line, why not (the README's table)."""
    for name in DARKNET_CFGS + OWN_CFGS:
        answers = applicability(parse_cfg(cfg_path(name)))
        assert list(answers) == METHODS.names()
        for method, why in answers.items():
            expected = NOT_APPLICABLE.get((name, method))
            if expected is None:
                assert why is None, (name, method, why)
            else:
                assert why.startswith(f"prune {method}: ") and expected in why and "\n" not in why


@pytest.mark.parametrize("method", ["layer", "layer-channel"])
def test_a_method_that_does_not_apply_fails_before_any_work(method, monkeypatch):
    def untouched(self, model, config):
        raise AssertionError(f"a {self.name} selection ran before {method} was refused")

    for step in (SlimPruner, LayerPruner):
        monkeypatch.setattr(step, "select", untouched)
    model = model_of("yolov4-tiny")
    with pytest.raises(UsageError) as info:
        prune(model, PruneConfig(method))
    assert str(info.value) == applicability(model.cfg)[method]


@pytest.mark.parametrize("name,method", CASES, ids=[f"{n}-{m}" for n, m in CASES])
def test_zeroed_channels_and_blocks_leave_the_output_unchanged(name, method):
    """γ = β = 0 on everything a method removes: the compact model computes the same heads."""
    model = model_of(name)
    result = prune(model, PruneConfig(method, percent=None if method == "layer" else 0.5, shortcuts=2))
    x = images(SIZE, count=1)
    current = model
    for stage in result.stages:
        current = zero_removed(current, stage.selection.plan)
        ref = heads(current, x)
        current = apply_plan(current, stage.selection.plan).model
        assert rel_error(ref, heads(current, x)) <= TOLERANCE, stage.selection.method
    assert format_cfg(current.cfg) == format_cfg(result.model.cfg)
    assert sum(widths(result.model.cfg).values()) < sum(widths(model.cfg).values())
    reparsed = parse_cfg_text(format_cfg(result.model.cfg))
    assert [type(a) for a in reparsed.layers] == [type(b) for b in result.model.cfg.layers]


@pytest.mark.parametrize("method", CHANNEL_METHODS + ("layer",))
def test_percent_zero_is_the_identity(method):
    model = model_of("edgeyolo-res")
    result = prune(model, PruneConfig(method, percent=None if method == "layer" else 0.0, shortcuts=0))
    assert format_cfg(result.model.cfg) == format_cfg(model.cfg)
    theirs = result.model.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())


def test_regular_keeps_multiples_and_protects_other_widths():
    model = model_of("edgeyolo-res")
    result = prune(model, PruneConfig("regular", percent=0.6, multiple=32))
    before, after = widths(model.cfg), widths(result.model.cfg)
    protected = result.stages[0].selection.protected
    ranked = [i for i in prunable_bn(model.cfg, 0).layers if i not in protected]
    assert ranked and any(after[i] < before[i] for i in ranked)
    assert all(after[i] % 32 == 0 for i in ranked)
    narrow = [i for i in prunable_bn(model.cfg, 0).layers if before[i] < 32]
    assert narrow and all(protected[i].startswith("protected (width)") and after[i] == before[i] for i in narrow)


def test_regular_judges_a_layer_by_its_rounded_count():
    """A layer the ranking leaves 1 channel of keeps --multiple after rounding: that is no reason to refuse.
    Before, `regular` refused any percent that `normal` refuses ("would leave layer … 1 of 16")."""
    model = model_of("edgeyolo-res")
    with pytest.raises(UsageError, match="would leave layer"):
        prune(model, PruneConfig("normal", percent=0.97))
    result = prune(model, PruneConfig("regular", percent=0.97, multiple=8))
    protected = result.stages[0].selection.protected
    ranked = [i for i in prunable_bn(model.cfg, 0).layers if i not in protected]
    after = widths(result.model.cfg)
    assert ranked and all(after[i] >= 8 and after[i] % 8 == 0 for i in ranked)
    assert min(after[i] for i in ranked) == 8  # the ranking emptied some layer; rounding gave it 8
    # a minimum above the multiple still bounds it: --layer-keep 0.5 needs half of every layer
    with pytest.raises(UsageError, match="would leave layer"):
        prune(model, PruneConfig("regular", percent=0.97, multiple=8, layer_keep=0.5))


def test_too_high_percent_fails_naming_the_largest_safe_percent():
    model = model_of("edgeyolo-res")
    with pytest.raises(UsageError, match=r"largest safe percent is") as info:
        prune(model, PruneConfig("normal", percent=0.99))
    safe = float(re.search(r"largest safe percent is ([0-9.]+)", str(info.value)).group(1))
    prune(model, PruneConfig("normal", percent=safe))
    auto = prune(model, PruneConfig("normal", percent="auto")).stages[0].selection.rankings["all"]
    assert auto.safe_percent == safe and auto.percent >= safe
    one_more = (round(auto.percent * auto.channels) + 1) / auto.channels + 1e-9
    with pytest.raises(UsageError, match="would leave layer"):
        prune(model, PruneConfig("normal", percent=one_more))


def test_selection_removes_exactly_the_zeroed_channels():
    model = quick_model(parse_cfg(cfg_path("yolov4-tiny")), SIZE, seed=5)
    gen = torch.Generator().manual_seed(0)
    zeroed = {}
    with torch.no_grad():
        for i in prunable_bn(model.cfg, 0).layers:
            bn = model.module_list[i].bn
            zeroed[i] = torch.rand(bn.num_features, generator=gen) < 0.3
            bn.weight[zeroed[i]] = 0.0
            bn.bias[zeroed[i]] = 0.0
    total = sum(int(z.numel()) for z in zeroed.values())
    removed = sum(int(z.sum()) for z in zeroed.values())
    result = prune(model, PruneConfig("normal", percent=removed / total + 1e-9))
    plan = result.stages[0].selection.plan
    assert {i: ~m for i, m in plan.masks.items()} .keys() <= zeroed.keys()
    assert all(torch.equal(~plan.masks.get(i, torch.ones_like(z)), z) for i, z in zeroed.items())
    x = images(SIZE, count=1)
    assert rel_error(heads(model, x), heads(result.model, x)) <= TOLERANCE
    # --percent sparse finds that same count itself: the channels whose |γ| sparse training zeroed
    sparse = prune(model, PruneConfig("normal", percent="sparse"))
    assert sparse.stages[0].selection.plan.masks.keys() == plan.masks.keys()
    assert all(torch.equal(sparse.stages[0].selection.plan.masks[i], m) for i, m in plan.masks.items())


def test_percent_sparse_never_goes_beyond_the_safe_count():
    model = quick_model(parse_cfg(cfg_path("edgeyolo-res")), SIZE, seed=3)  # its own copy: γ are edited
    with torch.no_grad():  # every prunable γ looks zeroed: 'sparse' stops where 'auto' does
        for i in prunable_bn(model.cfg, 0).layers:
            model.module_list[i].bn.weight.mul_(1e-4)
    auto = prune(model, PruneConfig("normal", percent="auto")).stages[0].selection.rankings["all"]
    sparse = prune(model, PruneConfig("normal", percent="sparse")).stages[0].selection.rankings["all"]
    assert sparse.percent == auto.percent and sparse.safe_percent == auto.safe_percent


def test_residual_groups_share_one_mask():
    model = model_of("edgeyolo-res")
    groups = [g for g in prunable_bn(model.cfg, 1).shortcut_groups if len(g) > 1]
    assert groups
    shortcut = prune(model, PruneConfig("shortcut", percent=0.5)).stages[0].selection.plan.masks
    slim = prune(model, PruneConfig("slim", percent="auto")).stages[0].selection  # no layer topped up
    threshold = slim.rankings["all"].threshold
    grew = False
    for g in groups:
        assert all(torch.equal(shortcut[j], shortcut[g[0]]) for j in g)  # the stage's source conv decides
        own = [model.module_list[j].bn.weight.detach().abs() >= threshold for j in g]
        union = torch.stack(own).any(dim=0)
        assert all(torch.equal(slim.plan.masks[j], union) for j in g)  # slim: the union of the members'
        grew |= any(int(union.sum()) > int(o.sum()) for o in own)
    assert grew


def test_slim_tops_layers_up_instead_of_refusing():
    model = model_of("edgeyolo-res")
    slim = prune(model, PruneConfig("slim", percent=0.9, layer_keep=0.2))
    assert slim.stages[0].selection.rankings["all"].safe_percent < 0.9
    kept = widths(slim.model.cfg)
    for i in prunable_bn(model.cfg, 1).layers:
        assert kept[i] >= min_keep(model.cfg.layers[i].filters, 0.2)
    assert any(kept[i] == min_keep(model.cfg.layers[i].filters, 0.2) for i in prunable_bn(model.cfg, 1).layers)


def test_layer_pruning_deletes_the_blocks_with_the_lowest_mean_gamma():
    model = model_of("edgeyolo-res")
    lasts = prunable_bn(model.cfg, 2).layers
    assert len(lasts) == 3
    with torch.no_grad():
        model.module_list[lasts[1]].bn.weight.mul_(1e-3)
        try:
            result = prune(model, PruneConfig("layer", shortcuts=1))
        finally:
            model.module_list[lasts[1]].bn.weight.mul_(1e3)
    assert result.stages[0].selection.plan.blocks == (lasts[1] + 1,)
    assert len(result.model.cfg.layers) == len(model.cfg.layers) - 3
    with pytest.raises(UsageError, match="has only 3 removable residual blocks"):
        prune(model, PruneConfig("layer", shortcuts=4))


def test_group_pruning_uses_one_percent_per_scale_group():
    model = model_of("edgeyolo-res")
    layers = list(prunable_bn(model.cfg, 1).layers)
    groups = scale_groups(model.cfg, layers)
    assert {"s16", "s32", "head-s32", "head-s8"} <= set(groups)
    result = prune(model, PruneConfig("group", percent=0.5, group_percents=(("head-s8", 0.0),)))
    rankings = result.stages[0].selection.rankings
    assert rankings["head-s8"].percent == 0.0 and rankings["s32"].percent == pytest.approx(0.5, abs=1e-3)
    after = widths(result.model.cfg)
    assert all(after[i] == model.cfg.layers[i].filters for i in groups["head-s8"])
    with pytest.raises(UsageError, match="unknown group 'neck'"):
        prune(model, PruneConfig("group", group_percents=(("neck", 0.2),)))


def test_filter_l1_importance_ranks_by_weights():
    model = model_of("edgeyolo-res")
    result = prune(model, PruneConfig("normal", percent=0.3, importance="l1"))
    assert result.config.importance is Importance.L1
    plan = result.stages[0].selection.plan
    i, keep = next(iter(plan.masks.items()))
    norms = model.module_list[i].conv.weight.detach().abs().flatten(1).sum(1)
    assert norms[~keep].max() <= norms[keep].min()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"method": "magic"}, "unknown pruning method 'magic'"),
        ({"method": "normal", "percent": 1.5}, "--percent must be a fraction"),
        ({"method": "normal", "percent": "most"}, "--percent must be a fraction"),
        ({"method": "regular", "multiple": 0}, "--multiple"),
        ({"method": "slim", "layer_keep": -0.1}, "--layer-keep"),
        ({"method": "normal", "importance": "taylor"}, "unknown channel importance"),
        ({"method": "layer", "percent": 0.5}, "--percent does not apply"),
        ({"method": "slim", "group_percents": (("s8", 0.5),)}, "group method only"),
    ],
)
def test_bad_configs_are_usage_errors(kwargs, match):
    with pytest.raises(UsageError, match=match):
        PruneConfig(**kwargs)


def test_min_keep_is_a_ceiling_and_at_least_one():
    assert [min_keep(w, 0.01) for w in (1, 16, 100, 256)] == [1, 1, 1, 3]
    assert min_keep(10, 0.0) == 1 and min_keep(10, 1.0) == 10 and min_keep(30, 0.1) == math.ceil(3.0)


def test_regular_cuts_flops_within_a_rounding_bound_of_normal():
    import dataclasses

    from edgeyolo.model.cfg import ConvSpec, total_bflops

    model = model_of("edgeyolo-res")
    size, multiple = 128, 8
    normal = prune(model, PruneConfig("normal", percent=0.5))
    regular = prune(model, PruneConfig("regular", percent=0.5, multiple=multiple))
    protected = regular.stages[0].selection.protected
    before, after = widths(model.cfg), widths(normal.model.cfg)
    # the most regular can keep: normal's count rounded up by a whole multiple, or all of a protected layer
    bound_layers = [
        dataclasses.replace(layer, filters=before[layer.index] if layer.index in protected else min(before[layer.index], after[layer.index] + multiple - 1))
        if isinstance(layer, ConvSpec) else layer
        for layer in model.cfg.layers
    ]
    bound = total_bflops(dataclasses.replace(model.cfg, layers=tuple(bound_layers)), size)
    full, cut_normal, cut_regular = (total_bflops(m.cfg, size) for m in (model, normal.model, regular.model))
    assert cut_normal <= cut_regular <= bound < full  # regular never "prunes nothing"
    assert cut_regular < 0.9 * full


def test_a_group_percent_changes_only_its_group():
    model = model_of("edgeyolo-res")
    groups = scale_groups(model.cfg, list(prunable_bn(model.cfg, 1).layers))
    base = prune(model, PruneConfig("group", percent=0.4))
    moved = prune(model, PruneConfig("group", percent=0.4, group_percents=(("s16", 0.7),)))
    thresholds = {name: r.threshold for name, r in base.stages[0].selection.rankings.items()}
    assert len(set(thresholds.values())) > 1  # each group has its own threshold
    b, m = widths(base.model.cfg), widths(moved.model.cfg)
    assert sum(m[i] for i in groups["s16"]) < sum(b[i] for i in groups["s16"])
    others = [i for name, layers in groups.items() if name != "s16" for i in layers]
    assert others and all(m[i] == b[i] for i in others)
