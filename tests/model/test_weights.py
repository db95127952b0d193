"""darknet .weights: byte-exact read/write, and every byte where the cfg says it is."""
import numpy as np
import torch

from edgeyolo.model.checkpoint import load_model
from edgeyolo.model.weights import darknet_weights_bytes, read_header, save_darknet_weights
from edgeyolo.runtime.opencv import forward_layers, load_net
from tests.conftest import cfg_path
from tests.oracle import TOLERANCE, letterboxed, rel_error, torch_layers


def test_real_file_header_and_size(tiny_weights):
    data = tiny_weights.read_bytes()
    header = read_header(data, str(tiny_weights))
    assert (header.major, header.minor) == (0, 2) and header.seen_is_64bit and header.nbytes == 20
    assert len(data) == 20 + 4 * 8_858_734  # floats after the header, as measured


def test_read_write_is_byte_identical(tiny_weights, tmp_path):
    model = load_model(cfg_path("yolov3-tiny"), tiny_weights)
    out = save_darknet_weights(model, tmp_path / "again.weights")
    assert out.read_bytes() == tiny_weights.read_bytes()


def test_int32_seen_header_round_trips(tmp_path):
    from edgeyolo.model.weights import DarknetHeader, load_darknet_weights

    model = load_model(cfg_path("edgeyolo-res"))
    old = DarknetHeader(0, 1, 0, 12345)  # version 0.1 stores `seen` as int32
    assert old.nbytes == 16
    path = save_darknet_weights(model, tmp_path / "old.weights", header=old)
    again = load_model(cfg_path("edgeyolo-res"))
    assert load_darknet_weights(again, path) == old
    assert path.read_bytes() == darknet_weights_bytes(again)


def test_one_gamma_and_one_weight_change_exactly_their_bytes(tiny_weights, photos, tmp_path):
    cfg_file = cfg_path("yolov3-tiny")
    model = load_model(cfg_file, tiny_weights)
    original = tiny_weights.read_bytes()
    # layer 0: BN β(16) γ(16) mean(16) var(16) then 16*3*3*3 weights; γ[5] is float 16+5
    gamma_float = 16 + 5
    # layer 2 (the second conv) starts after layer 0's 64 + 432 floats: β γ mean var of 32, then weights
    weight_float = 64 + 432 + 4 * 32 + 7
    with torch.no_grad():
        model.module_list[0].bn.weight[5] *= 1.5
        model.module_list[2].conv.weight.view(-1)[7] += 0.25
    changed_path = save_darknet_weights(model, tmp_path / "changed.weights")
    changed = changed_path.read_bytes()
    assert len(changed) == len(original)
    a = np.frombuffer(original[20:], dtype="<f4")
    b = np.frombuffer(changed[20:], dtype="<f4")
    assert sorted(np.nonzero(a != b)[0].tolist()) == [gamma_float, weight_float]
    diff_bytes = [i for i in range(len(original)) if original[i] != changed[i]] if False else np.nonzero(
        np.frombuffer(original, np.uint8) != np.frombuffer(changed, np.uint8)
    )[0]
    assert set((diff_bytes - 20) // 4) == {gamma_float, weight_float}
    assert b[gamma_float] == np.float32(a[gamma_float] * np.float32(1.5))

    # OpenCV reading the changed file sees the change, and agrees with our changed model
    blob = letterboxed(photos[0], 416)
    layers = [2, 15]
    ref_old = forward_layers(load_net(cfg_file, tiny_weights), model.cfg, blob, layers)
    ref_new = forward_layers(load_net(cfg_file, changed_path), model.cfg, blob, layers)
    ours = torch_layers(model, blob, layers)
    for i in layers:
        assert rel_error(ref_new[i], ours[i]) <= TOLERANCE
        assert rel_error(ref_old[i], ref_new[i]) > 10 * TOLERANCE
