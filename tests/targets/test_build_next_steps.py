"""The commands a build report gives for a real board, run as written against the loopback board posing
as a Jetson Nano (a stand-in trtexec builds the "engine"; TensorRT itself cannot run here).

The report's ``devices.yaml`` entry is taken from the report and only its placeholders are filled in
with the loopback board's address, key, workdir and python (plus ``trtexec:`` for the stand-in). The
``edgeyolo`` command lines are run verbatim. The agent's ``app`` line is run in the board's workdir as
written except for two things a test machine lacks: ``python3`` is the board python of the inventory,
and the camera index ``0`` is a video file.
"""
from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from edgeyolo.cli.app import main
from edgeyolo.pipeline import Build, BuildRequest, Recipe

from .test_agent_app import synthetic_video
from .test_engine_build import FAKE, FakeTrtexec


def _blocks(report: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", report, re.DOTALL)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from edgeyolo.data.synth import make_synthetic

    root = tmp_path_factory.mktemp("next-steps")
    data = make_synthetic(root / "synth", classes=12, train=8, val=4, img_size=64, seed=0).data_yaml
    recipe = Recipe(img_size=64, prune_method="regular", percent=0.3, workers=0, calib_images=8)
    manifest = Build(BuildRequest(target="jetson-nano", out=root / "build", cfg="edgeyolo-res", data=str(data), recipe=recipe)).run()
    return manifest, (root / "build" / "report.md").read_text()


def test_the_report_gives_an_inventory_entry_and_commands_for_this_build(built):
    manifest, report = built
    (entry,) = yaml.safe_load(_blocks(report, "yaml")[0])["devices"].values()
    assert entry["target"] == "jetson-nano"
    commands = _blocks(report, "bash")[0].strip().splitlines()
    assert [c.split()[1] for c in commands] == ["doctor", "deploy", "bench"]
    assert manifest["artifact"] in commands[1] and commands[1].endswith("--engine")


def test_the_reports_commands_run_on_the_loopback_board(built, device, tmp_path, monkeypatch, capsys):
    manifest, report = built
    devices = yaml.safe_load(_blocks(report, "yaml")[0])
    (name,) = devices["devices"]
    entry = devices["devices"][name]
    entry.update(host=device.host, port=device.port, user=device.user, key_file=device.key_file,
                 known_hosts=device.known_hosts, workdir=device.workdir, python=device.python, trtexec=FAKE)
    inventory = tmp_path / "devices.yaml"
    inventory.write_text(yaml.safe_dump(devices))
    monkeypatch.setenv("EDGEYOLO_DEVICES", str(inventory))
    fake = FakeTrtexec(Path(device.workdir))

    doctor, deploy, bench = _blocks(report, "bash")[0].strip().splitlines()
    assert main(shlex.split(doctor)[1:]) == 1  # it runs, and gates: this board has no TensorRT
    assert "tensorrt" in capsys.readouterr().out.lower()

    assert main(shlex.split(deploy)[1:]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert fake.runs == 1 and "--fp16" in fake.argv(1)  # the engine built on the board with the profile's line
    onnx_name = Path(manifest["artifact"]).name
    assert (Path(device.workdir) / "models" / onnx_name).is_file() and "engine" in out.lower()

    # bench on a Jetson times the engine with TensorRT, which this board lacks: it must get that far and say so
    code = main(shlex.split(bench)[1:])
    err = capsys.readouterr().err
    assert code != 0 and "tensorrt" in err.lower() and "Traceback" not in err
    assert fake.runs == 1  # the engine deploy built was reused, not rebuilt

    (app,) = [line for line in _blocks(report, "bash")[1].strip().splitlines()]
    video = synthetic_video(Path(device.workdir) / "clip.avi", frames=6)
    argv = shlex.split(app)
    assert argv[:2] == ["python3", "agent.py"] and argv[argv.index("--source") + 1] == "0"
    argv[0], argv[argv.index("--source") + 1] = device.python, video.name
    done = subprocess.run(argv, cwd=device.workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (Path(device.workdir) / "out.mp4").stat().st_size > 0
