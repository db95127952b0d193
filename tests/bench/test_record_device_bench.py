"""``bench.results.record_device_bench``: a board bench stored as ``edgeyolo bench device --record`` stores it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeyolo.bench.board import bench_metrics, board_conditions
from edgeyolo.bench.results import ResultsStore, record_device_bench, record_run
from edgeyolo.errors import InputFileError, UsageError
from edgeyolo.fileio import sha256_file, tree_sha256
from edgeyolo.targets.inventory import Device
from tests.targets.boardlogs import board_log

COMMAND = "edgeyolo bench device --device nano --model m.onnx --record"
# what a run row holds apart from when and by which process it was written
COMPARED = ("status", "kind", "target", "device", "label", "artifact", "artifact_name", "artifact_sha256", "command",
            "git_rev", "toolchain", "board_state", "metrics", "units", "raw_metrics", "extra", "error")


def _payload() -> dict:
    return {
        "backend": "tensorrt", "runtime_version": "8.2.1", "power_mode": "MAXN", "input_size": [416, 416],
        "board": {"python": "3.6.9", "cpus": 4, "machine": "aarch64", "device_model": "NVIDIA Jetson Nano Developer Kit\x00",
                  "l4t": "# R32 (release), REVISION: 7.1, GCID: 29818004\n", "jetpack": {"code": 0, "out": "4.6.1-b110"},
                  "jetson_clocks": {"code": 0, "out": board_log("jetson_clocks-show-nano-head.txt")}, "disk": {"free": 1}},
        "phases": [
            {"streams": 1, "frames": 100, "fps": 20.0, "latency_ms": {"p50": 48.0, "p90": 50.0, "p99": 55.0, "mean": 49.0},
             "pre_ms": 2.0, "infer_ms": 40.0, "post_ms": 6.0, "power_w": 5.0, "fps_per_w": 4.0},
            {"streams": 4, "frames": 300, "fps": 31.0, "latency_ms": {"p50": 120.0, "p90": 130.0, "p99": 140.0, "mean": 125.0},
             "pre_ms": 2.5, "infer_ms": 110.0, "post_ms": 7.0, "power_w": None, "fps_per_w": None},
        ],
        "accuracy": {"map50": 0.41, "map50_95": 0.2},
    }


def _as_the_cli_recorded_it(db: Path, device: Device, model: Path, payload: dict, label) -> dict:
    """The recording the command did itself before it called the library (kept here as the reference)."""
    sha = tree_sha256(model) if model.is_dir() else sha256_file(model)
    with record_run(db, kind="board", target=device.target, device=device.name, artifact=model.resolve(), artifact_sha256=sha,
                    label=label, command=COMMAND, board_state={}, toolchain={}) as run:
        run.metrics.update(bench_metrics(payload))
        state, toolchain = board_conditions(payload)
        run.board_state.update(state)
        run.toolchain.update(toolchain)
        return {"id": run.id, "metrics": run.metrics, "board_state": state, "toolchain": toolchain}


def _row(db: Path) -> dict:
    with ResultsStore(db, create=False) as store:
        (run,) = store.runs()
    return {k: getattr(run, k) for k in COMPARED}


@pytest.mark.parametrize("bundle", [False, True], ids=["file", "bundle-folder"])
def test_the_row_is_the_one_the_cli_wrote(tmp_path: Path, bundle: bool) -> None:
    if bundle:
        model = tmp_path / "vitis"
        (model / "sub").mkdir(parents=True)
        (model / "model.xmodel").write_bytes(b"x" * 10)
        (model / "sub" / "arch.json").write_text("{}")
    else:
        model = tmp_path / "m.onnx"
        model.write_bytes(b"onnx" * 100)
    nano = Device(name="nano", host="10.0.0.2", target="jetson-nano")
    payload = _payload()
    expected = _as_the_cli_recorded_it(tmp_path / "before.sqlite", nano, model, payload, "main")
    with record_device_bench(tmp_path / "after.sqlite", device=nano, artifact=model, label="main", command=COMMAND) as run:
        assert run.device is nano
        recorded = run.store(payload)
    assert json.dumps(recorded, sort_keys=True) == json.dumps(expected, sort_keys=True)
    after = _row(tmp_path / "after.sqlite")
    assert after == _row(tmp_path / "before.sqlite")
    assert after["status"] == "complete" and after["artifact_sha256"] == (tree_sha256(model) if bundle else sha256_file(model))
    assert after["metrics"]["streams.4.fps"] == 31.0 and after["metrics"]["fps_max"] == 31.0
    assert after["board_state"]["power_mode"] == "MAXN" and "disk" not in after["board_state"]


def test_the_device_is_read_from_the_inventory_before_the_row_is_begun(tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(b"onnx")
    inventory = tmp_path / "devices.yaml"
    inventory.write_text(json.dumps({"devices": {"nano": {"host": "10.0.0.2", "target": "jetson-nano"}}}))
    db = tmp_path / "results.sqlite"
    with pytest.raises(UsageError, match="no device 'orin'"):
        with record_device_bench(db, device="orin", inventory=inventory, artifact=model):
            pass  # pragma: no cover
    assert not db.exists()
    with pytest.raises(RuntimeError, match="board gone"):
        with record_device_bench(db, device="nano", inventory=inventory, artifact=model) as run:
            assert (run.device.name, run.device.target) == ("nano", "jetson-nano")
            raise RuntimeError("board gone")
    row = _row(db)
    assert (row["status"], row["target"], row["device"], row["metrics"]) == ("failed", "jetson-nano", "nano", {})
    assert row["error"] == "RuntimeError: board gone"


def test_a_missing_model_is_an_input_error_before_anything_else(tmp_path: Path) -> None:
    db = tmp_path / "results.sqlite"
    with pytest.raises(InputFileError, match="--model .*no such file or folder"):
        with record_device_bench(db, device="orin", inventory=tmp_path / "none.yaml", artifact=tmp_path / "m.onnx"):
            pass  # pragma: no cover
    assert not db.exists()
