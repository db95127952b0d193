"""Latency-targeted pruning ranked by measured sensitivity: the curves, the path that measures them
again as the cut deepens, the loss they measure, and the command's refusals."""
from __future__ import annotations

import math

import pytest

from edgeyolo.bench.latency import loss_damage, prune_to_latency
from edgeyolo.cli.app import main
from edgeyolo.compress.prune.budget import (
    SensitivityPath,
    select_widths,
    sensitivity_curves,
    sensitivity_widths,
    variable_scores,
    width_variables,
)
from edgeyolo.data.formats import load_dataset
from edgeyolo.data.synth import make_synthetic
from edgeyolo.model.darknet import Darknet
from tests.bench.conftest import SIZE
from tests.bench.test_latency import flops_like

pytestmark = pytest.mark.usefixtures("one_thread")


def widths_of(net: Darknet) -> dict[int, int]:
    return {c.index: c.filters for c in net.cfg.conv_layers}


@pytest.fixture(scope="module")
def setup(model):
    variables, _ = width_variables(model.cfg, "slim", 8)
    return variables, variable_scores(model, variables)


def test_grid_stays_under_the_start_and_reaches_the_minimum(setup):
    variables, _ = setup
    v = max(variables, key=lambda v: v.full)
    full = sensitivity_widths(v, 8)
    assert full[0] == v.full - 8 and full[-1] == v.minimum and full == sorted(set(full), reverse=True)
    assert all(w % 8 == 0 for w in full)
    part = sensitivity_widths(v, 8, below=v.full // 2)
    assert part and max(part) < v.full // 2 and min(part) == v.minimum
    assert sensitivity_widths(v, 8, below=v.minimum) == []


def test_a_sensitive_layer_is_spared_where_gamma_would_cut_it(model, setup):
    """One variable's channels are what the damage watches; by |γ| it is among the first cut."""
    variables, scores = setup
    cost = flops_like(model.cfg)
    target = 0.8 * cost.predict()
    by_gamma = select_widths(cost.predict, variables, scores, target, 8)
    cut = [k for k, w in by_gamma.widths.items() if w < variables[k].full]
    watched = max(cut, key=lambda k: variables[k].full - by_gamma.widths[k])
    member = variables[watched].members[0]
    full = variables[watched].full

    def damage(net: Darknet) -> float:  # 10 per block gone from the watched conv, a little for the rest
        w = widths_of(net)
        rest = sum(v.full - w[v.members[0]] for v in variables)
        return 10.0 * (full - w[member]) / 8 + 0.001 * rest

    curves = sensitivity_curves(model, variables, scores, damage, 8)
    for k, v in enumerate(variables):
        c = curves[k]
        assert c[0] == 0 and len(c) == v.full + 1
        finite = c[: v.full - v.minimum + 1]
        assert all(math.isfinite(x) for x in finite.tolist())
        assert all(b >= a for a, b in zip(finite.tolist(), finite.tolist()[1:]))  # never falls
    assert float(curves[watched][8]) == pytest.approx(10.0 + 0.008, rel=1e-6)
    by_loss = select_widths(cost.predict, variables, scores, target, 8, curves)
    assert by_loss.predicted_ms <= target
    assert by_loss.widths[watched] == full  # spared
    assert by_gamma.widths[watched] < full  # ...where |γ| cut it


def test_path_measures_again_around_each_step(model, setup):
    """A damage whose layers interact: removing from a layer costs more the more the others lost.
    Each step starts from the previous one, measures from there, and a target is met from above."""
    variables, scores = setup
    cost = flops_like(model.cfg)
    calls = []

    def damage(net: Darknet) -> float:
        w = widths_of(net)
        lost = [1 - w[v.members[0]] / v.full for v in variables]
        calls.append(1)
        return sum(lost) ** 2

    path = SensitivityPath(model, cost.predict, variables, scores, damage, 8, step=0.1)
    first = len(calls)
    choice = path.select(0.65 * cost.predict())
    assert choice.predicted_ms <= 0.65 * cost.predict()
    aims = [s[0] for s in path.steps]
    assert len(path.steps) >= 4 and aims == sorted(aims, reverse=True) and len(calls) > first
    for (_, wide, _), (_, narrow, curves) in zip(path.steps, path.steps[1:]):
        assert all(narrow[k] <= wide[k] for k in wide)  # nested: a step only removes
        for k, v in enumerate(variables):  # what the step's model already lost costs nothing
            assert float(curves[k][v.full - narrow[k]]) == 0.0
    assert all(choice.widths[k] <= path.steps[-1][1][k] for k in choice.widths)
    before = len(calls)
    again = path.select(0.75 * cost.predict())  # shallower: served by the steps already measured
    assert len(calls) == before and again.predicted_ms <= 0.75 * cost.predict()


def test_loss_damage_is_the_detection_loss_and_sees_pruning(model, tmp_path):
    data = make_synthetic(tmp_path / "synth", classes=model.num_classes, train=6, val=2, img_size=SIZE, seed=0).data_yaml
    damage = loss_damage(load_dataset(data, "train"), SIZE, images=4, batch_size=3)
    base = damage(model)
    assert math.isfinite(base) and base > 0 and damage(model) == base  # fixed images, eval mode
    cost = flops_like(model.cfg)
    pruned = prune_to_latency(model, 0.5 * cost.predict(), SIZE, 8, "slim", table=_Table(cost), iterations=0, damage=damage).model
    assert damage(pruned) != base
    assert widths_of(pruned) != widths_of(model)


class _Table:
    """The known cost model dressed as a measured table (prune_to_latency's checks read its key)."""

    def __init__(self, cost) -> None:
        from edgeyolo.bench.latency import table_key

        self.predict, self.full_ms = cost.predict, cost.predict()
        self.key = table_key(cost.cfg, SIZE, 8, 1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--rank", "loss"], "--rank loss and --finetune-epochs need --data"),
        (["--finetune-epochs", "3"], "--rank loss and --finetune-epochs need --data"),
        (["--rank", "taylor", "--data", "x.yaml"], "--rank must be loss or gamma"),
    ],
)
def test_cli_refuses(extra, message, capsys):
    code = main(["bench", "latency-prune", "--random-init", "--img-size", str(SIZE), "--targets", "0.8", *extra])
    assert code == 2
    assert message in capsys.readouterr().err

