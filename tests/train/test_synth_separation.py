"""The synthetic set separates good models from bad (slow: trains for several minutes)."""
import csv

import pytest

from edgeyolo.data.synth import make_synthetic
from edgeyolo.train.trainer import TrainConfig, Trainer
from tests.conftest import cfg_path


@pytest.mark.slow
def test_trained_model_scores_far_above_one_epoch(tmp_path):
    data = make_synthetic(tmp_path / "synth", classes=12, train=1000, val=100, img_size=256, seed=11, workers=2).data_yaml
    config = TrainConfig(
        data=str(data), cfg=str(cfg_path("edgeyolo-res")), img_size=160, batch_size=16, epochs=12,
        workers=2, out=str(tmp_path), name="run", seed=0,
    )
    Trainer(config).fit()
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    first, last = float(rows[0]["map50"]), float(rows[-1]["map50"])
    assert last > max(5 * first, 0.05), (first, last)
    assert float(rows[-1]["map50_95"]) < 0.9  # not saturated: room to measure compression losses
