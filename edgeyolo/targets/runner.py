"""Deploy, bench and doctor a board, written against the :class:`Transport` protocol only.

What runs on the board is ``agent.py`` (uploaded with every deploy, skipped when unchanged); what it
writes is JSON lines, read back even when the agent died, so a crash mid-benchmark still reports
the frames it timed. The board only returns detections: ``edgeyolo.bench.board`` scores them on
the host with the same metrics code as ``edgeyolo test``. What differs between kinds of boards (the
native artifact, the engine built on a Jetson, power readings, doctor's tool rows) is asked of the
target's :class:`~edgeyolo.targets.families.BoardFamily`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

from edgeyolo.errors import ConnectionFailed, InputFileError, RemoteCommandError, RemoteTimeout, TargetError, UsageError
from edgeyolo.targets.deploy import AGENT, DATA, MODEL_SUFFIXES, RUNS, DeployReport, agent_source, deploy_plan, upload
from edgeyolo.targets.families import BASE_TOOLS, BoardFamily, Family, all_families, get_family
from edgeyolo.targets.profiles import TARGETS, get_target
from edgeyolo.targets.transport import BoardLock, LineSink, Progress, Transport

log = logging.getLogger(__name__)


def pick_model(plan: Sequence[tuple[Path, str]], family: BoardFamily | None = None) -> str:
    """The model file a bench runs: the board family's native artifact when the bundle has one."""
    remotes = [r for _, r in plan[1:] if Path(r).suffix.lower() in MODEL_SUFFIXES]
    if not remotes:
        raise InputFileError(f"nothing to run: expected a model file ({', '.join(MODEL_SUFFIXES)}) or a folder with one")
    return (family or get_family(Family.HOST)).pick_model(remotes)


def target_family(target: str) -> BoardFamily | None:
    """The family of a known target profile; None for a board without one (a 'generic' device)."""
    try:
        return get_target(target).family_obj
    except (UsageError, TargetError):
        return None


def device_family(target: str) -> BoardFamily:
    """The family whose artifacts a device runs: its profile's, the host's for a board without one."""
    return target_family(target) or get_family(Family.HOST)


# ------------------------------------------------------------------------------------ bench


@dataclass(frozen=True)
class Percentiles:
    p50: float
    p90: float
    p99: float
    mean: float

    @staticmethod
    def of(values: Sequence[float]) -> "Percentiles":
        import numpy as np

        if not values:
            return Percentiles(float("nan"), float("nan"), float("nan"), float("nan"))
        a = np.asarray(values, dtype=np.float64)
        p50, p90, p99 = np.percentile(a, [50, 90, 99])
        return Percentiles(float(p50), float(p90), float(p99), float(a.mean()))


@dataclass
class Phase:
    """One timed phase: ``streams`` concurrent pre -> infer -> post loops."""

    streams: int
    frames: int
    seconds: float
    latency_ms: Percentiles  # end to end per frame
    pre_ms: float  # medians of the split
    infer_ms: float
    post_ms: float
    complete: bool
    power_w: float | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    @property
    def fps_per_w(self) -> float | None:
        return self.fps / self.power_w if self.power_w else None


@dataclass
class DeviceBench:
    device: str
    model: str
    backend: str = ""
    runtime_version: str = ""
    input_size: list[int] = field(default_factory=list)
    phases: list[Phase] = field(default_factory=list)
    board: dict[str, Any] = field(default_factory=dict)
    power_mode: str | None = None
    partial: bool = False
    error: str | None = None
    deploy: DeployReport | None = None
    results_file: str = ""
    engine: dict[str, Any] | None = None  # the TensorRT engine built (or found) on the board for an ONNX

    def phase(self, streams: int) -> Phase | None:
        return next((p for p in self.phases if p.streams == streams), None)

    def to_dict(self) -> dict[str, Any]:
        phases = [{**asdict(p), "fps": p.fps, "fps_per_w": p.fps_per_w} for p in self.phases]
        return {
            "device": self.device, "model": self.model, "backend": self.backend, "runtime_version": self.runtime_version,
            "input_size": self.input_size, "phases": phases, "power_mode": self.power_mode, "partial": self.partial,
            "error": self.error, "results_file": self.results_file, "board": self.board,
            "deploy": self.deploy.to_dict() if self.deploy else None, "engine": self.engine,
        }


