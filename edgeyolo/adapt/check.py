"""What a target cannot run: a cfg (or an ONNX file) checked against a profile's operator rules.

Findings are keyed by the board images they apply to (a 13x13 max-pool is fine on a Vitis AI 2.5
ISA1 DPU and rejected by a Vitis AI 2.0 ISA0 one) and point at the cfg's layer and line, so the
report reads like a compiler's. ``edgeyolo adapt`` fixes what can be fixed; ``fix`` says how.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from edgeyolo.errors import InputFileError, MissingDependencyError, TargetError, UsageError
from edgeyolo.model.cfg import Cfg, ConvSpec, MaxPoolSpec, RouteSpec, ShortcutSpec
from edgeyolo.targets.profiles import DARKNET_LEAKY_SLOPE, TargetProfile


class CheckFailed(TargetError):
    """The target cannot run the model as it is (the report lists why)."""

    exit_code = 1


class Severity(str, Enum):
    UNSUPPORTED = "unsupported"  # rejected, or split off to the CPU: the deployment breaks or crawls
    CHANGED = "changed"  # runs, but computes something slightly different from the float model
    SLOW = "slow"  # runs as written, below the hardware's parallelism
    WARNING = "warning"


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: Severity
    message: str
    layer: int | None = None
    line: int | None = None
    applies_to: tuple[str, ...] = ()  # board images / toolchain versions; empty = the whole target
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["severity"] = self.severity.value
        out["applies_to"] = list(self.applies_to)
        return out


@dataclass(frozen=True)
class CheckReport:
    target: str
    source: str
    findings: tuple[Finding, ...] = ()
    images: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def unsupported(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.severity is Severity.UNSUPPORTED)

    def failed(self, strict: bool = False) -> bool:
        """Unsupported findings always fail; ``strict`` also fails on changed numerics."""
        bad = {Severity.UNSUPPORTED, Severity.CHANGED} if strict else {Severity.UNSUPPORTED}
        return any(f.severity in bad for f in self.findings)

    def raise_if_failed(self, strict: bool = False) -> CheckReport:
        if self.failed(strict):
            n = len(self.unsupported)
            what = f"{n} unsupported layer{'s' if n != 1 else ''}" if n else "layers with changed numerics (--strict)"
            raise CheckFailed(f"{self.target} cannot run {self.source} as it is: {what}; `edgeyolo adapt` rewrites what it can")
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "source": self.source,
            "images": list(self.images),
            "unsupported": len(self.unsupported),
            "findings": [f.to_dict() for f in self.findings],
            "notes": list(self.notes),
        }


def check_cfg(cfg: Cfg, profile: TargetProfile, vai: str | None = None) -> CheckReport:
    """Every layer of ``cfg`` the target cannot run as written (``vai`` narrows a DPU to one image)."""
    if vai is not None and not profile.dpu_images:
        raise UsageError(f"--vai selects a DPU board image; {profile.name} has none")
    images = profile.images(vai)
    labels = tuple(i.label for i in images)
    rules = profile.rules
    findings: list[Finding] = []
    leaky_layers: list[ConvSpec] = []
    unaligned: list[ConvSpec] = []
    multiple = max(i.channel_parallelism for i in images) if images else profile.channel_multiple
    heads = {y.index - 1 for y in cfg.yolo_layers}
    for layer in cfg.layers:
        if isinstance(layer, (ConvSpec, ShortcutSpec)) and layer.activation not in rules.activations:
            line = layer.line_of("activation")
            findings.append(
                Finding(
                    "activation",
                    Severity.UNSUPPORTED,
                    f"[{layer.section}] activation={layer.activation} does not run on the {profile.runtime} "
                    f"accelerator (runs there: {', '.join(sorted(rules.activations))}); the graph is split and "
                    "this layer runs on the CPU",
                    layer.index,
                    line,
                    labels,
                    "adapt: activation -> leaky (changes the function: fine-tune afterwards)",
                )
            )
        act = layer.activation if isinstance(layer, (ConvSpec, ShortcutSpec)) else None
        slope_differs = rules.leaky_slope is not None and rules.leaky_slope != DARKNET_LEAKY_SLOPE
        if act == "leaky" and slope_differs and isinstance(layer, ConvSpec):
            leaky_layers.append(layer)
        if isinstance(layer, MaxPoolSpec):
            too_big = tuple(i for i in images if layer.size > i.max_pool_kernel)
            if too_big:
                limit = min(i.max_pool_kernel for i in too_big)
                exact = layer.stride == 1 and layer.padding == layer.size - 1
                findings.append(
                    Finding(
                        "pool-kernel",
                        Severity.UNSUPPORTED,
                        f"[maxpool] size={layer.size} exceeds the DPU's pool kernel limit 1-{limit}",
                        layer.index,
                        layer.line_of("size"),
                        tuple(i.label for i in too_big),
                        "adapt: a chain of stride-1 max-pools of size <= 8 (exact)" if exact
                        else "no exact rewrite for a strided pool; change the cfg by hand",
                    )
                )
        if isinstance(layer, RouteSpec) and layer.groups > 1 and not rules.route_groups:
            single = len(layer.layers) == 1
            findings.append(
                Finding(
                    "route-groups",
                    Severity.UNSUPPORTED,
                    f"[route] groups={layer.groups} group_id={layer.group_id} is a channel split (CSP); the DPU "
                    "compiler has no slice op for it (Vitis-AI#997)",
                    layer.index,
                    layer.line_of("groups"),
                    labels,
                    "adapt: a 1x1 conv with a fixed 0/1 selection matrix (exact)" if single
                    else "no exact rewrite for a split of several layers; change the cfg by hand",
                )
            )
        if isinstance(layer, ConvSpec) and layer.index not in heads and layer.filters % multiple:
            unaligned.append(layer)
    if unaligned and multiple > 1:
        listed = ", ".join(str(c.index) for c in unaligned[:12]) + (", ..." if len(unaligned) > 12 else "")
        findings.append(
            Finding(
                "channel-multiple",
                Severity.SLOW,
                f"{len(unaligned)} conv layers have filters that are not a multiple of {multiple} (layers {listed}); "
                "the hardware pads them to the next multiple",
                unaligned[0].index,
                unaligned[0].line_of("filters"),
                (),
                f"edgeyolo prune regular --target {profile.name}",
            )
        )
    if leaky_layers:
        first = leaky_layers[0]
        findings.append(
            Finding(
                "leaky-slope",
                Severity.CHANGED,
                f"{len(leaky_layers)} leaky layers use darknet's slope 0.1; the DPU computes {rules.leaky_slope} "
                "(26/256) and vai_q forces it",
                first.index,
                first.line_of("activation"),
                labels,
                "adapt: records the slope change and its measured output delta; fine-tune at 26/256 to remove it",
            )
        )
    if cfg.net.height % profile.input_multiple or cfg.net.width % profile.input_multiple:
        findings.append(
            Finding(
                "input-size",
                Severity.WARNING,
                f"input {cfg.net.width}x{cfg.net.height} is not a multiple of {profile.input_multiple}",
                None,
                cfg.net.line,
            )
        )
    notes = ()
    if rules.equal_concat_scales:
        notes = ("concat/add inputs share one power-of-two scale on the DPU: vai_q aligns them at quantization",)
    return CheckReport(profile.name, str(cfg.path), tuple(findings), labels, notes)


STANDARD_DOMAINS = ("", "ai.onnx")


def check_onnx(path: str | Path, profile: TargetProfile) -> CheckReport:
    """An ONNX file against the TensorRT the target's JetPack ships: opset, IR version, op domains."""
    if not profile.family_obj.builds_engine_on_board or profile.tensorrt is None:
        raise UsageError(
            f"{profile.name}: ONNX files are checked against a board's TensorRT (jetson-* targets); "
            "check the cfg for DPU targets, the host runs any ONNX onnxruntime loads"
        )
    try:
        import onnx
    except ImportError:
        raise MissingDependencyError("onnx", "cpu") from None
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"ONNX file not found: {path}")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError types
        raise InputFileError(f"{path} is not an ONNX model ({exc})") from None
    trt = profile.tensorrt
    where = (f"TensorRT {trt.version_text} (JetPack {trt.jetpack})",)
    findings: list[Finding] = []
    for entry in model.opset_import:
        if entry.domain in STANDARD_DOMAINS:
            if entry.version > trt.max_opset:
                findings.append(
                    Finding(
                        "opset",
                        Severity.UNSUPPORTED,
                        f"opset {entry.version} is above the {trt.max_opset} that TensorRT {trt.version_text}'s ONNX "
                        "parser supports",
                        applies_to=where,
                        fix=f"edgeyolo export onnx --opset {trt.max_opset}",
                    )
                )
        else:
            findings.append(
                Finding(
                    "op-domain",
                    Severity.UNSUPPORTED,
                    f"operator domain '{entry.domain}' (opset {entry.version}) has no TensorRT importer; each of its "
                    "ops needs a plugin",
                    applies_to=where,
                )
            )
    if model.ir_version > trt.parser_ir_version:
        findings.append(
            Finding(
                "ir-version",
                Severity.WARNING,
                f"IR version {model.ir_version} is newer than the parser's {trt.parser_ir_version}; TensorRT only logs "
                "a warning for it, the opset is what decides",
                applies_to=where,
            )
        )
    dynamic = [
        t.name for t in model.graph.input if any(d.dim_param or d.dim_value <= 0 for d in t.type.tensor_type.shape.dim)
    ]
    if dynamic:
        findings.append(
            Finding(
                "dynamic-shape",
                Severity.WARNING,
                f"input(s) {', '.join(dynamic)} have symbolic dimensions; trtexec then needs --minShapes/--optShapes/--maxShapes",
                applies_to=where,
            )
        )
    return CheckReport(profile.name, str(path), tuple(findings), where)
