"""devices.yaml: lookup by name, clear errors, no secrets in the file."""
from __future__ import annotations

import pytest

from edgeyolo.errors import InputFileError, UsageError
from edgeyolo.targets.inventory import ENV_INVENTORY, Device, default_inventory_path, get_device, load_inventory

YAML = """
devices:
  nano:
    target: jetson-nano
    host: 192.168.1.20
    user: jetson
    key_file: ~/.ssh/id_ed25519
    passphrase_env: NANO_KEY_PASSPHRASE
  zcu104:
    target: zcu104
    host: zcu104.lab
    port: 2222
    workdir: /home/root/edgeyolo
"""


@pytest.fixture
def inventory(tmp_path):
    path = tmp_path / "devices.yaml"
    path.write_text(YAML)
    return path


def test_lookup_by_name(inventory):
    nano = get_device("nano", inventory)
    assert nano == Device(name="nano", target="jetson-nano", host="192.168.1.20", user="jetson",
                          key_file="~/.ssh/id_ed25519", passphrase_env="NANO_KEY_PASSPHRASE")
    assert nano.port == 22 and nano.workdir == "edgeyolo" and nano.python == "python3"
    z = get_device("zcu104", inventory)
    assert z.address == "root@zcu104.lab:2222" and z.remote_workdir == "/home/root/edgeyolo"
    assert Device(name="x", host="h", workdir="~/deep/dir").remote_workdir == "deep/dir"


def test_unknown_name_lists_the_known_ones(inventory):
    with pytest.raises(UsageError, match="no device 'orin'.*known devices: nano, zcu104"):
        get_device("orin", inventory)


def test_env_var_and_missing_file(inventory, tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_INVENTORY, str(inventory))
    assert default_inventory_path() == inventory and "nano" in load_inventory()
    with pytest.raises(InputFileError, match="not found.*--inventory.*EDGEYOLO_DEVICES"):
        load_inventory(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    "text, message",
    [
        ("devices:\n  a:\n    host: h\n    password: hunter2\n", "secrets do not belong"),
        ("devices:\n  a:\n    host: h\n    colour: red\n", "unknown key.*colour"),
        ("devices:\n  a:\n    user: u\n", "host"),
        ("devices:\n  a:\n    host: h\n    port: 70000\n", "port"),
        ("devices:\n  a:\n    host: h\n    workdir: /\n", "dedicated folder"),
        ("boards: []\n", "top-level 'devices:'"),
        ("devices: [\n", "not valid YAML"),
    ],
)
def test_bad_entries_are_explained(tmp_path, text, message):
    path = tmp_path / "devices.yaml"
    path.write_text(text)
    with pytest.raises((InputFileError, UsageError), match=message):
        load_inventory(path)


def test_secrets_come_from_the_environment(monkeypatch):
    d = Device(name="a", host="h", passphrase_env="A_PASS")
    assert d.secret("passphrase") is None
    monkeypatch.setenv("A_PASS", "xyzzy")
    assert d.secret("passphrase") == "xyzzy" and "xyzzy" not in repr(d)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("devices:\n  nano:\n    host: a\n    connect_timeout: soon\n", r"devices\.yaml: device 'nano': connect_timeout must be a number of seconds, got 'soon'"),
        ("devices:\n  nano:\n    host: a\n    target: jetson-nanoo\n", r"devices\.yaml: device 'nano': unknown target 'jetson-nanoo'; known: .*jetson-nano"),
        ("devices:\n  nano:\n    host: a\n    user: [1, 2]\n", r"device 'nano': user must be a string"),
        ("devices:\n  nano:\n    host: a\n   port: 22\n", r"devices\.yaml:4: not valid YAML"),
    ],
)
def test_inventory_values_are_checked_and_errors_name_the_file(tmp_path, text, message):
    from edgeyolo.errors import InputFileError
    from edgeyolo.targets.inventory import load_inventory

    path = tmp_path / "devices.yaml"
    path.write_text(text)
    with pytest.raises(InputFileError, match=message) as info:
        load_inventory(path)
    assert "<unicode string>" not in str(info.value) and "\n" not in str(info.value)
