"""Vitis AI bundle for the Xilinx DPU (DPUCZDX8G on ZCU104 / Ultra96): everything vai_q_pytorch and
vai_c_xir need, verified before it is written.

The Vitis AI images ship their own Python (3.7/3.8) and torch (1.10-1.13), so the bundle cannot
import edgeyolo: the model travels as a generated, standalone ``model.py`` (plain nn.Conv2d /
BatchNorm2d / LeakyReLU / MaxPool2d / Upsample / cat / add, one straight-line forward) plus a state
dict. The exporter proves that module computes what edgeyolo's Darknet computes: it imports the
staged file, loads the saved state dict, traces it with ``torch.jit.trace`` and compares the raw
heads with the source model on the calibration images. Only then is the staged folder renamed to
``--out``; a failed export leaves nothing there.

What the DPU cannot run is refused up front with the layers named (mish/swish/logistic, channel
split routes, ...): ``edgeyolo adapt --target`` rewrites those. LeakyReLU is written with the slope
26/256 the DPU computes (vai_q forces it; deploy-targets.md §3b); the change against darknet's 0.1
is measured and reported, never hidden.

The board's DPU facts come in as a :class:`DpuArch`, which ``edgeyolo.adapt.dpu`` fills from the
target profile; the leaky slopes (darknet's and the DPU's) come from the profiles module.
"""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgeyolo import __version__
from edgeyolo.contract import Contract
from edgeyolo.errors import ExportError, UnsupportedLayerError, UsageError, VerificationError
from edgeyolo.export import vitis_model_template as tpl
from edgeyolo.fileio import new_dir_mode
from edgeyolo.model.cfg import (
    AvgPoolSpec,
    Cfg,
    ConvSpec,
    DropoutSpec,
    MaxPoolSpec,
    RouteSpec,
    ScaleChannelsSpec,
    ShortcutSpec,
    UpsampleSpec,
    YoloSpec,
    format_cfg,
    infer_shapes,
    maxpool_geometry,
    with_input_size,
)
from edgeyolo.targets.profiles import DARKNET_LEAKY_SLOPE, DPU_LEAKY_SLOPE

log = logging.getLogger(__name__)

DPU_ACTIVATIONS = ("leaky", "relu", "linear")
CONV_MAX_KERNEL = 16  # DPUCZDX8G conv kernel 1-16, stride 1-8 (deploy-targets.md §3b)
CONV_MAX_STRIDE = 8
CLASS_NAME = "EdgeYoloModel"  # vai_q names the xmodel after the class: <CLASS_NAME>_int.xmodel
DEFAULT_TOLERANCE = 1e-5  # max|Δ| / max|ref| between the generated module and Darknet (same slope)
VERIFY_IMAGES = 2
# the images docker/vitis-ai/run.sh uses for each Vitis AI release
VAI_IMAGES = {"3.0": "xilinx/vitis-ai-pytorch-cpu:ubuntu2004-3.0.0.106", "2.5": "xilinx/vitis-ai-cpu:2.5"}
PROTO_SOURCE = (
    "Xilinx/Vitis-AI tools/Vitis-AI-Library/model_config/include/vitis/ai/proto/dpu_model_param.proto "
    "(DpuModelParam, DpuKernelParam, YoloV3Param)"
)


@dataclass(frozen=True)
class DpuArch:
    """The DPU a bundle is compiled for: what ``arch.json`` and the pool-kernel check need."""

    target: str  # board name, e.g. zcu104
    fingerprint: str  # "0x101000016010407", as `xdputil query` prints it
    label: str = ""  # e.g. "ISA1 DPUCZDX8G_ISA1_B4096 (Vitis AI 2.5–3.5)"
    max_pool_kernel: int | None = None  # None: no limit known
    title: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"0x[0-9a-fA-F]{1,16}", self.fingerprint):
            raise UsageError(f"DPU fingerprint must be hex like 0x101000016010407, got '{self.fingerprint}'")


@dataclass(frozen=True)
class Blocker:
    layer: int
    line: int
    what: str

    def __str__(self) -> str:
        return f"layer {self.layer} (line {self.line}): {self.what}"


# --------------------------------------------------------------------------------------------- checks


