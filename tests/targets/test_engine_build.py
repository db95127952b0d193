"""TensorRT engines built on the board and cached there, on the loopback board: the real sshd, the real
transport and agent, the real trtexec parser; only trtexec itself is a stand-in script, which records
the argv it got, counts its runs and replays a real recorded trtexec log (board-logs/)."""
from __future__ import annotations

import json
import logging
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edgeyolo.contract import Contract
from edgeyolo.errors import BoardBusy, RemoteCommandError, UsageError
from edgeyolo.targets.jetson.engine import (
    EngineBuildFailed,
    board_tensorrt,
    ensure_engine,
    onnx_facts,
    resolve_precision,
)
from edgeyolo.targets.jetson.trtexec import TrtexecFailed, engine_key, trtexec_command
from edgeyolo.targets.profiles import Precision, PrecisionNotSupported, get_target
from edgeyolo.targets.transport import BoardLock, SshTransport
from tests.targets.boardlogs import board_log
from tests.targets.conftest import with_

FAKE = "tools/trtexec"

# A stand-in for trtexec: counts its runs, records its argv (one item per line), waits while a 'hold'
# file exists, then replays fail.log and exits 1, or writes the engine and replays ok.log.
FAKE_SCRIPT = """#!/bin/sh
here="$(cd "$(dirname "$0")" && pwd)"
n=$(( $(cat "$here/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$here/count.tmp" && mv "$here/count.tmp" "$here/count"
printf '%s\\n' "$0" "$@" > "$here/argv.$n"
while [ -f "$here/hold" ]; do sleep 0.05; done
if [ -f "$here/fail.log" ]; then cat "$here/fail.log"; exit 1; fi
for a in "$@"; do case "$a" in --saveEngine=*) printf 'engine %s\\n' "$n" > "${a#--saveEngine=}";; esac; done
cat "$here/ok.log"
"""


class FakeTrtexec:
    def __init__(self, workdir: Path, ok_log: str = "trtexec-10-ok.txt"):
        self.dir = workdir / "tools"
        self.dir.mkdir(parents=True, exist_ok=True)
        script = self.dir / "trtexec"
        script.write_text(FAKE_SCRIPT)
        script.chmod(0o755)
        (self.dir / "ok.log").write_text(board_log(ok_log))

    @property
    def runs(self) -> int:
        f = self.dir / "count"
        return int(f.read_text()) if f.is_file() else 0

    def argv(self, run: int) -> list[str]:
        return (self.dir / f"argv.{run}").read_text().splitlines()

    def fail_with(self, log_name: str | None) -> None:
        f = self.dir / "fail.log"
        if log_name is None:
            f.unlink(missing_ok=True)
        else:
            f.write_text(board_log(log_name))


def make_onnx(path: Path, seed: int = 0, qdq: bool = False, size: int = 32, dynamic: bool = False) -> Path:
    """A one-conv detector-shaped graph with an edgeyolo contract in its metadata (trtexec is fake, so
    only the file's bytes, input and nodes matter)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = numpy_helper.from_array(rng.normal(size=(8, 3, 3, 3)).astype(np.float32), "w")
    dims = ["batch", 3, "h", "w"] if dynamic else [1, 3, size, size]
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, None)
    nodes, inits, x = [], [weight], "images"
    if qdq:
        inits += [numpy_helper.from_array(np.array(1 / 127, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["images", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
        x = "dq"
    nodes.append(helper.make_node("Conv", [x, "w"], ["out"], pads=[1, 1, 1, 1]))
    model = helper.make_model(helper.make_graph(nodes, "det", [inp], [out], inits), opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 7
    entry = model.metadata_props.add()
    entry.key, entry.value = "edgeyolo.contract", Contract(size, size).to_json()
    onnx.save(model, str(path))
    return path


@pytest.fixture
def board(device):
    """(transport, fake trtexec, workdir) for a loopback board posing as a Jetson Nano."""
    dev = with_(device, target="jetson-nano")
    fake = FakeTrtexec(Path(dev.workdir))
    with SshTransport(dev) as t:
        yield t, fake, Path(dev.workdir)


def expected_argv(target: str, onnx: Path, precision: str, trt: str, gpu: str, shape, **kw) -> list[str]:
    """What the board should run, computed independently of ensure_engine."""
    key = engine_key(onnx, trt, gpu, precision, shape)
    part = f"engines/{key.filename(onnx.stem)}.part"
    cmd = trtexec_command(get_target(target), f"models/{onnx.name}", part, precision,
                          timing_cache=f"engines/timing-trt{trt}.cache", trtexec=FAKE, **kw)
    return list(cmd.argv)


def first_error_line(text: str) -> str:
    """The first [E] / [F] / ERROR: line of a trtexec log, as trtexec's parser reports it."""
    for line in text.splitlines():
        m = re.match(r"^(?:\[[\d/:-]+\] )?\[[EF]\] (.*)$", line)
        if m:
            return m.group(1).strip()
        if line.startswith("ERROR:"):
            return line.strip()
    raise AssertionError("no error line")


