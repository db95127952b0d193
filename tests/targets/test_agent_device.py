"""End to end on the loopback board: deploy an exported ONNX, bench it, score mAP host-side, crash the agent."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgeyolo.bench.board import predict_on_device
from edgeyolo.contract import Contract
from edgeyolo.targets.deploy import deploy
from edgeyolo.targets.runner import bench_device, doctor, parse_records
from tests.targets.conftest import cli, with_, write_inventory


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    from edgeyolo.cli.common import load_cli_model
    from edgeyolo.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("model") / "mobile.onnx"
    model = load_cli_model("edgeyolo-mobile", None, random_init=True, img_size=128)
    export_onnx(model, out, 128)
    return out


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory) -> Path:
    from edgeyolo.data.synth import make_synthetic

    return make_synthetic(tmp_path_factory.mktemp("synth") / "ds", classes=12, train=1, val=6, img_size=128, seed=1).data_yaml


def test_deploy_bench_and_redeploy_costs_nothing(transport, device, onnx_model):
    first = deploy(transport, [onnx_model])
    remote = sorted(Path(u.remote).name for u in first.uploads)
    assert remote == ["agent.py", "mobile.edgeyolo.json", "mobile.onnx"] and first.bytes_sent > 0
    sidecar = json.loads((Path(device.workdir) / "models" / "mobile.edgeyolo.json").read_text())
    assert Contract.from_json(sidecar["edgeyolo.contract"]).height == 128
    again = deploy(transport, [onnx_model])
    assert again.bytes_sent == 0 and again.unchanged == 3

    logs: list[str] = []
    result = bench_device(transport, onnx_model, duration=0.5, warmup=0.1, streams=2, ort_threads=1, on_log=logs.append)
    assert result.error is None and not result.partial
    assert result.backend == "onnxruntime" and result.input_size == [128, 128]
    assert [p.streams for p in result.phases] == [1, 2]
    for p in result.phases:
        assert p.complete and p.frames > 0 and p.fps > 0
        assert 0 < p.latency_ms.p50 <= p.latency_ms.p90 <= p.latency_ms.p99
        assert p.pre_ms > 0 and p.infer_ms > 0 and p.post_ms >= 0
        assert p.power_w is None  # no tegrastats on the loopback board
    assert result.deploy.bytes_sent == 0  # the model was already there
    assert result.board["cpus"] and any("stream(s) done" in line for line in logs)  # remote logs streamed


def test_map_on_the_board_equals_host_evaluation(transport, onnx_model, tiny_dataset):
    from edgeyolo.data.formats import load_dataset
    from edgeyolo.export.onnx import read_metadata
    from edgeyolo.runtime.evaluate import evaluate_runner
    from edgeyolo.runtime.runners import OnnxRuntimeRunner

    dataset = load_dataset(tiny_dataset, "val")
    board = predict_on_device(transport, onnx_model, dataset, "coco", conf=0.001, iou=0.6, max_det=100)
    contract = Contract.from_json(read_metadata(onnx_model)["edgeyolo.contract"])
    contract = Contract(**{**contract.__dict__, "conf_threshold": 0.001, "iou_threshold": 0.6, "max_detections": 100})
    host = evaluate_runner(OnnxRuntimeRunner(onnx_model, contract), contract, dataset, "coco")
    assert len(board.detections) == len(host.detections) == len(dataset.samples)
    assert sum(len(d) for d in host.detections) > 0
    for a, b in zip(board.detections, host.detections):
        assert np.array_equal(a, b)
    assert abs(board.result.map50 - host.result.map50) <= 1e-6
    assert abs(board.result.map50_95 - host.result.map50_95) <= 1e-6


def test_agent_killed_mid_run_keeps_partial_results(transport, device, onnx_model):
    runs = Path(device.workdir) / "runs"
    box: dict[str, object] = {}

    def go() -> None:
        try:
            box["result"] = bench_device(transport, onnx_model, duration=30.0, warmup=0.2, streams=1, ort_threads=1)
        except Exception as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    worker = threading.Thread(target=go)
    worker.start()
    pid = None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and pid is None:
        for f in runs.glob("*.jsonl") if runs.is_dir() else []:
            records = parse_records(f.read_text())
            if any(r["kind"] == "frames" for r in records):
                pid = next(r["pid"] for r in records if r["kind"] == "start")
        time.sleep(0.1)
    assert pid is not None, "the agent never reported timed frames"
    os.kill(pid, signal.SIGKILL)
    worker.join(timeout=60)
    assert "error" not in box, box.get("error")
    result = box["result"]
    assert result.partial and result.error and "signal" in result.error
    assert result.phases and result.phases[0].frames > 0 and not result.phases[0].complete and result.phases[0].fps > 0


def test_doctor_reports_every_check(transport):
    checks = {c.name: c for c in doctor(transport)}
    for name in ("ssh", "python", "numpy", "opencv", "onnxruntime", "tensorrt", "pycuda / cuda-python", "trtexec",
                 "vart", "xir", "xdputil", "L4T / JetPack", "nvpmodel", "jetson_clocks", "disk", "swap"):
        assert name in checks, name
        assert checks[name].status in ("ok", "missing", "warn")
    assert checks["python"].status == checks["numpy"].status == checks["onnxruntime"].status == "ok"
    assert checks["tensorrt"].status == "missing" and "JetPack" in checks["tensorrt"].detail


@pytest.fixture
def cli_inventory(device, tmp_path) -> list[str]:
    inventory = tmp_path / "devices.yaml"
    d = with_(device, workdir=str(tmp_path / "cli-board"))
    fields = {k: getattr(d, k) for k in ("host", "port", "user", "key_file", "known_hosts", "workdir", "python")}
    inventory.write_text(json.dumps({"devices": {"loop": fields}}))  # JSON is YAML
    return ["--inventory", str(inventory), "--device", "loop"]


def test_cli_deploy_and_doctor(cli_inventory, onnx_model, capsys):
    from edgeyolo.cli.app import main

    assert main(["deploy", *cli_inventory, str(onnx_model)]) == 0
    assert "3 files, 0 unchanged" in capsys.readouterr().out
    assert main(["deploy", *cli_inventory, str(onnx_model)]) == 0
    assert "3 unchanged, 0.0 kB sent" in capsys.readouterr().out
    assert main(["doctor", *cli_inventory]) == 0
    out = capsys.readouterr().out
    assert "python" in out and "missing" in out
    assert main(["deploy", cli_inventory[0], cli_inventory[1], "--device", "nope", str(onnx_model)]) == 2
    assert "known devices: loop" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_bench_device_with_map(cli_inventory, onnx_model, tiny_dataset, capsys):
    from edgeyolo.cli.app import main

    code = main(["bench", "device", *cli_inventory, "--model", str(onnx_model), "--duration", "0.5", "--warmup", "0.1",
                 "--threads", "2", "--ort-threads", "1", "--map", str(tiny_dataset), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0 and payload["phases"][0]["fps"] > 0 and 0.0 <= payload["accuracy"]["map50"] <= 1.0
    assert main(["bench", "device", *cli_inventory, "--model", str(onnx_model), "--duration", "0.3", "--warmup", "0"]) == 0
    assert "FPS" in capsys.readouterr().out


def _agent_pid(device, timeout: float = 180.0) -> int:
    """The pid of the bench agent on the loopback board, once it has timed frames."""
    runs = Path(device.workdir) / "runs"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for f in runs.glob("*.jsonl") if runs.is_dir() else []:
            records = parse_records(f.read_text())
            if any(r["kind"] == "frames" for r in records):
                return next(r["pid"] for r in records if r["kind"] == "start")
        time.sleep(0.1)
    raise AssertionError("the agent never reported timed frames")


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_client_killed_mid_bench_stops_the_agent(device, onnx_model, tmp_path):
    """SIGKILL of `edgeyolo bench device` mid-run: the board's agent stops within 10 s (its stdin
    closes with the connection). f6b95b9: the agent runs its whole 2 x 60 s (fails on the bound)."""
    args = write_inventory(device, tmp_path / "devices.yaml")
    proc = cli("bench", "device", *args, "--model", str(onnx_model), "--duration", "60", "--warmup", "0.2",
               "--threads", "1", "--ort-threads", "1", cwd=tmp_path)
    try:
        pid = _agent_pid(device)
        assert _running(pid)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
    killed = time.monotonic()
    while _running(pid) and time.monotonic() - killed < 30:
        time.sleep(0.1)
    assert not _running(pid) and time.monotonic() - killed <= 10.0


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True,
                          text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a 16 MB tmpfs to fill the board's disk: {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path, leave: int) -> None:
    """Fill the filesystem of ``folder``, then give back ``leave`` bytes."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(filler.stat().st_size - leave, 0))


