"""TensorRT engines built on the Jetson itself and cached there.

An engine is tied to the GPU and the TensorRT version it was built with (deploy-targets §3a), so the
host ships the ONNX and the board builds: the agent reports the board's TensorRT and GPU, and the
engine lands in ``engines/<key>.engine`` in the board's workdir, named by everything it depends on
(TensorRT version, GPU, precision, input shape, sha256 of the ONNX and of a calibration cache). The
same inputs again find the file and skip trtexec; a changed ONNX, precision or JetPack builds anew.

trtexec writes to a temporary name that is renamed only after a clean run, so ``engines/`` never
holds a half-built engine; its full log stays beside the engine (``<key>.trtexec.log``), which is
also where the throughput of a cached engine is read back from. torch-free: onnx is read here on the
host for the input shape and Q/DQ nodes; everything else runs over the :class:`Transport`.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import posixpath
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from edgeyolo.errors import InputFileError, RemoteTimeout, UsageError
from edgeyolo.targets.deploy import AGENT, MODELS, SIDECAR, deploy_plan, upload
from edgeyolo.targets.jetson.trtexec import (
    EngineKey,
    TrtexecFailed,
    Version,
    engine_key,
    format_version,
    parse_trt_version,
    parse_trtexec,
    sha256_of,
    trtexec_command,
)
from edgeyolo.targets.parsing import ToolOutputError
from edgeyolo.targets.profiles import Precision, TargetProfile, get_target
from edgeyolo.targets.transport import BoardLock, LineSink, Progress, Transport

log = logging.getLogger(__name__)

ENGINES = "engines"
LOG_TAIL = 15

# Runs trtexec on the board (argv[3:]) with its output (stdout + stderr) written to a log file
# (argv[1]) and echoed on stderr line by line, which the transport streams to the host as it comes,
# after removing a stale partial engine (argv[2]); a SIGTERM (the transport's timeout) stops trtexec
# too. Python >= 3.6, stdlib only, like the agent.
_STREAM = (
    "import os,signal,subprocess,sys\n"
    "d=os.path.dirname(sys.argv[1])\n"
    "if d and not os.path.isdir(d):os.makedirs(d)\n"
    "if os.path.exists(sys.argv[2]):os.remove(sys.argv[2])\n"
    "log=open(sys.argv[1],'wb')\n"
    "err=getattr(sys.stderr,'buffer',sys.stderr)\n"
    "try:\n"
    "    p=subprocess.Popen(sys.argv[3:],stdout=subprocess.PIPE,stderr=subprocess.STDOUT)\n"
    "except OSError as e:\n"
    "    m=('[E] cannot start %s: %s; install TensorRT (JetPack puts trtexec in /usr/src/tensorrt/bin) '\n"
    "       'or point --trtexec at it\\n'%(sys.argv[3],e)).encode()\n"
    "    log.write(m);err.write(m);sys.exit(127)\n"
    "def stop(*_):\n"
    "    p.terminate()\n"
    "signal.signal(signal.SIGTERM,stop)\n"
    "signal.signal(signal.SIGHUP,stop)\n"
    "for line in iter(p.stdout.readline,b''):\n"
    "    log.write(line);log.flush();err.write(line);err.flush()\n"
    "code=p.wait()\n"
    "sys.exit(code if code>=0 else 128-code)\n"
)

# $1 part, $2 engine, $3 the ONNX's sidecar (may be empty), $4 the engine's sidecar
_FINISH = '[ -s "$1" ] || exit 3; mv -f "$1" "$2" || exit 4; [ -z "$3" ] || [ ! -f "$3" ] || cp -f "$3" "$4"'


@dataclass(frozen=True)
class BoardTensorRT:
    """The TensorRT version and GPU an engine is built for, and where each was read."""

    version: Version
    gpu: str
    version_source: str
    gpu_source: str

    @property
    def from_board(self) -> bool:
        return not (self.version_source.startswith("profile") or self.gpu_source.startswith("profile"))


def board_tensorrt(
    info: dict[str, Any], profile: TargetProfile, trt_version: str | None = None, gpu: str | None = None
) -> BoardTensorRT:
    """What the agent's ``info`` says about TensorRT and the GPU; an explicit value wins, and the
    profile's JetPack facts fill in (with a warning) what the board did not report."""
    assert profile.tensorrt is not None
    reported = info.get("tensorrt") or {}
    if trt_version is not None:
        version, version_source = parse_trt_version(trt_version), "given"
    elif reported.get("version"):
        version, version_source = parse_trt_version(reported["version"]), f"board ({reported.get('source', '?')})"
    else:
        version, version_source = profile.tensorrt.version, f"profile {profile.name} (JetPack {profile.tensorrt.jetpack})"
    board_gpu = info.get("gpu") or {}
    if gpu is not None:
        name, gpu_source = gpu, "given"
    elif board_gpu.get("name"):
        name, gpu_source = board_gpu["name"], f"board ({board_gpu.get('source', '?')})"
    else:
        name, gpu_source = profile.tensorrt.gpu, f"profile {profile.name}"
    facts = BoardTensorRT(version, name, version_source, gpu_source)
    if not facts.from_board:
        log.warning(
            "%s did not report its %s; the engine key uses %s's (TensorRT %s, %s). Pass the real values if "
            "the board runs another JetPack, or the cache may name an engine after the wrong TensorRT",
            profile.name, " and ".join(w for w, s in (("TensorRT version", version_source), ("GPU", gpu_source))
                                       if s.startswith("profile")),
            profile.name, format_version(version), name,
        )
    return facts


