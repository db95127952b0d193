"""check and adapt: findings keyed by board image with layer/line, exact rewrites proven exact, the
leaky and activation changes reported with their output delta, and OpenCV reading the adapted files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from edgeyolo.adapt.check import Severity, check_cfg, check_onnx
from edgeyolo.adapt.rewrite import adapt_model, plan_adaptation, pool_chain, transfer_weights, write_adapted
from edgeyolo.errors import InputFileError, UsageError
from edgeyolo.model.cfg import MaxPoolSpec, RouteSpec, parse_cfg, parse_cfg_text, with_input_size
from edgeyolo.model.checkpoint import load_model
from edgeyolo.model.darknet import Darknet
from edgeyolo.runtime.opencv import forward_layers, load_net
from edgeyolo.targets.profiles import DPU_LEAKY_SLOPE, get_target
from tests.conftest import cfg_path
from tests.oracle import TOLERANCE, calibrated_model, letterboxed, rel_error, torch_layers

# every DPU problem at once: mish, two channel splits (one of a layer that is not the previous one,
# so a plain route has to be inserted), and an SPP block with 9 and 13 max-pools
DPU_HOSTILE = """
[net]
width=64
height=64
channels=3

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=mish

[convolutional]
batch_normalize=1
filters=32
size=3
stride=2
pad=1
activation=leaky

[route]
layers=-1
groups=2
group_id=1

[convolutional]
batch_normalize=1
filters=16
size=3
stride=1
pad=1
activation=leaky

[route]
layers=-3
groups=2
group_id=0

[route]
layers=-1,-2

[maxpool]
stride=1
size=5

[route]
layers=-2

[maxpool]
stride=1
size=9

[route]
layers=-4

[maxpool]
stride=1
size=13

[route]
layers=-1,-3,-5,-6

[convolutional]
size=1
stride=1
pad=1
filters=21
activation=linear

