"""QDQ ONNX: TensorRT's explicit-quantization rules, and code-for-code equality with the torch
fake-quant model at every QuantizeLinear on real yolov3-tiny weights and real photos."""
import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeyolo.compress.quant import QuantSpec, calibrate, load_quantized, prepare_qat, save_quantized
from edgeyolo.compress.quant.fakequant import is_pow2
from edgeyolo.errors import ExportError, UsageError, VerificationError
from edgeyolo.export.qdq import MIN_CODE_MATCH, code_match, export_bnfold, export_qdq
from edgeyolo.model.checkpoint import load_model
from edgeyolo.runtime.onnxruntime import make_session, run_session
from tests.compress.quant.conftest import res_model, synthetic_batches
from tests.conftest import cfg_path
from tests.oracle import letterboxed

SIZE = 416


pytestmark = pytest.mark.usefixtures("one_thread")


def _quantized_tiny(tiny_weights, scheme: str, method: str = "minmax"):
    model = load_model(cfg_path("yolov3-tiny"), tiny_weights).eval()
    prepare_qat(model, QuantSpec(scheme))
    calibrate(model, synthetic_batches(8, SIZE, seed=3, per_batch=4), method)  # not the test photos
    return model


def _initializers(proto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


@pytest.mark.parametrize("scheme, method", [("affine", "entropy"), ("pow2", "minmax")])
def test_codes_match_torch_at_every_quantize_linear(tiny_weights, photos, tmp_path, scheme, method):
    model = _quantized_tiny(tiny_weights, scheme, method)
    out = tmp_path / "q.onnx"
    result = export_qdq(model, out, SIZE, sample=letterboxed(photos[0], SIZE))
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == 13 and result.opset == 13
    assert result.comparison == "integer-exact, end to end" and result.min_code_match >= MIN_CODE_MATCH
    data = out.read_bytes()
    for photo in photos[1:3]:  # photos the export did not verify on
        blob = letterboxed(photo, SIZE)
        exact = code_match(data, model, blob, teacher_forced=False, exact=True)
        q_nodes = [n.name for n in proto.graph.node if n.op_type == "QuantizeLinear" and "/w_q/" not in n.name]
        assert sorted(exact) == sorted(q_nodes)  # every activation QuantizeLinear was compared
        forced = min(code_match(data, model, blob).values())
        floats = min(code_match(data, model, blob, teacher_forced=False).values())
        print(
            f"\n{scheme}/{method} {photo.name}: {len(exact)} QuantizeLinear, identical int8 codes: "
            f"min {min(exact.values()):.4%} integer-exact end to end; float sums: min {forced:.4%} "
            f"per layer (teacher-forced), {floats:.4%} end to end"
        )
        assert min(exact.values()) >= MIN_CODE_MATCH  # the acceptance: nothing forced, every QuantizeLinear
        assert forced >= MIN_CODE_MATCH
        if scheme == "pow2":  # pow2 products and sums are exact in float32 even as dequantized floats
            assert floats >= MIN_CODE_MATCH
    # the outputs agree too (onnxruntime vs torch fake-quant); affine's flipped codes move a few outputs
    blob = letterboxed(photos[4], SIZE)
    got = run_session(make_session(out), blob)[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(blob)).numpy()
    assert np.abs(got - ref).max() / np.abs(ref).max() < (1e-2 if scheme == "affine" else 1e-5)


def test_tensorrt_rules(tiny_weights, tmp_path):
    model = _quantized_tiny(tiny_weights, "affine")
    result = export_qdq(model, tmp_path / "q.onnx", SIZE)
    proto = onnx.load(str(tmp_path / "q.onnx"))
    inits = _initializers(proto)
    producers = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert result.weight_quantizers == len(convs) == 13
    for conv in convs:
        x_dq, w_dq = producers[conv.input[0]], producers[conv.input[1]]
        assert x_dq.op_type == w_dq.op_type == "DequantizeLinear"  # int8 input and int8 weights
        assert producers[x_dq.input[0]].op_type == "QuantizeLinear"
        w_q = producers[w_dq.input[0]]
        assert w_q.op_type == "QuantizeLinear"
        weight = inits[w_q.input[0]]
        assert weight.dtype == np.float32 and weight.ndim == 4  # Q on float weights: not folded
        scale, zero = inits[w_q.input[1]], inits[w_q.input[2]]
        assert scale.shape == (weight.shape[0],) and zero.dtype == np.int8 and not zero.any()
        assert {a.name: a.i for a in w_q.attribute}.get("axis", 1) == 0  # per output channel
    for node in proto.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and "/w_q/" not in node.name:
            scale, zero = inits[node.input[1]], inits[node.input[2]]
            assert scale.shape == () and zero.shape == () and zero.dtype == np.int8 and zero == 0
    assert not any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4 for t in proto.graph.initializer)