# ---------------------------------------------------------------- pure pieces (no board)


def test_precision_and_facts_resolution(tmp_path, caplog):
    nano, orin = get_target("jetson-nano"), get_target("jetson-orin-nano")
    assert resolve_precision(orin, None, qdq=False, calib=False) is Precision.FP16  # int8 default needs scales
    assert resolve_precision(orin, None, qdq=False, calib=True) is Precision.INT8
    assert resolve_precision(orin, None, qdq=True, calib=False) is Precision.INT8
    with pytest.raises(PrecisionNotSupported, match="INT8"):
        resolve_precision(nano, None, qdq=True, calib=False)
    with pytest.raises(UsageError, match="Q/DQ"):
        resolve_precision(orin, "fp16", qdq=True, calib=False)

    reported = {"tensorrt": {"version": "8.2.1", "source": "dpkg libnvinfer8"}, "gpu": {"name": "Maxwell GM20B", "source": "dt"}}
    facts = board_tensorrt(reported, orin)
    assert facts.version == (8, 2, 1) and facts.from_board  # the board's JetPack wins over the profile's
    with caplog.at_level(logging.WARNING):
        facts = board_tensorrt({"tensorrt": None, "gpu": None}, nano)
    assert (facts.version, facts.gpu, facts.from_board) == ((8, 2, 1), "Maxwell GM20B", False)
    assert "did not report its TensorRT version and GPU" in caplog.text

    dyn = onnx_facts(make_onnx(tmp_path / "dyn.onnx", dynamic=True, size=64))
    assert dyn.dynamic and dyn.shape == (1, 3, 64, 64) and dyn.input_name == "images" and not dyn.qdq
    assert onnx_facts(make_onnx(tmp_path / "q.onnx", qdq=True)).qdq


def test_agent_reads_tensorrt_from_a_tensorrt_10_header(tmp_path, monkeypatch):
    from edgeyolo.targets import agent

    header = tmp_path / "NvInferVersion.h"
    header.write_text("#define TRT_MAJOR_ENTERPRISE 10\n#define TRT_MINOR_ENTERPRISE 3\n#define TRT_PATCH_ENTERPRISE 0\n"
                      "#define NV_TENSORRT_MAJOR TRT_MAJOR_ENTERPRISE\n#define NV_TENSORRT_MINOR TRT_MINOR_ENTERPRISE\n"
                      "#define NV_TENSORRT_PATCH TRT_PATCH_ENTERPRISE\n")
    monkeypatch.setattr(agent, "NVINFER_PACKAGES", ())
    monkeypatch.setattr(agent, "NVINFER_HEADERS", (str(tmp_path / "absent.h"), str(header)))
    assert agent.tensorrt_version(import_module=False) == {"version": "10.3.0", "source": str(header)}


# ---------------------------------------------------------------- on the loopback board


