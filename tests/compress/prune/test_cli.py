"""``edgeyolo prune``: the files it writes, its flags and aliases, and that a failure writes nothing."""
from __future__ import annotations

import json

import pytest
import torch

from edgeyolo.cli.app import main
from edgeyolo.compress.prune import artifacts
from edgeyolo.errors import VerificationError
from edgeyolo.model.cfg import parse_cfg
from edgeyolo.model.checkpoint import load_model
from tests.compress.prune.helpers import self_labelled_synth
from tests.conftest import cfg_path

EVAL_SIZE = 128


def test_writes_a_model_both_formats_agree_on_and_a_report(tmp_path, capsys):
    out = tmp_path / "slim"
    args = ["prune", "slim", "--cfg", "edgeyolo-res", "--random-init", "--out", str(out)]
    assert main(args + ["--global_percent", "0.5", "--layer_keep", "0.05"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(artifacts.FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["slim"]  # no staging folder left behind
    darknet = load_model(out / "model.cfg", out / "model.weights")
    native = load_model(None, out / "model.safetensors")
    assert all(torch.equal(v, native.state_dict()[k]) for k, v in darknet.state_dict().items() if "num_batches" not in k)
    report = json.loads((out / "prune_report.json").read_text())
    assert report["config"]["percent"] == 0.5 and report["config"]["layer_keep"] == 0.05
    channels_before, channels_after = report["totals"]["conv_channels"]
    flops_before, flops_after = report["totals"]["bflops"]
    assert channels_after < channels_before and flops_after < flops_before
    widths = {c.index: c.filters for c in parse_cfg(out / "model.cfg").conv_layers}
    assert all(widths[row["new_layer"]] == row["filters_after"] for row in report["layers"])
    assert any(row["status"].startswith("protected: ") for row in report["layers"])
    assert "| layer | new | filters |" in (out / "prune_report.md").read_text()
    assert (out / "prune_channels.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    printed = capsys.readouterr().out
    assert printed.startswith("prune slim: conv channels") and "wrote" in printed
    checks = report["checks"]
    assert "bit-exact" in checks["read_back"] and checks["output_deviation"]["images"] == 4
    assert 0.0 < checks["output_deviation"]["max_rel"] and "raw outputs vs the unpruned model on 4 images" in printed


def test_the_deviation_check_sees_the_border_that_zeroed_channels_leave(tiny_weights):
    """γ = 0 alone (β kept) on real yolov3-tiny weights: pruning those channels moves the outputs
    where zero padding read the removed constant, most at the border (measured on the photos: 0.07–0.20
    of the output maximum there, 0.006–0.036 four cells in); with β = 0 too, nowhere."""
    from edgeyolo.compress.prune import PruneConfig, prune
    from edgeyolo.compress.prune.checks import output_deviation
    from edgeyolo.compress.prune.prunable import prunable_bn
    from edgeyolo.contract import Contract
    from edgeyolo.model.init import calibration_batch, synthetic_images

    model = load_model(cfg_path("yolov3-tiny"), tiny_weights).eval()
    batch = calibration_batch(Contract(416, 416), synthetic_images(2, 416, 416, seed=4))
    gen = torch.Generator().manual_seed(0)
    zeroed = {}
    with torch.no_grad():
        for i in prunable_bn(model.cfg, 0).layers:
            zeroed[i] = torch.rand(model.module_list[i].bn.num_features, generator=gen) < 0.3
            model.module_list[i].bn.weight[zeroed[i]] = 0.0
    result = prune(model, PruneConfig("normal", percent="sparse"))
    kept_beta = output_deviation(model, result.model, batch)
    assert 1e-3 < kept_beta.interior_max_rel < kept_beta.max_rel  # strongest at the border, not only there
    with torch.no_grad():
        for i, mask in zeroed.items():
            model.module_list[i].bn.bias[mask] = 0.0
    exact = output_deviation(model, prune(model, PruneConfig("normal", percent="sparse")).model, batch)
    assert exact.max_rel < 1e-5


def test_too_high_percent_fails_before_writing(tmp_path, capsys):
    out = tmp_path / "normal"
    assert main(["prune", "normal", "--cfg", "edgeyolo-res", "--random-init", "--out", str(out), "--percent", "0.99"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: prune normal: --percent 0.99 would leave layer") and "largest safe percent is" in err
    assert len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_layer_alias_auto_percent_and_dry_run(tmp_path, capsys):
    args = ["prune", "layer-channel", "--cfg", "edgeyolo-res", "--random-init", "--shortcut", "1", "--percent", "auto"]
    assert main(args + ["--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("prune layer-channel: layers 46 → 43") and "dry run, nothing written" in printed
    assert main(["prune", "layer", "--cfg", str(cfg_path("yolov4-tiny")), "--random-init", "--dry-run"]) == 2
    assert "no removable residual block" in capsys.readouterr().err
    assert main(["prune", "regular", "--cfg", "edgeyolo-res", "--random-init"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err


def test_a_failed_check_leaves_the_folder_as_it_was(tmp_path, monkeypatch, capsys):
    out = tmp_path / "model"
    out.mkdir()
    (out / "model.cfg").write_text("previous run")

    def broken(result, folder):
        raise VerificationError(f"{folder / 'model.weights'}: simulated read-back mismatch")

    monkeypatch.setattr(artifacts, "_verify_darknet", broken)
    assert main(["prune", "normal", "--cfg", "edgeyolo-res", "--random-init", "--out", str(out), "--percent", "0.2"]) == 6
    assert "simulated read-back mismatch" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["model.cfg"] and (out / "model.cfg").read_text() == "previous run"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


@pytest.fixture(scope="module")
def self_labelled(tmp_path_factory):
    return self_labelled_synth(tmp_path_factory.mktemp("synth"), EVAL_SIZE)


def test_eval_scores_the_model_before_and_after(self_labelled, tmp_path, capsys):
    args = ["prune", "slim", "--cfg", "edgeyolo-res", "--random-init", "--img-size", str(EVAL_SIZE)]
    args += ["--data", str(self_labelled), "--eval", "--backend", "torch", "--threads", "1"]
    assert main(args + ["--percent", "0", "--out", str(tmp_path / "same")]) == 0
    same = json.loads((tmp_path / "same" / "prune_report.json").read_text())["accuracy"]
    assert same["images"] == 6 and same["img_size"] == EVAL_SIZE and same["backend"] == "torch"
    assert same["map50"][0] > 0.9 and same["map50"][0] == same["map50"][1]
    assert same["map50_95"][0] == same["map50_95"][1]
    assert "mAP@0.5 " in capsys.readouterr().out
    assert main(args + ["--percent", "0.5", "--dry-run"]) == 0
    printed = capsys.readouterr().out
    before, after = (float(v) for v in printed.split("mAP@0.5 ")[1].split(",")[0].split(" → "))
    assert before == pytest.approx(same["map50"][0], abs=5e-5) and after < before
    report = (tmp_path / "same" / "prune_report.md").read_text()
    assert "| mAP@0.5 |" in report and "| mAP@0.5:0.95 |" in report


def test_eval_and_data_go_together(capsys):
    base = ["prune", "slim", "--cfg", "edgeyolo-res", "--random-init", "--dry-run"]
    assert main(base + ["--eval"]) == 2
    assert "--eval needs --data" in capsys.readouterr().err
    assert main(base + ["--data", "data.yaml"]) == 2
    assert "--data is only read by --eval" in capsys.readouterr().err
