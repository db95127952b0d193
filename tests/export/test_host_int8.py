"""Host int8 (the onnxruntime layout): code-for-code equality with the torch fake-quant model on real
yolov3-tiny weights and real photos, fusion into integer kernels, and a verification that fails when
any single dequantization scale is off."""
from __future__ import annotations

import json
from collections import Counter

import cv2
import numpy as np
import onnx
import pytest

from edgeyolo.bench.int8 import AGREEMENT_GOAL, agreement_map50, with_scale_error
from edgeyolo.compress.quant.modules import fold_bn
from edgeyolo.errors import UsageError, VerificationError
from edgeyolo.export.host_int8 import (
    MIN_CODE_MATCH,
    activation_quantizers,
    conv_quantizers,
    cpu_has_vnni,
    export_host_int8,
    network_nodes,
    verify,
    weight_qmin,
)
from edgeyolo.export.int8_layouts import INT8_LAYOUTS
from edgeyolo.export.onnx import export_onnx, read_metadata
from edgeyolo.model.checkpoint import load_model
from edgeyolo.runtime.onnxruntime import make_session
from edgeyolo.targets.profiles import get_target
from tests.compress.quant.conftest import res_model
from tests.conftest import cfg_path
from tests.oracle import letterboxed

SIZE = 256

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_int8(tiny_weights, photos, tmp_path_factory):
    """yolov3-tiny calibrated on three photos; the fourth one is the verification sample."""
    model = load_model(cfg_path("yolov3-tiny"), tiny_weights).eval()
    frames = [cv2.imread(str(p)) for p in photos[:3]]
    sample = letterboxed(photos[3], SIZE)
    out = tmp_path_factory.mktemp("int8") / "tiny.onnx"
    result = export_host_int8(model, out, frames, img_size=SIZE, sample=sample, reduce_range=False)
    folded = fold_bn(model)
    float_path = export_onnx(folded, out.parent / "float.onnx", SIZE, sample=sample).path
    return model, result, out.read_bytes(), float_path.read_bytes(), folded, sample


def test_codes_match_the_torch_fake_quant_model(tiny_int8):
    _, result, data, *_ = tiny_int8
    assert result.weight_code_match == 1.0
    assert result.min_code_match >= MIN_CODE_MATCH and result.output_error < 1e-5
    proto = onnx.load_from_string(data)
    quantized = activation_quantizers(proto)
    assert len(quantized) == result.activation_quantizers == len(result.code_match) + len(result.unmatched)
    # every conv's input and output are judged; only a pool before its crop has no torch tensor
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert len(conv_quantizers(proto)) == len(convs) == 13
    assert all(n.output[0] in result.code_match for n in convs)
    assert all("MaxPool" in t for t in result.unmatched)


