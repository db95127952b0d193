"""``edgeyolo bench device --record``: a board run stored in the results database (loopback board)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeyolo.cli.app import main
from tests.targets.boardlogs import board_log
from tests.targets.conftest import free_port, with_


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    from edgeyolo.cli.common import load_cli_model
    from edgeyolo.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("model") / "mobile.onnx"
    export_onnx(load_cli_model("edgeyolo-mobile", None, random_init=True, img_size=64), out, 64)
    return out


def inventory_for(device, tmp_path, **changes) -> list[str]:
    d = with_(device, target="host", **changes)
    fields = {k: getattr(d, k) for k in ("target", "host", "port", "user", "key_file", "known_hosts", "workdir", "python")}
    path = tmp_path / "devices.yaml"
    path.write_text(json.dumps({"devices": {"loop": fields}}))
    return ["--inventory", str(path), "--device", "loop"]


def test_bench_device_record_stores_the_run_with_its_artifact_hash(device, tmp_path, onnx_model, capsys) -> None:
    from edgeyolo.bench.results import ResultsStore, sha256_file

    db = tmp_path / "results.sqlite"
    argv = ["bench", "device", *inventory_for(device, tmp_path), "--model", str(onnx_model), "--duration", "0.3",
            "--warmup", "0", "--threads", "2", "--record", "--db", str(db), "--label", "main", "--json"]
    assert main(argv) == 0
    payload = json.loads(capsys.readouterr().out)
    with ResultsStore(db, create=False) as store:
        (run,) = store.runs()
    assert payload["recorded_run"]["id"] == run.id
    assert (run.status, run.kind, run.target, run.device, run.label) == ("complete", "board", "host", "loop", "main")
    assert run.artifact_name == "mobile.onnx" and run.artifact_sha256 == sha256_file(onnx_model)
    assert run.metrics["fps"] == pytest.approx(payload["phases"][0]["fps"]) and run.metrics["streams.2.fps"] > 0
    assert run.metrics["fps_max"] >= run.metrics["fps"]
    assert run.metrics["latency_ms.p50"] <= run.metrics["latency_ms.p99"]
    assert run.toolchain["backend"] == "onnxruntime" and run.toolchain["runtime"] == payload["runtime_version"]
    assert run.board_state["input_size"] == [64, 64] and "disk" not in run.board_state  # settings, not observations
    assert run.command.startswith("edgeyolo ")  # the process's own command line (here: pytest's)


def test_a_bench_that_cannot_reach_the_board_is_recorded_as_failed(device, tmp_path, onnx_model, capsys) -> None:
    from edgeyolo.bench.results import ResultsStore

    db = tmp_path / "results.sqlite"
    argv = ["bench", "device", *inventory_for(device, tmp_path, port=free_port(), connect_timeout=2.0),
            "--model", str(onnx_model), "--duration", "0.3", "--record", "--db", str(db)]
    assert main(argv) == 7  # TargetError
    with ResultsStore(db, create=False) as store:
        (run,) = store.runs()
    assert run.status == "failed" and run.metrics == {} and run.error.startswith("ConnectionFailed: ")


def test_db_and_label_need_record(tmp_path, onnx_model, capsys) -> None:
    code = main(["bench", "device", "--device", "x", "--model", str(onnx_model), "--label", "main"])
    assert code == 2 and "only apply with --record" in capsys.readouterr().err


def test_board_conditions_keep_settings_from_jetson_and_zynq_output() -> None:
    from edgeyolo.bench.board import bench_metrics, board_conditions

    clocks = board_log("jetson_clocks-show-nano-head.txt")
    payload = {
        "backend": "tensorrt", "runtime_version": "8.2.1", "power_mode": "MAXN", "input_size": [416, 416],
        "board": {"python": "3.6.9", "cpus": 4, "machine": "aarch64", "device_model": "NVIDIA Jetson Nano Developer Kit\x00",
                  "l4t": "# R32 (release), REVISION: 7.1, GCID: 29818004\n", "jetpack": {"code": 0, "out": "4.6.1-b110"},
                  "jetson_clocks": {"code": 0, "out": clocks}, "meminfo": "MemFree: 1 kB", "disk": {"free": 1}},
        "phases": [{"streams": 1, "frames": 100, "fps": 20.0, "latency_ms": {"p50": 48.0, "p90": 50.0, "p99": 55.0, "mean": 49.0},
                    "pre_ms": 2.0, "infer_ms": 40.0, "post_ms": 6.0, "power_w": 5.0, "fps_per_w": 4.0}],
        "accuracy": {"map50": 0.41, "map50_95": 0.2},
    }
    state, toolchain = board_conditions(payload)
    assert state["power_mode"] == "MAXN" and state["device_model"] == "NVIDIA Jetson Nano Developer Kit"
    assert state["clocks"]["online_cpus"] == [0, 1, 2, 3] and "meminfo" not in state and "disk" not in state
    assert toolchain == {"backend": "tensorrt", "runtime": "8.2.1", "board_python": "3.6.9",
                         "l4t": "R32 (release), REVISION: 7.1, GCID: 29818004", "jetpack": "4.6.1-b110"}
    metrics = bench_metrics(payload)
    assert metrics["fps"] == 20.0 and metrics["fps_per_w"] == 4.0 and metrics["power_w"] == 5.0 and metrics["map50"] == 0.41

    zynq = {"backend": "vart", "runtime_version": "2.5.0", "input_size": [416, 416], "phases": [],
            "board": {"xdputil_query": {"code": 0, "out": board_log("xdputil-query.txt")}, "jetson_clocks": None}}
    state, toolchain = board_conditions(zynq)
    assert state["dpu"] == {"fingerprint": "0x101000016010402", "arch": "DPUCZDX8G_ISA1_B1024", "cores": 1}
    assert toolchain["vitis_ai"] == "2.5.0" and "fps" not in bench_metrics(zynq)


def test_a_bundle_folder_is_hashed_as_a_whole(tmp_path) -> None:
    from edgeyolo.fileio import tree_sha256

    bundle = tmp_path / "vitis"
    (bundle / "sub").mkdir(parents=True)
    (bundle / "model.xmodel").write_bytes(b"x" * 10)
    (bundle / "sub" / "arch.json").write_text("{}")
    first = tree_sha256(bundle)
    assert first == tree_sha256(bundle) and len(first) == 64
    (bundle / "sub" / "arch.json").write_text("{ }")
    assert tree_sha256(bundle) != first
    (bundle / "sub" / "arch.json").write_text("{}")
    (bundle / "sub" / "arch.json").rename(bundle / "arch.json")  # same bytes, another place
    assert tree_sha256(bundle) != first