# ------------------------------------------------------------------------------------ the ONNX


@dataclass(frozen=True)
class OnnxFacts:
    input_name: str
    shape: tuple[int, ...]  # with a dynamic batch / size filled in
    dynamic: bool
    qdq: bool


def onnx_facts(path: Path) -> OnnxFacts:
    """Input name and shape (dynamic dims filled from the edgeyolo contract, batch 1) and whether the
    graph carries Q/DQ nodes (explicit INT8)."""
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError & co.
        raise InputFileError(f"{path}: not a readable ONNX file ({exc})") from None
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise InputFileError(f"{path}: expected one image input, found {len(inputs)}; export it with `edgeyolo export onnx`")
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in inputs[0].type.tensor_type.shape.dim]
    dynamic = any(d is None for d in dims)
    if dynamic:
        meta = {p.key: p.value for p in proto.metadata_props}
        contract = json.loads(meta.get("edgeyolo.contract", "{}"))
        fill = [1, 3 if contract.get("channel_order") != "gray" else 1, contract.get("height"), contract.get("width")]
        if len(dims) != 4 or any(d is None and f is None for d, f in zip(dims, fill)):
            raise InputFileError(f"{path}: the input shape {dims} has free dimensions and no edgeyolo contract says their size")
        dims = [d if d is not None else f for d, f in zip(dims, fill)]
    qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)
    return OnnxFacts(inputs[0].name, tuple(int(d) for d in dims), dynamic, qdq)


def resolve_precision(profile: TargetProfile, precision: str | Precision | None, qdq: bool, calib: bool) -> Precision:
    """The precision to build: the asked one (checked against the hardware), else the profile's
    default, except that INT8 without scales (no Q/DQ, no calibration cache) falls back to FP16."""
    if precision is not None:
        p = profile.check_precision(precision)
    elif qdq:
        p = profile.check_precision(Precision.INT8)
    else:
        p = profile.default_precision
        if p is Precision.INT8 and not calib:
            log.info("%s: no Q/DQ nodes and no calibration cache, so fp16 rather than the default int8", profile.name)
            p = Precision.FP16
    if qdq and p is not Precision.INT8:
        raise UsageError(
            f"the ONNX carries Q/DQ nodes (explicit INT8), which TensorRT builds only with int8 enabled; use "
            f"--precision int8, or export the float model for {p.value}"
        )
    return p


# ------------------------------------------------------------------------------------ result


class EngineBuildFailed(TrtexecFailed):
    """trtexec failed on the board; the message adds where its full log is kept and its last lines."""

    def __init__(self, failure: TrtexecFailed, log_path: str, tail: str):
        super().__init__(failure.stage, failure.first_error, failure.cause, failure.errors, failure.trt_version, failure.command)
        self.log_path = log_path
        self.tail = tail
        self.args = (f"{self.args[0]}\ntrtexec's log is kept on the board in {log_path}; it ends with:\n{tail}",)


