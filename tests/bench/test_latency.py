"""Latency-targeted pruning: the width selection against a known cost model, the measured table, its
cache, and the pruned model (timings are measured but never asserted)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from edgeyolo.bench import latency as bench_latency
from edgeyolo.bench.latency import LatencyTable, latency_table, next_aim, prune_to_latency, table_key
from edgeyolo.cli.app import main
from edgeyolo.cli.common import load_cli_model
from edgeyolo.compress.prune import apply_plan
from edgeyolo.compress.prune.budget import (
    ConvCost,
    LatencyModel,
    conv_widths,
    fit_cost,
    select_widths,
    variable_scores,
    width_plan,
    width_variables,
)
from edgeyolo.errors import UsageError
from tests.bench.conftest import SIZE  # the size the shared model fixture is built at

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def table(model):
    return latency_table(model, SIZE, multiple=8, threads=1, runs=2, samples=3, warmup=1)


def flops_like(cfg) -> LatencyModel:
    """A known cost model: every conv costs its in × out width product (plus a little)."""
    from edgeyolo.compress.prune.budget import input_expressions

    inputs = input_expressions(cfg)
    full = {c.index: c.filters for c in cfg.conv_layers}
    costs = {}
    for i in full:
        ci = sum(v if k < 0 else v * full[k] for k, v in inputs[i].items())
        costs[i] = ConvCost(int(ci), full[i], (0.01, 0.0, 0.0, ci * full[i] / 1e4))
    return LatencyModel(cfg, costs, 0.5, 1.0)


@pytest.mark.parametrize("mode", ["normal", "slim"])
def test_widths_are_multiples_and_groups_share_one(model, mode):
    cost = flops_like(model.cfg)
    variables, _ = width_variables(model.cfg, mode, 8)
    scores = variable_scores(model, variables)
    choice = select_widths(cost.predict, variables, scores, 0.6 * cost.predict(), 8)
    assert choice.predicted_ms <= 0.6 * cost.predict()
    widths = conv_widths(variables, choice.widths)
    assert all(w % 8 == 0 and w >= 8 for w in widths.values())
    assert any(w < model.cfg.layers[i].filters for i, w in widths.items())
    if mode == "slim":
        groups = [v.members for v in variables if len(v.members) > 1]
        assert groups  # edgeyolo-res has residual groups
        for g in groups:
            assert len({widths[j] for j in g}) == 1
        plan = width_plan(variables, scores, choice.widths)
        for g in groups:
            if g[0] in plan.masks:
                assert all(torch.equal(plan.masks[g[0]], plan.masks[j]) for j in g)
    else:
        assert all(len(v.members) == 1 for v in variables)


def test_prediction_is_monotone_in_width(table, model):
    variables = table.variables
    for k, v in enumerate(variables):
        steps = range(v.minimum, v.full + 1, 8)
        preds = [table.predict(conv_widths(variables, {**{j: u.full for j, u in enumerate(variables)}, k: w})) for w in steps]
        assert all(a <= b + 1e-12 for a, b in zip(preds, preds[1:])), v.name
    for c in table.costs.values():
        assert all(x >= 0 for x in c.coef)


def test_fit_recovers_a_known_cost():
    truth = ConvCost(64, 32, (0.1, 0.2, 0.0, 1.5))
    samples = [(ci, co, truth.ms(ci, co)) for ci in (16, 32, 64) for co in (8, 16, 32)]
    fitted = fit_cost(samples, 64, 32)
    assert fitted.coef == pytest.approx(truth.coef, abs=1e-9)
    noisy = [(ci, co, ms - 0.5) for ci, co, ms in samples]  # would need a negative constant: clipped at 0
    assert min(fit_cost(noisy, 64, 32).coef) >= 0


def test_low_gamma_channels_go_first(model):
    """Layer 20 gets 24 dead channels (γ = 0) of 256, every other γ is 1: the cheapest cut is exactly
    those 24 channels, and they go before anything else."""
    net = load_cli_model("edgeyolo-res", None, random_init=True, img_size=SIZE)
    dead = torch.arange(0, 256, 256 // 24)[:24]
    with torch.no_grad():
        for i, block in net.conv_blocks():
            if block.bn is not None:
                block.bn.weight.fill_(1.0)
        net.module_list[20].bn.weight[dead] = 0.0
    cost = flops_like(net.cfg)
    variables, _ = width_variables(net.cfg, "normal", 8)
    scores = variable_scores(net, variables)
    k20 = next(k for k, v in enumerate(variables) if v.members == (20,))
    after = cost.predict(conv_widths(variables, {**{k: v.full for k, v in enumerate(variables)}, k20: 256 - 24}))
    choice = select_widths(cost.predict, variables, scores, after + 1e-9, 8)
    assert choice.widths[k20] == 256 - 24 and choice.proxy == pytest.approx(0.0)
    assert all(w == variables[k].full for k, w in choice.widths.items() if k != k20)
    plan = width_plan(variables, scores, choice.widths)
    assert set(plan.masks) == {20} and not plan.masks[20][dead].any() and int(plan.masks[20].sum()) == 232


def test_impossible_target_names_the_smallest_latency(model):
    cost = flops_like(model.cfg)
    variables, _ = width_variables(model.cfg, "normal", 8)
    lowest = cost.predict(conv_widths(variables, {k: v.minimum for k, v in enumerate(variables)}))
    with pytest.raises(UsageError, match=f"smallest reachable latency is {lowest:.3g} ms"):
        select_widths(cost.predict, variables, variable_scores(model, variables), 0.5 * lowest, 8)


def test_table_round_trips_and_is_invalidated(model, table, tmp_path, monkeypatch):
    assert table.samples and table.full_ms > 0 and table.seconds > 0
    assert table.costs.keys() == {c.index for c in model.cfg.conv_layers}
    path = table.save(tmp_path / "t.json")
    back = LatencyTable.load(path)
    assert back.key == table.key and back.costs == table.costs and back.samples == table.samples
    assert back.predict({20: 128}) == pytest.approx(table.predict({20: 128}))

    key = table_key(model.cfg, SIZE, 8, 1)
    cached = dataclasses.replace(table, key=key, offset=123.0)
    cached.save(bench_latency.cache_path(tmp_path, key))
    assert latency_table(model, SIZE, 8, threads=1, cache_dir=tmp_path).offset == 123.0  # served from the cache
    monkeypatch.setattr(bench_latency, "_cpu_model", lambda: "another cpu")
    fresh = latency_table(model, SIZE, 8, threads=1, runs=1, samples=2, warmup=0, cache_dir=tmp_path)
    assert fresh.key.cpu == "another cpu" and fresh.offset != 123.0  # key changed: measured again
    assert len(list(tmp_path.glob("latency-*.json"))) == 2


def test_result_is_plain_surgery_of_its_masks(model, table):
    target = 0.75 * table.full_ms
    result = prune_to_latency(model, target, SIZE, table=table, threads=1, iterations=1, runs=2)
    assert result.predicted_ms <= target + 1e-9 and result.measured_ms > 0 and result.unpruned_ms > 0
    assert result.error is not None and len(result.attempts) == 1
    assert all(w % 8 == 0 for w in result.widths.values()) and result.widths
    compact = apply_plan(model, result.plan).model
    assert compact.cfg == result.model.cfg
    mine, plain = result.model.state_dict(), compact.state_dict()
    assert mine.keys() == plain.keys() and all(torch.equal(mine[k], plain[k]) for k in mine)
    for i, w in result.widths.items():
        assert result.model.cfg.layers[i].filters == w
    with pytest.raises(UsageError, match="smallest reachable latency"):
        prune_to_latency(model, 0.01 * table.full_ms, SIZE, table=table, iterations=0)
    with pytest.raises(UsageError, match="img_size"):
        prune_to_latency(model, target, 96, table=table, iterations=0)


def test_next_aim_rescales_until_bracketed_then_interpolates():
    # no bracket yet: rescale by target / measured, damped to x1.25 per round
    assert next_aim([(10.0, 12.0)], 10.0, 1.0, 20.0) == pytest.approx(10.0 * 10 / 12)
    assert next_aim([(10.0, 30.0)], 10.0, 1.0, 20.0) == pytest.approx(10.0 / 1.25)
    # bracketed: linear between the closest aims below and above
    assert next_aim([(10.0, 12.0), (8.0, 9.0), (6.0, 7.0)], 10.0, 1.0, 20.0) == pytest.approx(8.0 + (10 - 9) * 2 / 3)
    # clamped to what the table can reach
    assert next_aim([(2.0, 4.0)], 1.0, 1.8, 20.0) == 1.8


def test_correction_loop_reaches_a_biased_noisy_host(model, table):
    """The host runs pruned models 30 % slower than the table predicts, with ±2 % noise that
    alternates: the loop re-aims until a model's two measurements agree with the target."""
    known = flops_like(model.cfg)  # a fixed cost model, so the test does not hang on this machine's timings
    table = dataclasses.replace(table, costs=dict(known.costs), offset=known.offset, scale=known.scale)
    target = 0.75 * table.full_ms
    noise = iter([1.02, 0.98] * 10)
    timed: list[tuple] = []

    def measure(pruned):
        widths = {c.index: c.filters for c in pruned.cfg.conv_layers}
        timed.append(tuple(sorted(widths.items())))
        return table.predict(widths) * 1.3 * next(noise), table.full_ms

    result = prune_to_latency(model, target, SIZE, table=table, measure=measure)
    chosen = tuple(sorted({c.index: c.filters for c in result.model.cfg.conv_layers}.items()))
    assert timed.count(chosen) >= 2  # never stopped on one lucky timing
    assert len(result.attempts) >= 3 and abs(result.error) <= 0.06
    assert result.predicted_ms < 0.85 * target  # it aimed the table well below the target (1 / 1.3 ≈ 0.77)
    # the first round alone was far off: the correction did the work
    first = result.attempts[0].on_table_clock(table)
    assert abs(first - target) / target > 0.2


def test_cli_table(model, table, monkeypatch, capsys):
    monkeypatch.setattr(bench_latency, "latency_table", lambda *a, **k: table)
    code = main(
        ["bench", "latency-prune", "--random-init", "--img-size", str(SIZE), "--targets", "0.8,0.01", "--runs", "2", "--threads", "1", "--match-rounds", "1"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "latency-targeted pruning" in printed and "uniform" in printed and "regular" in printed
    assert "target 0.01x" in printed and "smallest reachable latency" in printed
