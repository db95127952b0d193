"""int8 ONNX for onnxruntime on a CPU: the Q/DQ layout its integer kernels fuse.

TensorRT quantizes conv inputs only (``export qdq``): nothing follows a conv's output, so
onnxruntime cannot fuse the pairs and runs that graph in float with extra Q/DQ work (0.56–0.78× of
fp32 on this project's 2-core host). onnxruntime's CPU provider turns each ``DequantizeLinear → op →
QuantizeLinear`` group into an integer kernel (QLinearConv, QLinearLeakyRelu, QLinearConcat, u8
max-pool), so here every tensor of the backbone and the heads has its own pair: u8 activations with
a zero point (asymmetric, what the u8·s8 AVX2/VNNI kernels take), s8 weights symmetric per output
channel, int32 biases. The yolo decode stays float. Without VNNI the u8·s8 products are summed in
16-bit pairs that can saturate, so there the weights take 7 bits (``reduce_range``), as onnxruntime
advises.

The graph is written by onnxruntime's static quantizer on the float ONNX of the BN-folded model,
with activation ranges from calibration images preprocessed by the shared contract. Nothing is
written unless verification passes:

* weights and biases: the integer codes in the file equal torch's rounding of the folded float
  parameters at the file's scales;
* activations: every activation ``QuantizeLinear``, read from onnxruntime (graph as written), against
  a torch fake-quant model of the same network — the folded Darknet with those weight codes and a
  u8 fake-quant at each quantized tensor (found by matching the float ONNX's tensors to the torch
  model's on the sample), teacher-forced so each tensor is judged on the same input.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from edgeyolo.contract import Contract, channel_order_for
from edgeyolo.errors import ExportError, UsageError, VerificationError
from edgeyolo.fileio import atomic_write_bytes
from edgeyolo.model.cfg import YoloSpec
from edgeyolo.model.darknet import ConvBlock, Darknet

OPSET = 13
MIN_CODE_MATCH = 0.999  # share of identical codes required at every activation QuantizeLinear
MAX_OUTPUT_ERROR = 1e-4  # decoded outputs given the same codes: float rounding only
CALIBRATIONS = ("minmax", "percentile", "entropy")
#: op types whose tensors are quantized: convs, their activations and the ops between them
QUANTIZED_OPS = ("Conv", "LeakyRelu", "Relu", "MaxPool", "Resize", "Concat", "Add", "Slice")
_CONV_NODE = re.compile(r"^/module_list\.(\d+)/conv/Conv$")


@dataclass(frozen=True)
class HostInt8Result:
    path: Path
    activation_quantizers: int  # activation QuantizeLinear nodes in the graph
    weight_quantizers: int  # convs with int8 weights
    code_match: dict[str, float]  # quantized tensor -> share of identical codes, onnxruntime vs torch
    weight_code_match: float  # share of identical weight and bias codes, file vs torch
    unmatched: tuple[str, ...]  # quantized tensors with no torch counterpart (judged through their consumers)
    reduce_range: bool
    calibration: str
    calibration_images: int
    output_error: float  # decoded outputs given the same codes, onnxruntime vs torch
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def min_code_match(self) -> float:
        return min(self.code_match.values()) if self.code_match else 1.0


def cpu_has_vnni() -> bool:
    """True when this CPU has a u8·s8 dot-product instruction (AVX-VNNI or AVX512-VNNI); Linux only,
    False where it cannot tell (the safe answer: 7-bit weights never saturate)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return "avx512_vnni" in flags or "avx_vnni" in flags


def _head_tensors(proto, model: Darknet) -> list[str]:
    """The raw head tensors (what the decode reads): the last output of the layer before each [yolo]."""
    heads = []
    for layer in model.cfg.layers:
        if isinstance(layer, YoloSpec):
            prefix = f"/module_list.{layer.index - 1}/"
            node = [n for n in proto.graph.node if n.name.startswith(prefix)]
            if not node:
                raise ExportError(f"no node of layer {layer.index - 1} (feeding [yolo] {layer.index}) in the exported graph")
            heads.append(node[-1].output[0])
    return heads


def network_nodes(proto, model: Darknet) -> list[str]:
    """Every node the raw heads depend on (the backbone and the heads, not the decode)."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    seen: dict[str, object] = {}
    stack = [producer[t] for t in _head_tensors(proto, model)]
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen[node.name] = node
        stack.extend(producer[i] for i in node.input if i in producer)
    return sorted(seen)


def quantize_onnx(float_path: Path, out_path: Path, model: Darknet, contract: Contract, images: Sequence[np.ndarray],
                  calibration: str, reduce_range: bool) -> None:
    """onnxruntime's static QDQ quantizer with the host layout (u8 activations, s8 per-channel weights)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class ContractReader(CalibrationDataReader):
        """The calibration images, preprocessed by the shared contract."""

        def __init__(self, input_name: str):
            self._blobs = ({input_name: contract.preprocess(image)[0]} for image in images)

        def get_next(self):
            return next(self._blobs, None)

    proto = onnx.load(str(float_path))
    reader = ContractReader(proto.graph.input[0].name)
    method = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}
    # the quantizer prints its histogram progress and logs advice on the root logger: neither is ours to show
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(float_path), str(out_path), reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=list(QUANTIZED_OPS),
                per_channel=True, reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_quantize=network_nodes(proto, model), calibrate_method=method[calibration],
            )
    finally:
        root.setLevel(level)