@dataclass
class EngineResult:
    engine: str  # remote path, relative to the board's workdir
    key: EngineKey
    cached: bool
    precision: str
    trtexec: Any  # TrtexecResult of the build's timing run (re-read from the kept log when cached), or None
    command: str  # the trtexec line that built it
    log: str  # remote path of trtexec's log
    onnx: str  # remote path of the ONNX
    facts: BoardTensorRT
    seconds: float = 0.0
    uploaded_bytes: int = 0
    notes: tuple[str, ...] = ()

    @property
    def throughput_qps(self) -> float | None:
        return self.trtexec.throughput_qps if self.trtexec is not None else None

    @property
    def latency_ms(self) -> float | None:
        """trtexec's median end-to-end latency (H2D + compute + D2H)."""
        lat = self.trtexec.latency if self.trtexec is not None else None
        return lat.median if lat is not None else None

    def to_dict(self) -> dict[str, Any]:
        t = self.trtexec
        timing = None
        if t is not None:
            timing = {"throughput_qps": t.throughput_qps,
                      "latency_ms": dataclasses.asdict(t.latency) if t.latency else None,
                      "gpu_compute_ms": dataclasses.asdict(t.gpu_compute) if t.gpu_compute else None,
                      "trt_version": format_version(t.trt_version) if t.trt_version else None}
        return {
            "engine": self.engine, "cached": self.cached, "precision": self.precision, "key": dataclasses.asdict(self.key),
            "digest": self.key.digest, "command": self.command, "log": self.log, "onnx": self.onnx,
            "tensorrt": format_version(self.facts.version), "gpu": self.facts.gpu,
            "sources": {"tensorrt": self.facts.version_source, "gpu": self.facts.gpu_source},
            "seconds": self.seconds, "uploaded_bytes": self.uploaded_bytes, "trtexec": timing, "notes": list(self.notes),
        }


@dataclass(frozen=True)
class EnginePaths:
    """Where one engine and its companions live in the workdir (all derived from the key)."""

    engine: str
    part: str
    log: str
    sidecar: str
    timing_cache: str

    @staticmethod
    def of(key: EngineKey, stem: str) -> "EnginePaths":
        name = key.filename(stem)
        base = posixpath.join(ENGINES, name[: -len(".engine")])
        return EnginePaths(
            engine=posixpath.join(ENGINES, name),
            part=posixpath.join(ENGINES, name + ".part"),
            log=base + ".trtexec.log",
            sidecar=base + ".edgeyolo.json",  # the agent finds the contract of <x>.engine in <x>.edgeyolo.json
            timing_cache=posixpath.join(ENGINES, f"timing-trt{key.trt_version}.cache"),  # one per board and TensorRT
        )


# ------------------------------------------------------------------------------------ build


def _tail(text: str, n: int = LOG_TAIL) -> str:
    return "\n".join(text.rstrip().splitlines()[-n:])


def _key_with_inputs(key: EngineKey, calib: Path | None, extra: Sequence[str]) -> EngineKey:
    """An INT8 engine built from a calibration cache depends on it as much as on the ONNX, and extra
    trtexec flags (--best, --sparsity=enable, ...) change what is built: both are folded into the
    ONNX hash of the key (EngineKey has no fields of their own for them)."""
    if calib is None and not extra:
        return key
    parts = [key.onnx_sha256]
    if calib is not None:
        parts.append(f"calib:{sha256_of(calib)}")
    if extra:
        parts.append("extra:" + json.dumps(list(extra)))
    return dataclasses.replace(key, onnx_sha256=hashlib.sha256("+".join(parts).encode()).hexdigest())


def ensure_engine(
    transport: Transport,
    onnx_local_path: str | Path,
    profile: str | TargetProfile,
    precision: str | Precision | None = None,
    *,
    qdq: bool | None = None,
    calib_cache: str | Path | None = None,
    timeout: float = 3600.0,
    on_log: LineSink | None = None,
    trtexec: str | None = None,
    workspace_mib: int | None = 1024,
    dla_core: int | None = None,
    trt_version: str | None = None,
    gpu: str | None = None,
    extra: Sequence[str] = (),
    progress: Progress | None = None,
    lock: bool = True,
) -> EngineResult:
    """The engine of ``onnx_local_path`` on the board, built there with trtexec unless cached.

    Uploads the ONNX (0 bytes when the board has it), asks the agent for the board's TensorRT and
    GPU, and looks for ``engines/<key>.engine``; when absent, runs the profile's trtexec line in the
    workdir under the board lock, streaming its log to ``on_log``. ``qdq`` None reads it from the
    graph; ``precision`` None is the profile's default (fp16 when int8 would have no scales);
    ``trtexec`` overrides the device's and the profile's path (relative paths are in the workdir); ``lock`` False is
    for callers that already hold the board lock. A failed build raises :class:`EngineBuildFailed`
    (a :class:`TrtexecFailed`) and leaves no engine behind.
    """
    prof = get_target(profile) if isinstance(profile, str) else profile
    if not prof.family_obj.builds_engine_on_board or prof.tensorrt is None:
        raise UsageError(f"{prof.name} is not a TensorRT target: engines are built on jetson-* boards")
    onnx_path = Path(onnx_local_path)
    if not onnx_path.is_file() or onnx_path.suffix.lower() != ".onnx":
        raise InputFileError(f"{onnx_path}: expected an .onnx file to build the engine from")
    calib = Path(calib_cache) if calib_cache is not None else None
    if calib is not None and not calib.is_file():
        raise InputFileError(f"--calib {calib}: no such calibration cache")
    if trtexec is None:  # the device's own path (devices.yaml 'trtexec'), else the profile's
        trtexec = getattr(getattr(transport, "device", None), "trtexec", None)
    held = BoardLock(transport, f"engine {onnx_path.name}") if lock else contextlib.nullcontext()
    with held:
        return _ensure(transport, onnx_path, prof, precision, qdq, calib, timeout, on_log, trtexec, workspace_mib,
                       dla_core, trt_version, gpu, extra, progress)


