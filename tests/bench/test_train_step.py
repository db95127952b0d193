"""``edgeyolo bench train-step``: trainer and bare step timed in interleaved rounds."""
from __future__ import annotations

import pytest

from edgeyolo.bench.train_step import bench_train_step
from edgeyolo.cli.app import main

pytestmark = pytest.mark.usefixtures("one_thread")


def test_rounds_interleave_and_the_ratio_is_the_median_of_the_rounds():
    r = bench_train_step("edgeyolo-res", img_size=64, batch_size=4, images=8, workers=0, rounds=3)
    assert len(r.rounds) == 3 and all(b > 0 and t > 0 for b, t in r.rounds)
    assert r.bare_img_per_s == sorted(b for b, _ in r.rounds)[1]
    assert r.trainer_img_per_s == sorted(t for _, t in r.rounds)[1]
    assert r.ratio == pytest.approx(sorted(b / t for b, t in r.rounds)[1])  # paired per round, not of the medians
    assert len(r.loss_rounds) == 3 and all(v > 0 for v in r.loss_rounds)
    assert r.loss_img_per_s == sorted(r.loss_rounds)[1]
    assert r.loss_share == pytest.approx(sorted(b / lossy - 1.0 for (b, _), lossy in zip(r.rounds, r.loss_rounds))[1])
    assert len(r.wait_rounds) == 3 and all(0.0 < w < 1.0 for w in r.wait_rounds)
    assert 0.0 < r.wait_share < r.ratio
    assert len(r.fault_rounds) == 3 and all(t >= 0 and b >= 0 for t, b in r.fault_rounds)
    assert r.faults_per_step == (sorted(t for t, _ in r.fault_rounds)[1], sorted(b for _, b in r.fault_rounds)[1])


def test_cli_prints_each_round_and_the_median(capsys):
    argv = ["bench", "train-step", "--img-size", "64", "--batch-size", "4", "--images", "8", "--workers", "0", "--rounds", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "median" in out and out.count("x") >= 3 and "the loss" in out and "data wait" in out
    assert "faults/step" in out
    assert main([*argv[:-1], "0"]) == 2
