"""ONNX export: what TensorRT 8.2 needs (opset/IR asserted, one file), metadata, verification."""
import json

import numpy as np
import onnx
import pytest
import torch

from edgeyolo.contract import Contract
from edgeyolo.errors import UsageError, VerificationError
from edgeyolo.export.onnx import export_onnx, read_metadata
from edgeyolo.model.checkpoint import load_model
from edgeyolo.runtime.onnxruntime import make_session, run_session
from tests.conftest import cfg_path
from tests.oracle import letterboxed


@pytest.fixture(scope="module")
def tiny(tiny_weights):
    return load_model(cfg_path("yolov3-tiny"), tiny_weights)


@pytest.mark.parametrize("opset, ir", [(11, 6), (13, 7), (17, 8)])
def test_opset_and_ir_written_single_file(tiny, tmp_path, opset, ir):
    out = tmp_path / "m.onnx"
    result = export_onnx(tiny, out, 416, opset=opset)
    proto = onnx.load(str(out))
    assert proto.opset_import[0].version == opset == result.opset
    assert proto.ir_version == ir == result.ir_version
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no side .onnx.data file
    assert all(not t.external_data for t in proto.graph.initializer)
    assert not {"Mish", "Pad"} & {n.op_type for n in proto.graph.node}


def test_decoded_output_and_metadata(tiny, photos, tmp_path):
    out = tmp_path / "m.onnx"
    blob = letterboxed(photos[0], 416)
    result = export_onnx(tiny, out, 416, sample=blob, provenance={"command": "test"})
    assert result.outputs == ("detections",) and result.output_shapes == ((1, 2535, 85),)
    meta = read_metadata(out)
    assert Contract.from_json(meta["edgeyolo.contract"]) == Contract(416, 416)
    assert "[yolo]" in meta["edgeyolo.cfg"] and meta["edgeyolo.provenance.command"] == "test"
    heads = json.loads(meta["edgeyolo.outputs"])["heads"]
    assert [h[1] for h in heads] == [32, 16]  # strides from the cfg
    got = run_session(make_session(out), blob)[0]
    with torch.no_grad():
        ref = tiny(torch.from_numpy(blob)).numpy()
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5
    assert (ref[0, :, 4] > 0.5).sum() > 0  # real detections, not an empty comparison


def test_dynamic_batch(tiny, photos, tmp_path):
    out = tmp_path / "m.onnx"
    export_onnx(tiny, out, 416, dynamic_batch=True)
    blob = np.concatenate([letterboxed(p, 416) for p in photos[:3]])
    got = run_session(make_session(out), blob)[0]
    assert got.shape == (3, 2535, 85)
    with torch.no_grad():
        ref = tiny(torch.from_numpy(blob)).numpy()
    assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5


def test_verification_catches_a_wrong_graph(tiny, tmp_path, monkeypatch):
    """Verification can fail: corrupt one weight in the serialized graph and the file is not written."""
    original = onnx.checker.check_model

    def corrupt(proto, *args, **kwargs):
        if not isinstance(proto, onnx.ModelProto) or proto.producer_name != "edgeyolo":
            return original(proto, *args, **kwargs)  # onnxsim's own checks
        init = proto.graph.initializer[0]
        from onnx import numpy_helper

        arr = numpy_helper.to_array(init).copy()
        arr.flat[0] += 10.0
        init.CopyFrom(numpy_helper.from_array(arr, init.name))
        return original(proto, *args, **kwargs)

    monkeypatch.setattr(onnx.checker, "check_model", corrupt)
    out = tmp_path / "m.onnx"
    with pytest.raises(VerificationError):
        export_onnx(tiny, out, 416)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_bad_requests(tiny, tmp_path):
    with pytest.raises(UsageError):
        export_onnx(tiny, tmp_path / "m.onnx", 416, opset=18)
    with pytest.raises(UsageError):
        export_onnx(tiny, tmp_path / "m.onnx", 400)