def _ensure(
    transport: Transport, onnx_path: Path, prof: TargetProfile, precision: str | Precision | None, qdq: bool | None,
    calib: Path | None, timeout: float, on_log: LineSink | None, trtexec: str | None, workspace_mib: int | None,
    dla_core: int | None, trt_version: str | None, gpu: str | None, extra: Sequence[str], progress: Progress | None,
) -> EngineResult:
    started = time.monotonic()
    dev = transport.device
    facts_onnx = onnx_facts(onnx_path)
    qdq = facts_onnx.qdq if qdq is None else qdq
    p = resolve_precision(prof, precision, qdq, calib is not None)

    with tempfile.TemporaryDirectory() as tmp:
        plan = deploy_plan([onnx_path], Path(tmp))
        remote_calib = None
        if calib is not None:
            remote_calib = f"{MODELS}/{calib.name}"
            plan.append((calib, remote_calib))
        report = upload(transport, plan, progress)
    remote_onnx = f"{MODELS}/{onnx_path.name}"
    remote_sidecar = next((r for _, r in plan if r.endswith(SIDECAR)), None)

    info = json.loads(transport.run([dev.python, AGENT, "info", "--engine"], timeout=180, on_stderr=on_log).stdout)
    facts = board_tensorrt(info, prof, trt_version, gpu)
    key = _key_with_inputs(engine_key(onnx_path, facts.version, facts.gpu, p, facts_onnx.shape, dla_core), calib, extra)
    paths = EnginePaths.of(key, onnx_path.stem)
    # the board's own TensorRT decides the trtexec flags (--workspace before 8.4, --memPoolSize after)
    board_profile = dataclasses.replace(prof, tensorrt=dataclasses.replace(prof.tensorrt, version=facts.version, gpu=facts.gpu))
    command = trtexec_command(
        board_profile, remote_onnx, paths.part, p, calib_cache=remote_calib, qdq=qdq, workspace_mib=workspace_mib,
        timing_cache=paths.timing_cache,
        shapes=f"{facts_onnx.input_name}:{'x'.join(map(str, facts_onnx.shape))}" if facts_onnx.dynamic else None,
        dla_core=dla_core, trtexec=trtexec, extra=extra,
    )
    result = EngineResult(paths.engine, key, False, p.value, None, command.line, paths.log, remote_onnx, facts,
                          uploaded_bytes=report.bytes_sent, notes=command.notes)

    if transport.run(["test", "-f", paths.engine], check=False, timeout=30).code == 0:
        result.cached = True
        text = transport.read_bytes(paths.log)
        if text:
            try:
                result.trtexec = parse_trtexec(text.decode("utf-8", "replace"))
            except (TrtexecFailed, ToolOutputError):
                pass  # a log from an older failed attempt; the engine itself is what counts
        result.seconds = time.monotonic() - started
        log.info("%s: engine cached: %s", dev.name, paths.engine)
        return result

    for note in command.notes:
        log.warning("%s", note)
    log.info("%s: building %s (%s) with: %s", dev.name, paths.engine, p.value, command.line)
    try:
        run = transport.run([dev.python, "-c", _STREAM, paths.log, paths.part, *command.argv], timeout=timeout, check=False,
                            on_stderr=on_log)
    except RemoteTimeout as exc:
        transport.run(["rm", "-f", paths.part], check=False, timeout=30)
        raise RemoteTimeout(f"{exc}; building an engine on a small Jetson can take tens of minutes (raise --timeout); "
                            f"trtexec's log so far is in {paths.log} on the board") from None
    data = transport.read_bytes(paths.log)
    text = data.decode("utf-8", "replace") if data else run.stderr
    try:
        try:
            parsed = parse_trtexec(text)
        except ToolOutputError:
            parsed = None  # no timing summary (e.g. --skipInference in extra): judged by the exit code alone
        if run.code != 0:
            errors = tuple(ln.strip() for ln in text.splitlines() if re.match(r"(\[[^]]*\] )?\[[EF]\] |ERROR:", ln.strip()))
            raise TrtexecFailed("run", errors[0] if errors else None, f"trtexec exited with code {run.code}", errors,
                                command=command.line)
        # into place only when whole; the agent reads the engine's contract from the sidecar beside it
        if transport.run(["sh", "-c", _FINISH, "sh", paths.part, paths.engine, remote_sidecar or "", paths.sidecar],
                         check=False, timeout=30).code != 0:
            raise TrtexecFailed("engine-build", None, f"trtexec exited 0 but wrote no engine to {paths.part}", (),
                                command=command.line)
    except TrtexecFailed as failure:
        transport.run(["rm", "-f", paths.part], check=False, timeout=30)
        raise EngineBuildFailed(failure, transport.remote_path(paths.log), _tail(text)) from None
    if parsed is not None and parsed.trt_version is not None and parsed.trt_version[:2] != facts.version[:2]:
        log.warning("%s: trtexec reports TensorRT %s but the engine key says %s (%s); pass trt_version to fix the key",
                    dev.name, format_version(parsed.trt_version), format_version(facts.version), facts.version_source)
    result.trtexec = parsed
    result.seconds = time.monotonic() - started
    log.info("%s: built %s in %.0f s", dev.name, paths.engine, result.seconds)
    return result