[yolo]
mask=0,1,2
anchors=10,14,23,27,37,58
classes=2
num=3
"""


def line_no(needle: str, nth: int = 0) -> int:
    hits = [i for i, line in enumerate(DPU_HOSTILE.splitlines(), start=1) if line == needle]
    return hits[nth]


@pytest.fixture(scope="module")
def hostile():
    return parse_cfg_text(DPU_HOSTILE, "hostile.cfg")


def _seeded(cfg, seed=0) -> Darknet:
    torch.manual_seed(seed)
    model = Darknet(cfg)
    with torch.no_grad():
        for _, block in model.conv_blocks():
            block.conv.weight.normal_(0, 0.3)
            if block.bn is not None:
                block.bn.running_mean.normal_(0, 0.1)
                block.bn.running_var.uniform_(0.5, 1.5)
                block.bn.bias.normal_(0, 0.2)
    return model.eval()


def test_check_keys_findings_by_board_image(hostile):
    report = check_cfg(hostile, get_target("zcu104"))
    rules = {(f.rule, f.layer): f for f in report.findings}
    assert rules[("activation", 0)].line == line_no("activation=mish") and rules[("activation", 0)].severity is Severity.UNSUPPORTED
    assert rules[("route-groups", 2)].line == line_no("groups=2") and rules[("route-groups", 4)].layer == 4
    pool9 = rules[("pool-kernel", 8)]
    assert pool9.line == line_no("size=9") and pool9.applies_to == ("ISA0 DPUCZDX8G_ISA0_B4096_MAX_BG2 (Vitis AI 1.3–2.0)",)
    assert rules[("pool-kernel", 10)].message.startswith("[maxpool] size=13")
    assert rules[("leaky-slope", 1)].severity is Severity.CHANGED and "26/256" in rules[("leaky-slope", 1)].message
    assert report.failed() and len(report.unsupported) == 5
    isa1 = check_cfg(hostile, get_target("zcu104"), vai="3.5")
    assert not any(f.rule == "pool-kernel" for f in isa1.findings)  # ISA1 pools up to 256
    assert check_cfg(hostile, get_target("jetson-nano")).findings == ()  # TensorRT runs all of it
    with pytest.raises(UsageError, match="no board image for Vitis AI 1.0"):
        check_cfg(hostile, get_target("zcu104"), vai="1.0")
    with pytest.raises(UsageError, match="--vai selects a DPU board image"):
        check_cfg(hostile, get_target("jetson-nano"), vai="2.5")


def test_real_darknet_cfgs_on_the_dpu():
    tiny = check_cfg(parse_cfg(cfg_path("yolov4-tiny")), get_target("ultra96"), vai="2.5")
    assert [f.layer for f in tiny.unsupported] == [3, 11, 19] and {f.rule for f in tiny.unsupported} == {"route-groups"}
    v4 = check_cfg(parse_cfg(cfg_path("yolov4")), get_target("zcu104"), vai="2.0")
    assert [(f.layer, f.line) for f in v4.unsupported if f.rule == "pool-kernel"] == [(110, 780), (112, 787)]
    assert sum(f.rule == "activation" for f in v4.unsupported) == 72  # mish everywhere in the backbone


@pytest.mark.parametrize(("size", "parts"), [(9, [5, 5]), (13, [7, 7]), (11, [5, 7]), (15, [5, 7, 5])])
def test_pool_chains_cover_the_window(size, parts):
    assert pool_chain(size, 8) == parts
    assert sum(parts) - (len(parts) - 1) == size and all(p % 2 and p <= 8 for p in parts)


def test_plan_rewrites_the_cfg_and_renumbers_references(hostile):
    plan = plan_adaptation(hostile, get_target("zcu104"))
    kinds = [c.kind for c in plan.changes]
    assert kinds.count("route-split-to-conv") == 2 and kinds.count("pool-chain") == 2 and kinds.count("activation") == 1
    assert plan.remaining == ()
    layers = plan.cfg.layers
    # route 2 (of the previous layer) -> one conv; route 4 (of layer 1) -> a plain route + a conv
    assert layers[2].section == "convolutional" and layers[2].filters == 16
    assert isinstance(layers[4], RouteSpec) and layers[4].layers == (1,) and layers[5].section == "convolutional"
    assert [(type(x).__name__, getattr(x, "size", None)) for x in layers[7:15]] == [
        ("MaxPoolSpec", 5), ("RouteSpec", None), ("MaxPoolSpec", 5), ("MaxPoolSpec", 5),
        ("RouteSpec", None), ("MaxPoolSpec", 7), ("MaxPoolSpec", 7), ("RouteSpec", None),
    ]
    assert layers[14].layers == (13, 10, 7, 6)  # the SPP concat follows the renumbering
    assert plan.index_map == (0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 13, 14, 15, 16)
    assert plan.cfg.layers[0].activation == "leaky" and plan.leaky_slope == DPU_LEAKY_SLOPE
    assert not check_cfg(plan.cfg, get_target("zcu104")).failed()
    assert all(isinstance(x, MaxPoolSpec) is False or x.size <= 8 for x in plan.cfg.layers)


def test_exact_rewrites_are_output_exact_and_the_rest_is_measured(hostile):
    model = _seeded(hostile)
    plan = plan_adaptation(hostile, get_target("zcu104"))
    batch = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    result = adapt_model(model, plan, batch)
    exact = Darknet(plan.exact_cfg)
    exact.load_state_dict(result.model.state_dict())
    with torch.no_grad():
        ref = model.forward_raw(batch)[0]
        got = exact.eval().forward_raw(batch)[0]
    assert torch.allclose(ref, got, rtol=0, atol=1e-5 * float(ref.abs().max()))
    assert result.deltas["exact"]["rel"] < 1e-6
    assert result.deltas["activation"]["rel"] > 1e-3  # mish -> leaky is a real change, and it is reported
    assert result.deltas["leaky_slope"]["max_abs"] > 0  # ... and so is 0.1 -> 26/256


def test_split_only_model_is_exact_through_the_1x1_selection_conv():
    cfg = with_input_size(parse_cfg(cfg_path("yolov4-tiny")), 96)
    model = _seeded(cfg, seed=3)
    plan = plan_adaptation(cfg, get_target("zcu104"), vai="3.5")
    assert {c.kind for c in plan.changes} == {"route-split-to-conv", "leaky-slope"}
    adapted = transfer_weights(model, plan)
    selection = adapted.module_list[3].conv.weight[:, :, 0, 0]
    assert selection.shape == (32, 64) and torch.equal(selection[:, 32:], torch.eye(32)) and not selection[:, :32].any()
    batch = torch.rand(1, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for a, b in zip(model.forward_raw(batch), adapted.forward_raw(batch)):
            assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max()))
    delta = adapt_model(model, plan, batch).deltas
    assert delta["exact"]["rel"] < 1e-6 and 0 < delta["leaky_slope"]["rel"] < 0.5


def test_written_files_load_in_opencv_and_match_torch(tmp_path, photos):
    size = 128
    cfg = with_input_size(parse_cfg(cfg_path("yolov4-tiny")), size)
    model = calibrated_model(cfg, size, seed=0, photos=photos)
    plan = plan_adaptation(cfg, get_target("ultra96"))
    result = adapt_model(model, plan, torch.rand(1, 3, size, size))
    written = write_adapted(tmp_path, plan, result, {"cfg": "yolov4-tiny"})
    assert [p.name for p in written] == ["model.cfg", "model.weights", "adapt.json"]
    report = json.loads((tmp_path / "adapt.json").read_text())
    assert [c["kind"] for c in report["changes"]].count("route-split-to-conv") == 3
    assert report["output_delta"]["exact"]["rel"] < 1e-6 and "leaky_slope" in report["output_delta"]
    reread = load_model(tmp_path / "model.cfg", tmp_path / "model.weights")
    layers = [y.index - 1 for y in plan.cfg.yolo_layers] + [3, 11, 19]
    blob = letterboxed(photos[0], size)
    ref = forward_layers(load_net(tmp_path / "model.cfg", tmp_path / "model.weights"), plan.cfg, blob, layers)
    got = torch_layers(reread, blob, layers)
    errors = {i: rel_error(ref[i], got[i]) for i in layers}
    assert max(errors.values()) <= TOLERANCE, errors
    assert np.abs(ref[3]).max() > 0


def test_hostile_cfg_adapted_loads_in_opencv(tmp_path, hostile):
    model = _seeded(hostile, seed=5)
    plan = plan_adaptation(hostile, get_target("zcu104"))
    result = adapt_model(model, plan, torch.rand(1, 3, 64, 64))
    write_adapted(tmp_path, plan, result)
    blob = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)).numpy()
    head = plan.cfg.yolo_layers[0].index - 1
    ref = forward_layers(load_net(tmp_path / "model.cfg", tmp_path / "model.weights"), plan.cfg, blob, [head])
    got = torch_layers(result.model, blob, [head])
    assert rel_error(ref[head], got[head]) <= TOLERANCE


def test_onnx_opset_against_the_boards_tensorrt(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    def model(opset: int, ir: int, domain: str = ""):
        node = helper.make_node("Relu", ["x"], ["y"])
        graph = helper.make_graph(
            [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
        )
        imports = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
        m = helper.make_model(graph, opset_imports=imports)
        m.ir_version = ir
        path = tmp_path / f"m{opset}-{ir}{domain}.onnx"
        onnx.save(m, path)
        return path

    nano = check_onnx(model(17, 8), get_target("jetson-nano"))
    opset = [f for f in nano.findings if f.rule == "opset"]
    assert opset and opset[0].severity is Severity.UNSUPPORTED and "above the 13" in opset[0].message
    assert any(f.rule == "ir-version" and f.severity is Severity.WARNING for f in nano.findings)
    assert any(f.rule == "dynamic-shape" for f in nano.findings) and nano.failed()
    assert not check_onnx(model(17, 8), get_target("jetson-xavier-nx")).failed()
    assert check_onnx(model(13, 7, "com.microsoft"), get_target("jetson-orin-nano")).unsupported[0].rule == "op-domain"
    with pytest.raises(UsageError, match="jetson-\\* targets"):
        check_onnx(model(13, 7), get_target("zcu104"))
    garbage = tmp_path / "not.onnx"
    garbage.write_bytes(b"\x00\xffnot a protobuf")
    with pytest.raises(InputFileError, match="is not an ONNX model"):
        check_onnx(garbage, get_target("jetson-nano"))
