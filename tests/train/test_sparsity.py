"""Sparse training: which BN γ each --prune mode penalises, the penalty itself, its schedules, stats.

The prunable sets are checked rule by rule on small hand-written cfgs whose answers are known by
hand, then on the real darknet and zoo cfgs against the reference's neighbour rules (§1.2 of the
compression reference), and the penalty end to end on a tiny model.
"""
from __future__ import annotations

import json
import math
import logging
import re

import numpy as np
import pytest
import torch

from edgeyolo.compress.prune.prunable import PrunableSet, PruneMode, prunable_bn
from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import ConvSpec, MaxPoolSpec, ShortcutSpec, parse_cfg, parse_cfg_text, with_input_size
from edgeyolo.model.darknet import Darknet
from edgeyolo.train.sparsity import (
    DECAY_FACTOR,
    SparsityRegularizer,
    gamma_stats,
    plot_gamma_histogram,
)
from tests.conftest import DARKNET_CFGS, OWN_CFGS, cfg_path

# ------------------------------------------------------------------------------------------- helpers

NET = "[net]\nwidth=64\nheight=64\nchannels=3\n"


def conv(filters: int, size: int = 1, stride: int = 1, bn: bool = True, groups: int = 1, act: str = "leaky") -> str:
    text = f"[convolutional]\nfilters={filters}\nsize={size}\nstride={stride}\npad=1\nactivation={act}\n"
    if bn:
        text += "batch_normalize=1\n"
    if groups > 1:
        text += f"groups={groups}\n"
    return text


def head() -> str:
    """1x1 linear conv (no BN) + [yolo] with 3 anchors, 1 class: 18 filters."""
    return conv(18, bn=False, act="linear") + "[yolo]\nmask=0,1,2\nanchors=10,10, 20,20, 30,30\nclasses=1\nnum=3\n"


def shortcut(frm: int) -> str:
    return f"[shortcut]\nfrom={frm}\nactivation=linear\n"


def route(layers: str, groups: int = 1, group_id: int = 0) -> str:
    text = f"[route]\nlayers={layers}\n"
    if groups > 1:
        text += f"groups={groups}\ngroup_id={group_id}\n"
    return text


def maxpool(size: int, stride: int) -> str:
    return f"[maxpool]\nsize={size}\nstride={stride}\n"


def cfg_of(*blocks: str, name: str = "<test>"):
    return parse_cfg_text(NET + "".join(blocks), name)


def real(name: str):
    return parse_cfg(cfg_path(name))


def assert_partition(cfg, ps: PrunableSet) -> None:
    """Every conv is either sparsified or excluded with a reason; only BN convs are sparsified."""
    convs = {layer.index for layer in cfg.layers if isinstance(layer, ConvSpec)}
    assert set(ps.layers) | set(ps.excluded) == convs
    assert not set(ps.layers) & set(ps.excluded)
    assert list(ps.layers) == sorted(ps.layers)
    assert all(cfg.layers[i].batch_normalize for i in ps.layers)
    assert all(reason for reason in ps.excluded.values())


# ------------------------------------------------------------------------------------------- rules


def test_plain_chain_sparsifies_every_bn_conv_but_not_the_head():
    cfg = cfg_of(conv(8, 3), conv(16, 3, 2), conv(8), head())
    ps = prunable_bn(cfg, 0)
    assert ps.layers == (0, 1, 2)
    assert ps.mode is PruneMode.NORMAL
    assert set(ps.excluded) == {3}
    assert "no batch norm" in ps.excluded[3] and "[yolo] 4" in ps.excluded[3]
    assert_partition(cfg, ps)


def test_head_conv_with_bn_is_still_excluded():
    text = head().replace("activation=linear\n", "activation=linear\nbatch_normalize=1\n", 1)
    cfg = cfg_of(conv(8, 3), text)
    ps = prunable_bn(cfg, 0)
    assert ps.layers == (0,)
    assert "[yolo]" in ps.excluded[1] and "batch norm" not in ps.excluded[1]


RESIDUAL = (
    conv(8, 3),  # 0
    conv(16, 3, 2),  # 1  stage start (shortcut source)
    conv(8),  # 2
    conv(16, 3),  # 3  closes block 1
    shortcut(-3),  # 4  1 + 3
    conv(8),  # 5
    conv(16, 3),  # 6  closes block 2
    shortcut(-3),  # 7  from a shortcut: 4 (i.e. 1 + 3) + 6
    conv(8),  # 8
    head(),  # 9, 10
)


def test_shortcut_connected_convs_are_excluded_in_mode0_and_included_in_mode1():
    cfg = cfg_of(*RESIDUAL)
    normal = prunable_bn(cfg, 0)
    assert normal.layers == (0, 2, 5, 8)
    for i in (1, 3, 6):
        assert "shortcut" in normal.excluded[i]
    # 1 is tied to both sums: shortcut 7 adds shortcut 4's output, whose channels are layer 1's
    assert "4, 7" in normal.excluded[1]
    shortcut_mode = prunable_bn(cfg, 1)
    assert shortcut_mode.layers == (0, 1, 2, 3, 5, 6, 8)
    assert shortcut_mode.shortcut_groups == ((1, 3, 6),)
    assert_partition(cfg, normal)
    assert_partition(cfg, shortcut_mode)


def test_shortcut_tie_follows_routes_and_pools():
    # the shortcut adds a concat of two convs (through a stride-1 maxpool): both are tied to it
    cfg = cfg_of(
        conv(8, 3),  # 0
        conv(8),  # 1
        conv(8),  # 2
        route("1,2"),  # 3: 16 channels
        maxpool(2, 1),  # 4
        conv(8),  # 5
        conv(16, 3),  # 6
        shortcut(-3),  # 7: 4 + 6
        conv(8),  # 8
        head(),
    )
    ps = prunable_bn(cfg, 0)
    assert ps.layers == (0, 5, 8)
    assert {i for i, r in ps.excluded.items() if "shortcut 7" in r} == {1, 2, 6}
    assert prunable_bn(cfg, 1).layers == (0, 1, 2, 5, 6, 8)