def test_nano_fp16_build_runs_the_trt82_line_then_is_cached(board, tmp_path):
    transport, fake, workdir = board
    onnx = make_onnx(tmp_path / "det.onnx")
    lines: list[str] = []
    built = ensure_engine(transport, onnx, "jetson-nano", "fp16", trtexec=FAKE, on_log=lines.append)

    # the loopback board reports no TensorRT: the key falls back to the nano profile's JetPack 4.6 facts
    want = expected_argv("jetson-nano", onnx, "fp16", "8.2.1", "Maxwell GM20B", (1, 3, 32, 32))
    assert fake.runs == 1 and fake.argv(1) == want
    assert "--workspace=1024" in want and "--fp16" in want and not any(a.startswith("--memPoolSize") for a in want)
    key = engine_key(onnx, "8.2.1", "Maxwell GM20B", "fp16", (1, 3, 32, 32))
    assert built.engine == f"engines/{key.filename('det')}" and built.key == key and not built.cached
    assert (workdir / built.engine).read_text() == "engine 1\n"
    assert not list((workdir / "engines").glob("*.part"))
    assert built.throughput_qps == pytest.approx(130.298) and built.latency_ms == pytest.approx(7.16092)
    assert any("Throughput: 130.298 qps" in line for line in lines)  # the log was streamed as it came
    side = workdir / built.engine.replace(".engine", ".edgeyolo.json")
    assert json.loads(side.read_text()) == json.loads((workdir / "models" / "det.edgeyolo.json").read_text())
    assert (workdir / built.log).read_text() == board_log("trtexec-10-ok.txt")  # the log is kept

    again = ensure_engine(transport, onnx, "jetson-nano", "fp16", trtexec=FAKE)
    assert fake.runs == 1 and again.cached and again.engine == built.engine and again.uploaded_bytes == 0
    assert again.throughput_qps == built.throughput_qps  # re-read from the kept log

    fp32 = ensure_engine(transport, onnx, "jetson-nano", "fp32", trtexec=FAKE)
    assert fake.runs == 2 and not fp32.cached and fp32.engine != built.engine
    assert fake.argv(2) == expected_argv("jetson-nano", onnx, "fp32", "8.2.1", "Maxwell GM20B", (1, 3, 32, 32))

    make_onnx(onnx, seed=1)  # same name, new weights: the sha256 changes, so does the key
    changed = ensure_engine(transport, onnx, "jetson-nano", "fp16", trtexec=FAKE)
    assert fake.runs == 3 and not changed.cached and changed.engine != built.engine
    assert (workdir / built.engine).is_file()  # the old engine stays cached for the old ONNX


def test_orin_int8_qdq_build_runs_the_trt10_line(device, tmp_path):
    dev = with_(device, target="jetson-orin-nano")
    fake = FakeTrtexec(Path(dev.workdir))
    onnx = make_onnx(tmp_path / "det_qdq.onnx", qdq=True)
    plain = make_onnx(tmp_path / "det.onnx")
    calib = tmp_path / "calib.cache"
    calib.write_text("TRT-100300-EntropyCalibration2\nimages: 3c010a14\n")
    with SshTransport(dev) as transport:
        built = ensure_engine(transport, onnx, "jetson-orin-nano", trtexec=FAKE)  # int8 read from the Q/DQ nodes
        implicit = ensure_engine(transport, plain, "jetson-orin-nano", "int8", calib_cache=calib, trtexec=FAKE)
        calib.write_text("TRT-100300-EntropyCalibration2\nimages: 3c23d70a\n")  # recalibrated: new scales
        recalibrated = ensure_engine(transport, plain, "jetson-orin-nano", "int8", calib_cache=calib, trtexec=FAKE)
    want = expected_argv("jetson-orin-nano", onnx, "int8", "10.3.0", "Ampere GA10B", (1, 3, 32, 32), qdq=True)
    assert fake.argv(1) == want and built.precision == "int8"
    assert "--memPoolSize=workspace:1024" in want and "--int8" in want and "--fp16" in want
    assert not any(a.startswith(("--workspace", "--calib")) for a in want)
    # implicit INT8: the cache goes up with the ONNX, and its hash is part of the engine's key
    assert "--calib=models/calib.cache" in fake.argv(2) and any("deprecated since TensorRT 10.1" in n for n in implicit.notes)
    assert fake.runs == 3 and recalibrated.engine != implicit.engine and not recalibrated.cached