def parse_records(text: str) -> list[dict[str, Any]]:
    """JSON lines as far as they are whole: a line cut by a crash is dropped, not fatal."""
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _power_w(readers: Sequence[BoardFamily], record: dict[str, Any] | None) -> float | None:
    if record is None:
        return None
    return next((w for w in (f.power_w(record) for f in readers) if w is not None), None)


def summarize_records(records: list[dict[str, Any]], bench: DeviceBench, family: BoardFamily | None = None) -> DeviceBench:
    """Fill ``bench`` from the agent's records; phases without an end record are partial. Power and the
    power mode are read by the board's ``family`` first, then by any family whose probe wrote them
    (a board with no profile, or a Jetson benchmarked as a plain host, still reports its power)."""
    readers = all_families(family)
    lat: dict[int, list[list[float]]] = {}
    ends: dict[int, dict[str, Any]] = {}
    last_t: dict[int, float] = {}
    power: dict[int, dict[str, Any]] = {}
    done = False
    for r in records:
        kind = r.get("kind")
        if kind == "setup":
            bench.backend, bench.runtime_version = r.get("backend", ""), r.get("runtime_version", "")
            bench.input_size = list(r.get("input", []))
        elif kind == "board":
            bench.board = r.get("state", {})
        elif kind == "phase_start":
            lat.setdefault(r["streams"], [])
        elif kind == "frames":
            lat.setdefault(r["streams"], []).extend(r["lat"])
            last_t[r["streams"]] = r["t"]
        elif kind == "phase_end":
            ends[r["streams"]] = r
        elif kind == "power":
            power[r["streams"]] = r
        elif kind == "done":
            done = True
    for streams, rows in sorted(lat.items()):
        end = ends.get(streams)
        seconds = end["seconds"] if end else last_t.get(streams, 0.0)
        totals = [sum(row) for row in rows]
        med = (lambda k: statistics.median(row[k] for row in rows) if rows else float("nan"))
        bench.phases.append(
            Phase(streams, len(rows), seconds, Percentiles.of(totals), med(0), med(1), med(2), end is not None,
                  _power_w(readers, power.get(streams)), list(end.get("errors", [])) if end else [])
        )
    bench.power_mode = next((m for m in (f.power_mode(bench.board) for f in readers) if m is not None), None)
    bench.partial = not done
    return bench


WATCHDOG_S = 10.0  # the agent stops this long after the client's last heartbeat (at once when it dies)


def run_agent(
    transport: Transport, argv: Sequence[object], out: str, timeout: float, on_log: LineSink | None
) -> tuple[list[dict[str, Any]], TargetError | None]:
    """Run the agent under a watchdog (a client that dies or goes silent stops it); whatever
    happens, read back the records it wrote."""
    error: TargetError | None = None
    try:
        transport.run([transport.device.python, AGENT, *argv, "--out", out, "--watchdog", WATCHDOG_S],
                      timeout=timeout, on_stderr=on_log, heartbeat=1.0)
    except RemoteCommandError as exc:
        error = _agent_error(transport, exc)
    except (RemoteTimeout, ConnectionFailed) as exc:
        error = exc
    data = None
    for attempt in range(2):
        try:
            data = transport.read_bytes(out)
            break
        except (ConnectionFailed, OSError, EOFError) as exc:
            if attempt:
                raise ConnectionFailed(f"{transport.device.name}: could not read back {out}: {exc}") from None
            transport.reconnect()
    records = parse_records(data.decode("utf-8", "replace")) if data else []
    return records, error


AGENT_ERROR = "edgeyolo-agent: error: "


def _agent_error(transport: Transport, exc: RemoteCommandError) -> TargetError:
    """The agent's own one-line diagnosis (a full disk, a missing module) when it gave one, rather
    than the exit status or whatever the runtime printed after it."""
    said = [line[len(AGENT_ERROR):] for line in exc.stderr.splitlines() if line.startswith(AGENT_ERROR)]
    return AgentFailed(transport.device.name, exc, said[-1]) if said else exc