def test_spp_input_conv_is_excluded():
    cfg = cfg_of(
        conv(8, 3),  # 0
        conv(16, 3, 2),  # 1: SPP input
        maxpool(5, 1),  # 2
        route("-2"),  # 3
        maxpool(9, 1),  # 4
        route("-4"),  # 5
        maxpool(13, 1),  # 6
        route("-1,-3,-5,-6"),  # 7
        conv(16),  # 8
        head(),
    )
    for mode in (0, 1):
        ps = prunable_bn(cfg, mode)
        assert ps.layers == (0, 8)
        assert "SPP maxpools 2, 4, 6" in ps.excluded[1]


def test_downsampling_maxpool_concat_is_not_spp():
    # a stride-2 (tiny-style) maxpool concatenated with a conv at the pooled size is plain downsampling
    cfg = cfg_of(conv(8, 3), maxpool(2, 2), conv(8, 3), route("1,2"), conv(16), head())
    assert prunable_bn(cfg, 0).layers == (0, 2, 4)


def test_conv_feeding_upsample_is_excluded():
    cfg = cfg_of(
        conv(8, 3),  # 0
        conv(16, 3, 2),  # 1
        conv(8),  # 2: feeds the upsample
        "[upsample]\nstride=2\n",  # 3
        route("-1,0"),  # 4
        conv(16, 3),  # 5
        head(),
    )
    ps = prunable_bn(cfg, 0)
    assert ps.layers == (0, 1, 5)
    assert ps.excluded[2] == "feeds upsample 3"


def test_conv_feeding_grouped_route_is_excluded():
    cfg = cfg_of(
        conv(8, 3),  # 0
        conv(16, 3),  # 1: split by the grouped route
        route("-1", groups=2, group_id=1),  # 2
        conv(8, 3),  # 3
        conv(8, 3),  # 4
        route("-1,-2"),  # 5
        conv(16),  # 6
        route("1,6"),  # 7
        conv(16),  # 8
        head(),
    )
    for mode in (0, 1):
        ps = prunable_bn(cfg, mode)
        assert ps.layers == (0, 3, 4, 6, 8)
        assert "grouped route 2" in ps.excluded[1]


def test_depthwise_conv_and_its_feeder_are_excluded():
    cfg = cfg_of(
        conv(8, 3),  # 0
        conv(16),  # 1: expansion, feeds the depthwise
        conv(16, 3, groups=16),  # 2: depthwise
        conv(8, act="linear"),  # 3: projection (prunable)
        conv(32),  # 4: feeds a grouped (non-depthwise) conv
        conv(32, 3, groups=4),  # 5
        conv(16),  # 6
        head(),
    )
    ps = prunable_bn(cfg, 0)
    assert ps.layers == (0, 3, 6)
    assert ps.excluded[1] == "feeds depthwise conv 2: channels tied"
    assert ps.excluded[2].startswith("depthwise conv")
    assert ps.excluded[4] == "feeds grouped conv (groups=4) 5: channels tied"
    assert ps.excluded[5].startswith("grouped conv (groups=4)")


def test_depthwise_after_concat_ties_every_concatenated_conv():
    # edgeyolo-mobile's neck: depthwise over route(upsample(conv), conv)
    cfg = cfg_of(
        conv(8, 3),  # 0
        conv(8, 3, 2),  # 1
        conv(8),  # 2: feeds the upsample, and the depthwise through the concat
        "[upsample]\nstride=2\n",  # 3
        route("-1,0"),  # 4: 16 channels
        conv(16, 3, groups=16),  # 5
        conv(16),  # 6
        head(),
    )
    ps = prunable_bn(cfg, 0)
    assert ps.layers == (1, 6)
    assert "depthwise conv 5" in ps.excluded[0]
    assert "upsample 3" in ps.excluded[2] and "depthwise conv 5" in ps.excluded[2]


def test_squeeze_excitation_convs_are_excluded():
    cfg = cfg_of(
        conv(8, 3),  # 0
        conv(16, 3, 2),  # 1: the scaled map
        "[avgpool]\n",  # 2
        conv(4, act="relu"),  # 3: squeeze (with BN here, to show the rule is not "no BN")
        conv(16, act="logistic"),  # 4: excite
        "[scale_channels]\nfrom=-4\n",  # 5
        conv(16),  # 6
        head(),
    )
    ps = prunable_bn(cfg, 0)
    assert ps.layers == (0, 6)
    for i in (1, 3, 4):
        assert ps.excluded[i] == "squeeze-excitation of scale_channels 5"


def test_mode1_freezes_a_shortcut_group_with_a_member_tied_elsewhere():
    cfg = cfg_of(
        conv(16, 3),  # 0: shortcut source; also feeds the upsample through route 4
        conv(8),  # 1
        conv(16, 3),  # 2: closes the block
        shortcut(-3),  # 3
        route("0"),  # 4
        "[upsample]\nstride=2\n",  # 5
        conv(8, 3),  # 6
        head(),
    )
    normal = prunable_bn(cfg, 0)
    assert normal.layers == (1, 6)
    ps = prunable_bn(cfg, 1)
    assert ps.layers == (1, 6)
    assert "upsample 5" in ps.excluded[0]
    assert "frozen by layer 0" in ps.excluded[2]


def test_mode2_sparsifies_the_last_conv_of_each_removable_block():
    cfg = cfg_of(*RESIDUAL)
    ps = prunable_bn(cfg, 2)
    assert ps.layers == (3, 6)
    assert ps.mode is PruneMode.LAYER
    assert_partition(cfg, ps)


def test_mode2_skips_blocks_read_from_outside():
    blocks = list(RESIDUAL)
    # a route after the network reads layer 5, inside the second block: that block cannot go
    blocks += [route("5"), conv(8), head()]
    cfg = cfg_of(*blocks)
    ps = prunable_bn(cfg, 2)
    assert ps.layers == (3,)
    assert "layer 11 reads inside the block" in ps.excluded[6]


def test_mode2_on_a_cfg_without_shortcuts_raises_with_the_cfg_and_mode():
    with pytest.raises(UsageError, match=r"yolov3-tiny\.cfg: --prune 2 \(layer\) finds no prunable BN layer"):
        prunable_bn(real("yolov3-tiny"), 2)