def test_failed_build_names_the_first_error_and_leaves_no_engine(board, tmp_path):
    transport, fake, workdir = board
    log_name = "trtexec-7-jetson-fail-uint8.txt"  # a Jetson Nano's; parse_trtexec on the others: test_trtexec.py
    fake.fail_with(log_name)
    onnx = make_onnx(tmp_path / "bad.onnx")
    with pytest.raises(TrtexecFailed) as info:
        ensure_engine(transport, onnx, "jetson-nano", "fp16", trtexec=FAKE)
    exc = info.value
    assert isinstance(exc, EngineBuildFailed) and exc.stage == "onnx-parse"
    first = first_error_line(board_log(log_name))
    assert exc.first_error == first and first in str(exc)
    assert exc.log_path in str(exc) and board_log(log_name).rstrip().splitlines()[-1] in str(exc)  # the log's tail
    assert not list((workdir / "engines").glob("*.engine")) and not list((workdir / "engines").glob("*.part"))
    assert Path(exc.log_path).read_text() == board_log(log_name)  # kept on the board

    fake.fail_with(None)  # a failure is not cached: the next call builds
    assert not ensure_engine(transport, onnx, "jetson-nano", "fp16", trtexec=FAKE).cached and fake.runs == 2


def test_missing_trtexec_says_where_it_should_be(board, tmp_path):
    transport, _, _ = board
    with pytest.raises(EngineBuildFailed, match=r"cannot start tools/absent.*/usr/src/tensorrt/bin"):
        ensure_engine(transport, make_onnx(tmp_path / "m.onnx"), "jetson-nano", "fp16", trtexec="tools/absent")


def test_the_build_holds_the_board_lock(board, device, tmp_path):
    transport, fake, _ = board
    (fake.dir / "hold").write_text("")
    onnx = make_onnx(tmp_path / "det.onnx")
    box: dict[str, object] = {}

    def build() -> None:
        try:
            box["result"] = ensure_engine(transport, onnx, "jetson-nano", "fp16", trtexec=FAKE)
        except Exception as exc:  # noqa: BLE001 - reported below
            box["error"] = exc

    worker = threading.Thread(target=build)
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while fake.runs == 0 and time.monotonic() < deadline and worker.is_alive():
            time.sleep(0.05)
        assert fake.runs == 1, "trtexec was never started"
        with SshTransport(with_(device, target="jetson-nano")) as other:
            with pytest.raises(BoardBusy, match=r"engine det\.onnx"):
                BoardLock(other, "second client", heartbeat=False).acquire()
    finally:
        (fake.dir / "hold").unlink()
        worker.join(timeout=60)
    assert "error" not in box, box.get("error")
    assert not box["result"].cached


def test_bench_device_times_the_engine_built_from_an_onnx(board, tmp_path):
    """The wiring only: the engine is built and the agent is pointed at it; running an engine needs
    TensorRT, which the loopback board does not have (and which is not faked)."""
    from edgeyolo.targets.runner import bench_device

    transport, fake, workdir = board
    onnx = make_onnx(tmp_path / "det.onnx")
    with pytest.raises(RemoteCommandError) as info:
        bench_device(transport, onnx, duration=0.2, warmup=0.0, streams=1, trtexec=FAKE)
    assert fake.runs == 1 and len(list((workdir / "engines").glob("*.engine"))) == 1
    assert ".engine" in info.value.cmd and "tensorrt" in info.value.stderr


def test_cli_deploy_engine(device, tmp_path, capsys):
    from edgeyolo.cli.app import main

    dev = with_(device, target="jetson-nano")
    fake = FakeTrtexec(Path(dev.workdir))
    fields = {k: getattr(dev, k) for k in ("target", "host", "port", "user", "key_file", "known_hosts", "workdir", "python")}
    inventory = tmp_path / "devices.yaml"
    inventory.write_text(json.dumps({"devices": {"nano": fields, "plain": {**fields, "target": "generic"}}}))
    onnx = make_onnx(tmp_path / "det.onnx")
    argv = ["deploy", "--inventory", str(inventory), "--device", "nano", str(onnx), "--engine", "--precision", "fp16", "--trtexec", FAKE]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "engine built" in out and "130.3 qps" in out and "TensorRT 8.2.1" in out
    assert main(argv + ["--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["engines"][0]["cached"] and payload["bytes_sent"] == 0 and fake.runs == 1
    assert main(["deploy", "--inventory", str(inventory), "--device", "plain", str(onnx), "--engine"]) == 2
    assert "target: jetson-nano" in capsys.readouterr().err