class AgentFailed(RemoteCommandError):
    """The agent stopped with its own one-line diagnosis; cmd, code and stderr as for any command."""

    def __init__(self, device: str, exc: RemoteCommandError, said: str):
        TargetError.__init__(self, f"{device}: the agent failed: {said}")
        self.cmd, self.code, self.stderr = exc.cmd, exc.code, exc.stderr


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def bench_device(
    transport: Transport,
    model: str | Path,
    duration: float = 30.0,
    warmup: float = 3.0,
    streams: int = 0,
    ort_threads: int = 0,
    images: Path | None = None,
    on_log: LineSink | None = None,
    progress: Progress | None = None,
    engine: bool | None = None,
    precision: str | None = None,
    calib_cache: str | Path | None = None,
    trtexec: str | None = None,
    build_timeout: float = 3600.0,
) -> DeviceBench:
    """Deploy ``model`` (skipped when unchanged) and time it on the board: FPS with 1 and N streams,
    latency percentiles, the pre/infer/post split, power and board state.

    An ``.onnx`` for a jetson-* device is benchmarked as the TensorRT engine built from it on the
    board (cached there; see ``edgeyolo.targets.jetson.engine``) unless ``engine`` is False, which
    times the ONNX itself with onnxruntime on the board's CPU.
    """
    if duration <= 0 or warmup < 0 or streams < 0:
        raise UsageError("--duration must be positive; --warmup and --threads must not be negative")
    dev = transport.device
    family = device_family(dev.target)
    buildable = family.builds_on_board(model)
    if engine is None:
        engine = buildable
    elif engine and not buildable:
        raise UsageError(f"an engine is built from an .onnx on a jetson-* device; {dev.name} has target "
                         f"'{dev.target}' and the model is {Path(model).name}")
    if not engine and (precision is not None or calib_cache is not None):
        raise UsageError("--precision and --calib choose how the TensorRT engine is built; they need an .onnx on a jetson-* device")
    engine_result = None
    with tempfile.TemporaryDirectory() as tmp:
        plan = deploy_plan([model], Path(tmp))
        remote_model = pick_model(plan, family)
        extra: list[tuple[Path, str]] = []
        if images is not None:
            files = sorted(p for p in Path(images).iterdir() if p.is_file())[:64]
            if not files:
                raise InputFileError(f"--images {images}: no files")
            extra = [(f, f"{DATA}/bench-images/{f.name}") for f in files]
        with BoardLock(transport, f"bench {Path(model).name}"):
            report = upload(transport, plan + extra, progress)
            if engine:
                engine_result = family.prepare(transport, model, precision=precision, calib_cache=calib_cache,
                                               timeout=build_timeout, on_log=on_log, trtexec=trtexec)
                remote_model = engine_result.engine
            out = f"{RUNS}/{new_run_id()}.jsonl"
            argv: list[object] = ["bench", "--model", remote_model, "--duration", duration, "--warmup", warmup,
                                  "--streams", streams, "--ort-threads", ort_threads, "--workdir", "."]
            if extra:
                argv += ["--images", f"{DATA}/bench-images"]
            # two phases (1 and N streams), each warm-up + duration, plus model load time
            records, error = run_agent(transport, argv, out, 2 * (warmup + duration) + 120.0, on_log)
    bench = summarize_records(records, DeviceBench(dev.name, remote_model, deploy=report, results_file=out,
                                                   engine=engine_result.to_dict() if engine_result else None),
                              target_family(dev.target))
    if error is not None:
        if not any(p.frames for p in bench.phases):
            raise error
        bench.error, bench.partial = str(error), True
    return bench


# ------------------------------------------------------------------------------------ detections


@dataclass
class DeviceDetections:
    """What the board detected on a dataset; scored on the host by ``edgeyolo.bench.board``."""

    detections: list[Any]  # one (n, 6) array per detected sample: x1, y1, x2, y2, score, class
    samples: list[Any]  # the dataset samples the detections belong to, in the same order
    skipped: list[str]  # images the board could not read
    infer_seconds: float
    model: str  # the remote model file that ran