def test_the_layout_is_what_onnxruntime_fuses(tiny_int8, tmp_path):
    """u8 activations, s8 per-channel weights, int32 biases; with all optimizations every conv runs as
    QLinearConv and the decode stays float."""
    _, result, data, *_ = tiny_int8
    proto = onnx.load_from_string(data)
    inits = {t.name: t for t in proto.graph.initializer}
    for q in conv_quantizers(proto).values():
        assert q["w"].dtype == np.int8 and q["w_scale"].shape == (q["w"].shape[0],) and q["b"].dtype == np.int32
        assert int(np.abs(q["w"]).max()) <= -weight_qmin(False)
    assert all(inits[n.input[2]].data_type == onnx.TensorProto.UINT8 for n in proto.graph.node
               if n.op_type == "QuantizeLinear" and n.input[0] not in inits)
    decode = {n.name for n in proto.graph.node} - set(network_nodes(proto, tiny_int8[0])) - {
        n.name for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")}
    assert decode and not any(n.op_type == "Conv" for n in proto.graph.node if n.name in decode)
    optimized = tmp_path / "optimized.onnx"
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(optimized)
    ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    ops = Counter(n.op_type for n in onnx.load(str(optimized)).graph.node)
    assert ops["QLinearConv"] == 13 and ops["Conv"] == 0, ops
    meta = read_metadata(result.path)
    assert json.loads(meta["edgeyolo.int8"])["layout"] == "onnxruntime" and "edgeyolo.contract" in meta


def test_a_doubled_scale_anywhere_fails_the_verification(tiny_int8):
    """Each quantized tensor in turn gets a 2x dequantization scale (what a layout mismatch does):
    the verification names a failure every time, and passes on the file as written."""
    _, _, data, float_data, folded, sample = tiny_int8
    assert verify(data, float_data, folded, sample, weight_qmin(False)).failure() is None
    tensors = list(activation_quantizers(onnx.load_from_string(data)))
    missed = [t for t in tensors if verify(with_scale_error(data, t), float_data, folded, sample, weight_qmin(False)).failure() is None]
    assert not missed, missed


def test_a_wrong_weight_code_fails_the_verification(tiny_int8):
    _, _, data, float_data, folded, sample = tiny_int8
    proto = onnx.load_from_string(data)
    from onnx import numpy_helper

    conv = next(n for n in proto.graph.node if n.name == "/module_list.4/conv/Conv")
    producer = {o: n for n in proto.graph.node for o in n.output}
    name = producer[conv.input[1]].input[0]
    init = next(t for t in proto.graph.initializer if t.name == name)
    codes = numpy_helper.to_array(init).copy()
    codes.flat[7] = np.int8(codes.flat[7] + 1 if codes.flat[7] < 127 else codes.flat[7] - 1)
    init.CopyFrom(numpy_helper.from_array(codes, name))
    failure = verify(proto.SerializeToString(), float_data, folded, sample, weight_qmin(False)).failure()
    assert failure is not None and "weight and bias codes" in failure


def test_int8_detections_agree_with_the_float_ones(tiny_int8, photos):
    """On photos that were not calibrated on, the integer kernels find the float model's boxes."""
    from edgeyolo.contract import Contract
    from edgeyolo.runtime.evaluate import evaluation_contract

    model, result, data, *_ = tiny_int8
    fp32 = export_onnx(model, result.path.parent / "fp32.onnx", SIZE).path
    deploy, scoring = Contract(SIZE, SIZE), evaluation_contract(SIZE, 3)
    frames = [cv2.imread(str(p)) for p in photos[3:]]

    def detect(session, contract):
        out = []
        for frame in frames:
            blob, box = contract.preprocess(frame)
            out.append(contract.postprocess(session.run(None, {"images": blob})[0][0], box))
        return out

    reference = detect(make_session(fp32), deploy)
    assert sum(len(r) for r in reference) >= 5
    assert agreement_map50(reference, detect(make_session(data), scoring), 80) >= AGREEMENT_GOAL
    assert agreement_map50(reference, detect(make_session(fp32), scoring), 80) == pytest.approx(1.0)
    # the check can fail: the 26x26 head's features at twice their value (layer 21 was the most
    # sensitive of the 39 tensors at 416 px, `edgeyolo bench int8`)
    broken = with_scale_error(data, "/module_list.21/act/LeakyRelu_output_0")
    assert agreement_map50(reference, detect(make_session(broken), scoring), 80) < AGREEMENT_GOAL


def test_a_residual_model_and_7_bit_weights(tmp_path):
    """Adds (QLinearAdd) and reduce_range, which a CPU without VNNI gets by default."""
    from edgeyolo.model.init import synthetic_images

    model = res_model().eval()
    result = export_host_int8(model, tmp_path / "r.onnx", synthetic_images(4, 64, 64, seed=2), img_size=64, reduce_range=True)
    assert result.reduce_range and result.min_code_match >= MIN_CODE_MATCH and result.weight_code_match == 1.0
    proto = onnx.load(str(result.path))
    assert any(n.op_type == "Add" for n in proto.graph.node)
    assert all(int(np.abs(q["w"]).max()) <= 64 for q in conv_quantizers(proto).values())
    assert isinstance(cpu_has_vnni(), bool)


def test_bad_requests(tiny_weights, tmp_path):
    model = load_model(cfg_path("yolov3-tiny"), tiny_weights)
    frame = np.full((64, 64, 3), 127, np.uint8)
    with pytest.raises(UsageError, match="calibration images"):
        export_host_int8(model, tmp_path / "a.onnx", [], img_size=SIZE)
    with pytest.raises(UsageError, match="unknown calibration 'kl'"):
        export_host_int8(model, tmp_path / "a.onnx", [frame], img_size=SIZE, calibration="kl")
    with pytest.raises(UsageError, match="multiple of 32"):
        export_host_int8(model, tmp_path / "a.onnx", [frame], img_size=100)
    assert not list(tmp_path.iterdir())


def test_the_layout_comes_from_the_target():
    host = get_target("host")
    assert host.check_precision("int8").value == "int8"
    assert INT8_LAYOUTS.get(host.int8_layout).quantizes_at_export
    orin = get_target("jetson-orin-nano")
    assert orin.int8_layout == "tensorrt" and not INT8_LAYOUTS.get(orin.int8_layout).quantizes_at_export
    with pytest.raises(UsageError, match="unknown int8 layout 'tflite'"):
        INT8_LAYOUTS.get("tflite")


def test_nothing_is_written_when_the_graph_does_not_verify(tmp_path, monkeypatch):
    import edgeyolo.export.host_int8 as host_int8
    from edgeyolo.model.init import synthetic_images

    real = host_int8.quantize_onnx

    def quantize_then_break(float_path, out_path, *args):
        real(float_path, out_path, *args)
        out_path.write_bytes(with_scale_error(out_path.read_bytes(), "/module_list.2/conv/Conv_output_0"))

    monkeypatch.setattr(host_int8, "quantize_onnx", quantize_then_break)
    with pytest.raises(VerificationError, match="u8 codes equal the torch fake-quant model's"):
        export_host_int8(res_model().eval(), tmp_path / "r.onnx", synthetic_images(2, 64, 64, seed=2), img_size=64)
    assert not (tmp_path / "r.onnx").exists()


def test_cli_export_int8_and_bench_int8(tmp_path, capsys):
    from edgeyolo.cli.app import main
    from edgeyolo.model.init import synthetic_images

    ckpt = tmp_path / "res.safetensors"
    from edgeyolo.model.checkpoint import save_checkpoint

    save_checkpoint(res_model(), ckpt)
    calib, scored = tmp_path / "calib", tmp_path / "scored"
    for folder, seed in ((calib, 1), (scored, 2)):
        folder.mkdir()
        for k, image in enumerate(synthetic_images(3, 64, 64, seed=seed)):
            cv2.imwrite(str(folder / f"{seed}-{k}.png"), image)
    out = tmp_path / "res-int8.onnx"
    assert main(["export", "int8", "--weights", str(ckpt), "--calib", str(calib), "--img-size", "64", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "onnxruntime layout" in text and "weights 100.00%" in text and out.is_file()
    assert main(["export", "int8", "--weights", str(ckpt), "--calib", str(tmp_path / "nowhere"), "--img-size", "64",
                 "--out", str(tmp_path / "x.onnx")]) != 0
    assert "--calib" in capsys.readouterr().err and not (tmp_path / "x.onnx").exists()
    assert main(["bench", "int8", "--weights", str(ckpt), "--calib", str(calib), "--images", str(calib),
                 "--img-size", "64"]) != 0
    assert "share images" in capsys.readouterr().err
    assert main(["bench", "int8", "--weights", str(ckpt), "--calib", str(calib), "--images", str(scored),
                 "--img-size", "64", "--runs", "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runs"] == 3 and report["fp32_ms"][0] > 0 and len(report["sabotaged"]) >= 10
