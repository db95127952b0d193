"""``edgeyolo build --target host --device NAME`` end to end on the loopback board (a real sshd)."""
from __future__ import annotations

import json

from edgeyolo.cli.app import main
from tests.targets.conftest import with_


def _inventory(tmp_path, device, name: str):
    """A devices.yaml naming the loopback board ``name`` (JSON is YAML)."""
    fields = {k: getattr(device, k) for k in ("target", "host", "port", "user", "key_file", "known_hosts", "workdir", "python")}
    inventory = tmp_path / "devices.yaml"
    inventory.write_text(json.dumps({"devices": {name: fields}}))
    return inventory


def test_build_for_host_deploys_benchmarks_and_scores_on_the_board(device, tmp_path, capsys) -> None:
    from edgeyolo.data.synth import make_synthetic

    data = make_synthetic(tmp_path / "synth", classes=12, train=16, val=6, img_size=64, seed=0).data_yaml
    inventory = _inventory(tmp_path, with_(device, target="host"), "loop")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("img_size: 64\ntrain_epochs: 1\nprune_method: regular\npercent: auto\nworkers: 0\nbench_duration: 0.5\n")
    out = tmp_path / "build"
    argv = ["build", "--target", "host", "--cfg", "edgeyolo-res", "--data", str(data), "--recipe", str(recipe),
            "--device", "loop", "--inventory", str(inventory), "--out", str(out), "--json"]
    assert main(argv) == 0
    manifest = json.loads(capsys.readouterr().out)
    stages = {s["name"]: s for s in manifest["stages"]}
    assert [s["name"] for s in manifest["stages"]][:3] == ["source", "adapt", "train"]  # the start is scored too
    assert stages["train"]["status"] == "done" and stages["prune"]["status"] == "done"
    deploy = stages["deploy"]
    assert deploy["status"] == "done", deploy
    m = deploy["metrics"]
    assert m["fps_1_streams"] > 0 and m["latency_p50_ms_1_streams"] > 0
    # the board's detections, scored on the host, equal the host's own evaluation of the same ONNX
    assert stages["export"]["metrics"]["onnx_sha256"]
    assert abs(m["board_map50"] - stages["prune"]["metrics"]["map50"]) <= 1e-6
    assert (out / "report.md").read_text().count("| deploy | done |") == 1

    # a second build re-measures on the board but reuses every stage before it
    assert main(argv) == 0
    again = {s["name"]: s["status"] for s in json.loads(capsys.readouterr().out)["stages"]}
    assert again["train"] == again["prune"] == again["export"] == "cached" and again["deploy"] == "done"


def test_build_refuses_a_device_of_another_target(device, tmp_path, capsys) -> None:
    inventory = _inventory(tmp_path, with_(device, target="jetson-nano"), "nano")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("img_size: 64\nprune_method: none\n")
    code = main(["build", "--target", "host", "--cfg", "edgeyolo-res", "--recipe", str(recipe), "--device", "nano",
                 "--inventory", str(inventory), "--out", str(tmp_path / "b")])
    assert code != 0
    assert "jetson-nano board but the build is for --target host" in capsys.readouterr().err
