"""``edgeyolo deploy``, ``edgeyolo doctor`` and ``edgeyolo bench device`` / ``bench deploy-throughput``."""
from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import List, Optional

import typer

DeviceOpt = typer.Option(..., "--device", "-d", help="Device name in the inventory (devices.yaml).")
InventoryOpt = typer.Option(
    None, "--inventory", help="devices.yaml (default: $EDGEYOLO_DEVICES, ./devices.yaml, ~/.config/edgeyolo/devices.yaml)."
)
TrustOpt = typer.Option(
    False, "--trust-new-host-key", help="Accept and record an unknown or changed host key (verify its fingerprint first)."
)


def _connect(device: str, inventory: Optional[Path], trust: bool):
    from edgeyolo.targets.inventory import get_device
    from edgeyolo.targets.transport import SshTransport

    def remote_log(line: str) -> None:
        typer.secho(f"  [{device}] {line}", err=True, dim=True)

    return SshTransport(get_device(device, inventory), trust_new_host_key=trust, on_stderr=remote_log)


def _progress():
    """A per-file byte counter on a TTY, nothing otherwise."""
    import sys

    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        sys.stderr.write(f"\r  {done / 1e6:8.1f} / {total / 1e6:.1f} MB")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


PrecisionOpt = typer.Option(
    None, "--precision", help="TensorRT engine precision: fp32 | fp16 | int8 (default: the target's; int8 needs a Q/DQ ONNX or --calib)."
)
CalibOpt = typer.Option(None, "--calib", help="INT8 calibration cache for the engine build (implicit quantization).")
TrtexecOpt = typer.Option(
    None, "--trtexec", help="trtexec on the board (default: the target's, /usr/src/tensorrt/bin/trtexec); relative to the workdir."
)
BuildTimeoutOpt = typer.Option(3600.0, "--build-timeout", help="Seconds an engine build on the board may take.")


