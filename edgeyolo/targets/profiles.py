"""Board profiles: what each deployment target runs, at which precision, and how its artifact is built.

A profile is plain data (frozen dataclasses, no torch, no tool imports): ``edgeyolo check`` reads its
operator rules, ``edgeyolo adapt`` rewrites a cfg to fit them, ``edgeyolo prune --target`` takes its
channel multiple, and the TensorRT command builder takes its TensorRT facts. Every fact carries the
public source it came from. A profile's ``family`` names a registered board family
(``edgeyolo.targets.families``), which holds what its boards share; a profile of a new family is one
:func:`register_profile` once that family is registered.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from edgeyolo.errors import TargetError, UsageError
from edgeyolo.registry import Registry
from edgeyolo.targets.families import FAMILIES, BoardFamily, Family, get_family

DPU_LEAKY_SLOPE = 26 / 256  # 0.1015625, the only LeakyReLU slope the DPU computes
DARKNET_LEAKY_SLOPE = 0.1


class Precision(str, Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    def __str__(self) -> str:
        return self.value


class TargetNotSupported(TargetError):
    """A board edgeyolo knows about but cannot deploy to; the message says why."""


class PrecisionNotSupported(TargetError):
    """A precision the target's hardware or toolchain cannot run."""


@dataclass(frozen=True)
class OperatorRules:
    """What the accelerator executes natively; anything else is rejected or falls back to the CPU."""

    activations: frozenset[str]  # darknet activation names run on the accelerator
    leaky_slope: float | None = None  # the one LeakyReLU slope computed (None: any slope)
    route_groups: bool = True  # darknet's channel split ([route] groups=, CSP blocks)
    equal_concat_scales: bool = False  # inputs of a concat/add must share one quantisation scale
    note: str = ""


@dataclass(frozen=True)
class TensorRT:
    """The TensorRT a JetPack ships; engines are built on the board because they are not portable."""

    version: tuple[int, int, int]
    jetpack: str
    gpu: str
    compute_capability: str
    max_opset: int  # newest ONNX opset the bundled parser documents
    parser_ir_version: int  # IR of the onnx release with that opset; a newer IR is only a parser warning
    dla_cores: int = 0
    trtexec: str = "/usr/src/tensorrt/bin/trtexec"
    source: str = ""

    @property
    def version_text(self) -> str:
        return ".".join(str(v) for v in self.version)


@dataclass(frozen=True)
class DpuImage:
    """One board image: a DPU bitstream paired with the Vitis AI release whose xmodels it runs.

    ISA0 (DPU IP 3.x, Vitis AI <= 2.0) and ISA1 (DPU IP 4.x, Vitis AI >= 2.5) xmodels are not
    interchangeable, and an xmodel only runs on the fingerprint it was compiled for.
    """

    key: str  # e.g. "isa1-b4096"
    isa: str  # "ISA0" | "ISA1"
    vai: tuple[str, str]  # first and last Vitis AI release of this generation
    arch: str  # DPU target name as vai_c_xir / xdputil print it
    fingerprint: int
    max_pool_kernel: int
    channel_parallelism: int  # input = output channel parallelism of the DPU size
    source: str = ""

    @property
    def label(self) -> str:
        return f"{self.isa} {self.arch} (Vitis AI {self.vai[0]}–{self.vai[1]})"

    @property
    def fingerprint_hex(self) -> str:
        return f"0x{self.fingerprint:X}"

    def covers_vai(self, version: str) -> bool:
        def major_minor(text: str) -> tuple[int, int]:
            parts = _version_tuple(text) + (0,)
            return parts[0], parts[1]

        return major_minor(self.vai[0]) <= major_minor(version) <= major_minor(self.vai[1])


