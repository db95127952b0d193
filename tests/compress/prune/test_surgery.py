"""Graph surgery on small hand-written cfgs, one per layer type the removed constants flow through.

Removed channels get γ = 0 but keep a non-zero β, so each outputs the constant act(β): the compact
model must then agree with the original exactly away from the zero-padded border (where the folded
constant is an approximation), and it must not agree when the compensation is skipped.
"""
from __future__ import annotations

import pytest
import torch

from edgeyolo.compress.prune import Plan, apply_plan, surgery
from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import format_cfg, infer_shapes
from tests.compress.prune.helpers import (
    TOLERANCE,
    conv,
    head,
    heads,
    images,
    mask,
    maxpool,
    quick_model,
    rel_error,
    route,
    shortcut,
    small_cfg,
    upsample,
    zero_removed,
)

# name -> (cfg blocks, plan, interior margin in head cells). Activations vary so act(β) is not just β.
CASES = {
    "shortcut": (
        (conv(8), conv(16, stride=2, act="mish"), conv(8, 1), conv(16, act="mish"), shortcut(), conv(16), head()),
        Plan({1: mask(16, [0, 5, 9]), 3: mask(16, [0, 5, 9]), 2: mask(8, [1, 2])}),
        2,
    ),
    "route-groups": (
        (conv(8), conv(16, act="swish"), route("-1", 2, 1), conv(8, act="relu"), route("-1,1"), conv(16), head()),
        Plan({1: mask(16, [2, 10, 11, 7]), 3: mask(8, [0, 6])}),
        3,
    ),
    "upsample": (
        (conv(8, act="logistic"), conv(16, stride=2), upsample(), route("-1, 0"), conv(8), head()),
        Plan({0: mask(8, [3]), 1: mask(16, [0, 1, 15])}),
        3,  # the stride-2 conv's first row saw padding: two rows after the upsample, one more after the conv
    ),
    "maxpool": (
        (conv(16), maxpool(2, 2), conv(16, act="mish"), maxpool(2, 1), conv(8), head()),
        Plan({0: mask(16, [4, 8]), 2: mask(16, [0, 3, 12])}),
        3,
    ),
    "spp": (
        (conv(8), conv(16, 1), maxpool(5, 1), route("-2"), maxpool(9, 1), route("-4"), maxpool(13, 1),
         route("-1,-3,-5,-6"), conv(16), head()),
        Plan({1: mask(16, [1, 2, 14])}),
        2,
    ),
    "deleted-block": (
        (conv(8), conv(16, stride=2), conv(8, 1), conv(16), shortcut(), conv(8, 1), conv(16), shortcut(),
         route("-1, 1"), conv(16), head()),
        Plan({5: mask(8, [0, 3])}, blocks=(4,)),
        2,
    ),
}


def run_case(name: str):
    blocks, plan, margin = CASES[name]
    cfg = small_cfg(*blocks)
    original = zero_removed(quick_model(cfg, 32, seed=1), plan, beta=False)
    for i in plan.masks:
        assert original.module_list[i].bn.bias.abs().min() > 0  # β stays: act(β) must be compensated
    x = images(32)
    return original, plan, margin, x


@pytest.mark.parametrize("name", sorted(CASES))
def test_compensation_is_exact_in_the_interior_and_needed(name, monkeypatch):
    original, plan, margin, x = run_case(name)
    ref = heads(original, x)
    compact = apply_plan(original, plan).model
    assert sum(c.filters for c in compact.cfg.conv_layers) < sum(c.filters for c in original.cfg.conv_layers)
    assert rel_error(ref, heads(compact, x), margin) <= TOLERANCE
    # skipping the compensation (the removed channels' constant taken as 0) visibly breaks it
    def nothing(block, removed):
        return torch.zeros(int(removed.sum()), dtype=torch.float64)

    monkeypatch.setattr(surgery, "removed_channel_values", nothing)
    assert rel_error(ref, heads(apply_plan(original, plan).model, x), margin) > 100 * TOLERANCE


def test_the_border_is_where_the_approximation_lives():
    original, plan, margin, x = run_case("upsample")
    ref, got = heads(original, x), heads(apply_plan(original, plan).model, x)
    assert rel_error(ref, got) > 100 * TOLERANCE  # zero padding saw no constant in the original
    assert rel_error(ref, got, margin) <= TOLERANCE


def test_zero_beta_is_exact_everywhere():
    for name in ("shortcut", "route-groups", "deleted-block"):
        blocks, plan, _ = CASES[name]
        original = zero_removed(quick_model(small_cfg(*blocks), 32, seed=2), plan)
        x = images(32)
        assert rel_error(heads(original, x), heads(apply_plan(original, plan).model, x)) <= TOLERANCE


def test_deleted_block_renumbers_references_in_their_own_spelling():
    blocks, plan, _ = CASES["deleted-block"]
    compact = apply_plan(quick_model(small_cfg(*blocks), 32), plan)
    text = format_cfg(compact.model.cfg)
    assert compact.layer_map == {0: 0, 1: 1, 5: 2, 6: 3, 7: 4, 8: 5, 9: 6, 10: 7, 11: 8}
    assert "[route]\nlayers=-1, 1\n" in text  # absolute 1 stays absolute (layer 1 is kept in place)
    assert text.count("from=-3") == 1  # the remaining shortcut still reads three back: layer 1
    assert compact.model.cfg.layers[4].source == 1


def test_absolute_route_index_moves_with_deleted_layers():
    blocks = (conv(8), conv(16, stride=2), conv(8, 1), conv(16), shortcut(), conv(8, 1), conv(16), shortcut(),
              route("-1, 4"), conv(16), head())
    compact = apply_plan(quick_model(small_cfg(*blocks), 32), Plan(blocks=(4,)))
    # layer 4 (the deleted shortcut) now reads as its from-layer 1; the route keeps -1 relative
    assert "[route]\nlayers=-1, 1\n" in format_cfg(compact.model.cfg)
    infer_shapes(compact.model.cfg)


def test_grouped_route_needs_equal_counts_per_group():
    blocks, _, _ = CASES["route-groups"]
    model = quick_model(small_cfg(*blocks), 32)
    with pytest.raises(UsageError, match="kept channels differ per group"):
        apply_plan(model, Plan({1: mask(16, [2])}))


def test_plans_that_break_the_graph_are_refused():
    blocks, _, _ = CASES["shortcut"]
    model = quick_model(small_cfg(*blocks), 32)
    with pytest.raises(UsageError, match="keep different channels"):
        apply_plan(model, Plan({1: mask(16, [0])}))
    with pytest.raises(UsageError, match="at least one"):
        apply_plan(model, Plan({2: mask(8, list(range(8)))}))
    with pytest.raises(UsageError, match="batch norm"):
        apply_plan(model, Plan({6: mask(18, [0])}))  # the head conv
    with pytest.raises(UsageError, match="deletes this layer and prunes"):
        apply_plan(model, Plan({2: mask(8, [0])}, blocks=(4,)))
