"""The CLI: targets list/show, check (exit codes), adapt (files), prune --target."""
from __future__ import annotations

import json

from edgeyolo.cli.app import main
from tests.conftest import cfg_path


def test_targets_list_and_show(capsys):
    assert main(["targets", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("jetson-nano", "jetson-tx2", "jetson-xavier-nx", "jetson-orin-nano", "zcu104", "ultra96", "host"):
        assert name in out
    assert "pynq-z2" in out and "unsupported" in out
    assert main(["targets", "list", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "Zynq-7000" in data["unsupported"]["pynq-z2"]
    assert main(["targets", "show", "zcu104", "--json"]) == 0
    zcu = json.loads(capsys.readouterr().out)
    assert [i["fingerprint"] for i in zcu["dpu_images"]] == ["0x1000020F6014407", "0x101000016010407"]
    assert zcu["rules"]["leaky_slope"] == 0.1015625 and zcu["rules"]["equal_concat_scales"] is True
    assert main(["targets", "show", "jetson-tx2"]) == 0
    out = capsys.readouterr().out
    assert "8.2.1 (JetPack 4.6)" in out and "no int8" in out and "board python   3.6" in out
    assert main(["targets", "show", "pynq-z2"]) == 7
    assert "Zynq-7000" in capsys.readouterr().err
    assert main(["targets", "show", "jetson-nanoo"]) == 2
    assert "known: host, jetson-nano" in capsys.readouterr().err


def test_check_exit_codes(capsys):
    tiny = str(cfg_path("yolov4-tiny"))
    assert main(["check", "--target", "jetson-nano", "--cfg", tiny]) == 0
    assert "nothing to report" in capsys.readouterr().out
    assert main(["check", "--target", "zcu104", "--cfg", tiny]) == 1
    captured = capsys.readouterr()
    assert "route-groups" in captured.out and "layer 3 line 60" in captured.out
    assert "3 unsupported" in captured.err
    assert main(["check", "--target", "zcu104", "--cfg", tiny, "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["unsupported"] == 3 and {f["rule"] for f in report["findings"]} >= {"route-groups", "leaky-slope"}
    assert main(["check", "--target", "zcu104"]) == 2
    assert "either --cfg C or --onnx FILE" in capsys.readouterr().err


def test_adapt_then_check_passes(tmp_path, capsys):
    tiny = str(cfg_path("yolov4-tiny"))
    out = tmp_path / "dpu"
    assert main(["adapt", "--target", "zcu104", "--cfg", tiny, "--random-init", "--img-size", "128", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "route-split-to-conv x3" in printed and "output delta after leaky_slope" in printed
    assert sorted(p.name for p in out.iterdir()) == ["adapt.json", "model.cfg", "model.weights"]
    report = json.loads((out / "adapt.json").read_text())
    assert report["source"]["weights"] == "random-init:seed=0" and report["remaining"] == []
    assert main(["check", "--target", "zcu104", "--cfg", str(out / "model.cfg")]) == 0
    assert main(["check", "--target", "zcu104", "--cfg", str(out / "model.cfg"), "--strict"]) == 1  # leaky 0.1 remains
    capsys.readouterr()
    cfg_only = tmp_path / "cfg-only"
    assert main(["adapt", "--target", "zcu104", "--cfg", tiny, "--out", str(cfg_only)]) == 0
    assert sorted(p.name for p in cfg_only.iterdir()) == ["adapt.json", "model.cfg"]


def test_prune_target_sets_the_default_multiple(tmp_path, capsys):
    base = ["prune", "regular", "--cfg", "edgeyolo-res", "--random-init", "--percent", "0.3"]
    assert main(base + ["--target", "zcu104", "--out", str(tmp_path / "t")]) == 0
    assert json.loads((tmp_path / "t" / "prune_report.json").read_text())["config"]["multiple"] == 16
    assert main(base + ["--target", "zcu104", "--multiple", "4", "--out", str(tmp_path / "m")]) == 0
    assert json.loads((tmp_path / "m" / "prune_report.json").read_text())["config"]["multiple"] == 4
    capsys.readouterr()
    assert main(base + ["--target", "zcu105", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "unknown target 'zcu105'" in err and "zcu104" in err
