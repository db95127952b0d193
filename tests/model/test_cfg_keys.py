"""The cfg's keys: every key darknet-AB reads is accepted, any other is an error at its line with the
nearest known key; the shipped cfgs parse as before, without a warning; absurd sizes are refused."""
from __future__ import annotations

import logging

import pytest

from edgeyolo.errors import CfgError, UnsupportedLayerError
from edgeyolo.model import cfg as cfgmod
from edgeyolo.model.cfg import SECTION_KEYS, ConvSpec, MaxPoolSpec, parse_cfg, parse_cfg_text, total_bflops
from edgeyolo.model.darknet import Darknet
from tests.badinput.test_corpus import small_cfg
from tests.conftest import DARKNET_CFGS, OWN_CFGS, cfg_path

# layers and BFLOPs at the cfg's own size, as parsed before keys were checked
SHIPPED = {
    "yolov3": (107, None),
    "yolov3-spp": (114, None),
    "yolov3-tiny": (24, 5.571),
    "yolov4": (162, None),
    "yolov4-tiny": (38, None),
    "edgeyolo-res": (46, None),
    "edgeyolo-mobile": (39, None),
}


@pytest.mark.parametrize("name", DARKNET_CFGS + OWN_CFGS)
def test_shipped_cfgs_parse_unchanged_without_warnings(name: str, caplog) -> None:
    path = cfg_path(name)
    with caplog.at_level(logging.WARNING, logger="edgeyolo.model.cfg"):
        cfg = parse_cfg(path)
    assert [r.getMessage() for r in caplog.records] == []
    layers, bflops = SHIPPED[name]
    assert len(cfg.layers) == layers
    if bflops is not None:
        assert round(total_bflops(cfg, 416), 3) == bflops
    # every key the file holds is one darknet reads for that section
    for layer in cfg.layers:
        assert set(layer.options) <= set(SECTION_KEYS[layer.section]), (layer.section, set(layer.options) - set(SECTION_KEYS[layer.section]))


def test_every_known_key_of_a_conv_is_accepted_at_its_default() -> None:
    # the defaults darknet uses, so that the layer stays what edgeyolo implements
    defaults = {
        "stride_x": "1", "stride_y": "1", "padding": "1", "groups": "1", "cbn": "0", "dilation": "1", "antialiasing": "0",
        "binary": "0", "xnor": "0", "sway": "0", "rotate": "0", "stretch": "0",
        "stretch_sway": "0", "flipped": "0", "coordconv": "0", "deform": "0", "bin_output": "0",
        "assisted_excitation": "0", "dot": "0", "angle": "15", "grad_centr": "0", "reverse": "0", "stream": "-1",
        "wait_stream": "-1", "clip": "0", "onlyforward": "0", "dont_update": "0", "burnin_update": "0",
        "stopbackward": "0", "train_only_bn": "0", "learning_rate": "1", "dontload": "0", "dontloadscales": "0",
    }
    assert set(defaults) | {"filters", "size", "stride", "pad", "batch_normalize", "activation", "share_index"} == set(
        SECTION_KEYS["convolutional"]
    )
    lines = "\n".join(f"{k}={v}" for k, v in defaults.items())
    cfg = parse_cfg_text(small_cfg({13: lines}), "all.cfg")
    conv = cfg.layers[0]
    assert isinstance(conv, ConvSpec) and conv.filters == 16 and conv.batch_normalize and conv.padding == 1


