"""doctor compares what the board reports with its target profile (DPU fingerprint, DLA cores)."""
from __future__ import annotations

from edgeyolo.targets.runner import _against_profile


def test_dpu_fingerprint_against_the_profile() -> None:
    ok = _against_profile("zcu104", {}, "0x101000016010407")  # ISA1 B4096 (Vitis AI >= 2.5)
    assert [(c.name, c.status) for c in ok] == [("DPU vs profile", "ok")]
    other = _against_profile("zcu104", {}, "0x101000056010407")  # another ISA1 variant, seen on a KV260 image
    assert other[0].status == "warn" and "--fingerprint 0x101000056010407" in other[0].detail


def test_dla_cores_against_the_profile() -> None:
    jetson = {"l4t": "# R32 (release), REVISION: 7.1", "dla_cores": 0}
    assert _against_profile("jetson-nano", jetson, None)[0].status == "ok"
    xavier = _against_profile("jetson-xavier-nx", jetson, None)[0]
    assert xavier.status == "warn" and "expects 2" in xavier.detail
    assert _against_profile("jetson-xavier-nx", {**jetson, "dla_cores": 2}, None)[0].status == "ok"
    # not a Jetson (no L4T release file), an unknown target or no fingerprint: nothing to compare
    assert _against_profile("jetson-nano", {"dla_cores": 0}, None) == []
    assert _against_profile("generic", jetson, "0x1") == []
    assert _against_profile("zcu104", {}, None) == []
