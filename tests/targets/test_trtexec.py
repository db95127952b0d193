"""trtexec: command lines per profile, the engine cache key, calibration caches and the output parser
read on real logs (board-logs README names each source)."""
from __future__ import annotations

import struct

import pytest

from edgeyolo.errors import UsageError
from edgeyolo.targets.jetson.trtexec import (
    CalibrationCache,
    TrtexecFailed,
    engine_key,
    format_calibration_cache,
    parse_calibration_cache,
    parse_trt_version,
    parse_trtexec,
    read_calibration_cache,
    trt_version_code,
    trtexec_command,
    write_calibration_cache,
)
from edgeyolo.targets.parsing import ToolOutputError
from edgeyolo.targets.profiles import PrecisionNotSupported, get_target
from tests.targets.boardlogs import board_log


def test_versions_read_every_spelling():
    assert parse_trt_version("8.2.1.8") == (8, 2, 1)
    assert parse_trt_version("v8400") == (8, 4, 0)
    assert parse_trt_version("100200") == (10, 2, 0)
    assert parse_trt_version("7103") == (7, 1, 3)
    assert trt_version_code("8.2.1") == 8201 and trt_version_code((10, 3, 0)) == 100300
    with pytest.raises(UsageError, match="bad TensorRT version"):
        parse_trt_version("eight")


def test_nano_command_uses_the_jetpack_trtexec_and_the_old_workspace_flag():
    cmd = trtexec_command(get_target("jetson-nano"), "m.onnx", "m.engine", "fp16", timing_cache="t.cache")
    assert cmd.argv == (
        "/usr/src/tensorrt/bin/trtexec", "--onnx=m.onnx", "--saveEngine=m.engine", "--fp16",
        "--workspace=1024", "--timingCacheFile=t.cache",
    )
    with pytest.raises(PrecisionNotSupported, match="no fast INT8"):
        trtexec_command(get_target("jetson-nano"), "m.onnx", "m.engine", "int8", calib_cache="c.bin")


def test_newer_tensorrt_uses_mempoolsize_and_int8_needs_scales():
    orin = get_target("jetson-orin-nano")
    cmd = trtexec_command(orin, "m.onnx", "m.engine", "int8", qdq=True, workspace_mib=2048)
    assert "--memPoolSize=workspace:2048" in cmd.argv and "--int8" in cmd.argv and "--fp16" in cmd.argv
    assert not any(a.startswith("--workspace") for a in cmd.argv)
    with pytest.raises(UsageError, match="Q/DQ ONNX .* or a calibration cache"):
        trtexec_command(orin, "m.onnx", "m.engine", "int8")
    implicit = trtexec_command(orin, "m.onnx", "m.engine", "int8", calib_cache="cal.bin")
    assert "--calib=cal.bin" in implicit.argv and "deprecated since TensorRT 10.1" in implicit.notes[0]
    nx = trtexec_command(get_target("jetson-xavier-nx"), "m.onnx", "m.engine", "fp16", dla_core=1)
    assert nx.argv[-2:] == ("--useDLACore=1", "--allowGPUFallback")
    with pytest.raises(UsageError, match="no DLA"):
        trtexec_command(orin, "m.onnx", "m.engine", "fp16", dla_core=0)
    with pytest.raises(UsageError, match="not a TensorRT target"):
        trtexec_command(get_target("zcu104"), "m.onnx", "m.engine")


def test_engine_key_changes_with_every_input(tmp_path):
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"graph-1")
    key = engine_key(onnx, "8.2.1", "Maxwell GM20B", "fp16", (1, 3, 416, 416))
    assert key.filename("yolo") == f"yolo-fp16-1x3x416x416-trt8.2.1-{key.digest}.engine"
    others = [
        engine_key(onnx, "8.2.1", "Maxwell GM20B", "fp32", (1, 3, 416, 416)),
        engine_key(onnx, "8.4.0", "Maxwell GM20B", "fp16", (1, 3, 416, 416)),
        engine_key(onnx, "8.2.1", "Pascal GP10B", "fp16", (1, 3, 416, 416)),
        engine_key(onnx, "8.2.1", "Maxwell GM20B", "fp16", (1, 3, 320, 320)),
    ]
    onnx.write_bytes(b"graph-2")
    others.append(engine_key(onnx, "8.2.1", "Maxwell GM20B", "fp16", (1, 3, 416, 416)))
    assert len({key.digest, *(k.digest for k in others)}) == 6


