"""The written ``model.cfg`` + ``model.weights`` of a pruned model, read by OpenCV DNN's own darknet
importer, compute what our pruned torch model computes: an independent check of the cfg surgery
(narrowed filters, renumbered routes and shortcuts) and of the weights layout."""
from __future__ import annotations

import pytest
import torch

from edgeyolo.compress.prune import METHODS, PruneConfig, prune
from edgeyolo.compress.prune.artifacts import write_artifacts
from edgeyolo.compress.prune.prunable import PruneMode, prunable_bn
from edgeyolo.model.cfg import parse_cfg, with_input_size
from edgeyolo.model.checkpoint import load_model
from edgeyolo.model.darknet import Darknet
from edgeyolo.runtime.opencv import forward_layers, load_net
from tests.compress.prune.helpers import NOT_APPLICABLE
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


def opencv_errors(result, folder, photo, size: int) -> dict[int, float]:
    write_artifacts(result, folder)
    cfg = result.model.cfg
    assert parse_cfg(folder / "model.cfg").layers == cfg.layers
    layers = [y.index - 1 for y in cfg.yolo_layers] + middle_convs(cfg)
    blob = letterboxed(photo, size)
    ref = forward_layers(load_net(folder / "model.cfg", folder / "model.weights"), cfg, blob, layers)
    got = torch_layers(result.model, blob, layers)
    for i in layers:
        assert_non_degenerate(ref[i], f"OpenCV layer {i}")
    return {i: rel_error(ref[i], got[i]) for i in layers}


def test_pruned_real_yolov3_tiny_matches_opencv(tiny_weights, photos, tmp_path):
    model = load_model(cfg_path("yolov3-tiny"), tiny_weights)
    result = prune(model, PruneConfig("normal", percent=0.25))
    assert sum(c.filters for c in result.model.cfg.conv_layers) < sum(c.filters for c in model.cfg.conv_layers)
    errors = opencv_errors(result, tmp_path / "tiny", photos[0], 320)
    assert max(errors.values()) <= TOLERANCE, errors


SIZE = 128
BIG = ("yolov3", "yolov3-spp", "yolov4")
CASES = [
    pytest.param(name, method, id=f"{name}-{method}", marks=[pytest.mark.slow] if name in BIG else [])
    for name in DARKNET_CFGS + OWN_CFGS
    for method in METHODS.names()
    if (name, method) not in NOT_APPLICABLE
]


@pytest.fixture(scope="module")
def sparse_model(request, photos) -> Darknet:
    """Calibrated random weights with 40% of the prunable γ shrunk 1000x, as sparse training leaves them:
    the removed channels then output a constant act(β) that the written biases must carry."""
    cfg = with_input_size(parse_cfg(cfg_path(request.param)), SIZE)
    model = calibrated_model(cfg, SIZE, seed=0, photos=photos)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i in prunable_bn(model.cfg, PruneMode.SHORTCUT).layers:  # includes the other modes' sets
            bn = model.module_list[i].bn
            bn.weight[torch.rand(bn.num_features, generator=gen) < 0.4] *= 1e-3
    return model


@pytest.mark.parametrize("sparse_model,method", CASES, indirect=["sparse_model"], scope="module")
def test_every_applicable_method_and_cfg_matches_opencv(sparse_model, method, photos, tmp_path):
    """One model per cfg (module-scoped), every method that applies to it (see the applicability matrix)."""
    model = sparse_model
    result = prune(model, PruneConfig(method, percent=None if method == "layer" else 0.4, shortcuts=1))
    if method == "layer":
        assert len(result.model.cfg.layers) < len(model.cfg.layers)
    else:
        assert sum(c.filters for c in result.model.cfg.conv_layers) < sum(c.filters for c in model.cfg.conv_layers)
    errors = opencv_errors(result, tmp_path / method, photos[1], SIZE)
    assert max(errors.values()) <= TOLERANCE, errors
