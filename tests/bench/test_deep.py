"""Deep pruning in steps: the size model the cut is aimed with, the walk, and the bench end to end."""
from __future__ import annotations

import pytest

from edgeyolo.bench.deep import deep_prune, walk
from edgeyolo.bench.prune import FineTune
from edgeyolo.cli.app import main
from edgeyolo.compress.prune import apply_plan
from edgeyolo.compress.prune.budget import SizeModel, conv_widths, variable_scores, width_plan, width_variables
from edgeyolo.data.formats import load_dataset
from edgeyolo.data.synth import make_synthetic
from edgeyolo.errors import UsageError
from edgeyolo.model.cfg import total_bflops
from tests.bench.conftest import SIZE

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("mode", ["normal", "slim"])
def test_size_model_is_exact_for_any_widths(model, mode):
    variables, _ = width_variables(model.cfg, mode, 8)
    scores = variable_scores(model, variables)
    params, flops = SizeModel.of(model.cfg, 160, "params"), SizeModel.of(model.cfg, 160, "bflops")
    assert params.predict() == model.parameter_count()
    assert flops.predict() == pytest.approx(total_bflops(model.cfg, 160), rel=1e-9)
    for pick in (lambda v: v.minimum, lambda v: max(v.minimum, v.full // 2 // 8 * 8), lambda v: v.full - 8):
        chosen = {k: pick(v) for k, v in enumerate(variables)}
        pruned = apply_plan(model, width_plan(variables, scores, chosen)).model
        widths = conv_widths(variables, chosen)
        assert params.predict(widths) == pruned.parameter_count()
        conv = total_bflops(pruned.cfg, 160, conv_only=True) - total_bflops(model.cfg, 160, conv_only=True)
        assert flops.predict(widths) - flops.predict() == pytest.approx(conv, rel=1e-9)


def test_walk_is_geometric_and_checked(model):
    assert walk(0.2, 3) == pytest.approx([0.2 ** (1 / 3), 0.2 ** (2 / 3), 0.2])
    for keep, steps in ((1.0, 2), (0.0, 2), (0.5, 0)):
        with pytest.raises(UsageError):
            walk(keep, steps)
    with pytest.raises(UsageError, match="size must be one of"):
        SizeModel.of(model.cfg, 64, "macs")


@pytest.fixture(scope="module")
def synth(tmp_path_factory, model):
    root = tmp_path_factory.mktemp("deep")
    return make_synthetic(root / "synth", classes=model.num_classes, train=8, val=4, img_size=SIZE, seed=0).data_yaml


def test_deep_prune_meets_each_goal_and_trains_the_control_as_long(model, synth):
    data = str(synth)
    final, rows = deep_prune(
        model, load_dataset(data, "train"), load_dataset(data, "val"), FineTune(data, batch_size=4, workers=0), SIZE,
        keep=0.4, epochs=(1, 0), damage_images=4, latency_runs=2, threads=1,
    )
    names = [r.name for r in rows]
    assert names == ["unpruned", "step 1", "step 2", "dense control"]
    base = rows[0].params
    for r, goal in zip(rows[1:3], walk(0.4, 2)):
        assert r.goal == pytest.approx(goal)
        assert r.params <= goal * base  # the size model is exact: the goal is met, not approached
        assert r.params > 0.5 * goal * base  # ...and not overshot by a mile
        assert r.map50_cut is not None and r.infer_ms is not None
    assert rows[1].epochs == 1 and rows[2].epochs == 1  # epochs so far
    assert rows[3].epochs == 1 and rows[3].params == base and rows[3].map50_cut is None
    assert final.parameter_count() == rows[2].params


def test_cli_refuses_bad_steps(tmp_path, capsys):
    code = main(["bench", "prune-deep", "--weights", str(tmp_path / "none.safetensors"), "--data", "d.yaml", "--epochs", "3,x"])
    assert code == 2
    assert "--epochs takes comma-separated whole numbers" in capsys.readouterr().err
