"""What a board measured, on the host's side: a board bench's JSON payload (``edgeyolo bench device
--json``) read as results-database rows (the metrics and the board conditions two runs must share to be
compared), and the board's detections (``edgeyolo.targets.runner``) scored with the metrics code
``edgeyolo test`` uses, so a board's mAP and the host's compare."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeyolo.targets.runner import DeviceDetections, detect_on_device
from edgeyolo.targets.transport import LineSink, Progress, Transport


def bench_metrics(payload: dict) -> dict:
    """The numbers of a ``bench device --json`` payload as results-database metrics.

    Headline (single stream, what 'results check' gates on by default): fps, latency_ms.p50/p90/p99/mean,
    power_w, fps_per_w; fps_max is the best throughput over the stream counts. Every phase also gets
    streams.<N>.{fps, frames, latency_ms.*, pre_ms, infer_ms, post_ms, power_w, fps_per_w}, and a
    --map run adds map50 / map50_95 (scored on the host from the board's detections).
    """
    phases = [p for p in payload.get("phases", []) if p.get("frames")]
    metrics: dict = {"streams": {}}
    for p in phases:
        metrics["streams"][str(p["streams"])] = {
            "fps": p["fps"], "frames": p["frames"], "latency_ms": {k: p["latency_ms"][k] for k in ("p50", "p90", "p99", "mean")},
            "pre_ms": p["pre_ms"], "infer_ms": p["infer_ms"], "post_ms": p["post_ms"],
            "power_w": p.get("power_w"), "fps_per_w": p.get("fps_per_w"),
        }
    single = metrics["streams"].get("1")
    if single is not None:
        metrics.update({k: single[k] for k in ("fps", "latency_ms", "power_w", "fps_per_w")})
    if phases:
        metrics["fps_max"] = max(p["fps"] for p in phases)
    accuracy = payload.get("accuracy")
    if accuracy:
        metrics["map50"], metrics["map50_95"] = accuracy.get("map50"), accuracy.get("map50_95")
    # None (no power rail, no --map) is left out: the metrics table holds numbers only
    return _drop_none(metrics)


def _drop_none(node: dict) -> dict:
    return {k: _drop_none(v) if isinstance(v, dict) else v for k, v in node.items() if v is not None}


def board_conditions(payload: dict) -> tuple[dict, dict]:
    """(board_state, toolchain) of a bench payload: the settings two runs must share to be compared.

    Only settings, never observations: the power mode, whether the clocks are pinned and their
    ceilings, online CPUs, the DPU fingerprint; runtime (TensorRT / onnxruntime / VART) and JetPack
    versions. Free disk, memory and current clocks change run to run and would make every pair of
    runs 'not comparable' to the regression gate, so they stay in the bench JSON only.
    """
    board = payload.get("board") or {}
    state: dict = {"power_mode": payload.get("power_mode"), "device_model": (board.get("device_model") or "").strip("\x00\n ") or None,
                   "machine": board.get("machine"), "cpus": board.get("cpus"), "input_size": payload.get("input_size")}
    clocks = (board.get("jetson_clocks") or {})
    if clocks.get("code") == 0 and clocks.get("out"):
        from edgeyolo.targets.jetson.nvpmodel import parse_jetson_clocks
        from edgeyolo.targets.parsing import ToolOutputError

        try:
            c = parse_jetson_clocks(clocks["out"])
        except ToolOutputError:
            c = None
        if c is not None:
            state["clocks"] = {"pinned": c.clocks_pinned, "online_cpus": list(c.online_cpus),
                               "gpu_max_hz": c.gpu.max_hz if c.gpu else None, "emc_max_hz": c.emc.max_hz if c.emc else None}
    query = board.get("xdputil_query") or {}
    if query.get("code") == 0 and query.get("out"):
        from edgeyolo.targets.parsing import ToolOutputError
        from edgeyolo.targets.zynq.xdputil import parse_xdputil_query

        try:
            q = parse_xdputil_query(query["out"])
            state["dpu"] = {"fingerprint": q.fingerprint.hex, "arch": q.kernels[0].arch, "cores": q.core_count}
            vai = q.vai_version
        except ToolOutputError:
            vai = None
    else:
        vai = None
    jetpack = board.get("jetpack") or {}
    l4t = (board.get("l4t") or "").strip().splitlines()
    toolchain = {
        "backend": payload.get("backend"), "runtime": payload.get("runtime_version"), "board_python": board.get("python"),
        "l4t": l4t[0].lstrip("# ") if l4t else None,
        "jetpack": (jetpack.get("out") or "").strip() or None if jetpack.get("code") == 0 else None,
        "vitis_ai": vai,
    }
    return _drop_none(state), _drop_none(toolchain)


@dataclass
class DeviceEvaluation:
    result: Any  # edgeyolo.train.metrics.EvalResult
    detections: list[Any]
    samples: list[Any]
    skipped: list[str]
    infer_seconds: float
    model: str


def score_detections(found: DeviceDetections, dataset: Any, metric: str = "coco", max_det: int = 100) -> DeviceEvaluation:
    """The board's detections on ``dataset`` (a DetectionDataset) scored with ``metric``."""
    from edgeyolo.train.metrics import evaluate

    result = evaluate(
        [s.annotation for s in found.samples], found.detections, dataset.num_classes, metric=metric, names=dataset.names,
        image_ids=[s.image_id for s in found.samples], max_det=max_det, category_ids=dataset.category_ids,
    )
    return DeviceEvaluation(result, found.detections, found.samples, found.skipped, found.infer_seconds, found.model)


def predict_on_device(
    transport: Transport,
    model: str | Path,
    dataset: Any,
    metric: str = "coco",
    conf: float = 0.001,
    iou: float = 0.6,
    max_det: int = 100,
    on_log: LineSink | None = None,
    progress: Progress | None = None,
    engine: bool | None = None,
    precision: str | None = None,
    calib_cache: str | Path | None = None,
    trtexec: str | None = None,
    build_timeout: float = 3600.0,
) -> DeviceEvaluation:
    """Detections on the board for every image of ``dataset``, scored here with the metrics ``edgeyolo
    test`` uses; the thresholds default to test's (full PR curve). An ``.onnx`` on a jetson-* device is
    scored as its TensorRT engine, as ``edgeyolo.targets.runner.bench_device`` times it."""
    found = detect_on_device(transport, model, dataset, conf, iou, max_det, on_log=on_log, progress=progress, engine=engine,
                             precision=precision, calib_cache=calib_cache, trtexec=trtexec, build_timeout=build_timeout)
    return score_detections(found, dataset, metric, max_det)
