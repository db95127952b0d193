"""Our torch model and ONNX export against OpenCV DNN's independent darknet implementation."""
import numpy as np
import pytest
import torch

from edgeyolo.export.darknet import export_darknet
from edgeyolo.export.onnx import export_onnx
from edgeyolo.model.cfg import parse_cfg
from edgeyolo.model.checkpoint import load_model
from edgeyolo.runtime.onnxruntime import make_session, run_session
from edgeyolo.runtime.opencv import forward_layers, load_net
from tests.conftest import DARKNET_CFGS, OWN_CFGS, cfg_path
from tests.oracle import (
    TOLERANCE,
    assert_non_degenerate,
    calibrated_model,
    letterboxed,
    middle_convs,
    rel_error,
    torch_layers,
)


def compare_with_opencv(model, cfg_file, weights_file, blob, tmp_path):
    """raw ONNX heads and torch intermediates vs OpenCV; returns the worst relative error."""
    cfg = model.cfg
    onnx_path = tmp_path / "raw.onnx"
    result = export_onnx(model, onnx_path, blob.shape[-1], raw=True, sample=blob)
    heads = [h.layer - 1 for h in model.heads]
    assert result.outputs == tuple(f"conv_{i}" for i in heads)
    got = dict(zip(heads, run_session(make_session(onnx_path), blob)))
    mids = middle_convs(cfg)
    assert len(mids) >= 3
    net = load_net(cfg_file, weights_file)
    ref = forward_layers(net, cfg, blob, heads + mids)
    got.update(torch_layers(model, blob, mids))
    errors = {}
    for i in heads + mids:
        assert_non_degenerate(ref[i], f"OpenCV layer {i}")
        errors[i] = rel_error(ref[i], got[i])
    return errors


def test_real_yolov3_tiny_weights_match_opencv(tiny_weights, photos, tmp_path):
    cfg_file = cfg_path("yolov3-tiny")
    model = load_model(cfg_file, tiny_weights)
    for photo in photos[:2]:
        errors = compare_with_opencv(model, cfg_file, tiny_weights, letterboxed(photo, 416), tmp_path)
        assert max(errors.values()) <= TOLERANCE, errors


@pytest.mark.parametrize("name", DARKNET_CFGS + OWN_CFGS)
def test_random_init_models_match_opencv(name, photos, tmp_path):
    size = 256
    cfg = parse_cfg(cfg_path(name))
    model = calibrated_model(cfg, size, seed=0, photos=photos)
    exported = export_darknet(model, tmp_path / "dk")
    errors = compare_with_opencv(model, exported.cfg, exported.weights, letterboxed(photos[1], size), tmp_path)
    assert max(errors.values()) <= TOLERANCE, errors


def test_gray_input_model_matches_opencv(photos, tmp_path):
    text = cfg_path("edgeyolo-res").read_text().replace("channels=3", "channels=1")
    (tmp_path / "gray.cfg").write_text(text)
    cfg = parse_cfg(tmp_path / "gray.cfg")
    model = calibrated_model(cfg, 256, seed=3, photos=photos)
    exported = export_darknet(model, tmp_path / "dk")
    blob = letterboxed(photos[0], 256, channels=1)
    assert blob.shape == (1, 1, 256, 256)
    errors = compare_with_opencv(model, exported.cfg, exported.weights, blob, tmp_path)
    assert max(errors.values()) <= TOLERANCE, errors


def test_oracle_catches_a_broken_model(tiny_weights, photos, tmp_path):
    """The check can fail: a 2% change of one conv's weights, or a wrong BN epsilon, is caught."""
    cfg_file = cfg_path("yolov3-tiny")
    blob = letterboxed(photos[0], 416)
    broken = load_model(cfg_file, tiny_weights)
    with torch.no_grad():
        broken.module_list[13].conv.weight.mul_(1.02)
    errors = compare_with_opencv(broken, cfg_file, tiny_weights, blob, tmp_path)
    assert max(errors.values()) > 10 * TOLERANCE, errors

    # torch's default BN eps (1e-5) instead of darknet's 1e-6: a real, subtle bug the oracle sees
    wrong_eps = load_model(cfg_file, tiny_weights)
    for m in wrong_eps.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eps = 1e-5
    right = load_model(cfg_file, tiny_weights)
    net = load_net(cfg_file, tiny_weights)
    ref = forward_layers(net, right.cfg, blob, [15])[15]
    good = rel_error(ref, torch_layers(right, blob, [15])[15])
    bad = rel_error(ref, torch_layers(wrong_eps, blob, [15])[15])
    assert bad > 3 * good, (good, bad)


def test_decoded_output_matches_opencv_yolo_layer(tiny_weights, photos, tmp_path):
    """Decode (sigmoid, exp·anchor, grid, scale_x_y) against OpenCV's own [yolo] layer, thresh=0."""
    for name, weights in (("yolov3-tiny", tiny_weights), ("yolov4-tiny", None)):
        src = cfg_path(name)
        cfg = parse_cfg(src)
        size = 416 if weights else 256
        if weights is None:
            model = calibrated_model(cfg, size, seed=1, photos=photos)
            exported = export_darknet(model, tmp_path / name)
            cfg_file, weights_file = exported.cfg, exported.weights
        else:
            model = load_model(src, weights)
            cfg_file, weights_file = src, weights
        # OpenCV zeroes class scores below thresh (default 0.2); give it a copy with thresh=0
        text = cfg_file.read_text().replace("[yolo]", "[yolo]\nthresh=0")
        relaxed = tmp_path / f"{name}-thresh0.cfg"
        relaxed.write_text(text)
        net = load_net(relaxed, weights_file)
        blob = letterboxed(photos[2], size)
        net.setInput(blob)
        cv_outs = net.forward(net.getUnconnectedOutLayersNames())
        with torch.no_grad():
            ours = model(torch.from_numpy(blob))[0].numpy()
        start = 0
        for head, cv in zip(model.heads, cv_outs):
            g = size // head.stride
            a = len(head.anchors)
            n = g * g * a
            mine = ours[start : start + n].reshape(a, g, g, -1).transpose(1, 2, 0, 3).reshape(n, -1)
            start += n
            # OpenCV: boxes normalised to [0, 1], rows cell-first; column 4 objectness, 5+ obj*prob
            assert cv.shape == mine.shape
            np.testing.assert_allclose(cv[:, :4] * size, mine[:, :4], rtol=1e-3, atol=1e-2 * size / 416)
            np.testing.assert_allclose(cv[:, 4], mine[:, 4], atol=2e-5)
            np.testing.assert_allclose(cv[:, 5:], mine[:, 5:] * mine[:, 4:5], atol=2e-5)
            assert 0.05 < mine[:, 4].mean() < 0.95 or weights, "objectness saturated"
        assert start == ours.shape[0]