def test_empty_set_raises_in_mode0():
    cfg = cfg_of(conv(8, 3, bn=False), head(), name="nobn.cfg")
    with pytest.raises(UsageError, match=r"nobn\.cfg: --prune 0"):
        prunable_bn(cfg, 0)


@pytest.mark.parametrize("mode", [-1, 3, "x", None])
def test_bad_mode_is_a_usage_error(mode):
    with pytest.raises(UsageError, match="--prune must be one of"):
        prunable_bn(cfg_of(conv(8, 3), head()), mode)


# ------------------------------------------------------------------------------------------- real cfgs


def reference_shortcut_convs(cfg) -> set[int]:
    """§1.2's neighbour rule: the conv before each shortcut and the conv its ``from`` names
    (the conv before that shortcut if ``from`` names a shortcut)."""
    out = set()
    for layer in cfg.layers:
        if isinstance(layer, ShortcutSpec):
            out.add(layer.index - 1)
            src = layer.source
            out.add(src - 1 if isinstance(cfg.layers[src], ShortcutSpec) else src)
    return out


EXPECTED_SIZES = {  # (mode 0, mode 1, mode 2); None: the mode raises
    "yolov3": (42, 70, 23),
    "yolov3-spp": (42, 70, 23),
    "yolov3-tiny": (10, 10, None),
    "yolov4": (76, 104, 23),
    "yolov4-tiny": (15, 15, None),
    "edgeyolo-res": (12, 18, 3),
    "edgeyolo-mobile": (5, 7, 1),
}


@pytest.mark.parametrize("name", DARKNET_CFGS + OWN_CFGS)
def test_real_cfgs_sizes_partition_and_logged_counts(name, caplog):
    cfg = real(name)
    for mode, size in enumerate(EXPECTED_SIZES[name]):
        if size is None:
            with pytest.raises(UsageError):
                prunable_bn(cfg, mode)
            continue
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="edgeyolo.compress.prune.prunable"):
            ps = prunable_bn(cfg, mode)
        assert len(ps) == size
        assert_partition(cfg, ps)
        bn = sum(1 for c in cfg.conv_layers if c.batch_normalize)
        assert f"--prune {mode} " in caplog.text
        assert f"{size} of {bn} BN convs sparsified; {len(ps.excluded)} convs excluded" in caplog.text


def test_yolov3_shortcut_convs_out_in_mode0_and_in_in_mode1():
    cfg = real("yolov3")
    tied = reference_shortcut_convs(cfg)
    assert len(tied) == 28  # 23 block ends + 5 stage-start convs
    normal, shortcut_mode = prunable_bn(cfg, 0), prunable_bn(cfg, 1)
    assert not tied & set(normal.layers)
    assert all("shortcut" in normal.excluded[i] for i in tied)
    assert tied <= set(shortcut_mode.layers)
    assert set(shortcut_mode.layers) - set(normal.layers) == tied
    # CL's hard-coded YOLOv3 exclusions: the convs before the two upsamples
    assert {84, 96} <= set(normal.excluded) and {84, 96} <= set(shortcut_mode.excluded)
    assert len(shortcut_mode.shortcut_groups) == 5  # one channel space per Darknet-53 stage


def test_yolov3_spp_excludes_the_spp_input_conv():
    cfg = real("yolov3-spp")
    first_pool = next(l.index for l in cfg.layers if isinstance(l, MaxPoolSpec))
    spp_input = first_pool - 1
    assert isinstance(cfg.layers[spp_input], ConvSpec)
    for mode in (0, 1):
        ps = prunable_bn(cfg, mode)
        assert spp_input not in ps.layers
        assert "SPP" in ps.excluded[spp_input]
    # the conv right after the SPP concat is an ordinary conv
    assert first_pool + 6 in prunable_bn(cfg, 0).layers


def test_yolov3_tiny_stride1_maxpool_is_not_spp():
    ps = prunable_bn(real("yolov3-tiny"), 0)
    assert ps.layers == (0, 2, 4, 6, 8, 10, 12, 13, 14, 21)
    assert "upsample" in ps.excluded[18]


def test_yolov4_tiny_excludes_grouped_route_feeders():
    cfg = real("yolov4-tiny")
    feeders = {l.layers[0] for l in cfg.layers if getattr(l, "groups", 1) > 1 and l.section == "route"}
    assert feeders == {2, 10, 18}
    for mode in (0, 1):
        ps = prunable_bn(cfg, mode)
        assert not feeders & set(ps.layers)
        assert all("grouped route" in ps.excluded[i] for i in feeders)


def test_edgeyolo_mobile_excludes_depthwise_neighbours_and_se():
    cfg = real("edgeyolo-mobile")
    shapes_in = {}
    for layer in cfg.layers:
        if isinstance(layer, ConvSpec) and layer.groups > 1:
            shapes_in[layer.index] = layer.groups
    depthwise = set(shapes_in)
    se_convs = {l.index - k for l in cfg.layers if l.section == "scale_channels" for k in (1, 2)}
    ps = prunable_bn(cfg, 0)
    assert ps.layers == (2, 16, 26, 28, 36)
    assert not (depthwise | {i - 1 for i in depthwise} | se_convs) & set(ps.layers)
    assert all("depthwise conv" in ps.excluded[i] for i in depthwise)
    assert all("squeeze-excitation" in ps.excluded[i] for i in se_convs)
    assert "feeds depthwise conv 35" in ps.excluded[23]  # through the neck's concat
    assert prunable_bn(cfg, 1).layers == (2, 9, 12, 16, 26, 28, 36)


@pytest.mark.parametrize("name", ["yolov3", "yolov3-spp", "yolov4", "edgeyolo-res", "edgeyolo-mobile"])
def test_mode2_is_the_conv_before_each_shortcut(name):
    cfg = real(name)
    before = tuple(l.index - 1 for l in cfg.layers if isinstance(l, ShortcutSpec))
    assert prunable_bn(cfg, 2).layers == before


# ------------------------------------------------------------------------------------------- penalty


@pytest.fixture(scope="module")
def res_cfg():
    return with_input_size(real("edgeyolo-res"), 64)