def test_calibration_cache_round_trip_in_tensorrt_text_format(tmp_path):
    scales = {"000_net": 1 / 127, "001_convolutional": 0.0214, "/model.105/Conv_output_0": 3.5e-3}
    path = write_calibration_cache(tmp_path / "cal.bin", scales, "8.5.2")
    text = path.read_text()
    assert text.splitlines()[0] == "TRT-8502-EntropyCalibration2"
    assert text.splitlines()[1] == "000_net: " + struct.pack(">f", 1 / 127).hex()
    back = read_calibration_cache(path)
    assert back.trt_version == (8, 5, 2) and back.algorithm == "EntropyCalibration2"
    assert back.scales == {k: struct.unpack(">f", struct.pack(">f", v))[0] for k, v in scales.items()}
    assert format_calibration_cache(back.scales, back.trt_version) == text
    with pytest.raises(UsageError, match="finite number"):
        format_calibration_cache({"x": float("nan")}, "8.5.2")
    with pytest.raises(UsageError, match="cannot be written"):
        format_calibration_cache({"a: b": 0.1}, "8.5.2")


def test_calibration_cache_reads_tensorrt_demos_lines():
    # lines quoted in deploy-targets.md §3a from tensorrt_demos' calib_yolov3-int8-608.bin
    cache = parse_calibration_cache("TRT-7103-EntropyCalibration2\n000_net: 3c010a14\n001_convolutional: 3caf6955\n")
    assert isinstance(cache, CalibrationCache) and cache.trt_version == (7, 1, 3)
    assert cache.scales["000_net"] == pytest.approx(0.00787, abs=1e-5)
    with pytest.raises(ToolOutputError, match="TRT-<version>-<algorithm>"):
        parse_calibration_cache("000_net: 3c010a14\n")


def test_trtexec_10_summary_with_90_95_99_percentiles():
    r = parse_trtexec(board_log("trtexec-10-ok.txt"))
    assert r.throughput_qps == 130.298
    assert (r.latency.mean, r.latency.median) == (7.60628, 7.16092)
    assert r.latency.percentiles == {90.0: 10.2996, 95.0: 10.8698, 99.0: 12.9675}
    assert (r.gpu_compute.min, r.gpu_compute.max, r.gpu_compute.mean) == (5.34595, 13.3388, 7.58404)
    assert r.gpu_compute.percentiles[99.0] == 12.9485
    assert r.h2d.mean == 0.0122212 and r.d2h.median == 0.00439453 and r.enqueue.max == 15.0201
    assert (r.host_walltime_s, r.gpu_compute_total_s) == (3.00082, 2.96536)
    assert r.trt_version is None and r.passed is None  # this excerpt has no version line (see its header)


def test_trtexec_84_xavier_summary_with_version_and_passed():
    r = parse_trtexec(board_log("trtexec-8.4-xavier-summary.txt"))
    assert r.throughput_qps == 41087.7 and r.trt_version == (8, 4, 0) and r.passed is True
    assert r.latency.percentiles == {99.0: 0.420288} and r.gpu_compute.median == 0.388443
    assert r.command == "trtexec --loadEngine=mnist16.trt --batch=16"


def test_trtexec_8_parse_failure_is_a_structured_error():
    with pytest.raises(TrtexecFailed) as info:
        parse_trtexec(board_log("trtexec-8-fail.txt"))
    err = info.value
    assert err.stage == "onnx-parse"
    assert err.first_error == "[TRT] ModelImporter.cpp:729: --- End node ---"
    assert err.cause.startswith('[8] Assertion failed: creator && "Plugin not found')
    assert "Engine set up failed" in err.errors
    assert str(err).startswith("trtexec failed at onnx-parse: [8] Assertion failed")


def test_trtexec_7_jetson_failure_without_version_tag():
    with pytest.raises(TrtexecFailed) as info:
        parse_trtexec(board_log("trtexec-7-jetson-fail-uint8.txt"))
    err = info.value
    assert err.cause == "Unsupported ONNX data type: UINT8 (2)"
    assert err.first_error == "ERROR: ModelImporter.cpp:54 In function importInput:"
    assert err.trt_version is None and err.command.startswith("/usr/src/tensorrt/bin/trtexec --onnx=")


@pytest.mark.parametrize("text", ["", "hello world\n", "[I] === Performance summary ===\n[I] Latency: min = 1 ms\n"])
def test_trtexec_garbage_is_a_clear_error(text):
    with pytest.raises(ToolOutputError, match="cannot read trtexec output"):
        parse_trtexec(text)