@pytest.mark.parametrize(
    ("changes", "line", "expected"),
    [
        pytest.param({8: "fliters=16"}, 8, "unknown option 'fliters'; did you mean 'filters'?", id="typo"),
        pytest.param({7: "Batch_Normalize=1"}, 7, "did you mean 'batch_normalize'?", id="case"),
        pytest.param({16: "strid=2"}, 16, "[maxpool] unknown option 'strid'; did you mean 'stride'?", id="maxpool"),
        pytest.param({27: "layer=-1"}, 27, "[route] unknown option 'layer'; did you mean 'layers'?", id="route"),
        pytest.param({30: "form=-2"}, 30, "[shortcut] unknown option 'form'; did you mean 'from'?", id="shortcut"),
        pytest.param({44: "anchors_num=3"}, 44, "[yolo] unknown option 'anchors_num'", id="yolo"),
        pytest.param({31: "filters=8"}, 31, "'filters'; it is an option of [convolutional]", id="other-section"),
        pytest.param({4: "channels=3\nwhatever=1"}, 5, "[net] unknown option 'whatever'; darknet reads none such here", id="no-match"),
    ],
)
def test_unknown_key_points_at_its_line(changes: dict[int, str], line: int, expected: str) -> None:
    with pytest.raises(CfgError) as info:
        parse_cfg_text(small_cfg(changes), "m.cfg")
    assert info.value.line == line, str(info.value)
    assert expected in str(info.value), str(info.value)
    assert "\n" not in str(info.value)


def test_cbn_infers_as_batch_norm() -> None:
    cfg = parse_cfg_text(small_cfg({7: "cbn=1"}), "m.cfg")
    assert cfg.layers[0].batch_normalize
    assert Darknet(cfg).module_list[0].bn is not None  # darknet stores its weights as batch norm's


@pytest.mark.parametrize(
    ("changes", "line", "expected"),
    [
        pytest.param({17: "stride_y=1"}, 17, "'stride_y' different from 'stride'", id="maxpool-stride-y"),
        pytest.param({13: "flipped=1"}, 13, "'flipped=1' is not supported", id="flipped"),
        pytest.param({13: "share_index=-1"}, 13, "'share_index' (weights shared with another layer) is not supported", id="share-index"),
        pytest.param({13: "dontloadscales=1"}, 13, "'dontloadscales=1' is not supported", id="dontloadscales"),
        pytest.param({17: "maxpool_zero_nonmax=1"}, 17, "'maxpool_zero_nonmax=1' is not supported", id="zero-nonmax"),
    ],
)
def test_darknet_options_edgeyolo_does_not_implement_are_refused(changes, line, expected) -> None:
    with pytest.raises(UnsupportedLayerError) as info:
        parse_cfg_text(small_cfg(changes), "m.cfg")
    assert info.value.line == line and expected in str(info.value), str(info.value)


def test_maxpool_stride_x_equal_to_stride_is_fine() -> None:
    layer = parse_cfg_text(small_cfg({17: "stride_x=2"}), "m.cfg").layers[1]
    assert isinstance(layer, MaxPoolSpec) and layer.stride == 2


def test_ignored_key_warns_once_per_file(caplog, monkeypatch) -> None:
    monkeypatch.setattr(cfgmod, "_warned", set())
    text = small_cfg({44: "num=3\nnms_kind=diounms"})
    with caplog.at_level(logging.WARNING, logger="edgeyolo.model.cfg"):
        parse_cfg_text(text, "a.cfg")
        parse_cfg_text(text, "a.cfg")
        parse_cfg_text(small_cfg({44: "num=3\nnms_kind=greedynms"}), "b.cfg")  # what edgeyolo does anyway
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1, messages
    assert messages[0].startswith("a.cfg:45: [yolo] nms_kind=diounms is ignored: edgeyolo applies plain greedy NMS")


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        pytest.param({20: "filters=99999999"}, "layer 2 would hold 1.46e+10 parameters", id="params"),
        pytest.param({8: "filters=9999999", 9: "size=1"}, "layer 0 would output 9999999x64x64", id="feature-map"),
    ],
)
def test_absurd_sizes_are_refused_before_allocating(changes, expected) -> None:
    with pytest.raises(CfgError) as info:
        parse_cfg_text(small_cfg(changes), "m.cfg")
    assert expected in str(info.value), str(info.value)
    assert info.value.line == min(changes)


def test_absurd_size_built_in_code_is_refused_by_the_model() -> None:
    import dataclasses

    cfg = parse_cfg_text(small_cfg({}), "m.cfg")
    huge = cfg.replace_layer(dataclasses.replace(cfg.layers[2], filters=50_000_000))
    with pytest.raises(CfgError, match="layer 2 would hold"):
        Darknet(huge)