def test_a_disk_that_fills_during_a_bench_is_said(device, onnx_model, small_disk):
    """f6b95b9: the agent's buffered results file fails at its flush and the run ends as
    an unexplained failure (fails on ``"disk is full"``)."""
    from edgeyolo.errors import TargetError
    from edgeyolo.targets.transport import SshTransport

    dev = with_(device, workdir=str(small_disk / "board"))
    with SshTransport(dev) as t:
        deploy(t, [onnx_model])
        (small_disk / "board" / "runs").mkdir()
        _fill(small_disk, 4096)  # room for the first records, not for the board state
        try:  # raised when no frame was timed, else the partial result carries it
            message = bench_device(t, onnx_model, duration=1.0, warmup=0.0, streams=1, ort_threads=1).error or ""
        except TargetError as exc:
            message = str(exc)
    assert "disk is full" in message and "killed by a signal" not in message
    assert "Traceback" not in message


def test_the_agent_says_a_full_disk_and_exits_3(tmp_path, small_disk, onnx_model):
    """The agent alone on a full disk: its one-line error and exit code 3, not an abort."""
    import shutil
    import sys

    from edgeyolo.targets.deploy import agent_source

    board = small_disk / "board"
    (board / "models").mkdir(parents=True)
    shutil.copy(agent_source(), board / "agent.py")
    shutil.copy(onnx_model, board / "models" / "m.onnx")
    _fill(small_disk, 4096)
    proc = subprocess.run([sys.executable, "agent.py", "bench", "--model", "models/m.onnx", "--out", "runs/r.jsonl",
                           "--duration", "1", "--warmup", "0", "--streams", "1", "--ort-threads", "1"],
                          cwd=board, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("edgeyolo-agent: error: the board's disk is full")
