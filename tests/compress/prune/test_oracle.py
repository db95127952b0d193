"""The written ``model.cfg`` + ``model.weights`` of a pruned model, read by OpenCV DNN's own darknet
importer, compute what our pruned torch model computes: an independent check of the cfg surgery
(narrowed filters, renumbered routes and shortcuts) and of the weights layout."""
from __future__ import annotations

import pytest
import torch

from edgeyolo.compress.prune import PruneConfig, prune
from edgeyolo.compress.prune.artifacts import write_artifacts
from edgeyolo.model.cfg import parse_cfg
from edgeyolo.model.checkpoint import load_model
from edgeyolo.runtime.opencv import forward_layers, load_net
from edgeyolo.train.sparsity import prunable_bn
from tests.conftest import cfg_path
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


@pytest.mark.parametrize(
    "name,method", [("edgeyolo-res", "slim"), ("edgeyolo-res", "layer-channel"), ("yolov4-tiny", "regular")]
)
def test_pruned_random_models_match_opencv(name, method, photos, tmp_path):
    """Calibrated random weights with 40% of the prunable γ shrunk 1000x, as sparse training leaves them."""
    size = 256
    model = calibrated_model(parse_cfg(cfg_path(name)), size, seed=0, photos=photos)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i in prunable_bn(model.cfg, 1 if method != "regular" else 0).layers:
            bn = model.module_list[i].bn
            bn.weight[torch.rand(bn.num_features, generator=gen) < 0.4] *= 1e-3
    result = prune(model, PruneConfig(method, percent=0.4, shortcuts=1))
    before = {c.index: c.filters for c in model.cfg.conv_layers}
    assert sum(c.filters for c in result.model.cfg.conv_layers) < sum(before.values())
    errors = opencv_errors(result, tmp_path / method, photos[1], size)
    assert max(errors.values()) <= TOLERANCE, errors