def deploy(
    artifacts: List[Path] = typer.Argument(..., help="Model files (.onnx/.engine/.xmodel) or bundle folders."),
    device: str = DeviceOpt,
    inventory: Optional[Path] = InventoryOpt,
    trust_new_host_key: bool = TrustOpt,
    engine: bool = typer.Option(
        False, "--engine", help="Also build the TensorRT engine of each .onnx on the board (jetson-* devices; cached by TensorRT, GPU, precision, shape, ONNX)."
    ),
    precision: Optional[str] = PrecisionOpt,
    calib: Optional[Path] = CalibOpt,
    trtexec: Optional[str] = TrtexecOpt,
    build_timeout: float = BuildTimeoutOpt,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Copy artifacts (and the agent) to the board: unchanged files cost 0 bytes; a dropped upload resumes.
    With --engine, build each ONNX's TensorRT engine there with trtexec (skipped when already built)."""
    from edgeyolo.errors import UsageError
    from edgeyolo.targets.runner import deploy as run_deploy

    onnx = [a for a in artifacts if a.is_file() and a.suffix.lower() == ".onnx"]
    if not engine and (precision is not None or calib is not None or trtexec is not None):
        raise UsageError("--precision, --calib and --trtexec set how the engine is built; add --engine")
    if engine and not onnx:
        raise UsageError("--engine builds TensorRT engines from .onnx files; none was given")
    with _connect(device, inventory, trust_new_host_key) as transport:
        profile = _engine_profile(transport.device) if engine else None
        report = run_deploy(transport, artifacts, progress=_progress())
        engines = []
        if profile is not None:
            from edgeyolo.targets.jetson.engine import engine_summary, ensure_engine

            for path in onnx:
                built = ensure_engine(transport, path, profile, precision, calib_cache=calib, timeout=build_timeout,
                                      on_log=None if as_json else transport.on_stderr, trtexec=trtexec)
                engines.append(built)
                if not as_json:
                    typer.echo(engine_summary(built))
    if as_json:
        payload = {"device": device, **report.to_dict()}
        if engine:
            payload["engines"] = [e.to_dict() for e in engines]
        typer.echo(json.dumps(payload, indent=1))
        return
    for u in report.uploads:
        state = "unchanged" if u.skipped else f"resumed at {_size(u.resumed_from)}" if u.resumed_from else "uploaded"
        typer.echo(f"{state:>22}  {_size(u.size):>9}  {u.remote}")
    typer.echo(f"{device}: {len(report.uploads)} files, {report.unchanged} unchanged, {_size(report.bytes_sent)} sent in {report.seconds:.1f} s")


def _engine_profile(dev):
    """The jetson-* profile of an inventory device, or a UsageError saying how to set it."""
    from edgeyolo.errors import UsageError
    from edgeyolo.targets.profiles import Family, get_target

    try:
        profile = get_target(dev.target)
    except UsageError:
        profile = None
    if profile is None or profile.family is not Family.JETSON:
        raise UsageError(
            f"--engine builds TensorRT engines on Jetson boards; device '{dev.name}' has target '{dev.target}'. "
            "Set its target in the inventory (target: jetson-nano, jetson-tx2, jetson-xavier-nx or jetson-orin-nano)"
        )
    return profile


def doctor(
    device: str = DeviceOpt,
    inventory: Optional[Path] = InventoryOpt,
    trust_new_host_key: bool = TrustOpt,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """What the board has for deploying and benchmarking: one line per tool, ok / missing / warn."""
    from edgeyolo.targets.runner import doctor as run_doctor

    from edgeyolo.targets.runner import doctor_failures

    with _connect(device, inventory, trust_new_host_key) as transport:
        checks = run_doctor(transport)
        target = transport.device.target
    failed = doctor_failures(checks)
    if as_json:
        typer.echo(json.dumps([c.__dict__ for c in checks], indent=1))
    else:
        colours = {"ok": "green", "missing": "yellow", "warn": "red"}
        for c in checks:
            status = typer.style(f"{c.status:>7}", fg="red" if c in failed else colours.get(c.status))
            typer.echo(f"{status}  {c.name:<20} {c.detail}" + ("" if c.needed or c.status == "ok" else " (optional)"))
    if failed:
        typer.echo(f"error: {device} ({target}) lacks what it needs: {', '.join(c.name for c in failed)}", err=True)
        raise typer.Exit(1)


def _fmt(value: Optional[float], spec: str = ".1f") -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def bench_device(
    device: str = DeviceOpt,
    model: Path = typer.Option(..., "--model", help="Model file (.onnx/.engine/.xmodel) or a bundle folder."),
    duration: float = typer.Option(30.0, "--duration", help="Timed seconds per phase (1 stream, then N)."),
    warmup: float = typer.Option(3.0, "--warmup", help="Untimed seconds before each phase."),
    threads: int = typer.Option(0, "--threads", help="Streams of the second phase (0: min(4, board CPUs))."),
    ort_threads: int = typer.Option(0, "--ort-threads", help="onnxruntime intra-op threads on the board (0: its default)."),
    images: Optional[Path] = typer.Option(None, "--images", help="Images to time on (default: seeded noise)."),
    map_data: Optional[Path] = typer.Option(None, "--map", help="Also score mAP on this dataset's val split (host-side)."),
    metric: str = typer.Option("coco", "--metric", help="coco | voc07 | voc12 (with --map)."),
    engine: Optional[bool] = typer.Option(
        None, "--engine/--no-engine", help="On a jetson-* device an .onnx is timed as its TensorRT engine built on the board; --no-engine times the ONNX with onnxruntime."
    ),
    precision: Optional[str] = PrecisionOpt,
    calib: Optional[Path] = CalibOpt,
    trtexec: Optional[str] = TrtexecOpt,
    build_timeout: float = BuildTimeoutOpt,
    inventory: Optional[Path] = InventoryOpt,
    trust_new_host_key: bool = TrustOpt,
    record: bool = typer.Option(False, "--record", help="Store the run in the results database (see 'edgeyolo results')."),
    db: Optional[Path] = typer.Option(
        None, "--db", help="Results database for --record (default: $EDGEYOLO_RESULTS_DB, else $XDG_DATA_HOME/edgeyolo/results.sqlite)."
    ),
    label: Optional[str] = typer.Option(None, "--label", help="With --record: label the run (e.g. a baseline name for 'results check')."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Deploy and time a model on a board: FPS (1 and N streams), latency p50/p90/p99, pre/infer/post, power."""
    if (db is not None or label is not None) and not record:
        from edgeyolo.errors import UsageError

        raise UsageError("--db and --label only apply with --record")
    recording = _recording(device, inventory, model, db, label) if record else contextlib.nullcontext()
    build = {"engine": engine, "precision": precision, "calib_cache": calib, "trtexec": trtexec, "build_timeout": build_timeout}
    with recording as run:
        _bench_device(device, model, duration, warmup, threads, ort_threads, images, map_data, metric, inventory,
                      trust_new_host_key, as_json, run, build)


def _bench_device(device, model, duration, warmup, threads, ort_threads, images, map_data, metric, inventory,
                  trust_new_host_key, as_json, run, build) -> None:
    from rich.console import Console
    from rich.table import Table

    from edgeyolo.errors import TargetError
    from edgeyolo.targets.runner import bench_device as run_bench
    from edgeyolo.targets.runner import predict_on_device

    with _connect(device, inventory, trust_new_host_key) as transport:
        log = transport.on_stderr
        result = run_bench(transport, model, duration, warmup, threads, ort_threads, images, on_log=log, progress=_progress(),
                           **build)
        evaluation = None
        if map_data is not None and result.error is None:
            from edgeyolo.data.formats import load_dataset

            evaluation = predict_on_device(transport, model, load_dataset(map_data, "val"), metric, on_log=log, **build)
    payload = result.to_dict()
    if evaluation is not None:
        payload["accuracy"] = {"data": str(map_data), "metric": metric, "skipped": evaluation.skipped, **evaluation.result.to_dict()}
    if run is not None:
        run.metrics.update(bench_metrics(payload))
        state, toolchain = board_conditions(payload)
        run.board_state.update(state)
        run.toolchain.update(toolchain)
        payload["recorded_run"] = {"id": run.id, "metrics": run.metrics, "board_state": state, "toolchain": toolchain}
    if as_json:
        typer.echo(json.dumps(payload, indent=1, default=str))
    else:
        size = "x".join(map(str, result.input_size))
        table = Table(title=f"{device}: {Path(result.model).name} on {result.backend} {result.runtime_version} @ {size}"
                      + (f", {result.power_mode}" if result.power_mode else ""))
        for col in ("streams", "frames", "FPS", "latency ms p50 / p90 / p99", "pre / infer / post ms", "W", "FPS/W"):
            table.add_column(col, justify="right")
        for p in result.phases:
            table.add_row(
                str(p.streams), str(p.frames) + ("" if p.complete else " (partial)"), f"{p.fps:.1f}",
                f"{_fmt(p.latency_ms.p50)} / {_fmt(p.latency_ms.p90)} / {_fmt(p.latency_ms.p99)}",
                f"{_fmt(p.pre_ms, '.2f')} / {_fmt(p.infer_ms, '.2f')} / {_fmt(p.post_ms, '.2f')}",
                _fmt(p.power_w, ".2f"), _fmt(p.fps_per_w, ".2f"),
            )
        console = Console(width=140)
        console.print(table)
        if result.engine is not None:
            e, t = result.engine, result.engine.get("trtexec") or {}
            console.print(f"engine {'cached' if e['cached'] else 'built'}: {e['engine']} ({e['precision']}, TensorRT {e['tensorrt']}, {e['gpu']})"
                          + (f"; trtexec measured {t['throughput_qps']:.1f} qps" if t.get("throughput_qps") else ""))
        d = result.deploy
        if d is not None:
            console.print(f"deploy: {d.unchanged}/{len(d.uploads)} files unchanged, {_size(d.bytes_sent)} sent; results in {result.results_file} on the board")
        if evaluation is not None:
            r = evaluation.result
            console.print(f"{metric} on {map_data} (scored on the host, {r.num_images} images): mAP@0.5 {r.map50:.4f}   mAP@0.5:0.95 {r.map50_95:.4f}")
    if result.error is not None:
        if run is not None:  # raised inside the recording: the run is stored as 'failed', never gated on
            raise TargetError(f"the run did not finish (recorded as failed run {run.id}): {result.error}")
        typer.echo(f"warning: the run did not finish; the table shows what was timed before: {result.error}", err=True)
        raise typer.Exit(TargetError.exit_code)
    if run is not None and not as_json:
        typer.echo(f"recorded run {run.id}")


def _recording(device: str, inventory: Optional[Path], model: Path, db: Optional[Path], label: Optional[str]):
    """The results-database row of this bench (edgeyolo.bench.results.record_run): committed as 'running'
    before the board is touched; a bundle folder is hashed whole."""
    import shlex
    import sys

    from edgeyolo.bench.results import record_run, sha256_file
    from edgeyolo.errors import InputFileError
    from edgeyolo.targets.inventory import get_device

    if not model.exists():
        raise InputFileError(f"--model {model}: no such file or folder")
    target = get_device(device, inventory).target
    sha = tree_sha256(model) if model.is_dir() else sha256_file(model)
    return record_run(
        db, kind="board", target=target, device=device, artifact=model.resolve(), artifact_sha256=sha, label=label,
        command=shlex.join(["edgeyolo", *sys.argv[1:]]), board_state={}, toolchain={},
    )


def tree_sha256(folder: Path) -> str:
    """One sha256 over a bundle folder: each file's relative path and content hash, in sorted order."""
    import hashlib

    from edgeyolo.bench.results import sha256_file

    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(f"{f.relative_to(folder).as_posix()}\0{sha256_file(f)}\n".encode())
    return h.hexdigest()


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


def bench_deploy_throughput(
    device: str = DeviceOpt,
    size_mb: int = typer.Option(128, "--size-mb", help="Size of the random payload."),
    inventory: Optional[Path] = InventoryOpt,
    trust_new_host_key: bool = TrustOpt,
) -> None:
    """Upload speed of edgeyolo's SFTP transport vs scp on the same link (not a test: prints a table)."""
    from rich.console import Console
    from rich.table import Table

    from edgeyolo.targets.runner import upload_throughput

    with _connect(device, inventory, trust_new_host_key) as transport:
        rows = upload_throughput(transport, size_mb)
    table = Table(title=f"upload of {size_mb} MB to {device}")
    for col in ("method", "seconds", "MB/s"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(r.method, f"{r.seconds:.2f}", f"{r.mb_per_s:.0f}" if r.megabytes else "—")
    Console(width=120).print(table)


device_app = typer.Typer(help="Board housekeeping.", no_args_is_help=True)


@device_app.command("clean")
def clean(
    device: str = DeviceOpt,
    inventory: Optional[Path] = InventoryOpt,
    trust_new_host_key: bool = TrustOpt,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Remove the partial uploads interrupted deploys left in the board's workdir."""
    from edgeyolo.targets.runner import clean as run_clean

    with _connect(device, inventory, trust_new_host_key) as transport:
        removed = run_clean(transport)
    if as_json:
        typer.echo(json.dumps({"device": device, "removed": [{"path": p, "bytes": n} for p, n in removed]}, indent=1))
        return
    for path, n in removed:
        typer.echo(f"removed  {_size(n):>9}  {path}")
    typer.echo(f"{device}: {len(removed)} partial uploads removed, {_size(sum(n for _, n in removed))} freed")


def register(app: typer.Typer) -> None:
    app.command("deploy")(deploy)
    app.command("doctor")(doctor)
    app.add_typer(device_app, name="device")