# ------------------------------------------------------------------------------------- verification


def _initializers(proto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


def activation_quantizers(proto) -> dict[str, tuple[float, int, str]]:
    """Quantized activation tensor -> (scale, zero point, QuantizeLinear node name)."""
    inits = _initializers(proto)
    found = {}
    for node in proto.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            zero = inits[node.input[2]]
            if zero.dtype != np.uint8 or inits[node.input[1]].size != 1:
                raise ExportError(f"{node.name}: expected a per-tensor u8 activation quantizer")
            found[node.input[0]] = (float(inits[node.input[1]]), int(zero), node.name)
    return found


def conv_quantizers(proto) -> dict[int, dict[str, np.ndarray]]:
    """Conv layer index -> its int8 weight codes, weight scales, int32 bias codes and bias scales."""
    inits = _initializers(proto)
    producer = {o: n for n in proto.graph.node for o in n.output}
    convs = {}
    for node in proto.graph.node:
        m = _CONV_NODE.match(node.name) if node.op_type == "Conv" else None
        w_dq = producer.get(node.input[1]) if m else None
        if w_dq is None or w_dq.op_type != "DequantizeLinear":
            continue
        entry = {"w": inits[w_dq.input[0]], "w_scale": inits[w_dq.input[1]]}
        b_dq = producer.get(node.input[2]) if len(node.input) > 2 else None
        if b_dq is not None and b_dq.op_type == "DequantizeLinear":
            entry.update(b=inits[b_dq.input[0]], b_scale=inits[b_dq.input[1]])
        convs[int(m.group(1))] = entry
    return convs


def weight_qmin(reduce_range: bool) -> int:
    """The lowest weight code onnxruntime's symmetric s8 quantizer uses (the range is symmetric)."""
    return -64 if reduce_range else -127


def _quantize(x: torch.Tensor, scale: float, zero: int, lo: int, hi: int) -> torch.Tensor:
    return torch.clamp(torch.round(x / scale) + zero, lo, hi)


@contextmanager
def _hooked(model: Darknet, on_out=None, on_pre=None, on_in=None):
    """Call ``on_out(i, tensor)`` on every layer's output (residual adds and route concats included),
    ``on_pre(i, tensor)`` on a conv block's output before its activation and ``on_in(i, tensor)`` on its
    input; a hook that returns a tensor replaces the one it saw."""
    handles = []
    index = {id(m): i for i, m in enumerate(model.module_list)}
    for i, module in enumerate(model.module_list):
        if on_out is not None:
            handles.append(module.register_forward_hook(lambda m, a, out, i=i: on_out(i, out)))
        if isinstance(module, ConvBlock):
            if on_in is not None:
                handles.append(module.register_forward_pre_hook(lambda m, a, i=i: _as_args(on_in(i, a[0]))))
            if on_pre is not None:
                handles.append(module.conv.register_forward_hook(lambda m, a, out, i=i: on_pre(i, out)))
    # residual adds and route concats run inline in Darknet.run, through these two methods
    add, route = model._shortcut, model._route
    if on_out is not None:
        def outcome(module, out):
            replaced = on_out(index[id(module)], out)
            return out if replaced is None else replaced

        model._shortcut = lambda module, x, source: outcome(module, add(module, x, source))  # instance attributes,
        model._route = lambda module, parts: outcome(module, route(module, parts))  # removed below
    try:
        yield
    finally:
        for h in handles:
            h.remove()
        model.__dict__.pop("_shortcut", None)
        model.__dict__.pop("_route", None)


def _as_args(x: torch.Tensor | None):
    return None if x is None else (x,)


def _torch_points(model: Darknet, blob: np.ndarray) -> dict[tuple[str, int], torch.Tensor]:
    """Every tensor a hook can reach: ("in", i) a conv block's input, ("pre", i) its output before the
    activation, ("out", i) a layer's output."""
    seen: dict[tuple[str, int], torch.Tensor] = {}

    def record(kind: str):
        return lambda i, x: seen.__setitem__((kind, i), x.detach())

    with _hooked(model, record("out"), record("pre"), record("in")), torch.no_grad():
        model.forward_raw(torch.from_numpy(blob))
    return seen


def _onnx_tensors(data: bytes, names: Sequence[str], blob: np.ndarray, optimize: bool = False) -> dict[str, np.ndarray]:
    """The values of the named tensors, made graph outputs (the graph as written unless ``optimize``)."""
    import onnx

    from edgeyolo.runtime.onnxruntime import make_session

    proto = onnx.load_from_string(data)
    existing = {o.name for o in proto.graph.output}
    for name in names:
        if name not in existing:
            proto.graph.output.append(onnx.ValueInfoProto(name=name))
    session = make_session(proto.SerializeToString(), optimize=optimize)
    values = session.run(list(names), {session.get_inputs()[0].name: blob})
    return dict(zip(names, values))


def match_points(float_data: bytes, tensors: Sequence[str], model: Darknet, blob: np.ndarray, tolerance: float = 1e-4):
    """Quantized tensor -> the torch point computing the same values on ``blob`` (or None)."""
    ours = _torch_points(model, blob)
    theirs = _onnx_tensors(float_data, tensors, blob)
    order = {"out": 0, "pre": 1, "in": 2}
    candidates = sorted(ours.items(), key=lambda kv: (order[kv[0][0]], kv[0][1]))
    found: dict[str, tuple[str, int] | None] = {}
    for name in tensors:
        value = theirs[name]
        found[name] = None
        for key, tensor in candidates:
            if tuple(tensor.shape) != value.shape:
                continue
            ref = tensor.numpy()
            if float(np.abs(ref - value).max()) <= tolerance * max(float(np.abs(ref).max()), 1e-6):
                found[name] = key
                break
    return found


def quantized_torch_model(folded: Darknet, convs: dict[int, dict[str, np.ndarray]], qmin: int) -> tuple[Darknet, float]:
    """The folded model with weights and biases at the file's scales, rounded by torch; and the share of
    its codes equal to the file's."""
    import copy

    quantized = copy.deepcopy(folded)
    same = total = 0
    for index, q in convs.items():
        conv = quantized.module_list[index].conv
        with torch.no_grad():
            s_w = torch.from_numpy(q["w_scale"].astype(np.float32)).view(-1, 1, 1, 1)
            codes = torch.clamp(torch.round(conv.weight / s_w), qmin, -qmin)
            same += int((codes.numpy().astype(np.int64) == q["w"].astype(np.int64)).sum())
            total += codes.numel()
            conv.weight.copy_(torch.from_numpy(q["w"].astype(np.float32)) * s_w)
            if "b" in q and conv.bias is not None:
                s_b = torch.from_numpy(q["b_scale"].astype(np.float64))
                b_codes = torch.round(conv.bias.double() / s_b)
                same += int((b_codes.numpy().astype(np.int64) == q["b"].astype(np.int64)).sum())
                total += b_codes.numel()
                conv.bias.copy_((torch.from_numpy(q["b"].astype(np.float64)) * s_b).float())
    return quantized, same / max(total, 1)


@dataclass(frozen=True)
class Verification:
    code_match: dict[str, float]  # quantized tensor -> share of identical codes (teacher-forced)
    unmatched: tuple[str, ...]
    weight_code_match: float
    output_error: float  # decoded outputs, onnxruntime vs the teacher-forced torch model: max|Δ|/max|ref|

    def failure(self, min_match: float = MIN_CODE_MATCH, max_output_error: float = MAX_OUTPUT_ERROR) -> str | None:
        """Why the int8 graph does not compute the quantized network, or None."""
        if self.weight_code_match < 1.0:
            return f"only {self.weight_code_match:.4%} of the file's weight and bias codes equal torch's rounding at its scales"
        if not self.code_match:
            return "no quantized tensor of the graph could be matched to the torch model"
        worst = min(self.code_match, key=self.code_match.get)
        if self.code_match[worst] < min_match:
            return (f"{worst}: only {self.code_match[worst]:.4%} of onnxruntime's u8 codes equal the torch fake-quant model's "
                    f"(need {min_match:.1%}); the int8 graph does not compute the quantized network")
        if self.output_error > max_output_error:
            return (f"the decoded outputs differ from the torch fake-quant model's by max|Δ|/max|ref| = {self.output_error:.3g} "
                    f"(allowed {max_output_error:g}) although every code matched: a dequantization after the last quantizer is off")
        return None


def verify(data: bytes, float_data: bytes, folded: Darknet, blob: np.ndarray, qmin: int) -> Verification:
    """The int8 graph ``data`` against the torch fake-quant model built from ``folded`` (the BN-folded
    float model whose float ONNX is ``float_data``) on ``blob``, teacher-forced: every torch quantizer
    continues from onnxruntime's codes, so each is judged on the same input and a flip at a rounding
    boundary does not cascade."""
    import onnx

    proto = onnx.load_from_string(data)
    quantizers = activation_quantizers(proto)
    quantized, weight_match = quantized_torch_model(folded, conv_quantizers(proto), qmin)
    points = match_points(float_data, list(quantizers), folded, blob)
    node_output = {n.name: n.output[0] for n in proto.graph.node}
    outputs = {t: node_output[q[2]] for t, q in quantizers.items()}
    final = proto.graph.output[0].name
    values = _onnx_tensors(data, [*outputs.values(), final], blob)
    theirs = {t: values[outputs[t]].astype(np.int64) for t in quantizers}
    by_point: dict[tuple[str, int], list[str]] = {}
    for tensor, point in points.items():
        if point is not None:
            by_point.setdefault(point, []).append(tensor)
    result: dict[str, float] = {}

    def replace(point: tuple[str, int], x: torch.Tensor) -> torch.Tensor:
        forced = None
        for tensor in by_point[point]:
            scale, zero, _ = quantizers[tensor]
            mine = _quantize(x, scale, zero, 0, 255).to(torch.int64).numpy()
            result[tensor] = float((mine == theirs[tensor]).mean())
            if forced is None:
                forced = torch.from_numpy(((theirs[tensor] - zero) * scale).astype(np.float32))
        return forced

    def hook(kind: str):
        return lambda i, x: replace((kind, i), x) if (kind, i) in by_point else None

    with _hooked(quantized, hook("out"), hook("pre"), hook("in")), torch.no_grad():
        ours = quantized.eval()(torch.from_numpy(blob)).numpy()
    ref = values[final]
    error = float(np.abs(ours - ref).max()) / max(float(np.abs(ours).max()), 1e-12)
    unmatched = tuple(sorted(t for t, p in points.items() if p is None))
    return Verification(result, unmatched, weight_match, error)


# ----------------------------------------------------------------------------------------- export


def export_host_int8(
    model: Darknet,
    out: str | Path,
    calib_images: Sequence[np.ndarray],
    img_size: int | None = None,
    calibration: str = "minmax",
    reduce_range: bool | None = None,
    sample: np.ndarray | None = None,
    min_match: float = MIN_CODE_MATCH,
    provenance: dict[str, str] | None = None,
) -> HostInt8Result:
    """Quantize a float model for onnxruntime on a CPU, verify it against torch, then write it."""
    import onnx

    from edgeyolo.compress.quant.modules import fold_bn, is_quantized
    from edgeyolo.export.onnx import export_onnx, stamp_metadata

    if is_quantized(model):
        raise UsageError("host int8 quantizes a float model itself; give the float weights, not a quantized folder")
    if calibration not in CALIBRATIONS:
        raise UsageError(f"unknown calibration '{calibration}'; expected one of {', '.join(CALIBRATIONS)}")
    if not calib_images:
        raise UsageError("host int8 needs calibration images (a folder of the deployment's kind of images)")
    if not model.heads:
        raise ExportError("the cfg has no [yolo] layer, so there is nothing to decode")
    size = img_size or model.cfg.net.height
    if size <= 0 or size % 32:
        raise UsageError(f"--img-size must be a positive multiple of 32, got {size}")
    contract = Contract(size, size, channel_order=channel_order_for(model.cfg.net.channels))
    narrow = not cpu_has_vnni() if reduce_range is None else reduce_range
    if sample is None:
        sample = contract.preprocess(calib_images[0])[0]
    sample = np.ascontiguousarray(sample, np.float32)
    folded = fold_bn(model.eval())
    with tempfile.TemporaryDirectory(prefix="edgeyolo-int8-") as tmp:
        float_path, int8_path = Path(tmp) / "float.onnx", Path(tmp) / "int8.onnx"
        export_onnx(folded, float_path, size, opset=OPSET, sample=sample)
        quantize_onnx(float_path, int8_path, model, contract, calib_images, calibration, narrow)
        float_data, proto = float_path.read_bytes(), onnx.load(str(int8_path))
    layout = {
        "layout": "onnxruntime", "activations": "u8 asymmetric per tensor", "weights": "s8 symmetric per channel",
        "reduce_range": narrow, "calibration": calibration, "calibration_images": len(calib_images),
    }
    meta = stamp_metadata(proto, model, contract, provenance, {"edgeyolo.int8": json.dumps(layout, sort_keys=True)})
    data = proto.SerializeToString()
    check = verify(data, float_data, folded, sample, weight_qmin(narrow))
    failure = check.failure(min_match)
    if failure:
        raise VerificationError(failure)
    path = atomic_write_bytes(Path(out), data)
    convs = len(conv_quantizers(proto))
    return HostInt8Result(path, len(activation_quantizers(proto)), convs, check.code_match, check.weight_code_match,
                          check.unmatched, narrow, calibration, len(calib_images), check.output_error, meta)
