"""bench prune-speed and prune-latency return sane rows on a small cfg (timings are not asserted)."""
from __future__ import annotations

import json

import pytest

from edgeyolo.bench import prune as bench_prune
from edgeyolo.bench.prune import match_regular, prune_latency, prune_speed
from edgeyolo.cli.app import main
from edgeyolo.cli.common import load_cli_model
from edgeyolo.compress.prune import METHODS, PruneConfig, prune
from edgeyolo.model.cfg import total_bflops
from tests.bench.conftest import SIZE  # the size the shared model fixture is built at
from tests.conftest import cfg_path

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def latency_rows(model):
    return prune_latency(model, img_size=SIZE, percent=0.5, multiple=8, threads=1, runs=2, warmup=1)


def test_speed_rows_cover_every_method_and_name_refusals(model):
    rows = prune_speed(model, shortcuts=1)
    assert [r.method for r in rows] == METHODS.names()
    for r in rows:
        assert r.error is None and 0 < r.seconds < 60
        assert r.conv_channels[1] < r.conv_channels[0] and r.bflops[1] < r.bflops[0]
    assert {r.method: r.stages for r in rows}["layer-channel"] == 2
    tiny = load_cli_model(str(cfg_path("yolov4-tiny")), None, random_init=True, img_size=SIZE)
    refused = {r.method: r for r in prune_speed(tiny, methods=["normal", "layer"])}
    assert refused["normal"].error is None
    assert refused["layer"].seconds is None and "no removable residual block" in refused["layer"].error


def test_regular_is_matched_to_normal_flops(model):
    target = total_bflops(prune(model, PruneConfig("normal", percent=0.5)).model.cfg, SIZE, conv_only=True)
    regular = match_regular(model, target, SIZE, 8)
    assert abs(total_bflops(regular.model.cfg, SIZE, conv_only=True) - target) / target <= bench_prune.MATCH_TOLERANCE


def test_latency_rows(latency_rows):
    unpruned, normal, regular = latency_rows
    assert [r.name for r in latency_rows] == ["unpruned", "normal", "regular --multiple 8"]
    assert unpruned.percent is None and unpruned.flops_ratio == 1.0 and unpruned.latency_ratio == 1.0
    assert unpruned.exponent is None
    assert normal.percent == 0.5 and 0 < normal.flops_ratio < 0.8
    assert regular.flops_ratio == pytest.approx(normal.flops_ratio, rel=bench_prune.MATCH_TOLERANCE)
    assert regular.misaligned == unpruned.misaligned < normal.misaligned  # regular keeps every width a multiple
    for r in latency_rows:
        assert 0 < r.infer.median_ms <= r.infer.p90_ms and r.latency_ratio > 0


def test_cli_tables(latency_rows, monkeypatch, capsys):
    assert main(["bench", "prune-speed", "--cfg", "edgeyolo-mobile", "--shortcuts", "1", "--method", "slim"]) == 0
    printed = capsys.readouterr().out
    assert "prune speed: edgeyolo-mobile" in printed and "slim" in printed
    assert main(["bench", "prune-speed", "--cfg", "edgeyolo-mobile", "--method", "normal", "--percent", "0.3", "--cli", "--json"]) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert row["error"] is None and row["cli_seconds"] > row["seconds"] > 0  # the command also starts, loads and writes
    monkeypatch.setattr(bench_prune, "prune_latency", lambda *args, **kwargs: latency_rows)
    assert main(["bench", "prune-latency", "--img-size", str(SIZE), "--runs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "regular --multiple 8" in printed and "speed-up" in printed


def test_accuracy_rows_score_before_and_after_each_method(tmp_path):
    from edgeyolo.bench.prune import FineTune, prune_accuracy
    from edgeyolo.data.formats import load_dataset
    from tests.compress.prune.helpers import self_labelled_synth

    size = 128
    data = load_dataset(self_labelled_synth(tmp_path / "synth", size), "val")
    model = load_cli_model("edgeyolo-res", None, random_init=True, img_size=size)
    rows = prune_accuracy(model, data, size, ["normal", "slim", "layer"], percent=0.3, backend="torch", threads=1)
    assert [r.method for r in rows] == ["normal", "slim", "layer"]
    for r in rows:
        assert r.error is None, r.error
        assert r.map50[0] > 0.9  # the self-labelled set: the unpruned model is near perfect
        assert 0.0 <= r.map50[1] <= r.map50[0] + 1e-9 and r.params[1] < r.params[0] and r.bflops[1] < r.bflops[0]
    assert min(r.map50[1] for r in rows) < rows[0].map50[0]  # pruning a random model costs accuracy
    assert all(r.map50_finetuned is None and r.infer_ms is None for r in rows)
    timed = prune_accuracy(model, data, size, ["normal", "layer"], percent=0.5, backend="torch", threads=1, latency_runs=2)
    assert all(r.infer_ms is not None and min(r.infer_ms) > 0 for r in timed)
    assert timed[0].infer_ms[0] == timed[1].infer_ms[0]  # one unpruned reference for every row
    tune = FineTune(str(data.source), epochs=1, batch_size=2, workers=0)
    (tuned,) = prune_accuracy(model, data, size, ["slim"], percent=0.3, backend="torch", threads=1, finetune=tune)
    assert 0.0 <= tuned.map50_finetuned <= 1.0 and tuned.finetune_seconds > 0
