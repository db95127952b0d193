"""QDQ ONNX for TensorRT explicit quantization, and a BN-folded float ONNX.

The graph carries ``QuantizeLinear``/``DequantizeLinear`` exactly where the fake-quant model
quantizes (every conv input, both inputs of every residual add; see
``edgeyolo.compress.quant.modules``), by TensorRT's explicit-quantization rules: symmetric, int8
zero point 0, per-tensor activations, weights per output channel on axis 0 or per tensor as the
scheme says (``affine``: per channel, ``pow2``: per tensor), and weight ``QuantizeLinear`` applied to the float (BN-folded) weight
initializers — never constant-folded into int8 constants. Opset 13 (per-axis quantization needs it).

How it is built: the TorchScript exporter traces the model with activation fake-quant ops (which
it exports as Q/DQ pairs) and plain float weights (it would constant-fold weight Q/DQ away); a
pass over the graph then gives every conv a weight Q/DQ pair on its float initializer and turns
every scale and zero point into a named initializer (0-D for per-tensor). No onnxsim: it would
fold the weight quantizers.

Verification runs by default: every ``QuantizeLinear`` output of the graph, read from onnxruntime
by making it a graph output, is compared code for code with the torch fake-quant model on the same
input. Both sides evaluate the convs as an int8 engine does (integer-exact sums of the codes, then
one float32 rescale; :func:`integer_exact_proto`): with non-power-of-two scales, two runtimes that
sum dequantized floats in different orders flip codes at rounding boundaries, and the flips
cascade (measured on yolov3-tiny, affine: 91 % identical codes at the last layer in float, 100 %
integer-exact). ONNX rounds half to even and has no narrow range, so a ``vitis_sim`` model (half-up/away
rounding, −127..127) has no QDQ form: after a residual add of two power-of-two codes, ties are
common (12 % of one layer's codes differed in a probe). It is refused with the way out.
"""
from __future__ import annotations

import io
import json
import re
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeyolo import __version__
from edgeyolo.compress.quant.modules import QuantConvBlock, capture_codes, export_mode, integer_exact, is_quantized
from edgeyolo.contract import Contract, channel_order_for
from edgeyolo.errors import ExportError, UsageError, VerificationError
from edgeyolo.export.onnx import OnnxExportResult, export_onnx, output_names, stamp_metadata
from edgeyolo.fileio import atomic_write_bytes
from edgeyolo.model.darknet import Darknet, RawHeads

OPSET_RANGE = (13, 17)
DEFAULT_OPSET = 13
MIN_CODE_MATCH = 0.999  # share of identical int8 codes required at every QuantizeLinear
_ACT_NODE = re.compile(r"(module_list\.\d+)/(in_q|qa|qb)/QuantizeLinear(?:_(\d+))?$")
_CONV_NODE = re.compile(r"module_list\.(\d+)/Conv$")


@dataclass(frozen=True)
class QdqExportResult:
    path: Path
    opset: int
    quantize_nodes: int
    weight_quantizers: int
    code_match: dict[str, float]  # QuantizeLinear node -> share of identical codes vs torch
    max_rel_error: float  # outputs, max|Δ|/max|ref| (informative: a flipped code moves an output)
    comparison: str = "integer-exact, end to end"  # how code_match was obtained (see export_qdq)

    @property
    def min_code_match(self) -> float:
        return min(self.code_match.values()) if self.code_match else 1.0


def _trace(module: torch.nn.Module, x: torch.Tensor, opset: int, names: list[str]) -> "onnx.ModelProto":  # noqa: F821
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (x,), buffer, dynamo=False, opset_version=opset,
            input_names=["images"], output_names=names, do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    written = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if written != opset:
        raise ExportError(f"asked torch for opset {opset} but it wrote opset {written}")
    return proto


