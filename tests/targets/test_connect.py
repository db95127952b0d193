"""``targets.connect``: a board by its inventory name, under the caller's host-key policy (loopback sshd)."""
from __future__ import annotations

import pytest

from edgeyolo.errors import HostKeyError, UsageError
from edgeyolo.targets.connect import connect, resolve_device
from tests.targets.conftest import write_inventory


def test_an_unknown_host_key_is_refused_without_trust_and_recorded_with_it(device, tmp_path, sshd) -> None:
    known = tmp_path / "empty_known_hosts"
    inventory = tmp_path / "devices.yaml"
    write_inventory(device, inventory, known_hosts=str(known))
    with pytest.raises(HostKeyError, match="unknown host key .*SHA256:.*--trust-new-host-key"):
        connect("loop", inventory=inventory)
    assert not known.exists()  # nothing recorded without consent
    with connect("loop", inventory=inventory, trust=True) as t:
        assert t.device.name == "loop" and t.run(["echo", "hi"]).stdout == "hi\n"
    assert f"[127.0.0.1]:{sshd.port}" in known.read_text()
    with connect("loop", inventory=inventory) as t:  # from now on trusted without it
        assert t.run(["true"]).code == 0


def test_a_resolved_device_connects_without_reading_the_inventory_again(device, tmp_path) -> None:
    inventory = tmp_path / "devices.yaml"
    write_inventory(device, inventory)
    dev = resolve_device("loop", inventory)
    assert resolve_device(dev) is dev
    inventory.unlink()  # a second read would fail
    lines: list[str] = []
    with connect(dev, on_stderr=lines.append) as t:
        t.run(["sh", "-c", "echo warm >&2"])
        assert t.on_stderr is not None
    assert lines == ["  [loop] warm"]


def test_an_unknown_name_lists_the_known_devices(tmp_path) -> None:
    inventory = tmp_path / "devices.yaml"
    inventory.write_text('{"devices": {"loop": {"host": "127.0.0.1"}}}')
    with pytest.raises(UsageError, match="no device 'nano' in the inventory; known devices: loop"):
        connect("nano", inventory=inventory)