def seeded_model(cfg, seed: int = 0) -> Darknet:
    torch.manual_seed(seed)
    model = Darknet(cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, block in model.conv_blocks():
            if block.bn is not None:
                n = block.bn.num_features
                sign = torch.randint(0, 2, (n,), generator=gen).float() * 2 - 1
                block.bn.weight.copy_(sign * torch.empty(n).uniform_(0.01, 1.0, generator=gen))
                block.bn.weight[0] = 0.0  # sign(0) = 0: no push on an exact zero
    return model


def fill_grads(model, seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.grad = torch.randn(p.shape, generator=gen)
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def gamma_names(model, layers) -> set[str]:
    return {f"module_list.{i}.bn.weight" for i in layers}


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_apply_adds_exactly_s_sign_gamma_to_prunable_gammas_only(res_cfg, mode):
    model = seeded_model(res_cfg)
    s = 1e-3
    reg = SparsityRegularizer(model, mode, s)
    before = fill_grads(model)
    assert reg.apply(0) == s
    prunable = gamma_names(model, reg.layers)
    assert len(prunable) == len(prunable_bn(res_cfg, mode))
    for name, p in model.named_parameters():
        if name in prunable:
            expected = before[name] + torch.sign(p.detach()) * s
            assert torch.equal(p.grad, expected), name
            assert p.grad[0] == before[name][0]  # γ = 0 gets no push
        else:
            assert torch.equal(p.grad, before[name]), name


def test_apply_sets_the_gradient_when_there_is_none(res_cfg):
    model = seeded_model(res_cfg)
    reg = SparsityRegularizer(model, 0, 0.5)
    reg.apply(0)
    for name, p in model.named_parameters():
        if name in gamma_names(model, reg.layers):
            assert torch.equal(p.grad, torch.sign(p.detach()) * 0.5)
        else:
            assert p.grad is None


def test_s_zero_changes_nothing(res_cfg):
    model = seeded_model(res_cfg)
    before = fill_grads(model)
    SparsityRegularizer(model, 1, 0.0).apply(3)
    assert all(torch.equal(p.grad, before[n]) for n, p in model.named_parameters())


def test_step_schedule(res_cfg):
    model = seeded_model(res_cfg)
    reg = SparsityRegularizer(model, 0, 1e-3, "step", 10)
    assert reg.decay_epoch == 5
    for epoch in range(12):
        expected = 1e-3 if epoch < 5 else 1e-3 * DECAY_FACTOR
        assert reg.update(epoch) == pytest.approx(expected, rel=0, abs=0)
        assert reg.current_s == expected
        before = fill_grads(model, seed=epoch)
        reg.apply(epoch)
        i = reg.layers[0]
        g = model.module_list[i].bn.weight
        assert torch.equal(g.grad, before[f"module_list.{i}.bn.weight"] + torch.sign(g.detach()) * expected)
    odd = SparsityRegularizer(model, 0, 1e-3, "step", 7, decay_start=0.3)
    assert odd.decay_epoch == 3  # ceil(0.3 * 7)
    assert odd.update(2) == 1e-3 and odd.update(3) == 1e-3 * DECAY_FACTOR


def set_prunable_gammas(model, layers, values: np.ndarray) -> None:
    """Spread ``values`` over the prunable γ in layer order."""
    values = torch.as_tensor(values, dtype=torch.float32)
    offset = 0
    with torch.no_grad():
        for i in layers:
            w = model.module_list[i].bn.weight
            w.copy_(values[offset : offset + w.numel()])
            offset += w.numel()
    assert offset == len(values)


def test_local_schedule_relieves_the_top_channels_after_the_decay_epoch(res_cfg):
    model = seeded_model(res_cfg)
    s = 0.01
    reg = SparsityRegularizer(model, 0, s, "local", 4)
    n = sum(model.module_list[i].bn.num_features for i in reg.layers)
    rng = np.random.default_rng(0)
    magnitudes = rng.permutation(np.arange(1, n + 1)) / n  # distinct |γ|, rank known
    signs = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    set_prunable_gammas(model, reg.layers, signs * magnitudes)
    gammas = torch.cat([model.module_list[i].bn.weight.detach() for i in reg.layers])

    def check(epoch: int, coef: torch.Tensor) -> None:
        """grad after apply == grad before + coef · sign(γ), bit for bit, per channel."""
        before = fill_grads(model, seed=epoch)
        reg.apply(epoch)
        offset = 0
        for i in reg.layers:
            w = model.module_list[i].bn.weight
            c = coef[offset : offset + w.numel()]
            offset += w.numel()
            assert torch.equal(w.grad, before[f"module_list.{i}.bn.weight"] + torch.sign(w.detach()) * c)

    for epoch in (0, 1):  # before decay_epoch = 2: full s everywhere
        check(epoch, torch.full((n,), s))
    keep = int(n * 0.7)
    top = gammas.abs() >= torch.sort(gammas.abs()).values[keep]
    assert int(top.sum()) == n - keep  # the top 30 %
    for epoch in (2, 3):
        check(epoch, torch.where(top, torch.tensor(s * DECAY_FACTOR), torch.tensor(s)))
        assert reg.current_s == s


def test_dynamic_rate_follows_the_gap_to_the_target(res_cfg):
    model = seeded_model(res_cfg)
    s = 1e-3
    reg = SparsityRegularizer(model, 0, s, "dynamic", s_min_factor=0.1)  # threshold 1e-2, target 0.5, gain 2
    n = sum(model.module_list[i].bn.num_features for i in reg.layers)

    def rate_with_fraction(frac: float, epoch: int) -> float:
        small = round(frac * n)
        values = np.concatenate([np.full(small, 1e-3), np.full(n - small, 0.5)])
        set_prunable_gammas(model, reg.layers, np.random.default_rng(epoch).permutation(values))
        rate = reg.update(epoch)
        assert reg.last_fraction == pytest.approx(small / n)
        return rate

    far = rate_with_fraction(0.0, 0)
    half = rate_with_fraction(0.25, 1)
    near = rate_with_fraction(0.48, 2)
    assert not reg.holding
    reached = rate_with_fraction(0.6, 3)
    assert far == pytest.approx(2 * s)  # gain · gap = 2 · 1
    assert half == pytest.approx(s, rel=1e-2)  # gap 0.5
    assert near == pytest.approx(0.1 * s)  # 2 · 0.04 = 0.08, clipped up to s_min_factor
    assert far > half > near
    assert reached == pytest.approx(s) and reg.holding  # the hold phase: s on the cut γ only
    # falling back under the target resumes the controller
    assert rate_with_fraction(0.1, 4) == pytest.approx(s * 2 * 0.8, rel=1e-2)
    # deterministic: the same γ give the same rate
    assert rate_with_fraction(0.1, 4) == reg.update(5)
    # the default floor is s itself: no taper short of the target
    reg = SparsityRegularizer(model, 0, s, "dynamic")
    assert rate_with_fraction(0.48, 6) == pytest.approx(s) and rate_with_fraction(0.1, 7) == pytest.approx(1.6 * s, rel=1e-2)


def test_dynamic_apply_measures_before_every_step(res_cfg):
    model = seeded_model(res_cfg)
    reg = SparsityRegularizer(model, 0, 1e-3, "dynamic")
    n = sum(model.module_list[i].bn.num_features for i in reg.layers)
    set_prunable_gammas(model, reg.layers, np.full(n, 0.5))
    assert reg.apply(0) == pytest.approx(2e-3) and not reg.holding  # frac 0: twice s
    set_prunable_gammas(model, reg.layers, np.concatenate([np.full(n // 4, 1e-4), np.full(n - n // 4, 0.5)]))
    assert reg.apply(0) == pytest.approx(1e-3, rel=2e-2)  # same epoch, re-measured: gap ~0.5
    state = json.loads(json.dumps(reg.state_dict()))
    other = SparsityRegularizer(model, 0, 1e-3, "dynamic")
    other.load_state_dict(state)
    assert other.current_s == reg.current_s and other.last_fraction == reg.last_fraction


def test_dynamic_hold_pulls_only_the_cut_gammas(res_cfg):
    """Once the target is reached the γ below the threshold get s·sign(γ), every other γ nothing,
    and falling back under the target hands the set back to the controller."""
    model = seeded_model(res_cfg)
    s = 1e-3
    reg = SparsityRegularizer(model, 1, s, "dynamic", penalty="polar")
    n = sum(model.module_list[i].bn.num_features for i in reg.layers)
    rng = np.random.default_rng(0)
    small = rng.permutation(n) < int(0.6 * n)
    values = np.where(small, rng.uniform(-5e-3, 5e-3, n), rng.uniform(0.3, 1.2, n) * rng.choice([-1, 1], n))
    set_prunable_gammas(model, reg.layers, values)
    model.zero_grad(set_to_none=True)
    assert reg.apply(0) == s and reg.holding
    grads = torch.cat([model.module_list[i].bn.weight.grad for i in reg.layers]).numpy()
    np.testing.assert_allclose(grads[small], s * np.sign(values[small]), rtol=1e-6)
    assert not grads[~small].any()
    # back under the target: the polar controller again, on every γ below the set's mean
    values = np.where(small & (np.arange(n) % 2 == 0), 0.8, values).astype(np.float32)
    set_prunable_gammas(model, reg.layers, values)
    model.zero_grad(set_to_none=True)
    rate = reg.apply(0)
    assert not reg.holding and rate == pytest.approx(s)  # 2 · gap 0.4 = 0.8, floored at s
    grads = torch.cat([model.module_list[i].bn.weight.grad for i in reg.layers]).numpy()
    below = np.abs(values) < np.abs(values).mean()
    assert (~small & below).any()  # some γ above the threshold are pulled again
    np.testing.assert_allclose(grads[below], 2 * rate * np.sign(values[below]), rtol=1e-5)
    assert not grads[~below].any()


def test_entering_the_hold_clears_the_momentum_of_the_released_gammas_once(res_cfg):
    model = seeded_model(res_cfg)
    reg = SparsityRegularizer(model, 0, 1e-3, "dynamic", target=0.5)
    n = sum(model.module_list[i].bn.num_features for i in reg.layers)
    rng = np.random.default_rng(2)
    small = rng.permutation(n) < int(0.3 * n)  # under the target: the controller pulls
    values = np.where(small, rng.uniform(-5e-3, 5e-3, n), rng.uniform(0.3, 1.2, n))
    set_prunable_gammas(model, reg.layers, values)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    fill_grads(model)  # every parameter gets a momentum buffer
    reg.apply(0, optimizer=optimizer)
    optimizer.step()
    gammas = [model.module_list[i].bn.weight for i in reg.layers]
    velocity = torch.cat([optimizer.state[g]["momentum_buffer"] for g in gammas])
    assert not reg.holding and velocity.count_nonzero() > n // 2
    other = model.module_list[0].conv.weight
    before_other = optimizer.state[other]["momentum_buffer"].clone()

    values = np.where(small | (np.arange(n) % 3 == 0), 4e-3, values)  # now 50 %+: the hold starts
    set_prunable_gammas(model, reg.layers, values)
    model.zero_grad(set_to_none=True)
    reg.apply(0, optimizer=optimizer)
    assert reg.holding
    after = torch.cat([optimizer.state[g]["momentum_buffer"] for g in gammas])
    released = torch.as_tensor(np.abs(values) >= reg.threshold)
    assert not after[released].any()
    assert torch.equal(after[~released], velocity[~released])  # the cut γ keep theirs
    assert torch.equal(optimizer.state[other]["momentum_buffer"], before_other)

    fill_grads(model, seed=3)
    optimizer.step()  # momentum builds again; a hold already under way does not clear it
    rebuilt = torch.cat([optimizer.state[g]["momentum_buffer"] for g in gammas]).clone()
    assert rebuilt[released].count_nonzero() > 10
    set_prunable_gammas(model, reg.layers, values)  # still at the target
    model.zero_grad(set_to_none=True)
    reg.apply(0, optimizer=optimizer)
    assert reg.holding
    assert torch.equal(torch.cat([optimizer.state[g]["momentum_buffer"] for g in gammas]), rebuilt)
    state = json.loads(json.dumps(reg.state_dict()))
    assert state["released"] is True

def test_bad_regularizer_arguments(res_cfg):
    model = seeded_model(res_cfg)
    with pytest.raises(UsageError, match="unknown sparse-rate schedule"):
        SparsityRegularizer(model, 0, 1e-3, "cosine", 10)
    with pytest.raises(UsageError, match="needs the number of epochs"):
        SparsityRegularizer(model, 0, 1e-3, "step")
    with pytest.raises(UsageError, match="finite number >= 0"):
        SparsityRegularizer(model, 0, -1e-3)
    with pytest.raises(UsageError, match="target"):
        SparsityRegularizer(model, 0, 1e-3, "dynamic", target=0.0)


# ------------------------------------------------------------------------------------------- stats


def test_gamma_stats_on_known_values(res_cfg, tmp_path):
    model = seeded_model(res_cfg)
    ps = prunable_bn(res_cfg, 0)
    n = sum(model.module_list[i].bn.num_features for i in ps.layers)
    values = np.geomspace(1e-5, 1.0, n)
    values[:3] = 0.0
    set_prunable_gammas(model, ps.layers, -values)  # signs do not matter
    stats = gamma_stats(model, ps)
    values = values.astype(np.float32).astype(np.float64)  # what the model holds
    assert stats["count"] == n
    assert stats["frac_lt_1e-2"] == np.mean(values < 1e-2)
    assert stats["frac_lt_1e-3"] == np.mean(values < 1e-3)
    assert 0.5 < stats["frac_lt_1e-2"] < 0.7
    expected = np.percentile(values, [1, 5, 25, 50, 75, 95])
    for p, v in zip((1, 5, 25, 50, 75, 95), expected):
        assert stats[f"p{p}"] == pytest.approx(v, rel=1e-6)
    assert gamma_stats(model, list(ps.layers)) == stats
    with pytest.raises(UsageError, match="not a convolutional layer with batch norm"):
        gamma_stats(model, [res_cfg.yolo_indices[0] - 1])  # a head conv without BN

    out = plot_gamma_histogram(model, ps, tmp_path / "plots" / "gamma.png", "edgeyolo-res epoch 0")
    assert out == tmp_path / "plots" / "gamma.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["gamma.png"]  # no temp file left


# ------------------------------------------------------------------------------------------- training


def train_tiny(s: float, steps: int = 30) -> tuple[Darknet, SparsityRegularizer]:
    cfg = with_input_size(real("edgeyolo-mobile"), 64)
    torch.manual_seed(0)
    model = Darknet(cfg).train()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, block in model.conv_blocks():
            if block.bn is not None:
                block.bn.weight.copy_(torch.empty(block.bn.num_features).uniform_(0.02, 0.1, generator=gen))
    reg = SparsityRegularizer(model, 0, s)
    prunable = gamma_names(model, reg.layers)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    images = torch.rand(steps, 2, 3, 64, 64, generator=gen)
    for step in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = sum(out.square().mean() for out in model(images[step]))
        loss.backward()
        before = {n: p.grad.clone() for n, p in model.named_parameters() if n not in prunable and p.grad is not None}
        reg.apply(0)
        for n, p in model.named_parameters():
            if n in before:
                assert torch.equal(p.grad, before[n]), n  # penalty-free
        opt.step()
    return model, reg


def test_sparse_training_drives_prunable_gammas_to_zero_only(one_thread):
    sparse, reg = train_tiny(s=0.1)
    dense, _ = train_tiny(s=0.0)
    others = [i for i, b in sparse.conv_blocks() if b.bn is not None and i not in reg.layers]
    assert len(others) > len(reg.layers)
    sparse_frac = gamma_stats(sparse, reg.layers)["frac_lt_1e-2"]
    dense_frac = gamma_stats(dense, reg.layers)["frac_lt_1e-2"]
    assert sparse_frac > 0.8 and dense_frac < 0.2
    # the rest is not pushed: its small-γ fraction matches the unpenalised run
    sparse_rest = gamma_stats(sparse, others)
    dense_rest = gamma_stats(dense, others)
    assert abs(sparse_rest["frac_lt_1e-2"] - dense_rest["frac_lt_1e-2"]) < 0.05
    assert sparse_rest["p50"] == pytest.approx(dense_rest["p50"], rel=0.2)
    # 30 steps of lr · s = 0.005 would move a penalised γ by up to 0.15; the others moved only
    # through the (small) data gradient, as in the run without penalty
    for i in others:
        a, b = sparse.module_list[i].bn.weight.detach(), dense.module_list[i].bn.weight.detach()
        assert (a - b).abs().max() < 0.01, i


def test_describe_names_the_set_size_the_left_out_kinds_and_the_schedule(res_cfg):
    model = seeded_model(res_cfg)
    reg = SparsityRegularizer(model, 0, 0.05, "dynamic")
    line = reg.describe()
    channels = sum(model.module_list[i].bn.num_features for i in reg.layers)
    assert f"penalises {len(reg.layers)} BN convs ({channels} γ)" in line
    assert f"{len(reg.prunable.excluded)} convs left out" in line and "schedule dynamic, s 0.05" in line
    kinds = line.split("left out (")[1].split("); schedule")[0].split(", ")
    assert "channels tied by residual sums 6" in kinds
    assert all(re.fullmatch(r"[^\d]+ \d+", kind) for kind in kinds), kinds  # kinds and counts, no layer numbers


@pytest.mark.parametrize("t", [1.0, 1.3, 0.7])
def test_polar_penalty_pulls_below_the_mean_harder_than_above(res_cfg, t):
    model = seeded_model(res_cfg)
    s = 1e-2
    reg = SparsityRegularizer(model, 1, s, penalty="polar", polar_t=t)
    before = fill_grads(model)
    reg.apply(0)
    mean = float(torch.cat([model.module_list[i].bn.weight.detach().abs() for i in reg.layers]).mean())
    checked = 0
    for i in reg.layers:
        weight = model.module_list[i].bn.weight
        added = weight.grad - before[f"module_list.{i}.bn.weight"]
        g = weight.detach()
        below, above = (g.abs() < mean) & (g != 0), g.abs() > mean
        assert torch.allclose(added[below], torch.sign(g[below]) * (t + 1) * s, rtol=0, atol=1e-6)
        assert torch.allclose(added[above], torch.sign(g[above]) * (t - 1) * s, rtol=0, atol=1e-6)
        assert not bool(added[g == 0].any())  # an exact zero gets no push
        checked += int(below.sum() + above.sum())
    assert checked > 100


def test_polar_penalty_splits_a_tight_band_where_l1_shrinks_it_whole(res_cfg):
    """Penalty alone, plain SGD: l1 moves every γ of a tight band down together; polar sends the
    lower part to zero and leaves the upper part where it was."""
    results = {}
    for penalty in ("l1", "polar"):
        model = seeded_model(res_cfg)
        reg = SparsityRegularizer(model, 1, 0.02, penalty=penalty)
        bns = [model.module_list[i].bn for i in reg.layers]
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for bn in bns:
                bn.weight.copy_(torch.empty(bn.num_features).uniform_(0.9, 1.0, generator=gen))
        opt = torch.optim.SGD([bn.weight for bn in bns], lr=0.1)
        for _ in range(400):
            opt.zero_grad(set_to_none=True)
            reg.apply(0)
            opt.step()
        g = torch.cat([bn.weight.detach().abs() for bn in bns])
        results[penalty] = (float((g < 1e-2).float().mean()), float((g > 0.85).float().mean()))
    assert results["l1"] == (0.0, 0.0), results  # all moved down by 0.8, none reached zero
    assert results["polar"][0] > 0.3 and results["polar"][1] > 0.3, results  # two groups: near zero, untouched


def test_polar_layer_mean_splits_each_conv_around_its_own_mean(res_cfg):
    model = seeded_model(res_cfg)
    with torch.no_grad():  # one conv's γ all small: a global mean would pull every one of them
        model.module_list[20].bn.weight.mul_(0.05)
    s, t = 1e-2, 1.0
    reg = SparsityRegularizer(model, 1, s, penalty="polar", polar_t=t, polar_mean="layer")
    assert "around the layer mean" in reg.describe()
    before = fill_grads(model)
    reg.apply(0)
    global_mean = float(torch.cat([model.module_list[i].bn.weight.detach().abs() for i in reg.layers]).mean())
    for i in reg.layers:
        weight = model.module_list[i].bn.weight
        g = weight.detach()
        mean = float(g.abs().mean())
        expected = torch.sign(g) * (t - torch.sign(g.abs() - mean)) * s
        assert torch.allclose(weight.grad - before[f"module_list.{i}.bn.weight"], expected, rtol=0, atol=1e-6), i
    small = model.module_list[20].bn.weight.detach().abs()
    assert float(small.max()) < global_mean  # all below the global mean, yet only about half pulled
    conv20 = model.module_list[20].bn.weight
    pulled = int(((conv20.grad - before["module_list.20.bn.weight"]) * torch.sign(conv20.detach()) > 0).sum())
    assert 0.3 * small.numel() < pulled < 0.7 * small.numel()


@pytest.mark.parametrize("penalty", ["l1", "polar"])
def test_layer_cap_pulls_only_the_smallest_share_of_each_conv(res_cfg, penalty):
    model, uncapped = seeded_model(res_cfg), seeded_model(res_cfg)
    with torch.no_grad():  # a conv under the global mean as a whole: polar pulls all of it uncapped
        for m in (model, uncapped):
            m.module_list[20].bn.weight.mul_(0.05)
    s, cap = 1e-2, 0.6
    reg = SparsityRegularizer(model, 1, s, penalty=penalty, layer_cap=cap, target=0.5)
    assert "at most 60% of each conv pulled" in reg.describe()
    free = SparsityRegularizer(uncapped, 1, s, penalty=penalty, target=0.5)
    before = fill_grads(model)
    fill_grads(uncapped)
    reg.apply(0)
    free.apply(0)
    taken = 0
    for i in reg.layers:
        g = model.module_list[i].bn.weight
        added = g.grad - before[f"module_list.{i}.bn.weight"]
        added_free = uncapped.module_list[i].bn.weight.grad - before[f"module_list.{i}.bn.weight"]
        n = g.numel()
        allowed = torch.zeros(n, dtype=torch.bool)
        allowed[torch.argsort(g.detach().abs(), stable=True)[: math.floor(cap * n + 1e-9)]] = True
        # inside the allowed share the penalty is the uncapped one; outside, no pull towards zero
        assert torch.equal(added[allowed], added_free[allowed]), i
        assert not bool((added[~allowed] * torch.sign(g.detach()[~allowed]) > 0).any()), i
        taken += int((added_free[~allowed] * torch.sign(g.detach()[~allowed]) > 0).sum())
    assert taken > 50  # the cap did take pulls away


def test_layer_cap_stops_a_conv_emptying_under_training(res_cfg):
    """Penalty alone, plain SGD, one conv's γ small as a whole: uncapped, the global polar mean
    sends all of that conv to zero; capped at 70 % it keeps 30 % of its channels."""
    cut = {}
    for cap in (1.0, 0.7):
        model = seeded_model(res_cfg)
        with torch.no_grad():
            for i in prunable_bn(res_cfg, 1).layers:
                model.module_list[i].bn.weight.abs_().clamp_(min=0.3)
            model.module_list[20].bn.weight.mul_(0.1)
        reg = SparsityRegularizer(model, 1, 0.02, penalty="polar", layer_cap=cap, target=0.5)
        bns = [model.module_list[i].bn for i in reg.layers]
        opt = torch.optim.SGD([bn.weight for bn in bns], lr=0.1)
        for _ in range(100):
            opt.zero_grad(set_to_none=True)
            reg.apply(0)
            opt.step()
        cut[cap] = float((model.module_list[20].bn.weight.detach().abs() < 1e-2).float().mean())
    assert cut[1.0] == 1.0, cut
    assert 0.6 < cut[0.7] <= 0.7, cut


def test_bad_layer_cap_and_polar_mean(res_cfg):
    model = seeded_model(res_cfg)
    with pytest.raises(UsageError, match="per-layer cap"):
        SparsityRegularizer(model, 1, 0.01, layer_cap=0.0)
    with pytest.raises(UsageError, match=r"per-layer cap \(0.4\) is below the target \(0.5\)"):
        SparsityRegularizer(model, 1, 0.01, "dynamic", layer_cap=0.4, target=0.5)
    with pytest.raises(UsageError, match="polarization mean"):
        SparsityRegularizer(model, 1, 0.01, penalty="polar", polar_mean="median")


def test_unknown_penalty_is_a_usage_error(res_cfg):
    with pytest.raises(UsageError, match="unknown sparsity penalty"):
        SparsityRegularizer(seeded_model(res_cfg), 1, 0.01, penalty="l2")


def test_gradual_penalty_pulls_exactly_the_lowest_gammas_on_a_cubic_ramp(res_cfg):
    model = seeded_model(res_cfg)
    s = 1e-3
    reg = SparsityRegularizer(model, 1, s, "constant", epochs=10, penalty="gradual", target=0.6, ramp=0.5)
    n = sum(model.module_list[i].bn.num_features for i in reg.layers)
    assert reg.gradual_count(0.0) == 0
    assert reg.gradual_count(0.25) == math.ceil(n * 0.6 * (1 - 0.5**3))  # half-way up the ramp: 7/8 of it
    assert reg.gradual_count(0.5) == reg.gradual_count(1.0) == math.ceil(n * 0.6)
    values = np.random.default_rng(1).uniform(-1.5, 1.5, n).astype(np.float32)
    set_prunable_gammas(model, reg.layers, values)
    for progress in (0.1, 0.3, 0.8):
        model.zero_grad(set_to_none=True)
        assert reg.apply(int(progress * 10), progress) == s
        grads = torch.cat([model.module_list[i].bn.weight.grad for i in reg.layers]).numpy()
        k = reg.gradual_count(progress)
        lowest = np.zeros(n, bool)
        lowest[np.argsort(np.abs(values), kind="stable")[:k]] = True
        np.testing.assert_array_equal(grads[lowest], s * np.sign(values[lowest]))
        assert not grads[~lowest].any()
    with pytest.raises(UsageError, match="needs the number of epochs"):
        SparsityRegularizer(model, 1, s, "constant", penalty="gradual")
    with pytest.raises(UsageError, match="ramp"):
        SparsityRegularizer(model, 1, s, "constant", epochs=10, penalty="gradual", ramp=0.0)


def test_taylor_rank_pulls_the_least_important_by_running_gamma_times_grad_squared(res_cfg):
    from edgeyolo.train.sparsity import TAYLOR_DECAY

    model = seeded_model(res_cfg)
    s = 1e-3
    reg = SparsityRegularizer(model, 1, s, "constant", epochs=10, penalty="gradual", target=0.6, ramp=0.5, rank="taylor")
    assert "the least important 60%" in reg.describe()
    n = sum(model.module_list[i].bn.num_features for i in reg.layers)
    rng = np.random.default_rng(2)
    values = rng.uniform(-1.5, 1.5, n).astype(np.float32)
    set_prunable_gammas(model, reg.layers, values)
    expected = None
    for step, progress in enumerate((0.1, 0.3, 0.8)):
        data_grads = rng.normal(size=n).astype(np.float32)
        sizes = [model.module_list[i].bn.num_features for i in reg.layers]
        for i, g in zip(reg.layers, np.split(data_grads, np.cumsum(sizes)[:-1])):
            model.module_list[i].bn.weight.grad = torch.from_numpy(g.copy())
        fresh = (values.astype(np.float64) * data_grads) ** 2
        expected = fresh if expected is None else TAYLOR_DECAY * expected + (1 - TAYLOR_DECAY) * fresh
        reg.apply(step, progress)
        got = torch.cat(reg._importance).double().numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-5)
        added = torch.cat([model.module_list[i].bn.weight.grad for i in reg.layers]).numpy() - data_grads
        k = reg.gradual_count(progress)
        pulled = np.zeros(n, bool)
        pulled[np.argsort(got, kind="stable")[:k]] = True
        np.testing.assert_allclose(added[pulled], s * np.sign(values[pulled]), atol=1e-7)
        assert not np.abs(added[~pulled]).max() > 1e-7
        # not the magnitude ranking: a small |γ| the data leans on is kept
        assert not np.array_equal(pulled, np.isin(np.arange(n), np.argsort(np.abs(values), kind="stable")[:k]))
    # resume: the running importance goes through the JSON state exactly
    restored = SparsityRegularizer(seeded_model(res_cfg), 1, s, "constant", epochs=10, penalty="gradual", target=0.6, rank="taylor")
    restored.load_state_dict(json.loads(json.dumps(reg.state_dict())))
    assert all(torch.equal(a, b) for a, b in zip(restored._importance, reg._importance))


def test_taylor_rank_needs_the_gradual_penalty(res_cfg):
    model = seeded_model(res_cfg)
    with pytest.raises(UsageError, match="needs the 'gradual' sparsity penalty"):
        SparsityRegularizer(model, 1, 0.01, penalty="polar", rank="taylor")
    with pytest.raises(UsageError, match="unknown γ ranking"):
        SparsityRegularizer(model, 1, 0.01, "constant", epochs=10, penalty="gradual", rank="fisher")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device; none here")
@pytest.mark.parametrize(
    "penalty, schedule, target",
    [("l1", "constant", 0.5), ("l1", "local", 0.5), ("polar", "dynamic", 0.5), ("polar", "dynamic", 0.02), ("gradual", "constant", 0.6)],
)
def test_apply_on_cuda_gives_the_cpu_gradients(res_cfg, penalty, schedule, target):
    """Every penalty and ranked schedule (local's quantile, the hold, gradual's mask) on a CUDA model."""
    grads, holding = {}, {}
    for device in ("cpu", "cuda"):
        model = seeded_model(res_cfg)
        with torch.no_grad():
            for _, block in model.conv_blocks():
                if block.bn is not None:
                    block.bn.weight[1:4] *= 5e-3  # below the 1e-2 threshold: what the hold pulls
        model.to(device)
        reg = SparsityRegularizer(model, 1, 1e-3, schedule, epochs=10, penalty=penalty, target=target)
        model.zero_grad(set_to_none=True)
        reg.apply(7, 0.3)  # past the local decay epoch, part-way up the gradual ramp
        grads[device] = torch.cat([model.module_list[i].bn.weight.grad.cpu() for i in reg.layers])
        holding[device] = reg.holding
    assert grads["cpu"].count_nonzero() > 10
    assert holding["cuda"] == holding["cpu"] == (schedule == "dynamic" and target < 0.1)
    torch.testing.assert_close(grads["cuda"], grads["cpu"], rtol=1e-6, atol=0)
