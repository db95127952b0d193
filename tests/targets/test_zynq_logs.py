"""xdputil query and vai_c_xir logs parsed from real board/compiler output."""
from __future__ import annotations

import json

import pytest

from edgeyolo.targets.parsing import ToolOutputError
from edgeyolo.targets.profiles import get_target
from edgeyolo.targets.zynq.vai_c import VaiCompileFailed, parse_vai_c_xir, vai_c_xir_command
from edgeyolo.targets.zynq.xdputil import parse_fingerprint, parse_xdputil_query
from tests.targets.boardlogs import board_log


def test_xdputil_query_on_a_vai_25_board():
    q = parse_xdputil_query(board_log("xdputil-query.txt"))
    assert (q.core_count, q.ip_version, q.vai_version) == (1, "v4.0.0", "2.5.0")
    (k,) = q.kernels
    assert (k.name, k.arch, k.size, k.freq_mhz, k.cu_index) == ("DPU Core 0", "DPUCZDX8G_ISA1_B1024", "B1024", 325, 0)
    assert k.fingerprint.hex == "0x101000016010402" and k.fingerprint.isa == "ISA1" and k.fingerprint.type == 1
    assert q.versions["target_factory"].startswith("target-factory.2.5.0")


def test_profile_fingerprints_decode_to_their_isa():
    for name in ("zcu104", "ultra96"):
        for image in get_target(name).dpu_images:
            fp = parse_fingerprint(image.fingerprint_hex)
            assert fp.type == 1 and fp.isa == image.isa, image


@pytest.mark.parametrize("text", ["", "xdputil: command not found", "{\"kernels\": []}", "{\"kernels\": [{\"fingerprint\": \"zz\"}]}", "{broken"])
def test_xdputil_garbage(text):
    with pytest.raises(ToolOutputError, match="xdputil"):
        parse_xdputil_query(text)


def test_vai_c_xir_ultra96_compile():
    r = parse_vai_c_xir(board_log("vai_c_xir-compile.txt"))
    assert r.status == "ok" and r.target == "DPUCZDX8G_ISA0_B2304_MAX_BG2"
    (g,) = r.graphs
    assert (g.name, g.ops, g.device_subgraphs, g.dpu_subgraphs) == ("EfficientDet", 1392, 83, 20)
    assert r.meta_json == "/work/quantize_result/meta.json"
    assert r.log_path == "/tmp/vitis-ai-user/log/xcompiler-20210305-033056-788"


def test_vai_c_xir_glog_with_several_graphs():
    r = parse_vai_c_xir(board_log("vai_c_xir-compile-glog.txt"))
    assert r.target == "DPUCZDX8G_ISA1_B4096" and len(r.graphs) == 3
    assert (r.graphs[0].name, r.graphs[0].device_subgraphs, r.graphs[0].dpu_subgraphs, r.graphs[0].done) == (None, 3, 1, True)
    assert r.graphs[1].name == "nndct_conv2d_nndct_relu_L1rV78RjnisKzw5U" and r.graphs[1].ops == 9
    assert r.last is r.graphs[1] and r.status == "incomplete"  # the excerpt stops inside the third graph


def test_vai_c_xir_failure_and_garbage():
    # constructed: UNILOG's [LEVEL][CODE][message] layout for a fatal compiler error
    text = "[UNILOG][INFO] Target architecture: DPUCZDX8G_ISA1_B4096\n[UNILOG][FATAL][XCOM_PM_FAIL][The compiler occurs an error]\n"
    r = parse_vai_c_xir(text)
    assert r.status == "failed"
    with pytest.raises(VaiCompileFailed, match="XCOM_PM_FAIL"):
        r.raise_for_status()
    with pytest.raises(ToolOutputError, match="no \\[UNILOG\\] line"):
        parse_vai_c_xir("Segmentation fault\n")


def test_vai_c_xir_command_inlines_the_fingerprint():
    image = get_target("zcu104").dpu_image("3.5")
    argv = vai_c_xir_command("q/Model_int.xmodel", image, "out", "yolo")
    assert argv[:3] == ["vai_c_xir", "-x", "q/Model_int.xmodel"]
    assert json.loads(argv[4]) == {"fingerprint": "0x101000016010407"}
