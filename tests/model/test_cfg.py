import pytest

from edgeyolo.model.cfg import (
    ConvSpec,
    RouteSpec,
    format_cfg,
    infer_shapes,
    parse_cfg,
    parse_cfg_text,
    total_bflops,
)
from tests.conftest import DARKNET_CFGS, OWN_CFGS, cfg_path

ALL = DARKNET_CFGS + OWN_CFGS


@pytest.mark.parametrize("name", ALL)
def test_write_parse_round_trip(name):
    cfg = parse_cfg(cfg_path(name))
    text = format_cfg(cfg)
    again = parse_cfg_text(text, "again.cfg")
    assert again.layers == cfg.layers
    assert again.net.to_options() == cfg.net.to_options()
    # every key survives, including training options edgeyolo does not use
    for a, b in zip(cfg.layers, again.layers):
        assert a.options == b.options
    assert format_cfg(again) == text
    assert infer_shapes(again) == infer_shapes(cfg)


def test_net_keys_kept():
    cfg = parse_cfg(cfg_path("yolov4"))
    again = parse_cfg_text(format_cfg(cfg))
    for key in ("learning_rate", "burn_in", "max_batches", "policy", "steps", "scales", "mosaic"):
        assert again.net.options[key] == cfg.net.options[key]


def test_route_keeps_relative_and_absolute_form():
    cfg = parse_cfg(cfg_path("yolov3-tiny"))
    route = cfg.layers[20]
    assert isinstance(route, RouteSpec) and route.layers == (19, 8)
    text = format_cfg(cfg)
    assert "layers=-1, 8" in text


def test_modified_filters_are_written():
    cfg = parse_cfg(cfg_path("yolov3-tiny"))
    import dataclasses

    conv = cfg.layers[0]
    assert isinstance(conv, ConvSpec)
    smaller = cfg.replace_layer(dataclasses.replace(conv, filters=8))
    again = parse_cfg_text(format_cfg(smaller))
    assert again.layers[0].filters == 8
    assert infer_shapes(again)[0] == (8, 416, 416)


@pytest.mark.parametrize(
    "name, size, expected, conv_only",
    [
        ("yolov3-tiny", 416, 5.571, 5.565),  # darknet-AB prints 5.571
        ("yolov3", 416, 65.879, 65.864),  # darknet-AB prints 65.879
        ("yolov4", 608, None, None),
    ],
)
def test_bflops_darknet_convention(name, size, expected, conv_only):
    cfg = parse_cfg(cfg_path(name))
    total = total_bflops(cfg, size)
    if expected is None:
        assert 128.0 < total < 129.0  # darknet-AB: 128.459 for yolov4 at 608
        return
    assert round(total, 3) == expected
    assert round(total_bflops(cfg, size, conv_only=True), 3) == conv_only


def test_gray_input_channels_1():
    text = (cfg_path("edgeyolo-res")).read_text().replace("channels=3", "channels=1")
    cfg = parse_cfg_text(text)
    assert cfg.net.channels == 1
    assert infer_shapes(cfg)[0] == (16, 256, 256)


def test_yolov4_tiny_grouped_route_shapes():
    cfg = parse_cfg(cfg_path("yolov4-tiny"))
    shapes = infer_shapes(cfg)
    assert isinstance(cfg.layers[3], RouteSpec) and cfg.layers[3].groups == 2
    assert shapes[3] == (32, 104, 104)


def test_odd_sizes_maxpool_geometry():
    # darknet: out = (in + padding - size) // stride + 1 with padding = size - 1
    cfg = parse_cfg(cfg_path("yolov3-tiny"))
    shapes = infer_shapes(cfg, 320, 320)
    assert shapes[10] == (512, 10, 10)  # stride-2 pool of 20 -> 10
    assert shapes[11] == (512, 10, 10)  # size-2 stride-1 pool keeps size


def test_utf8_bom_is_accepted(tmp_path):
    path = tmp_path / "bom.cfg"
    path.write_bytes(b"\xef\xbb\xbf" + cfg_path("yolov3-tiny").read_bytes())
    assert parse_cfg(path).layers == parse_cfg(cfg_path("yolov3-tiny")).layers