def test_pow2_scales_are_exact_powers_of_two(tiny_weights, tmp_path):
    model = _quantized_tiny(tiny_weights, "pow2")
    export_qdq(model, tmp_path / "q.onnx", SIZE)
    proto = onnx.load(str(tmp_path / "q.onnx"))
    inits = _initializers(proto)
    scales = [inits[n.input[1]] for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(scales) > 20
    assert all(s.shape == () and is_pow2(torch.from_numpy(np.array(s))) for s in scales)


def test_a_wrong_scale_breaks_the_code_match(tiny_weights, photos, tmp_path):
    model = _quantized_tiny(tiny_weights, "pow2")
    out = tmp_path / "q.onnx"
    blob = letterboxed(photos[0], SIZE)
    export_qdq(model, out, SIZE, sample=blob)
    proto = onnx.load(str(out))
    target = next(n for n in proto.graph.node if n.name == "/module_list.8/in_q/QuantizeLinear")
    for init in proto.graph.initializer:
        if init.name == target.input[1]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(2), init.name))
    for kwargs in ({}, {"teacher_forced": False, "exact": True}):
        matches = code_match(proto.SerializeToString(), model, blob, **kwargs)
        assert matches[target.name] < MIN_CODE_MATCH, kwargs  # each checker can fail
    # and the exporter refuses such a model: simulate a torch-side scale bug after tracing
    q = model.module_list[8].in_q
    real = q.scale

    def doubled():
        return real() * 2

    calls = {"n": 0}
    original = export_qdq.__globals__["build_qdq"]

    def build_then_break(*args, **kwargs):
        result = original(*args, **kwargs)
        q.scale = doubled  # the torch model now quantizes differently from the graph
        calls["n"] += 1
        return result

    export_qdq.__globals__["build_qdq"] = build_then_break
    try:
        with pytest.raises(VerificationError, match="int8 codes equal the torch model's"):
            export_qdq(model, tmp_path / "bad.onnx", SIZE, sample=blob)
    finally:
        export_qdq.__globals__["build_qdq"] = original
        del q.scale
    assert calls["n"] == 1 and not (tmp_path / "bad.onnx").exists()  # nothing written


def test_residual_add_has_qdq_on_both_inputs(tmp_path):
    model = prepare_qat(res_model(), QuantSpec("affine"))
    calibrate(model, synthetic_batches(4, 64, 21))
    save_quantized(model, tmp_path / "m")
    result = export_qdq(load_quantized(tmp_path / "m"), tmp_path / "r.onnx", 64)
    proto = onnx.load(str(tmp_path / "r.onnx"))
    producers = {o: n for n in proto.graph.node for o in n.output}
    adds = [n for n in proto.graph.node if n.op_type == "Add" and "module_list.4" in n.name]
    assert len(adds) == 1
    assert [producers[i].op_type for i in adds[0].input] == ["DequantizeLinear", "DequantizeLinear"]
    assert all(producers[producers[i].input[0]].op_type == "QuantizeLinear" for i in adds[0].input)
    # qb reads layer 1's output, as layer 2's input quantizer does with the same calibrated scale:
    # the exporter merges the two identical QuantizeLinear nodes, which is fine for TensorRT
    assert "/module_list.4/qa/QuantizeLinear" in result.code_match
    assert result.min_code_match >= MIN_CODE_MATCH


def test_bad_requests(tiny_weights, tmp_path):
    float_model = load_model(cfg_path("yolov3-tiny"), tiny_weights).eval()
    with pytest.raises(UsageError, match="quantized model"):
        export_qdq(float_model, tmp_path / "x.onnx")
    dorefa = prepare_qat(res_model(), QuantSpec("dorefa"))
    with pytest.raises(ExportError, match="no QDQ form"):
        export_qdq(dorefa, tmp_path / "x.onnx")
    model = prepare_qat(res_model(), QuantSpec("affine"))
    calibrate(model, synthetic_batches(2, 64, 1))
    with pytest.raises(UsageError, match="opset"):
        export_qdq(model, tmp_path / "x.onnx", 64, opset=11)
    with pytest.raises(UsageError, match="multiple of 32"):
        export_qdq(model, tmp_path / "x.onnx", 100)
    low = prepare_qat(res_model(), QuantSpec("affine", w_bit=4, a_bit=4, edge_bits=8))
    calibrate(low, synthetic_batches(2, 64, 1))
    with pytest.raises(UsageError, match="w4/a4 model has no such form"):
        export_qdq(low, tmp_path / "x.onnx", 64)
    dpu = prepare_qat(res_model(), QuantSpec("pow2", vitis_sim=True))
    calibrate(dpu, synthetic_batches(2, 64, 1))
    with pytest.raises(UsageError, match="export vitis"):
        export_qdq(dpu, tmp_path / "x.onnx", 64)
    assert not list(tmp_path.iterdir())


def test_bn_folded_float_onnx(tiny_weights, photos, tmp_path):
    model = load_model(cfg_path("yolov3-tiny"), tiny_weights).eval()
    blob = letterboxed(photos[1], SIZE)
    result = export_bnfold(model, tmp_path / "f.onnx", SIZE, sample=blob)
    proto = onnx.load(str(result.path))
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}
    got = run_session(make_session(result.path), blob)[0]
    with torch.no_grad():
        ref = model(torch.from_numpy(blob)).numpy()
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-4
