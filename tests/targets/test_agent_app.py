"""The agent's on-board app on the loopback board: a synthetic video in, per-frame detections equal to the
host's onnxruntime + edgeyolo.contract on the same decoded frames, a video with the boxes out."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from edgeyolo.contract import Contract
from edgeyolo.targets import agent
from edgeyolo.targets.deploy import AGENT, agent_source
from edgeyolo.targets.runner import parse_records

CONF = 0.05
FRAMES = 10


@pytest.fixture(scope="module")
def onnx_model(tmp_path_factory) -> Path:
    from edgeyolo.cli.common import load_cli_model
    from edgeyolo.export.onnx import export_onnx

    out = tmp_path_factory.mktemp("app-model") / "mobile.onnx"
    export_onnx(load_cli_model("edgeyolo-mobile", None, random_init=True, img_size=96), out, 96)
    return out


def synthetic_video(path: Path, frames: int = FRAMES, size: tuple[int, int] = (160, 120)) -> Path:
    """Moving coloured shapes on a gradient, MJPG in an .avi (decodable by any OpenCV build)."""
    w, h = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (w, h))
    assert writer.isOpened()
    base = np.dstack([np.tile(np.linspace(0, 255, w, dtype=np.uint8), (h, 1))] * 3)
    for i in range(frames):
        frame = base.copy()
        cv2.rectangle(frame, (10 + 6 * i, 20), (60 + 6 * i, 80), (0, 0, 255), -1)
        cv2.circle(frame, (120 - 4 * i, 60), 25, (0, 200, 0), -1)
        writer.write(frame)
    writer.release()
    return path


def decode(path: Path, limit: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < limit:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def test_app_detections_equal_the_host_on_the_same_frames(transport, device, onnx_model, tmp_path):
    from edgeyolo.export.onnx import read_metadata
    from edgeyolo.runtime.runners import OnnxRuntimeRunner
    from edgeyolo.targets.deploy import deploy

    video = synthetic_video(tmp_path / "clip.avi")
    deploy(transport, [onnx_model])
    transport.put(video, "data/clip.avi")
    frames = FRAMES - 2  # --max-frames stops before the end of the file
    res = transport.run([device.python, AGENT, "app", "--model", "models/mobile.onnx", "--source", "data/clip.avi",
                         "--jsonl", "runs/app.jsonl", "--output", "runs/app.avi", "--conf", CONF, "--max-frames", frames,
                         "--ort-threads", 1])
    summary = json.loads(res.stdout)
    assert summary["frames"] == frames and summary["fps"] > 0 and summary["backend"] == "onnxruntime"
    assert "FPS" in res.stderr

    records = parse_records(transport.read_bytes("runs/app.jsonl").decode())
    board = {r["index"]: np.asarray(r["det"], dtype=np.float32).reshape(-1, 6) for r in records if r["kind"] == "frame"}
    assert sorted(board) == list(range(frames)) and records[-1]["kind"] == "done"

    contract = dataclasses.replace(Contract.from_json(read_metadata(onnx_model)["edgeyolo.contract"]), conf_threshold=CONF)
    runner = OnnxRuntimeRunner(onnx_model, contract)
    found = 0
    for index, frame in enumerate(decode(video, frames)):
        blob, box = contract.preprocess(frame)
        want = contract.postprocess(runner.infer(blob)[0], box)
        assert np.array_equal(board[index], want), f"frame {index}"
        found += len(want)
    assert found > 0  # real boxes were compared, not only empty frames

    drawn = decode(Path(device.workdir) / "runs" / "app.avi", FRAMES)
    assert len(drawn) == frames and drawn[0].shape == (120, 160, 3)


def test_app_jetson_csi_pipeline_and_a_clear_error_without_gstreamer(transport, device, onnx_model):
    pipeline = agent.jetson_csi_pipeline(sensor_id=1, width=1920, height=1080, fps=30, flip=2)
    parts = [p.strip() for p in pipeline.split("!")]
    assert parts[0] == "nvarguscamerasrc sensor-id=1" and parts[-1].startswith("appsink")
    assert "video/x-raw(memory:NVMM)" in parts[1] and "width=(int)1920" in parts[1] and "framerate=(fraction)30/1" in parts[1]
    assert parts[2] == "nvvidconv flip-method=2" and "format=(string)BGRx" in parts[3] and parts[4] == "videoconvert"

    transport.put(agent_source(), AGENT)
    transport.put(onnx_model, "models/mobile.onnx")
    res = transport.run([device.python, AGENT, "app", "--model", "models/mobile.onnx", "--jetson-csi", "--jsonl", "runs/csi.jsonl"],
                        check=False)
    assert res.code == 3 and "could not open the GStreamer pipeline" in res.stderr  # no Argus camera on this box
    res = transport.run([device.python, AGENT, "app", "--model", "models/mobile.onnx", "--source", "data/none.mp4",
                         "--jsonl", "x.jsonl"], check=False)
    assert res.code == 3 and "not found on the board" in res.stderr