def engine_summary(result: EngineResult) -> str:
    """One line for people: built or cached, where, and what trtexec measured."""
    what = "cached" if result.cached else f"built in {result.seconds:.0f} s"
    timing = ""
    if result.throughput_qps is not None:
        timing = f"; trtexec: {result.throughput_qps:.1f} qps"
        if result.latency_ms is not None:
            timing += f", latency median {result.latency_ms:.2f} ms"
    return (f"engine {what}: {result.engine} ({result.precision}, TensorRT {format_version(result.facts.version)}, "
            f"{result.facts.gpu}){timing}")


# ------------------------------------------------------------------------- in-process build (on a Jetson)


@dataclass(frozen=True)
class BuilderOptions:
    """How the tensorrt Python API is driven for one TensorRT version (the API changed in 8.4 and 10)."""

    explicit_batch_flag: bool  # before 10 an ONNX network needs EXPLICIT_BATCH; from 10 it is the only mode
    memory_pool_api: bool  # 8.4 added set_memory_pool_limit; max_workspace_size went away in 10

    @classmethod
    def for_version(cls, version: str) -> "BuilderOptions":
        parts = tuple(int(p) for p in re.findall(r"\d+", version)[:2]) or (0,)
        return cls(explicit_batch_flag=parts < (10,), memory_pool_api=parts >= (8, 4))


def build_engine_local(
    onnx_path: str | Path, engine_path: str | Path, precision: str = "fp16", workspace_mib: int = 1024
) -> Path:
    """Build an engine with the tensorrt module of this machine (run it on the board itself: an engine
    is tied to the GPU and TensorRT version it was built with). INT8 needs a Q/DQ ONNX here."""
    from edgeyolo.errors import MissingDependencyError
    from edgeyolo.fileio import atomic_write_bytes

    try:
        import tensorrt as trt
    except ImportError:
        raise MissingDependencyError("tensorrt", "jetson") from None
    if precision not in ("fp32", "fp16", "int8"):
        raise UsageError(f"--precision must be fp32, fp16 or int8, got '{precision}'")
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise InputFileError(f"ONNX file not found: {onnx_path}")
    if precision == "int8" and not onnx_facts(onnx_path).qdq:
        raise UsageError("int8 needs a Q/DQ ONNX (edgeyolo export qdq); implicit calibration is the trtexec path (--calib)")
    options = BuilderOptions.for_version(trt.__version__)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH) if options.explicit_batch_flag else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise UsageError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if options.memory_pool_api:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    else:
        config.max_workspace_size = workspace_mib << 20
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # layers without an int8 kernel stay in fp16, not fp32
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UsageError(f"TensorRT {trt.__version__} could not build an engine from {onnx_path} (see its log above)")
    return atomic_write_bytes(Path(engine_path), bytes(serialized))