@dataclass(frozen=True)
class PoolPlan:
    """A darknet max-pool as ``nn.MaxPool2d(k, s, padding, ceil_mode)`` plus a constant crop."""

    padding: int
    ceil_mode: bool
    rows: tuple[int, int]  # crop [start, stop) of the MaxPool2d output
    cols: tuple[int, int]
    full: tuple[int, int]  # MaxPool2d output size (H, W) before the crop


def _torch_pool_len(n: int, k: int, s: int, p: int, ceil: bool) -> int:
    """MaxPool2d's output length (its ceil-mode rule: the last window must start inside input + left pad)."""
    span = n + 2 * p - k
    if span < 0:
        return 0
    out = (-(-span // s) if ceil else span // s) + 1
    if ceil and (out - 1) * s >= n + p:
        out -= 1
    return out


def pool_plan(spec: MaxPoolSpec, h: int, w: int) -> PoolPlan | None:
    """The simplest MaxPool2d whose windows, after a crop, are exactly darknet's; None if there is none.

    Darknet's window j starts at ``j*stride - padding//2`` and pads with -inf on both sides, possibly
    more on the right (yolov3-tiny's size-2 stride-1 pool). MaxPool2d pads symmetrically with -inf,
    so a larger symmetric pad whose extra windows are cropped off (or ceil mode) gives the same
    windows, with no Pad op the DPU would have to run.
    """
    k, s = spec.size, spec.stride
    out_h, out_w, left, _ = maxpool_geometry(spec, h, w)
    for pad in range(left, k // 2 + 1):
        if (pad - left) % s:
            continue
        off = (pad - left) // s
        for ceil in (False, True):
            full = (_torch_pool_len(h, k, s, pad, ceil), _torch_pool_len(w, k, s, pad, ceil))
            if full[0] >= off + out_h and full[1] >= off + out_w:
                return PoolPlan(pad, ceil, (off, off + out_h), (off, off + out_w), full)
    return None


def dpu_blockers(cfg: Cfg, max_pool_kernel: int | None = None, height: int | None = None, width: int | None = None) -> list[Blocker]:
    """Every layer the DPU (or this exporter's DPU op set) cannot run, in cfg order."""
    h = height or cfg.net.height
    w = width or cfg.net.width
    shapes = infer_shapes(cfg, h, w)
    found: list[Blocker] = []
    prev = (cfg.net.channels, h, w)
    for layer in cfg.layers:
        i = layer.index
        if isinstance(layer, (ConvSpec, ShortcutSpec)) and layer.activation not in DPU_ACTIVATIONS:
            found.append(Blocker(i, layer.line_of("activation"), f"[{layer.section}] activation={layer.activation}: "
                                 f"the DPU runs only {', '.join(DPU_ACTIVATIONS)} (anything else falls back to the CPU)"))
        if isinstance(layer, ConvSpec) and (layer.size > CONV_MAX_KERNEL or layer.stride > CONV_MAX_STRIDE):
            found.append(Blocker(i, layer.line, f"[convolutional] size={layer.size} stride={layer.stride}: the DPU's "
                                 f"conv takes kernel 1-{CONV_MAX_KERNEL}, stride 1-{CONV_MAX_STRIDE}"))
        if isinstance(layer, RouteSpec) and layer.groups > 1:
            found.append(Blocker(i, layer.line_of("groups"), f"[route] groups={layer.groups} group_id={layer.group_id}: "
                                 "a channel split (CSP); the DPU compiler has no slice op for it (Vitis-AI#997)"))
        if isinstance(layer, ScaleChannelsSpec):
            found.append(Blocker(i, layer.line, "[scale_channels]: a channel-wise multiply, not in edgeyolo's DPU op set"))
        if isinstance(layer, MaxPoolSpec):
            if max_pool_kernel is not None and layer.size > max_pool_kernel:
                found.append(Blocker(i, layer.line_of("size"), f"[maxpool] size={layer.size} exceeds this DPU's pool "
                                     f"kernel limit 1-{max_pool_kernel}"))
            elif pool_plan(layer, prev[1], prev[2]) is None:
                found.append(Blocker(i, layer.line, f"[maxpool] size={layer.size} stride={layer.stride} "
                                     f"padding={layer.padding}: no exact MaxPool2d form at {prev[1]}x{prev[2]}"))
        prev = shapes[i]
    return found


# --------------------------------------------------------------------------------------------- model.py


@dataclass(frozen=True)
class GeneratedModel:
    source: str
    key_map: dict[str, str]  # Darknet state-dict key -> generated module's key
    head_modules: tuple[str, ...]  # attribute of the conv feeding each [yolo] ('' if not a conv)
    leaky_layers: tuple[int, ...]  # layers whose leaky becomes 26/256


def _heads_literal(cfg: Cfg, shapes: list[tuple[int, int, int]]) -> str:
    rows = []
    for y in cfg.yolo_layers:
        stride = cfg.net.height // shapes[y.index][1]
        anchors = ", ".join(f"({a[0]!r}, {a[1]!r})" for a in y.masked_anchors)
        rows.append(f"    ({y.index}, {stride}, [{anchors}], {y.classes}),")
    return "[\n" + "\n".join(rows) + "\n]"


def generate_model(cfg: Cfg, name: str = "model") -> GeneratedModel:
    """Python source of a standalone nn.Module computing ``cfg``'s raw heads at ``cfg.net`` size."""
    from edgeyolo.model.darknet import BN_EPS

    blockers = dpu_blockers(cfg)
    if blockers:
        raise UnsupportedLayerError("cannot generate a DPU module: " + "; ".join(map(str, blockers)), cfg.path, None)
    h, w, c = cfg.net.height, cfg.net.width, cfg.net.channels
    shapes = infer_shapes(cfg)
    head_convs = {y.index - 1: k for k, y in enumerate(cfg.yolo_layers)}
    var: dict[int, str] = {}
    init: list[str] = []
    fwd: list[str] = []
    keys: dict[str, str] = {}
    heads: list[str] = []
    head_modules: list[str] = []
    leaky: list[int] = []
    prev_shape = (c, h, w)

    def activation(layer: Any, i: int, expr: str) -> str:
        if layer.activation == "leaky":
            init.append(f"self.act{i} = nn.LeakyReLU(leaky_slope)")
            leaky.append(i)
            return f"self.act{i}({expr})"
        if layer.activation == "relu":
            init.append(f"self.act{i} = nn.ReLU()")
            return f"self.act{i}({expr})"
        return expr  # linear (dpu_blockers refused the rest)

    for layer in cfg.layers:
        i = layer.index
        src = var[i - 1] if i else "x"
        if isinstance(layer, ConvSpec):
            attr = f"head{head_convs[i]}_conv{i}" if i in head_convs else f"conv{i}"
            bias = not layer.batch_normalize
            groups = f", groups={layer.groups}" if layer.groups > 1 else ""
            init.append(
                f"self.{attr} = nn.Conv2d({prev_shape[0]}, {layer.filters}, {layer.size}, stride={layer.stride}, "
                f"padding={layer.padding}{groups}, bias={bias})"
            )
            keys[f"module_list.{i}.conv.weight"] = f"{attr}.weight"
            if bias:
                keys[f"module_list.{i}.conv.bias"] = f"{attr}.bias"
            expr = f"self.{attr}({src})"
            if layer.batch_normalize:
                init.append(f"self.bn{i} = nn.BatchNorm2d({layer.filters}, eps={BN_EPS!r})")
                for k in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                    keys[f"module_list.{i}.bn.{k}"] = f"bn{i}.{k}"
                expr = f"self.bn{i}({expr})"
            fwd.append(f"x{i} = {activation(layer, i, expr)}")
            var[i] = f"x{i}"
            if i in head_convs:
                head_modules.append(attr)
        elif isinstance(layer, MaxPoolSpec):
            plan = pool_plan(layer, prev_shape[1], prev_shape[2])
            assert plan is not None  # dpu_blockers checked it
            ceil = ", ceil_mode=True" if plan.ceil_mode else ""
            init.append(f"self.pool{i} = nn.MaxPool2d({layer.size}, {layer.stride}, padding={plan.padding}{ceil})")
            crop = ""
            if plan.rows != (0, plan.full[0]) or plan.cols != (0, plan.full[1]):
                # darknet pads more on the right/bottom than MaxPool2d can: drop the extra windows
                crop = f"[:, :, {plan.rows[0]}:{plan.rows[1]}, {plan.cols[0]}:{plan.cols[1]}]"
            fwd.append(f"x{i} = self.pool{i}({src}){crop}")
            var[i] = f"x{i}"
        elif isinstance(layer, UpsampleSpec):
            init.append(f"self.up{i} = nn.Upsample(scale_factor={float(layer.stride)!r}, mode=\"nearest\")")
            fwd.append(f"x{i} = self.up{i}({src})")
            var[i] = f"x{i}"
        elif isinstance(layer, RouteSpec):
            parts = [var[j] for j in layer.layers]
            if len(parts) == 1:
                var[i] = parts[0]
            else:
                fwd.append(f"x{i} = torch.cat([{', '.join(parts)}], 1)")
                var[i] = f"x{i}"
        elif isinstance(layer, ShortcutSpec):
            fwd.append(f"x{i} = {activation(layer, i, f'{src} + {var[layer.source]}')}")
            var[i] = f"x{i}"
        elif isinstance(layer, AvgPoolSpec):
            init.append(f"self.avgpool{i} = nn.AdaptiveAvgPool2d(1)")
            fwd.append(f"x{i} = self.avgpool{i}({src})")
            var[i] = f"x{i}"
        elif isinstance(layer, (DropoutSpec, YoloSpec)):
            var[i] = src  # dropout is the identity at inference; [yolo] decodes on the CPU
            if isinstance(layer, YoloSpec):
                heads.append(src)
                if i - 1 not in head_convs:
                    head_modules.append("")
        else:  # pragma: no cover - dpu_blockers refuses every other type
            raise AssertionError(type(layer))
        prev_shape = shapes[i]
    fwd.append(f"return ({', '.join(heads)},)")
    source = tpl.fill(
        tpl.MODEL_HEADER,
        {
            "NAME": name,
            "VERSION": __version__,
            "CFG": Path(cfg.path).name,
            "CHANNELS": c,
            "HEIGHT": h,
            "WIDTH": w,
            "HEADS": _heads_literal(cfg, shapes),
            "CLASS": CLASS_NAME,
            "INIT": "\n".join(" " * 8 + line for line in init) or " " * 8 + "pass",
            "FORWARD": "\n".join(" " * 8 + line for line in fwd),
        },
    )
    return GeneratedModel(source, keys, tuple(head_modules), tuple(leaky))


# --------------------------------------------------------------------------------------------- prototxt


def prototxt_text(cfg: Cfg, name: str, head_modules: Sequence[str], contract: Contract) -> tuple[str | None, str]:
    """The Vitis AI Library YOLOv3 config, or (None, why not) when the library cannot describe the model."""
    heads = cfg.yolo_layers
    counts = {len(y.mask) for y in heads}
    if len(counts) != 1:
        return None, f"[yolo] layers have different anchor counts {sorted(counts)}; the library's anchorCnt is one number"
    if len({y.classes for y in heads}) != 1:
        return None, "[yolo] layers have different class counts"
    if not all(head_modules):
        return None, "a [yolo] layer is not fed by a conv, so its DPU output has no stable name"
    scale = repr(contract.scale)
    lines = [
        f"# Vitis AI Library configuration for {name}, written by edgeyolo {__version__}.",
        f"# Field names: {PROTO_SOURCE}.",
        "# The library walks layer_name from the last entry to the first and gives the k-th tensor it visits",
        "# the k-th block of anchorCnt (w, h) biases (yolov3.cpp, yolov3_post_process), so layer_name lists the",
        "# heads last-first and biases then reads in cfg head order. layer_name matches any output tensor name",
        f"# containing it: vai_q names tensors after the module attributes ({CLASS_NAME}_Conv2d_<attr>...);",
        "# if compile.sh reports other output names, put them here (`xdputil xmodel out/<name>.xmodel -l`).",
        "# test_mAP: false makes the library stretch-resize the image; true selects its darknet letterbox,",
        "# which is edgeyolo's preprocessing contract (grey border, aspect kept).",
        "model {",
        f'  name: "{name}"',
        "  kernel {",
        *["    mean: 0.0"] * 3,
        *[f"    scale: {scale}"] * 3,
        "  }",
        "  model_type : YOLOv3",
        "  yolo_v3_param {",
        f"    num_classes: {heads[0].classes}",
        f"    anchorCnt: {counts.pop()}",
        *[f'    layer_name: "{m}"' for m in reversed(head_modules)],
        f"    conf_threshold: {contract.conf_threshold!r}",
        f"    nms_threshold: {contract.iou_threshold!r}",
        *[f"    biases: {_num(v)}" for y in heads for a in y.masked_anchors for v in a],
        "    test_mAP: false",
        "  }",
        "  is_tf: false",
        "}",
    ]
    return "\n".join(lines) + "\n", ""


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


# --------------------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class VitisExportResult:
    path: Path
    name: str
    files: tuple[str, ...]
    calib_images: int
    max_rel_error: float  # generated module (traced) vs Darknet, same LeakyReLU slope
    leaky_layers: int
    leaky_delta: float | None  # DPU slope 26/256 vs darknet's 0.1, relative; None if no leaky layer
    xmodel: str
    warnings: tuple[str, ...] = field(default_factory=tuple)


def safe_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    if not name:
        raise UsageError(f"cannot make a model name from '{text}'; pass --name")
    return name if not name[0].isdigit() else f"m_{name}"


def _import_generated(path: Path) -> Any:
    """Import a staged model.py under a unique name (never left in sys.modules)."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if any(n == "edgeyolo" or n.startswith("edgeyolo.") for n in names):
            raise VerificationError(f"{path.name} imports {names[0]}; the bundle must not need edgeyolo")
    spec = importlib.util.spec_from_file_location(f"_edgeyolo_vitis_{uuid.uuid4().hex}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rel_error(refs: Sequence[Any], gots: Sequence[Any]) -> float:
    worst = 0.0
    for r, g in zip(refs, gots):
        if tuple(r.shape) != tuple(g.shape):
            return float("inf")
        scale = float(r.abs().max())
        worst = max(worst, float((r - g).abs().max()) / max(scale, 1e-12))
    return worst


def verify_bundle(stage: Path, model: Any, samples: Sequence[Any], contract: Contract, images_bgr: Sequence[np.ndarray],
                  tolerance: float = DEFAULT_TOLERANCE) -> tuple[float, float | None]:
    """Generated module (imported from the file, state dict from the file, traced) vs ``model``'s raw heads.

    Returns (error at darknet's slope, delta of the DPU slope vs the source) as max|Δ|/max|ref|.
    Also checks quantize.py's embedded letterbox against the contract on the same images.
    """
    import torch

    from edgeyolo.model.darknet import RawHeads

    module = _import_generated(stage / "model.py")
    state = torch.load(stage / "model_state.pt", map_location="cpu", weights_only=True)
    same = getattr(module, CLASS_NAME)(leaky_slope=DARKNET_LEAKY_SLOPE).eval()
    dpu = getattr(module, CLASS_NAME)().eval()
    try:
        same.load_state_dict(state)
        dpu.load_state_dict(state)
    except RuntimeError as exc:
        raise VerificationError(f"model_state.pt does not load into model.py: {exc}") from None
    reference = RawHeads(model).eval()
    err = 0.0
    delta = None
    with torch.no_grad():
        traced = torch.jit.trace(same, samples[0], check_trace=False)
        leaky = any(isinstance(m, torch.nn.LeakyReLU) for m in dpu.modules())
        for x in samples:
            refs = [t.float() for t in reference(x)]
            e = _rel_error(refs, list(traced(x)))
            if not np.isfinite(e) or e > tolerance:
                raise VerificationError(
                    f"the generated model.py differs from edgeyolo's model by max|Δ|/max|ref| = {e:.3g} "
                    f"(allowed {tolerance:g}); this is a bug in the Vitis exporter, please report the cfg"
                )
            err = max(err, e)
            if leaky:
                delta = max(delta or 0.0, _rel_error(refs, list(dpu(x))))
    quantize = _import_generated(stage / "quantize.py")
    for image in images_bgr:
        ours = quantize.letterbox(image)
        theirs = contract.preprocess(image)[0]
        if ours.shape != theirs.shape or float(np.abs(ours - theirs).max()) > 1e-6:
            raise VerificationError("quantize.py's letterbox differs from edgeyolo's preprocessing contract")
    return err, delta


def _pick_calib(paths: Sequence[Path], limit: int) -> tuple[list[Path], list[np.ndarray], int]:
    """The first ``limit`` readable images (sorted order kept, as --vitis-sim calibration uses them)."""
    from edgeyolo.model.io import read_image

    chosen: list[Path] = []
    first: list[np.ndarray] = []
    skipped = 0
    for path in paths:
        if len(chosen) >= limit:
            break
        image = read_image(path)
        if image is None:
            skipped += 1
            continue
        chosen.append(Path(path))
        if len(first) < VERIFY_IMAGES:
            first.append(image)
    return chosen, first, skipped


def export_vitis(
    model: Any,
    out: str | Path,
    arch: DpuArch,
    calib_images: Sequence[str | Path],
    images: int = 200,
    img_size: int | None = None,
    vai: str = "3.0",
    name: str | None = None,
    calib_source: str = "",
    vitis_sim_map: float | None = None,
    contract: Contract | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    provenance: dict[str, str] | None = None,
) -> VitisExportResult:
    """Write and verify a Vitis AI bundle for ``model`` (an edgeyolo Darknet) in ``out``.

    The bundle appears only when complete and verified; ``out`` must not exist or be empty.
    """
    import torch

    if vai not in VAI_IMAGES:
        raise UsageError(f"--vai must be one of {', '.join(VAI_IMAGES)} (the images docker/vitis-ai/run.sh knows), got '{vai}'")
    if images <= 0:
        raise UsageError(f"--images must be positive, got {images}")
    cfg: Cfg = model.cfg
    h, w = (img_size, img_size) if img_size else (cfg.net.height, cfg.net.width)
    if h % 32 or w % 32:
        raise UsageError(f"--img-size must be a multiple of 32, got {h}x{w}")
    if cfg.net.channels != 3:
        raise ExportError(f"the Vitis AI Library feeds 3-channel images; this cfg has channels={cfg.net.channels}")
    if not cfg.yolo_layers:
        raise ExportError("the cfg has no [yolo] layer: the bundle's prototxt and post-processing need YOLO heads")
    blockers = dpu_blockers(cfg, arch.max_pool_kernel, h, w)
    if blockers:
        where = f" ({arch.label})" if arch.label else ""
        raise UnsupportedLayerError(
            f"the DPU{where} cannot run {len(blockers)} layer(s) of this model:\n  "
            + "\n  ".join(map(str, blockers))
            + f"\nrun `edgeyolo adapt --target {arch.target} --cfg {cfg.path} --weights W --out DIR` first (it rewrites "
            "channel-split routes exactly and swaps mish/swish for leaky, which needs fine-tuning), then export DIR/model.cfg",
            cfg.path,
            None,
        )
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out {out} exists and is not an empty folder; choose a new folder")
    name = safe_name(name or Path(cfg.path).stem)
    sized = with_input_size(cfg, h, w)
    contract = contract or Contract(h, w, channel_order="rgb")
    gen = generate_model(sized, name)
    chosen, first, skipped = _pick_calib([Path(p) for p in calib_images], images)
    if not chosen:
        raise UsageError("no readable calibration images" + (f" in {calib_source}" if calib_source else ""))
    warnings: list[str] = []
    if skipped:
        warnings.append(f"skipped {skipped} unreadable calibration image(s)")
    if any(y.scale_x_y != 1.0 for y in cfg.yolo_layers):
        warnings.append("a [yolo] layer has scale_x_y != 1; the Vitis AI Library's YOLOv3 decode ignores it, so boxes "
                        "from test_*_yolov3 will be slightly off (decode the raw outputs with edgeyolo's contract instead)")
    prototxt, why_not = prototxt_text(sized, name, gen.head_modules, contract)
    if prototxt is None:
        warnings.append(f"no {name}.prototxt written: {why_not}; run the xmodel through VART with your own decode")

    state = model.state_dict()
    unmapped = sorted(set(state) - set(gen.key_map))
    if unmapped:  # pragma: no cover - an edgeyolo bug, not a user error
        raise ExportError(f"state-dict entries with no place in model.py: {unmapped[:5]}")

    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    try:
        os.chmod(stage, new_dir_mode())  # the bundle is this folder renamed: a plain mkdir's mode, not 0o700
        (stage / "model.py").write_text(gen.source)
        torch.save({gen.key_map[k]: v.detach().clone().contiguous().cpu() for k, v in state.items()},
                   stage / "model_state.pt", _use_new_zipfile_serialization=True)
        (stage / "model.cfg").write_text(format_cfg(sized))
        calib_dir = stage / "calib"
        calib_dir.mkdir()
        for k, path in enumerate(chosen):
            shutil.copyfile(path, calib_dir / f"{k:05d}_{path.name}")
        values = {"NAME": name, "CLASS": CLASS_NAME}
        (stage / "quantize.py").write_text(tpl.fill(tpl.QUANTIZE_PY, {
            **values, "HEIGHT": h, "WIDTH": w, "PAD": repr(contract.pad_value), "SCALE": repr(contract.scale),
        }))
        (stage / "quantize.sh").write_text(tpl.fill(tpl.QUANTIZE_SH, values))
        (stage / "compile.sh").write_text(tpl.fill(tpl.COMPILE_SH, {
            **values, "TARGET": arch.target, "ARCH_LABEL": arch.label or "DPUCZDX8G", "FINGERPRINT": arch.fingerprint,
        }))
        for script in ("quantize.sh", "compile.sh"):
            os.chmod(stage / script, 0o755)
        (stage / "arch.json").write_text(json.dumps({"fingerprint": arch.fingerprint}) + "\n")
        if prototxt is not None:
            (stage / f"{name}.prototxt").write_text(prototxt)

        samples = [torch.from_numpy(contract.preprocess(img)[0]) for img in first]
        err, delta = verify_bundle(stage, model, samples, contract, first, tolerance)
        if gen.leaky_layers:
            measured = f" (max|Δ|/max|ref| = {delta:.3g} on {len(samples)} calibration image(s))" if delta is not None else ""
            warnings.insert(0, (
                f"{len(gen.leaky_layers)} leaky layer(s): model.py uses LeakyReLU 26/256 = {DPU_LEAKY_SLOPE}, the only "
                f"slope the DPU computes, instead of darknet's {DARKNET_LEAKY_SLOPE}; the output changes slightly{measured}. "
                f"Fine-tuning at 26/256 after `edgeyolo adapt --target {arch.target}` is recommended"
            ))
        notes = [f"- {text}" for text in warnings] or ["- none"]
        sim = (f"Measured with `--vitis-sim` for this model: **mAP@0.5 = {vitis_sim_map:.4f}**."
               if vitis_sim_map is not None else "Run `edgeyolo quantize --vitis-sim` with `edgeyolo test` to get that number.")
        (stage / "README.md").write_text(tpl.fill(tpl.README_MD, {
            **values, "TARGET_TITLE": arch.title or arch.target, "VAI": vai, "VERSION": __version__, "CFG": Path(cfg.path).name,
            "HEIGHT": h, "WIDTH": w, "CALIB_COUNT": len(chosen), "CALIB_SOURCE": calib_source or "--calib",
            "FINGERPRINT": arch.fingerprint, "ARCH_LABEL": arch.label or "DPUCZDX8G", "BUNDLE": str(out),
            "IMAGE": VAI_IMAGES[vai], "SIM_MAP": sim, "NOTES": "\n".join(notes),
        }))
        xmodel = f"quantize_result/{CLASS_NAME}_int.xmodel"
        manifest = {
            "edgeyolo_version": __version__,
            "name": name,
            "target": arch.target,
            "arch": dataclasses.asdict(arch),
            "vai": vai,
            "docker_image": VAI_IMAGES[vai],
            "img_size": [h, w],
            "contract": json.loads(contract.to_json()),
            "module_class": CLASS_NAME,
            "xmodel": xmodel,
            "compiled": f"out/{name}.xmodel",
            "heads": [
                {"yolo_layer": y.index, "module": m, "anchors": [list(a) for a in y.masked_anchors], "classes": y.classes}
                for y, m in zip(sized.yolo_layers, gen.head_modules)
            ],
            "calib_images": len(chosen),
            "calib_source": calib_source,
            "leaky": {"layers": list(gen.leaky_layers), "slope": DPU_LEAKY_SLOPE, "output_delta_rel": delta},
            "verification": {"max_rel_error": err, "tolerance": tolerance, "images": len(samples), "traced": True},
            "vitis_sim_map": vitis_sim_map,
            "warnings": warnings,
            "provenance": provenance or {},
        }
        (stage / "vitis.json").write_text(json.dumps(manifest, indent=1) + "\n")
        files = tuple(sorted(p.name for p in stage.iterdir()))
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    for text in warnings:
        log.warning(text)
    return VitisExportResult(out, name, files, len(chosen), err, len(gen.leaky_layers), delta, xmodel, tuple(warnings))