def _constant_values(proto) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def _insert_weight_qdq(proto, model: Darknet) -> int:
    """Give each quantized conv Q/DQ on its float weight initializer; named scalar scales everywhere."""
    from onnx import helper, numpy_helper

    graph = proto.graph
    constants = _constant_values(proto)
    initializers: list = []
    new_nodes: list = []
    weight_quantizers = 0

    added: set[str] = set()

    def add_init(name: str, value: np.ndarray) -> str:
        if name not in added:  # a Q and its DQ share one scale and zero point
            added.add(name)
            initializers.append(numpy_helper.from_array(value, name))
        return name

    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            scale, zero = constants.get(node.input[1]), constants.get(node.input[2])
            if scale is None or zero is None or scale.size != 1 or np.any(zero != 0) or zero.dtype != np.int8:
                raise ExportError(f"{node.name}: expected a constant per-tensor scale and an int8 zero point 0")
            m = re.search(r"([^/]+(?:/[^/]+)*)/(?:Quantize|Dequantize)Linear(_\d+)?$", node.name.strip("/"))
            base = (m.group(1).replace("/", ".") + (m.group(2) or "").replace("_", ".")) if m else node.name
            node.input[1] = add_init(f"{base}.scale", np.asarray(scale, np.float32).reshape(()))
            node.input[2] = add_init(f"{base}.zero_point", np.zeros((), np.int8))
        elif node.op_type == "Conv":
            m = _CONV_NODE.search(node.name)
            block = model.module_list[int(m.group(1))] if m else None
            if not isinstance(block, QuantConvBlock) or not block.quantized:
                new_nodes.append(node)
                continue
            index = int(m.group(1))
            w = block.export_w.detach().cpu()
            scale = block.w_q.scale(w).detach().cpu().numpy().astype(np.float32)
            per_channel = block.w_q.scheme_obj.per_channel
            prefix = f"module_list.{index}"
            w_name = add_init(f"{prefix}.weight", w.numpy().astype(np.float32))
            s_name = add_init(f"{prefix}.w_q.scale", scale.reshape(-1) if per_channel else scale.reshape(()))
            z_name = add_init(
                f"{prefix}.w_q.zero_point", np.zeros(scale.size if per_channel else (), np.int8)
            )
            axis = {"axis": 0} if per_channel else {}
            q_out, dq_out = f"{prefix}.w_q.quantized", f"{prefix}.w_q.dequantized"
            new_nodes.append(helper.make_node("QuantizeLinear", [w_name, s_name, z_name], [q_out], name=f"/{prefix}/w_q/QuantizeLinear", **axis))
            new_nodes.append(helper.make_node("DequantizeLinear", [q_out, s_name, z_name], [dq_out], name=f"/{prefix}/w_q/DequantizeLinear", **axis))
            node.input[1] = dq_out
            if len(node.input) > 2:
                node.input[2] = add_init(f"{prefix}.bias", block.export_b.detach().cpu().numpy().astype(np.float32))
            weight_quantizers += 1
        new_nodes.append(node)
    # drop Constant nodes nothing reads any more (the old scales, zero points and float weights)
    used = {i for n in new_nodes for i in n.input} | {o.name for o in graph.output}
    kept = [n for n in new_nodes if not (n.op_type == "Constant" and n.output[0] not in used)]
    del graph.node[:]
    graph.node.extend(kept)
    graph.initializer.extend(initializers)
    return weight_quantizers


def build_qdq(model: Darknet, x: torch.Tensor, opset: int = DEFAULT_OPSET, raw: bool = False):
    """The QDQ ``onnx.ModelProto`` of a calibrated quantized model (not verified, not written)."""
    import onnx

    names = output_names(model, raw)
    model.eval()
    with export_mode(model):
        proto = _trace(RawHeads(model) if raw else model, x, opset, names)
        weight_quantizers = _insert_weight_qdq(proto, model)
    onnx.checker.check_model(proto)
    proto.producer_name, proto.producer_version = "edgeyolo", __version__
    return proto, weight_quantizers


def onnx_codes(data: bytes, blob: np.ndarray, optimize: bool = True) -> dict[str, np.ndarray]:
    """The int8 output of every QuantizeLinear node, read by making each a graph output."""
    import onnx

    from edgeyolo.runtime.onnxruntime import make_session

    proto = onnx.load_from_string(data)
    names = {n.output[0]: n.name for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    existing = {o.name for o in proto.graph.output}
    for tensor in names:
        if tensor not in existing:
            proto.graph.output.append(onnx.helper.make_tensor_value_info(tensor, onnx.TensorProto.INT8, None))
    session = make_session(proto.SerializeToString(), optimize=optimize)
    outputs = [o.name for o in session.get_outputs()]
    values = session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(blob, np.float32)})
    by_tensor = dict(zip(outputs, values))
    return {names[t]: by_tensor[t] for t in names}


