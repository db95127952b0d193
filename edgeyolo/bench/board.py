"""A board bench's JSON payload (``edgeyolo bench device --json``) read as results-database rows:
the metrics it measured and the board conditions two runs must share to be compared."""
from __future__ import annotations


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