def detect_on_device(
    transport: Transport,
    model: str | Path,
    dataset: Any,
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
) -> DeviceDetections:
    """Detections on the board for every image of ``dataset`` (a DetectionDataset: ``source`` and
    ``samples`` with an ``image`` path each); the thresholds default to ``edgeyolo test``'s (full PR
    curve). An ``.onnx`` on a board whose family builds its native artifact there (a Jetson's
    TensorRT engine) runs as that artifact, as :func:`bench_device` times it."""
    import numpy as np

    dev = transport.device
    family = device_family(dev.target)
    if engine is None:
        engine = family.builds_on_board(model)
    with tempfile.TemporaryDirectory() as tmp:
        plan = deploy_plan([model], Path(tmp))
        remote_model = pick_model(plan, family)
        source = str(dataset.source) or "set"
        tag = f"{DATA}/eval-{Path(source).stem}-{hashlib.sha1(source.encode()).hexdigest()[:8]}"
        images = [(s.image, f"{tag}/{i:06d}{Path(s.image).suffix.lower()}") for i, s in enumerate(dataset.samples)]
        listing = Path(tmp) / "list.txt"
        listing.write_text("".join(r + "\n" for _, r in images))
        with BoardLock(transport, f"predict {Path(model).name}"):
            upload(transport, plan + images + [(listing, f"{tag}/list.txt")], progress)
            if engine:
                remote_model = family.prepare(transport, model, precision=precision, calib_cache=calib_cache,
                                              timeout=build_timeout, on_log=on_log, trtexec=trtexec).engine
            out = f"{RUNS}/{new_run_id()}.preds.jsonl"
            argv: list[object] = ["predict", "--model", remote_model, "--list", f"{tag}/list.txt", "--conf", conf,
                                  "--iou", iou, "--max-det", max_det, "--workdir", "."]
            records, error = run_agent(transport, argv, out, dev.command_timeout + 10.0 * len(images), on_log)
    if error is not None:
        raise error
    dets = {r["index"]: np.asarray(r["det"], dtype=np.float32).reshape(-1, 6) for r in records if r.get("kind") == "det"}
    skipped = [str(dataset.samples[r["index"]].image) for r in records if r.get("kind") == "skip"]
    done = next((r for r in records if r.get("kind") == "done"), None)
    if done is None:
        raise TargetError(f"{dev.name}: the agent stopped after {len(dets)} of {len(images)} images; see {out} on the board")
    samples = [s for i, s in enumerate(dataset.samples) if i in dets]
    detections = [dets[i] for i in range(len(dataset.samples)) if i in dets]
    return DeviceDetections(detections, samples, skipped, float(done.get("infer_seconds", 0.0)), remote_model)


# ------------------------------------------------------------------------------------ housekeeping

# removes partial uploads (".<name>.<sha256 prefix>.part") under the workdir; prints [[path, bytes], ...]
_CLEAN = r"""
import json, os, re, sys
part = re.compile(r"^\..+\.[0-9a-f]{16}\.part$")
gone = []
for folder, _, names in os.walk(sys.argv[1]):
    for name in names:
        if part.match(name):
            path = os.path.join(folder, name)
            try:
                size = os.path.getsize(path); os.remove(path); gone.append([path, size])
            except OSError:
                pass
print(json.dumps(gone))
"""


def clean(transport: Transport) -> list[tuple[str, int]]:
    """Remove every partial upload left in the workdir by interrupted deploys (each can be as large
    as the model it was), under the board lock so that no upload in progress loses its file."""
    dev = transport.device
    with BoardLock(transport, "clean"):
        res = transport.run([dev.python, "-c", _CLEAN, dev.remote_workdir], timeout=120, cwd=None)
    return [(p, int(n)) for p, n in json.loads(res.stdout)]


# ------------------------------------------------------------------------------------ doctor


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # ok | missing | warn
    detail: str = ""
    needed: bool = False  # the target cannot deploy or bench without it: doctor fails when it is missing


def _doctor_rows(target: str) -> tuple[frozenset[str], frozenset[str]]:
    """(needed, hidden) doctor rows for a board: its family's tables; a board without a profile
    ('generic') sees every row and needs only what every board needs."""
    family = target_family(target)
    if family is None:
        return BASE_TOOLS, frozenset()
    return family.needed_tools, family.hidden_tools()


def doctor_failures(checks: Sequence[Check]) -> list[Check]:
    """The needed rows that are missing: a non-empty list fails ``edgeyolo doctor``."""
    return [c for c in checks if c.needed and c.status == "missing"]


def _version_ok(text: str, minimum: tuple[int, ...]) -> bool:
    try:
        return tuple(int(p) for p in text.split(".")[: len(minimum)]) >= minimum
    except ValueError:
        return False