def integer_exact_proto(data: bytes) -> bytes:
    """The QDQ graph with every ``DequantizeLinear → Conv`` evaluated as an int8 engine does.

    Each quantized conv becomes ``Conv(codes_x, codes_w)`` on the int8 codes cast to float (integer
    products and sums, exact in float32 while every partial sum stays below 2^24; the torch side
    checks that bound), then ``× s_x·s_w`` per output channel and ``+ bias`` in float32. The
    QuantizeLinear nodes, their scales and the weight QuantizeLinear on the float weights are the
    exported ones, untouched; only the order-dependent float rounding of the conv sums is gone.
    """
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load_from_string(data)
    graph = proto.graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    nodes, added = [], []
    for node in graph.node:
        w_dq = producer.get(node.input[1]) if node.op_type == "Conv" else None
        x_dq = producer.get(node.input[0]) if w_dq is not None else None
        if w_dq is None or w_dq.op_type != "DequantizeLinear" or x_dq is None or x_dq.op_type != "DequantizeLinear":
            nodes.append(node)
            continue
        base = node.name.strip("/").replace("/", ".")
        s_x, s_w = inits[x_dq.input[1]].astype(np.float32), inits[w_dq.input[1]].astype(np.float32)
        rescale = (s_x * s_w.reshape(-1)).astype(np.float32).reshape(1, -1, 1, 1)  # float32 product, as torch
        out_c = inits[w_dq.input[0].replace(".w_q.quantized", ".weight")].shape[0]
        bias = inits[node.input[2]] if len(node.input) > 2 and node.input[2] else np.zeros(out_c, np.float32)
        added += [numpy_helper.from_array(rescale, f"{base}.exact.rescale"),
                  numpy_helper.from_array(bias.astype(np.float32).reshape(1, -1, 1, 1), f"{base}.exact.bias")]
        nodes += [
            helper.make_node("Cast", [x_dq.input[0]], [f"{base}.exact.x"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Cast", [w_dq.input[0]], [f"{base}.exact.w"], to=onnx.TensorProto.FLOAT),
            helper.make_node("Conv", [f"{base}.exact.x", f"{base}.exact.w"], [f"{base}.exact.acc"], name=node.name, **{
                a.name: helper.get_attribute_value(a) for a in node.attribute}),
            helper.make_node("Mul", [f"{base}.exact.acc", f"{base}.exact.rescale"], [f"{base}.exact.scaled"]),
            helper.make_node("Add", [f"{base}.exact.scaled", f"{base}.exact.bias"], [node.output[0]]),
        ]
    del graph.node[:]
    graph.node.extend(nodes)
    graph.initializer.extend(added)
    return proto.SerializeToString()


def torch_codes(
    model: Darknet, blob: np.ndarray, force: dict[str, list[np.ndarray]] | None = None, exact: bool = False
) -> dict[str, list[np.ndarray]]:
    """The integer codes of every activation quantizer of the torch model, by module name; with
    ``force``, each quantizer passes the given codes on (teacher forcing, see ``capture_codes``);
    with ``exact``, convs sum integer codes exactly (``integer_exact``)."""
    model.eval()
    forced = {k: [torch.from_numpy(np.asarray(c, np.int32)) for c in v] for k, v in (force or {}).items()}
    with capture_codes(model, forced) as codes, torch.no_grad(), (integer_exact(model) if exact else nullcontext()) as blocks:
        model.forward_raw(torch.from_numpy(np.ascontiguousarray(blob, np.float32)))
    bound = max((b.exact_bound for b in blocks or []), default=0.0)
    if bound >= 2**24:
        raise VerificationError(
            f"a conv sums code products up to {bound:.0f} >= 2^24: float32 cannot hold that exactly, "
            "so integer-exact comparison is not possible on this input"
        )
    return {k: [c.numpy() for c in v] for k, v in codes.items() if v}


def code_match(data: bytes, model: Darknet, blob: np.ndarray, teacher_forced: bool = True, exact: bool = False) -> dict[str, float]:
    """Share of identical codes at each activation QuantizeLinear, ONNX (onnxruntime) vs torch.

    Teacher-forced by default: torch continues each layer from onnxruntime's codes, so each
    QuantizeLinear is judged on the same input and a flip does not cascade; ``teacher_forced=False``
    runs both end to end (exact for pow2 scales, whose integer products and sums are exact in float32).
    ``exact``: both sides sum the conv's integer codes exactly, as int8 engines do
    (:func:`integer_exact_proto`), so no runtime's float summation order can flip a code.
    """
    if exact:
        data = integer_exact_proto(data)
    theirs_by_node = onnx_codes(data, blob, optimize=not exact)  # fusing the rescale into the conv would undo it
    keyed: dict[str, tuple[str, str, int]] = {}
    for node in theirs_by_node:
        m = _ACT_NODE.search(node)
        if m is not None:  # weight quantizers are compared through the activations they produce
            keyed[node] = (m.group(1), m.group(2), int(m.group(3) or 0))
    force: dict[str, list[np.ndarray]] = {}
    if teacher_forced:
        for node, (module, kind, nth) in sorted(keyed.items(), key=lambda item: item[1][2]):
            slots = force.setdefault(f"{module}.{kind}", [])
            if nth != len(slots):
                force.pop(f"{module}.{kind}")  # not every call is in the graph: do not force this one
                continue
            slots.append(theirs_by_node[node])
    ours = torch_codes(model, blob, force, exact)
    result = {}
    for node, (module, kind, nth) in keyed.items():
        theirs = theirs_by_node[node]
        captured = ours.get(f"{module}.{kind}", [])
        if nth >= len(captured):
            raise VerificationError(f"{node}: the torch model has no matching quantizer call ({module}.{kind} #{nth})")
        mine = captured[nth]
        if mine.shape != theirs.shape:
            raise VerificationError(f"{node}: onnxruntime shape {theirs.shape} != torch shape {mine.shape}")
        result[node] = float((mine == theirs.astype(np.int32)).mean())
    return result


def _sample(model: Darknet, h: int, w: int) -> np.ndarray:
    from edgeyolo.model.init import calibration_batch, synthetic_images

    contract = Contract(h, w, channel_order=channel_order_for(model.cfg.net.channels))
    return calibration_batch(contract, synthetic_images(1, h, w, seed=0)).numpy()


def _size(model: Darknet, img_size: int | tuple[int, int] | None) -> tuple[int, int]:
    size = img_size or model.cfg.net.height
    h, w = (size, size) if isinstance(size, int) else size
    if h <= 0 or w <= 0 or h % 32 or w % 32:
        raise UsageError(f"--img-size must be a positive multiple of 32, got {h}x{w}")
    return h, w


def export_qdq(
    model: Darknet,
    out: str | Path,
    img_size: int | tuple[int, int] | None = None,
    opset: int = DEFAULT_OPSET,
    raw: bool = False,
    sample: np.ndarray | None = None,
    min_match: float = MIN_CODE_MATCH,
    provenance: dict[str, str] | None = None,
) -> QdqExportResult:
    """Build, verify against the torch fake-quant model, then write; nothing is written on failure."""
    if not is_quantized(model):
        raise UsageError("export qdq needs a quantized model (a folder written by `edgeyolo quantize`)")
    spec = model.quant_spec
    spec.scheme_obj.check_qdq(spec)  # a scheme with no QDQ form (dorefa, vitis-sim) refuses with the way out
    if (spec.w_bit, spec.a_bit) != (8, 8):
        raise UsageError(
            f"QDQ ONNX for TensorRT is int8; a w{spec.w_bit}/a{spec.a_bit} model has no such form "
            "(ONNX QuantizeLinear takes int8/uint8 at opset 13); evaluate it with --backend torch"
        )
    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise UsageError(f"--opset must lie in {OPSET_RANGE[0]}..{OPSET_RANGE[1]} (per-channel QuantizeLinear needs 13), got {opset}")
    if not model.heads and not raw:
        raise ExportError("the cfg has no [yolo] layer, so there is nothing to decode; export with --raw")
    h, w = _size(model, img_size)
    if sample is None:
        sample = _sample(model, h, w)
    x = torch.from_numpy(np.ascontiguousarray(sample, np.float32))
    proto, weight_quantizers = build_qdq(model, x, opset, raw)
    contract = Contract(h, w, channel_order=channel_order_for(model.cfg.net.channels))
    outputs = json.dumps({"raw": raw, "names": output_names(model, raw)})
    stamp_metadata(proto, model, contract, provenance, {"edgeyolo.quant": spec.to_json(), "edgeyolo.outputs": outputs})
    data = proto.SerializeToString()

    matches, comparison = _verify_codes(data, model, sample)
    worst = min(matches, key=matches.get) if matches else None
    if worst is not None and matches[worst] < min_match:
        raise VerificationError(
            f"{worst}: only {matches[worst]:.4%} of onnxruntime's int8 codes equal the torch model's "
            f"(need {min_match:.1%}); the QDQ graph does not reproduce the quantized model"
        )
    from edgeyolo.runtime.onnxruntime import make_session, run_session

    got = run_session(make_session(data), sample)
    with torch.no_grad():
        ref = (RawHeads(model) if raw else model)(x)
    refs = [t.numpy() for t in (ref if isinstance(ref, (tuple, list)) else [ref])]
    rel = max(float(np.abs(r - g).max()) / max(float(np.abs(r).max()), 1e-12) for r, g in zip(refs, got))
    path = atomic_write_bytes(Path(out), data)
    q_nodes = sum(1 for n in proto.graph.node if n.op_type == "QuantizeLinear")
    return QdqExportResult(path, opset, q_nodes, weight_quantizers, matches, rel, comparison)


def _verify_codes(data: bytes, model: Darknet, sample: np.ndarray) -> tuple[dict[str, float], str]:
    """Codes at every QuantizeLinear, onnxruntime vs torch, by the strictest comparison that applies.

    Integer-exact end to end (both sides sum the codes exactly, nothing forced) when every conv is
    quantized; a float-kept conv sums floats in each runtime's own order, so then each layer
    continues from onnxruntime's codes (teacher-forced, still integer-exact). A conv whose sums
    could exceed float32's exact range falls back to the float, teacher-forced comparison.
    """
    from edgeyolo.compress.quant.modules import float_layers

    forced = bool(float_layers(model))
    try:
        matches = code_match(data, model, sample, teacher_forced=forced, exact=True)
        return matches, "integer-exact, " + ("teacher-forced (float-kept layers)" if forced else "end to end")
    except VerificationError as error:
        if "2^24" not in str(error):
            raise
        return code_match(data, model, sample), "float, teacher-forced (sums beyond float32's exact range)"


def export_bnfold(
    model: Darknet,
    out: str | Path,
    img_size: int | tuple[int, int] | None = None,
    opset: int = DEFAULT_OPSET,
    sample: np.ndarray | None = None,
    tolerance: float = 1e-5,
    **kwargs: object,
) -> OnnxExportResult:
    """Float ONNX with every BN folded into its conv; the folded model is first checked against the
    original (max|Δ|/max|ref| ≤ ``tolerance``), then exported and verified as any ONNX export."""
    from edgeyolo.compress.quant.modules import fold_bn

    h, w = _size(model, img_size)
    if sample is None:
        sample = _sample(model, h, w)
    folded = fold_bn(model)
    x = torch.from_numpy(np.ascontiguousarray(sample, np.float32))
    with torch.no_grad():
        ref = torch.cat([t.flatten(1) for t in model.eval().forward_raw(x)], 1)
        got = torch.cat([t.flatten(1) for t in folded.forward_raw(x)], 1)
    err = float((ref - got).abs().max() / ref.abs().max().clamp_min(1e-12))
    if err > tolerance:
        raise VerificationError(f"the BN-folded model differs from the original by max|Δ|/max|ref| = {err:.3g} (allowed {tolerance:g})")
    return export_onnx(folded, out, (h, w), opset=opset, sample=sample, **kwargs)  # type: ignore[arg-type]
