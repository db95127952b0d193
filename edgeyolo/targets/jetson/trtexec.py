"""TensorRT on the board: the trtexec command line, the engine cache key, INT8 calibration caches and
the parser for trtexec's output.

Engines are built on the Jetson itself (they are tied to the GPU and the TensorRT version), so this
module only produces command lines and reads what comes back; it imports neither torch nor tensorrt.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgeyolo.errors import TargetError, UsageError
from edgeyolo.fileio import sha256_file as sha256_of  # noqa: F401 - part of this module's API
from edgeyolo.targets.parsing import ToolOutputError, require_text
from edgeyolo.targets.profiles import Precision, TargetProfile

Version = tuple[int, int, int]

# --------------------------------------------------------------------------------------------- versions


def parse_trt_version(text: str | Sequence[int]) -> Version:
    """(major, minor, patch) from '8.2.1', '8.2.1.8', 'v8400' / '8201' (trtexec's tag) or '100300'.

    The tag is TensorRT's NV_TENSORRT_VERSION: major*1000 + minor*100 + patch before 10, and
    major*10000 + minor*100 + patch from 10 on ([TensorRT v8400] = 8.4.0, [TensorRT v100200] = 10.2.0).
    """
    if not isinstance(text, str):
        parts = tuple(int(v) for v in text)
        return (parts + (0, 0, 0))[:3]  # type: ignore[return-value]
    raw = text.strip().lstrip("vV")
    if re.fullmatch(r"\d+(\.\d+){1,3}", raw):
        parts = tuple(int(p) for p in raw.split("."))
        return (parts + (0,))[:3]  # type: ignore[return-value]
    if re.fullmatch(r"\d{4,6}", raw):
        code = int(raw)
        major = code // 10000 if code >= 100000 else code // 1000
        rest = code - major * (10000 if code >= 100000 else 1000)
        return major, rest // 100, rest % 100
    raise UsageError(f"bad TensorRT version '{text}': expected e.g. 8.2.1, v8400 or 100300")


def trt_version_code(version: str | Sequence[int]) -> int:
    """The inverse of the tag form: (8, 2, 1) -> 8201, (10, 3, 0) -> 100300."""
    major, minor, patch = parse_trt_version(version)
    return major * (10000 if major >= 10 else 1000) + minor * 100 + patch


def format_version(version: Version) -> str:
    return ".".join(str(v) for v in version)


# --------------------------------------------------------------------------------------------- command


@dataclass(frozen=True)
class TrtexecCommand:
    argv: tuple[str, ...]
    engine: str
    notes: tuple[str, ...] = ()

    @property
    def line(self) -> str:
        import shlex

        return " ".join(shlex.quote(a) for a in self.argv)


def trtexec_command(
    profile: TargetProfile,
    onnx: str,
    engine: str,
    precision: str | Precision | None = None,
    *,
    calib_cache: str | None = None,
    qdq: bool = False,
    workspace_mib: int | None = 1024,
    timing_cache: str | None = None,
    shapes: str | None = None,
    dla_core: int | None = None,
    trtexec: str | None = None,
    extra: Sequence[str] = (),
) -> TrtexecCommand:
    """The trtexec line that builds (and times) an engine for ``profile``'s TensorRT.

    INT8 needs its scales from somewhere: a Q/DQ ONNX (explicit quantization) or a calibration cache
    (implicit); ``--int8`` alone would calibrate on random data, so it is refused. FP16 is enabled
    alongside INT8 so layers without an INT8 kernel do not fall back to FP32.
    """
    if not profile.family_obj.builds_engine_on_board or profile.tensorrt is None:
        raise UsageError(f"{profile.name} is not a TensorRT target; trtexec commands are for the jetson-* profiles")
    trt = profile.tensorrt
    p = profile.check_precision(precision or profile.default_precision)
    argv = [trtexec or trt.trtexec, f"--onnx={onnx}", f"--saveEngine={engine}"]
    notes: list[str] = []
    if p is Precision.FP16:
        argv.append("--fp16")
    elif p is Precision.INT8:
        if not qdq and calib_cache is None:
            raise UsageError(
                "INT8 needs a Q/DQ ONNX (qdq=True / --qdq) or a calibration cache (--calib FILE); "
                "trtexec --int8 without either calibrates with random data"
            )
        if qdq and calib_cache is not None:
            raise UsageError("give either a Q/DQ ONNX or a calibration cache, not both: Q/DQ nodes carry their own scales")
        argv += ["--int8", "--fp16"]
        if calib_cache is not None:
            argv.append(f"--calib={calib_cache}")
            if trt.version >= (10, 1, 0):
                notes.append("implicit (calibration-cache) INT8 is deprecated since TensorRT 10.1; prefer a Q/DQ ONNX")
    elif calib_cache is not None or qdq:
        raise UsageError(f"a calibration cache or Q/DQ ONNX only makes sense with int8, not {p.value}")
    if workspace_mib is not None:
        if workspace_mib <= 0:
            raise UsageError(f"workspace must be a positive number of MiB, got {workspace_mib}")
        # --workspace was deprecated in 8.4 (which added --memPoolSize) and removed in 10
        if trt.version < (8, 4, 0):
            argv.append(f"--workspace={workspace_mib}")
        else:
            argv.append(f"--memPoolSize=workspace:{workspace_mib}")
    if timing_cache is not None:
        argv.append(f"--timingCacheFile={timing_cache}")
    if shapes is not None:
        argv.append(f"--shapes={shapes}")
    if dla_core is not None:
        if trt.dla_cores == 0:
            raise UsageError(f"{profile.name} has no DLA; drop the DLA core")
        if not 0 <= dla_core < trt.dla_cores:
            raise UsageError(f"{profile.name} has DLA cores 0..{trt.dla_cores - 1}, got {dla_core}")
        argv += [f"--useDLACore={dla_core}", "--allowGPUFallback"]
    argv += list(extra)
    return TrtexecCommand(tuple(argv), engine, tuple(notes))


# --------------------------------------------------------------------------------------------- engine key


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on: change any of it and the cached engine must be rebuilt."""

    trt_version: str
    gpu: str
    precision: str
    input_shape: tuple[int, ...]
    onnx_sha256: str
    dla_core: int | None = None

    @property
    def digest(self) -> str:
        payload = json.dumps(
            {
                "trt": self.trt_version,
                "gpu": self.gpu,
                "precision": self.precision,
                "shape": list(self.input_shape),
                "onnx": self.onnx_sha256,
                "dla": self.dla_core,
            },
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def filename(self, stem: str = "model") -> str:
        shape = "x".join(str(d) for d in self.input_shape)
        dla = f"-dla{self.dla_core}" if self.dla_core is not None else ""
        return f"{stem}-{self.precision}-{shape}-trt{self.trt_version}{dla}-{self.digest}.engine"


def engine_key(
    onnx: str | Path,
    trt_version: str | Sequence[int],
    gpu: str,
    precision: str | Precision,
    input_shape: Sequence[int],
    dla_core: int | None = None,
) -> EngineKey:
    shape = tuple(int(d) for d in input_shape)
    if not shape or any(d <= 0 for d in shape):
        raise UsageError(f"input shape must be positive dimensions, got {list(input_shape)}")
    if not gpu.strip():
        raise UsageError("the engine key needs the GPU name (as the board reports it)")
    return EngineKey(
        format_version(parse_trt_version(trt_version)),
        gpu.strip(),
        Precision(str(getattr(precision, "value", precision)).lower()).value,
        shape,
        sha256_of(onnx),
        dla_core,
    )


# --------------------------------------------------------------------------------------------- calibration cache


@dataclass(frozen=True)
class CalibrationCache:
    """TensorRT's implicit-quantization cache: per-tensor scale (amax / 127) keyed by tensor name.

    Text format: ``TRT-<version code>-<algorithm>`` then ``<tensor>: <hex of the float32 scale,
    big-endian>`` per line (e.g. tensorrt_demos' ``TRT-7103-EntropyCalibration2`` /
    ``000_net: 3c010a14``). The names are the ONNX tensor names, so a cache belongs to one export.
    """

    trt_version: Version
    algorithm: str
    scales: dict[str, float] = field(default_factory=dict)

    @property
    def header(self) -> str:
        return f"TRT-{trt_version_code(self.trt_version)}-{self.algorithm}"


ALGORITHMS = ("EntropyCalibration2", "EntropyCalibration", "MinMaxCalibration", "LegacyCalibration")


def _scale_hex(name: str, scale: float) -> str:
    if not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise UsageError(f"calibration scale of '{name}' must be a finite number >= 0, got {scale!r}")
    return struct.pack(">f", float(scale)).hex()


def format_calibration_cache(
    scales: Mapping[str, float], trt_version: str | Sequence[int], algorithm: str = "EntropyCalibration2"
) -> str:
    if algorithm not in ALGORITHMS:
        raise UsageError(f"unknown calibration algorithm '{algorithm}'; expected one of {', '.join(ALGORITHMS)}")
    if not scales:
        raise UsageError("a calibration cache needs at least one tensor scale")
    lines = [CalibrationCache(parse_trt_version(trt_version), algorithm).header]
    for name, scale in scales.items():
        if not name or ":" in name or "\n" in name or name != name.strip():
            raise UsageError(f"tensor name {name!r} cannot be written to a calibration cache (no ':', newlines or edge spaces)")
        lines.append(f"{name}: {_scale_hex(name, scale)}")
    return "\n".join(lines) + "\n"


def write_calibration_cache(
    path: str | Path, scales: Mapping[str, float], trt_version: str | Sequence[int], algorithm: str = "EntropyCalibration2"
) -> Path:
    path = Path(path)
    path.write_text(format_calibration_cache(scales, trt_version, algorithm))
    return path


_HEADER = re.compile(r"TRT-(\d{4,6})-(\w+)")


def parse_calibration_cache(text: str) -> CalibrationCache:
    require_text("calibration cache", text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    m = _HEADER.fullmatch(lines[0])
    if m is None:
        raise ToolOutputError("calibration cache", "the first line must be TRT-<version>-<algorithm>", lines[0])
    scales: dict[str, float] = {}
    for number, line in enumerate(lines[1:], start=2):
        name, sep, value = line.rpartition(": ")
        if not sep or not re.fullmatch(r"[0-9a-fA-F]{1,8}", value):
            raise ToolOutputError("calibration cache", f"line {number} is not '<tensor>: <hex float32>'", line)
        scales[name] = struct.unpack(">f", int(value, 16).to_bytes(4, "big"))[0]
    return CalibrationCache(parse_trt_version(m.group(1)), m.group(2), scales)


def read_calibration_cache(path: str | Path) -> CalibrationCache:
    return parse_calibration_cache(Path(path).read_text())


# --------------------------------------------------------------------------------------------- output parser


@dataclass(frozen=True)
class TimingStats:
    """One trtexec timing line, in milliseconds; percentiles keyed by percent (90.0, 95.0, 99.0)."""

    min: float
    max: float
    mean: float
    median: float
    percentiles: dict[float, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TrtexecResult:
    throughput_qps: float
    latency: TimingStats | None
    gpu_compute: TimingStats | None
    enqueue: TimingStats | None = None
    h2d: TimingStats | None = None
    d2h: TimingStats | None = None
    host_walltime_s: float | None = None
    gpu_compute_total_s: float | None = None
    trt_version: Version | None = None
    passed: bool | None = None  # None: the '&&&&' line was not captured
    command: str | None = None


class TrtexecFailed(TargetError):
    """trtexec could not parse the ONNX, build the engine or run it; carries the lines that say why."""

    def __init__(
        self,
        stage: str,
        first_error: str | None,
        cause: str | None,
        errors: tuple[str, ...],
        trt_version: Version | None = None,
        command: str | None = None,
    ):
        self.stage = stage
        self.first_error = first_error
        self.cause = cause
        self.errors = errors
        self.trt_version = trt_version
        self.command = command
        where = f"TensorRT {format_version(trt_version)} " if trt_version else ""
        reason = cause or first_error or "no error line captured"
        extra = f" (first error: {first_error})" if first_error and first_error != reason else ""
        super().__init__(f"{where}trtexec failed at {stage}: {reason}{extra}")


_PREFIX = re.compile(r"^(?:\[\d\d/\d\d/\d{4}-\d\d:\d\d:\d\d\] )?(?:\[([IWEVF])\] )?")
_STAT_NAMES = {
    "Latency": "latency",
    "GPU Compute Time": "gpu_compute",
    "Enqueue Time": "enqueue",
    "H2D Latency": "h2d",
    "D2H Latency": "d2h",
}
_STAT_LINE = re.compile(r"^(Latency|GPU Compute Time|Enqueue Time|H2D Latency|D2H Latency): (.*)$")
_STAT_ITEM = re.compile(r"(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\)) = ([-+\d.eE]+) ms")
_RESULT = re.compile(r"&&&& (PASSED|FAILED) TensorRT\.trtexec(?: \[TensorRT v(\d+)\])? # (.*)$")
_RUNNING = re.compile(r"&&&& RUNNING TensorRT\.trtexec(?: \[TensorRT v(\d+)\])?")
_VERSION_LINE = re.compile(r"TensorRT version: (\d+\.\d+\.\d+)")
_CAUSES = (
    re.compile(r"Unsupported ONNX data type.*"),
    re.compile(r"No importer registered for op.*"),
    re.compile(r"(?:\[\d+\] )?Assertion failed: .*"),
    re.compile(r"Could not find any implementation.*"),
    re.compile(r"out of memory.*", re.IGNORECASE),
)
_PARSE_MARKERS = ("Failed to parse onnx file", "Parsing model failed")
_BUILD_MARKERS = ("Engine could not be created", "Engine set up failed", "Failed to create engine")


def _stats(body: str, line: str) -> TimingStats:
    values: dict[str, float] = {}
    percentiles: dict[float, float] = {}
    for key, pct, number in _STAT_ITEM.findall(body):
        if pct:
            percentiles[float(pct)] = float(number)
        else:
            values[key] = float(number)
    missing = [k for k in ("min", "max", "mean", "median") if k not in values]
    if missing:
        raise ToolOutputError("trtexec", f"timing line lacks {', '.join(missing)}", line)
    return TimingStats(values["min"], values["max"], values["mean"], values["median"], percentiles)


def parse_trtexec(text: str) -> TrtexecResult:
    """The performance summary of a trtexec run, or TrtexecFailed with the lines that explain a failure.

    Reads the 8.x and 10.x summary (``Throughput: N qps``, ``Latency: min = … percentile(99%) = …``);
    the version comes from the ``&&&& PASSED … [TensorRT v8400]`` tag or a ``TensorRT version:`` line
    (pre-8 trtexec prints no tag, so the version may be None).
    """
    require_text("trtexec", text)
    version: Version | None = None
    passed: bool | None = None
    command: str | None = None
    throughput: float | None = None
    stats: dict[str, TimingStats] = {}
    totals: dict[str, float] = {}
    errors: list[str] = []
    causes: list[str] = []
    markers: list[str] = []
    for raw in text.splitlines():
        line = raw.rstrip()
        m = _PREFIX.match(line)
        severity = m.group(1) if m else None
        body = line[m.end():] if m else line
        if (r := _RESULT.search(line)) is not None:
            passed = r.group(1) == "PASSED"
            command = r.group(3).strip()
            if r.group(2):
                version = parse_trt_version(r.group(2))
            continue
        if (r := _RUNNING.search(line)) is not None and r.group(1):
            version = parse_trt_version(r.group(1))
        if (v := _VERSION_LINE.search(body)) is not None:
            version = parse_trt_version(v.group(1))
        if severity in ("E", "F") or body.startswith("ERROR:"):
            errors.append(body.strip())
        for pattern in _CAUSES:
            if (c := pattern.search(body)) is not None:
                causes.append(c.group(0).strip())
                break
        markers.extend(mk for mk in _PARSE_MARKERS + _BUILD_MARKERS if mk in body)
        if (t := re.match(r"Throughput: ([-+\d.eE]+) qps", body)) is not None:
            throughput = float(t.group(1))
        elif (s := _STAT_LINE.match(body)) is not None:
            stats[_STAT_NAMES[s.group(1)]] = _stats(s.group(2), line)
        elif (t := re.match(r"Total (Host Walltime|GPU Compute Time): ([-+\d.eE]+) s", body)) is not None:
            totals[t.group(1)] = float(t.group(2))
    failed = passed is False or (throughput is None and (errors or markers))
    if failed:
        stage = (
            "onnx-parse" if any(mk in _PARSE_MARKERS for mk in markers)
            else "engine-build" if markers
            else "run"
        )
        raise TrtexecFailed(stage, errors[0] if errors else None, causes[0] if causes else None, tuple(errors), version, command)
    if throughput is None:
        raise ToolOutputError("trtexec", "no '=== Performance summary ===' block (Throughput line) and no failure marker", text)
    return TrtexecResult(
        throughput_qps=throughput,
        latency=stats.get("latency"),
        gpu_compute=stats.get("gpu_compute"),
        enqueue=stats.get("enqueue"),
        h2d=stats.get("h2d"),
        d2h=stats.get("d2h"),
        host_walltime_s=totals.get("Host Walltime"),
        gpu_compute_total_s=totals.get("GPU Compute Time"),
        trt_version=version,
        passed=passed,
        command=command,
    )