def doctor(transport: Transport, on_log: LineSink | None = None) -> list[Check]:
    """One line per thing a deploy or benchmark on this kind of board needs: ok, missing or warn;
    ``needed`` marks what the target cannot do without (see :func:`doctor_failures`)."""
    needed, hidden = _doctor_rows(transport.device.target)
    return [replace(c, needed=c.name in needed) for c in _doctor(transport, on_log) if c.name not in hidden]


def _doctor(transport: Transport, on_log: LineSink | None = None) -> list[Check]:
    dev = transport.device
    checks = [Check("ssh", "ok", f"{dev.address} host key {getattr(transport, 'host_key_fingerprint', '') or 'recorded'}")]
    res = transport.run([dev.python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"], check=False, timeout=30)
    version = res.stdout.strip()
    if res.code != 0 or not version:
        checks.append(Check("python", "missing", f"'{dev.python}' does not run on the board; set python in the inventory"))
        return checks
    checks.append(Check("python", "ok" if _version_ok(version, (3, 6)) else "missing", f"{dev.python} {version} (agent needs >= 3.6)"))
    with BoardLock(transport, "doctor"):
        transport.put(agent_source(), AGENT)
        info = json.loads(transport.run([dev.python, AGENT, "info", "--workdir", "."], timeout=120, on_stderr=on_log).stdout)
    mods = info.get("modules", {})

    def module(name: str, label: str, why: str) -> Check:
        v = mods.get(name)
        return Check(label, "ok" if v else "missing", f"{v}" if v else why)

    checks += [
        module("numpy", "numpy", "pip3 install numpy (needed by the agent)"),
        module("cv2", "opencv", "apt install python3-opencv (needed by the agent)"),
        module("onnxruntime", "onnxruntime", "optional: pip3 install onnxruntime, for ONNX on the CPU"),
        module("tensorrt", "tensorrt", "JetPack's python3-libnvinfer (Jetson only)"),
    ]
    cuda = mods.get("pycuda") or mods.get("cuda")
    checks.append(Check("pycuda / cuda-python", "ok" if cuda else "missing",
                        f"pycuda {mods['pycuda']}" if mods.get("pycuda") else f"cuda-python {cuda}" if cuda else "pip3 install pycuda (Jetson only)"))
    checks.append(Check("trtexec", "ok" if info.get("trtexec") else "missing", info.get("trtexec") or "/usr/src/tensorrt/bin/trtexec (JetPack)"))
    checks.append(module("vart", "vart", "Vitis AI runtime on the board image (Zynq only)"))
    checks.append(module("xir", "xir", "Vitis AI runtime on the board image (Zynq only)"))
    fingerprint = None
    query = info.get("xdputil_query") or {}
    m = re.search(r'"fingerprint"\s*:\s*"(0x[0-9a-fA-F]+)"', query.get("out") or "")
    if m:
        fingerprint = m.group(1)
    checks.append(Check("xdputil", "ok" if info.get("xdputil") else "missing",
                        (f"{info['xdputil']}, DPU fingerprint {fingerprint or 'not reported'}") if info.get("xdputil") else "Vitis AI board image (Zynq only)"))
    l4t = (info.get("l4t") or "").strip().splitlines()
    jetpack = (info.get("jetpack") or {}).get("out", "").strip() if (info.get("jetpack") or {}).get("code") == 0 else ""
    checks.append(Check("L4T / JetPack", "ok" if l4t else "missing",
                        (l4t[0].lstrip("# ") + (f"; JetPack {jetpack}" if jetpack else "")) if l4t else "not a Jetson (/etc/nv_tegra_release)"))
    for key, label, why in (("nvpmodel", "nvpmodel", "Jetson power-mode tool"), ("jetson_clocks", "jetson_clocks", "Jetson clock tool")):
        entry = info.get(key)
        if not entry:
            checks.append(Check(label, "missing", why))
            continue
        text = (entry.get("out") or "").strip().splitlines()
        checks.append(Check(label, "ok" if entry.get("code") == 0 else "warn", text[0] if text else f"exit {entry.get('code')}"))
    disk = info.get("disk")
    if disk:
        free_gb = disk["free"] / 1e9
        checks.append(Check("disk", "ok" if free_gb >= 1.0 else "warn", f"{free_gb:.1f} GB free in {disk['path']}"))
    else:
        checks.append(Check("disk", "missing", "statvfs of the workdir failed"))
    checks += _against_profile(dev.target, info, fingerprint)
    swap = re.search(r"SwapTotal:\s+(\d+) kB", info.get("meminfo") or "")
    swap_mb = int(swap.group(1)) / 1024 if swap else 0
    checks.append(Check("swap", "ok" if swap_mb > 0 else "missing",
                        f"{swap_mb:.0f} MB" if swap_mb else "no swap: TensorRT engine builds on 4 GB boards get OOM-killed; add a swap file"))
    return checks


def _against_profile(target: str, info: dict[str, Any], fingerprint: str | None) -> list[Check]:
    """What the board reports against its target profile: the DPU fingerprint (an xmodel compiled for
    another one does not run) and the DLA count. Only where the board reports them."""
    if target not in TARGETS.names():
        return []
    profile = TARGETS.get(target)
    checks: list[Check] = []
    if profile.dpu_images and fingerprint:
        known = {image.fingerprint_hex.lower(): image.label for image in profile.dpu_images}
        match = known.get(fingerprint.lower())
        checks.append(Check("DPU vs profile", "ok" if match else "warn",
                            f"{fingerprint} is {match}" if match else
                            f"{fingerprint} is none of {target}'s images ({', '.join(known)}): compile with --fingerprint {fingerprint}"))
    if profile.tensorrt is not None and info.get("l4t"):
        dla, expected = int(info.get("dla_cores") or 0), profile.tensorrt.dla_cores
        checks.append(Check("DLA vs profile", "ok" if dla == expected else "warn",
                            f"{dla} DLA core(s)" + ("" if dla == expected else f"; the {target} profile expects {expected}")))
    return checks


# ------------------------------------------------------------------------------------ transfer speed


@dataclass(frozen=True)
class ThroughputRow:
    method: str
    megabytes: float
    seconds: float

    @property
    def mb_per_s(self) -> float:
        return self.megabytes / self.seconds if self.seconds > 0 else float("inf")


def upload_throughput(transport: Transport, size_mb: int = 128, scp: str | None = "scp") -> list[ThroughputRow]:
    """Fresh upload of a random file through the transport vs ``scp``, then the unchanged re-upload."""
    dev = transport.device
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "payload.bin"
        with open(src, "wb") as fh:
            for _ in range(size_mb):
                fh.write(os.urandom(1 << 20))
        with BoardLock(transport, "throughput"):
            transport.run(["rm", "-f", "throughput/payload.bin", "throughput/scp.bin"])
            t0 = time.monotonic()
            up = transport.put(src, "throughput/payload.bin")
            rows.append(ThroughputRow("edgeyolo put (hash, write, verify, rename)", size_mb, time.monotonic() - t0))
            rows.append(ThroughputRow("  of which the SFTP write", size_mb, up.seconds))
            t0 = time.monotonic()
            again = transport.put(src, "throughput/payload.bin")
            rows.append(ThroughputRow(f"edgeyolo redeploy unchanged ({again.sent} bytes sent)", 0, time.monotonic() - t0))
            if scp and shutil.which(scp):
                hop = getattr(transport, "hop", None)  # the ssh config's HostName, Port and User applied
                user, host, port = (hop.user, hop.host, hop.port) if hop is not None else (dev.user, dev.host, dev.port)
                target = f"{user}@{host}:{transport.remote_path('throughput/scp.bin')}"
                cmd = [scp, "-q", "-P", str(port), "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                       "-o", f"UserKnownHostsFile={Path(dev.known_hosts).expanduser()}"]
                jumps = getattr(transport, "jump_hops", [])
                if jumps:
                    cmd += ["-J", ",".join(f"{j.user}@{j.host}:{j.port}" for j in jumps)]
                if dev.key_file:
                    cmd += ["-i", str(Path(dev.key_file).expanduser())]
                for label, flag in (("scp (SFTP protocol)", []), ("scp -O (legacy SCP protocol)", ["-O"])):
                    t0 = time.monotonic()
                    proc = subprocess.run(cmd + flag + [str(src), target], capture_output=True, text=True, timeout=600)
                    if proc.returncode == 0:
                        rows.append(ThroughputRow(label, size_mb, time.monotonic() - t0))
                    else:
                        log.warning("%s failed: %s", label, proc.stderr.strip())
            transport.run(["rm", "-rf", "throughput"])
    return rows