@dataclass(frozen=True)
class TargetProfile:
    name: str
    title: str
    family: str  # a registered board family (edgeyolo.targets.families): Family.JETSON, "zynq", ...
    runtime: str
    precisions: tuple[Precision, ...]
    default_precision: Precision
    channel_multiples: dict[Precision, int]
    input_sizes: tuple[int, ...]  # sizes with a published reference on this board
    input_multiple: int
    rules: OperatorRules
    artifact: str  # how the deployable artifact is built
    tensorrt: TensorRT | None = None
    dpu_images: tuple[DpuImage, ...] = ()
    board_python: str | None = None
    precision_notes: dict[Precision, str] = field(default_factory=dict)
    int8_layout: str | None = None  # where its int8 ONNX puts Q/DQ (edgeyolo.export.int8_layouts); None: no int8 ONNX
    sources: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.default_precision not in self.precisions:
            raise ValueError(f"{self.name}: default precision {self.default_precision} is not offered")
        if set(self.channel_multiples) != set(self.precisions):
            raise ValueError(f"{self.name}: one channel multiple per precision is required")
        if self.family not in FAMILIES:
            known = ", ".join(FAMILIES.names()) or "none"
            raise ValueError(f"{self.name}: unknown board family '{self.family}'; known: {known}")
        self.family_obj.check_profile(self)

    @property
    def family_obj(self) -> BoardFamily:
        """The registered :class:`BoardFamily` of this profile (what its boards share)."""
        return get_family(self.family)

    @property
    def channel_multiple(self) -> int:
        return self.channel_multiples[self.default_precision]

    @property
    def equal_scales(self) -> bool:
        """Concat/add inputs must share one quantisation scale (the DPU's power-of-two INT8)."""
        return self.rules.equal_concat_scales

    def check_precision(self, precision: str | Precision) -> Precision:
        """The precision as an enum, or PrecisionNotSupported with the hardware reason."""
        try:
            p = Precision(str(getattr(precision, "value", precision)).lower())
        except ValueError:
            raise UsageError(f"unknown precision '{precision}'; expected one of fp32, fp16, int8") from None
        if p not in self.precisions:
            reason = self.precision_notes.get(p, "")
            offered = ", ".join(x.value for x in self.precisions)
            raise PrecisionNotSupported(
                f"{self.name} cannot run {p.value}" + (f": {reason}" if reason else "") + f"; use one of {offered}"
            )
        return p

    def dpu_image(self, vai: str | None = None) -> DpuImage:
        """The board image for a Vitis AI version (default: the newest generation listed)."""
        if not self.dpu_images:
            raise UsageError(f"{self.name} has no DPU; --vai applies to zcu104 and ultra96 only")
        if vai is None:
            return self.dpu_images[-1]
        for image in reversed(self.dpu_images):
            if image.covers_vai(vai):
                return image
        known = "; ".join(i.label for i in self.dpu_images)
        raise UsageError(f"{self.name}: no board image for Vitis AI {vai}; known: {known}")

    def images(self, vai: str | None = None) -> tuple[DpuImage, ...]:
        """All board images, or the one for ``vai``."""
        return self.dpu_images if vai is None else (self.dpu_image(vai),)

    def to_dict(self) -> dict[str, Any]:
        def convert(value: Any) -> Any:
            if isinstance(value, Enum):
                return value.value
            if isinstance(value, dict):
                return {convert(k): convert(v) for k, v in value.items()}
            if isinstance(value, (tuple, list, frozenset, set)):
                items = sorted(value) if isinstance(value, (frozenset, set)) else value
                return [convert(v) for v in items]
            return value

        out = {f.name: convert(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in ("rules", "tensorrt", "dpu_images")}
        out["channel_multiple"] = self.channel_multiple
        out["rules"] = convert(dataclasses.asdict(self.rules))
        out["tensorrt"] = None
        if self.tensorrt is not None:
            out["tensorrt"] = dataclasses.asdict(self.tensorrt) | {"version": self.tensorrt.version_text}
        out["dpu_images"] = [
            dataclasses.asdict(i) | {"fingerprint": i.fingerprint_hex, "label": i.label} for i in self.dpu_images
        ]
        return out


def _version_tuple(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.strip().split(".") if p != "")
    except ValueError:
        raise UsageError(f"bad version '{text}': expected numbers like 2.5 or 3.5.0") from None


TARGETS: Registry[TargetProfile] = Registry("target")

# Reasons for boards that are known and refused, so `targets list` can say why.
UNSUPPORTED: dict[str, str] = {
    "pynq-z2": (
        "PYNQ-Z2 is a Zynq-7000 (XC7Z020, 32-bit Cortex-A9): the Vitis AI DPU (DPUCZDX8G) and its "
        "toolchain target Zynq UltraScale+ MPSoC only (DPU-PYNQ ships ZU+ boards: ZCU104, Ultra96, KV260), "
        "so there is no arch.json/fingerprint to compile an xmodel for and no VART runtime for the board; "
        "run the model on its CPU with the host profile's ONNX instead"
    ),
}


def get_target(name: str) -> TargetProfile:
    key = name.strip().lower()
    if key in UNSUPPORTED:
        raise TargetNotSupported(f"target '{name}' is not supported: {UNSUPPORTED[key]}")
    return TARGETS.get(key)


def list_targets() -> list[TargetProfile]:
    return [TARGETS.get(n) for n in TARGETS.names()]


def register_profile(profile: TargetProfile) -> TargetProfile:
    TARGETS.add(profile.name, profile)
    return profile


# --------------------------------------------------------------------------------------------- Jetson

_TRT_RULES = OperatorRules(
    activations=frozenset({"leaky", "relu", "linear", "logistic", "mish", "swish"}),
    note="TensorRT builds every darknet layer edgeyolo exports (Mish/Swish spelled out as Softplus/Tanh/Sigmoid); "
    "concat/add inputs may carry different INT8 scales",
)
_NO_INT8_REASON = (
    "{gpu} (sm_{sm}) has no fast INT8 path; NVIDIA lists INT8 only for Xavier and newer Jetsons "
    "(torch2trt support matrix, tensorrt_demos README), so an INT8 engine would be FP16 in disguise"
)
_OPSET13 = "onnx-tensorrt release/8.2-GA docs/operators.md: 'TensorRT 8.2 supports operators up to Opset 13' (IR 7 = onnx 1.8)"
_OPSET17 = "onnx-tensorrt release/8.5-GA docs/operators.md: 'TensorRT 8.5 supports operators up to Opset 17' (IR 8 = onnx 1.12)"
_OPSET20 = (
    "onnx-tensorrt docs/operators.md for 10.0: 'opset 9 to opset 20' (IR 9 = onnx 1.15); later 10.x parsers "
    "accept more, so 20 is the safe floor for JetPack 6's TensorRT 10.3"
)
_TRT82 = "JetPack 4.6.x (last for Nano/TX2) ships TensorRT 8.2.1 (TRT 8.2.1.8 in NVIDIA/TensorRT#3884's Nano environment)"
_JETSON_ARTIFACT = (
    "export ONNX on the host, copy it (and an INT8 calibration cache) to the board, build the engine there with "
    "trtexec (engines are tied to the GPU and TensorRT version), cache it by (TRT version, GPU, precision, shape, "
    "ONNX sha256)"
)

register_profile(
    TargetProfile(
        name="jetson-nano",
        title="Jetson Nano 4GB (Maxwell GPU, 128 CUDA cores)",
        family=Family.JETSON,
        runtime="tensorrt",
        precisions=(Precision.FP32, Precision.FP16),
        default_precision=Precision.FP16,
        channel_multiples={Precision.FP32: 8, Precision.FP16: 8},
        input_sizes=(288, 416, 608),
        input_multiple=32,
        rules=_TRT_RULES,
        artifact=_JETSON_ARTIFACT,
        tensorrt=TensorRT((8, 2, 1), "4.6", "Maxwell GM20B", "5.3", 13, 7, 0, source=f"{_TRT82}; {_OPSET13}"),
        board_python="3.6",
        precision_notes={Precision.INT8: _NO_INT8_REASON.format(gpu="Maxwell GM20B", sm="53")},
        sources=("jkjung-avt/tensorrt_demos README (Nano FP16 table); engines are built on the target",),
        notes=("benchmark with `sudo nvpmodel -m 0` and `sudo jetson_clocks` (tensorrt_demos#403)",),
    )
)
register_profile(
    TargetProfile(
        name="jetson-tx2",
        title="Jetson TX2 (Pascal GPU, 256 CUDA cores)",
        family=Family.JETSON,
        runtime="tensorrt",
        precisions=(Precision.FP32, Precision.FP16),
        default_precision=Precision.FP16,
        channel_multiples={Precision.FP32: 8, Precision.FP16: 8},
        input_sizes=(288, 416, 608),
        input_multiple=32,
        rules=_TRT_RULES,
        artifact=_JETSON_ARTIFACT,
        tensorrt=TensorRT((8, 2, 1), "4.6", "Pascal GP10B", "6.2", 13, 7, 0, source=f"{_TRT82}; {_OPSET13}"),
        board_python="3.6",
        precision_notes={Precision.INT8: _NO_INT8_REASON.format(gpu="Pascal GP10B", sm="62")},
        sources=("tegrastats logs of a TX2 on JetPack 4.6 (public issue reports)",),
        notes=("the two Denver cores may be 'off' in tegrastats until nvpmodel enables them",),
    )
)
register_profile(
    TargetProfile(
        name="jetson-xavier-nx",
        title="Jetson Xavier NX (Volta GPU, 2x NVDLA)",
        family=Family.JETSON,
        runtime="tensorrt",
        precisions=(Precision.FP32, Precision.FP16, Precision.INT8),
        default_precision=Precision.INT8,
        channel_multiples={Precision.FP32: 8, Precision.FP16: 8, Precision.INT8: 32},
        input_sizes=(288, 416, 608),
        input_multiple=32,
        rules=_TRT_RULES,
        int8_layout="tensorrt",
        artifact=_JETSON_ARTIFACT + "; --useDLACore=N --allowGPUFallback puts supported layers on a DLA",
        tensorrt=TensorRT(
            (8, 5, 2), "5.1", "Volta GV10B", "7.2", 17, 8, 2,
            source="JetPack 5.1.x (L4T 35) ships TensorRT 8.5.2 (OE4T/meta-tegra PR #1124, Xavier NX, TRT 8.5.x: board-logs "
            f"README); {_OPSET17}",
        ),
        board_python="3.8",
        sources=("jkjung-avt/tensorrt_demos README (Xavier NX FP16/INT8/DLA0 table)",),
        notes=(
            (
                "INT8 via a calibration cache (implicit) or a Q/DQ ONNX (explicit); yolov4-608 lost 17 mAP points "
                "with PTQ"
            ),
            "DLA cannot build yolov4-tiny (tensorrt_demos README); layers DLA lacks fall back to the GPU",
        ),
    )
)
register_profile(
    TargetProfile(
        name="jetson-orin-nano",
        title="Jetson Orin Nano (Ampere GPU, no DLA)",
        family=Family.JETSON,
        runtime="tensorrt",
        precisions=(Precision.FP32, Precision.FP16, Precision.INT8),
        default_precision=Precision.INT8,
        channel_multiples={Precision.FP32: 8, Precision.FP16: 8, Precision.INT8: 32},
        input_sizes=(320, 416, 640),
        input_multiple=32,
        rules=_TRT_RULES,
        int8_layout="tensorrt",
        artifact=_JETSON_ARTIFACT,
        tensorrt=TensorRT(
            (10, 3, 0), "6.2", "Ampere GA10B", "8.7", 20, 9, 0,
            source=f"JetPack 6.1/6.2 ships TensorRT 10.3 (NVIDIA JetPack release notes); {_OPSET20}",
        ),
        board_python="3.10",
        sources=("TensorRT 10.1 release notes (implicit INT8 calibration deprecated; prefer Q/DQ)",),
        notes=("Orin Nano has no DLA (Orin NX and AGX Orin do)",),
    )
)

# --------------------------------------------------------------------------------------------- Zynq

_DPU_RULES = OperatorRules(
    activations=frozenset({"leaky", "relu", "linear"}),
    leaky_slope=DPU_LEAKY_SLOPE,
    route_groups=False,
    equal_concat_scales=True,
    note="vai_q forces LeakyReLU to 26/256 (commander.py); Mish/Swish fall back to the CPU (Vitis-AI#503); channel "
    "slicing (tf.split) is rejected (Vitis-AI#997: replaced with a 1x1 conv); YOLO decode and NMS run on the Arm "
    "CPU",
)
_FP = "Vitis AI target_factory prototxts and Xilinx/DPU-PYNQ arch files (fingerprints)"
_PAR = "B<n> = 2 x pixel x input-channel x output-channel parallelism ops/clock (PG338): B4096 = 2·8·16·16"
_ISA0_POOL = "ISA0: max_limit kernel_size 1-8 (target_factory expired_targets/DPUCZDX8G_ISA0_B4096_MAX_BG2.prototxt)"
_ISA1_POOL = "ISA1: pooling on the ALU engine, kernel 1-256 (targets/DPUCZDX8G_ISA1_B4096.prototxt)"
_DPU_ARTIFACT = (
    "vai_q (power-of-two INT8, calibrate then test, batch 1) → <Model>_int.xmodel → vai_c_xir -a arch.json "
    "(fingerprint from `xdputil query` on the board) on the host; copy the xmodel to the board and run it with "
    "VART / Vitis AI Library"
)
_ZYNQ_INT8_ONLY = "the DPU computes INT8 with power-of-two scales only (vai_q_pytorch Quant_Config.md)"

register_profile(
    TargetProfile(
        name="zcu104",
        title="ZCU104 (Zynq UltraScale+ XCZU7EV, DPUCZDX8G B4096)",
        family=Family.ZYNQ,
        runtime="vart",
        precisions=(Precision.INT8,),
        default_precision=Precision.INT8,
        channel_multiples={Precision.INT8: 16},
        input_sizes=(416, 512),
        input_multiple=32,
        rules=_DPU_RULES,
        artifact=_DPU_ARTIFACT,
        dpu_images=(
            DpuImage("isa0-b4096", "ISA0", ("1.3", "2.0"), "DPUCZDX8G_ISA0_B4096_MAX_BG2", 0x1000020F6014407, 8, 16,
                     source=f"{_FP}; {_ISA0_POOL}; {_PAR}"),
            DpuImage("isa1-b4096", "ISA1", ("2.5", "3.5"), "DPUCZDX8G_ISA1_B4096", 0x101000016010407, 256, 16,
                     source=f"{_FP}; {_ISA1_POOL}; {_PAR}"),
        ),
        precision_notes={Precision.FP32: _ZYNQ_INT8_ONLY, Precision.FP16: _ZYNQ_INT8_ONLY},
        sources=("Vitis AI Model Zoo (ZCU104: 2 x B4096 @ 300 MHz)",),
        notes=(
            "the fingerprint must come from the board's bitstream (`xdputil query`), not the board name",
            "Vitis AI 3.5 is the last DPUCZDX8G release (DPU flow frozen)",
        ),
    )
)
register_profile(
    TargetProfile(
        name="ultra96",
        title="Ultra96 / Ultra96-V2 (Zynq UltraScale+ ZU3EG, DPUCZDX8G B1600/B2304)",
        family=Family.ZYNQ,
        runtime="vart",
        precisions=(Precision.INT8,),
        default_precision=Precision.INT8,
        channel_multiples={Precision.INT8: 10},
        input_sizes=(320, 416),
        input_multiple=32,
        rules=_DPU_RULES,
        artifact=_DPU_ARTIFACT,
        dpu_images=(
            DpuImage("isa0-b1600", "ISA0", ("1.3", "2.0"), "DPUCZDX8G_ISA0_B1600_MAX", 0x1000020F7014404, 8, 10,
                     source=f"{_FP}; {_ISA0_POOL}; {_PAR}"),
            DpuImage("isa0-b2304", "ISA0", ("1.3", "2.0"), "DPUCZDX8G_ISA0_B2304_MAX_BG2", 0x1000020F6014405, 8, 12,
                     source=f"{_FP} (DPU-PYNQ for VAI 1.4, Avnet u96v2 B2304_LR); {_ISA0_POOL}; {_PAR}"),
            DpuImage("isa1-b1600", "ISA1", ("2.5", "3.5"), "DPUCZDX8G_ISA1_B1600", 0x101000016010404, 256, 10,
                     source=f"{_FP} (Xilinx/DPU-PYNQ host/arch_ultra96.json); {_ISA1_POOL}; {_PAR}"),
        ),
        precision_notes={Precision.FP32: _ZYNQ_INT8_ONLY, Precision.FP16: _ZYNQ_INT8_ONLY},
        sources=("Vitis AI Model Zoo (Ultra96 v1: 1 x B1600 @ 287 MHz)",),
        notes=("two ISA0 images exist (B1600 v1 zoo, B2304 DPU-PYNQ 1.4); `--vai` picks the newest matching one",),
    )
)

# --------------------------------------------------------------------------------------------- host

register_profile(
    TargetProfile(
        name="host",
        title="This machine's CPU (onnxruntime CPUExecutionProvider)",
        family=Family.HOST,
        runtime="onnxruntime",
        precisions=(Precision.FP32, Precision.INT8),
        default_precision=Precision.FP32,
        channel_multiples={Precision.FP32: 8, Precision.INT8: 8},
        int8_layout="onnxruntime",
        input_sizes=(320, 416, 608),
        input_multiple=32,
        rules=OperatorRules(activations=frozenset({"leaky", "relu", "linear", "logistic", "mish", "swish"})),
        artifact="ONNX exported and verified by `edgeyolo export onnx` (int8: `edgeyolo export int8`, onnxruntime's "
        "QDQ layout), run in-process by onnxruntime",
        precision_notes={
            Precision.FP16: "onnxruntime's CPU provider has no fast FP16 kernels",
        },
        sources=("VainF/Torch-Pruning#38 (unaligned channels made onnxruntime on the CPU slower)",),
    )
)


def profile_names(profiles: Iterable[TargetProfile] | None = None) -> list[str]:
    return [p.name for p in (profiles if profiles is not None else list_targets())]
