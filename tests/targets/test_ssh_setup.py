"""A real lab's SSH setup against the loopback board: known_hosts as people keep it, ~/.ssh/config
aliases, a jump host, ssh-agent keys and the key mistakes people make, each with a clear message."""
from __future__ import annotations

import base64
import os
import stat
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgeyolo.errors import AuthFailed, ConnectionFailed, HostKeyError
from edgeyolo.targets.knownhosts import KnownHosts
from tests.targets.conftest import _children, free_port, keygen, with_


def _pub(path: Path) -> tuple[str, str]:
    kind, blob = path.with_suffix(".pub").read_text().split()[:2] if path.suffix != ".pub" else path.read_text().split()[:2]
    return kind, blob


def _string(b: bytes) -> bytes:
    return struct.pack(">I", len(b)) + b


SK_BLOB = base64.b64encode(_string(b"sk-ssh-ed25519@openssh.com") + _string(bytes(range(32))) + _string(b"ssh:")).decode()


def _lab_known_hosts(path: Path, sshd, tmp_path: Path, revoke: bool = False) -> str:
    """A known_hosts file as a lab has it: hashed by ssh-keygen -H (Ubuntu's HashKnownHosts), with
    comments, a host CA, a revoked key, a security key (sk-) entry and unrelated hosts."""
    board = _pub(sshd.host_key)
    other = _pub(keygen(tmp_path / "unrelated"))
    ca = _pub(keygen(tmp_path / "lab_ca"))
    revoked = board if revoke else _pub(keygen(tmp_path / "old_board_key"))
    path.write_text(f"[127.0.0.1]:{sshd.port} {board[0]} {board[1]}\nnano.lab {other[0]} {other[1]}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(path)], check=True, capture_output=True)
    Path(f"{path}.old").unlink()
    hashed = path.read_text()
    assert "127.0.0.1" not in hashed and hashed.startswith("|1|")
    path.write_text(
        "# lab boards: ask the admin before editing\n"
        f"@cert-authority *.lab,[127.0.0.1]:* {ca[0]} {ca[1]} lab-ca\n"
        f"@revoked * {revoked[0]} {revoked[1]}\n"
        "\n"
        f"orin.lab sk-ssh-ed25519@openssh.com {SK_BLOB} yubikey\n"
        + hashed
        + f"[127.0.0.1]:{free_port()},gateway.lab {other[0]} {other[1]}\n"
    )
    return path.read_text()


def test_known_hosts_with_markers_hashed_names_and_sk_keys(device, tmp_path, sshd):
    """f6b95b9: paramiko's HostKeys.load raises InvalidHostKey on the @cert-authority line."""
    from edgeyolo.targets.transport import SshTransport

    known = Path(device.known_hosts)
    before = _lab_known_hosts(known, sshd, tmp_path)
    with SshTransport(device) as t:
        assert t.run(["echo", "ok"]).stdout == "ok\n"
    assert known.read_text() == before  # read only


def test_a_revoked_host_key_is_refused_even_when_trusting(device, tmp_path, sshd):
    """f6b95b9: InvalidHostKey traceback instead of a HostKeyError."""
    from edgeyolo.targets.transport import SshTransport

    known = Path(device.known_hosts)
    before = _lab_known_hosts(known, sshd, tmp_path, revoke=True)
    for trust in (False, True):
        with pytest.raises(HostKeyError, match="@revoked"):
            SshTransport(device, trust_new_host_key=trust)
    assert known.read_text() == before


def test_trusting_a_new_key_appends_one_line_and_keeps_the_rest(device, tmp_path, sshd):
    """f6b95b9: paramiko's loader raises InvalidHostKey on the garbage line; without that line its
    rewrite drops the comment and the sk- line and sets mode 0600 (``after.startswith(before)``)."""
    from edgeyolo.targets.transport import SshTransport

    known = Path(device.known_hosts)
    other = _pub(keygen(tmp_path / "unrelated"))
    before = (
        "# managed by hand\n"
        f"orin.lab sk-ssh-ed25519@openssh.com {SK_BLOB} yubikey\n"
        f"nano.lab {other[0]} {other[1]}  # the old nano\n"
        "this line is garbage\n"
        f"xavier.lab {other[0]} {other[1]}"  # no newline at the end
    )
    known.write_text(before)
    known.chmod(0o644)
    with SshTransport(device, trust_new_host_key=True) as t:
        assert t.run(["true"]).code == 0
    after = known.read_text()
    assert after.startswith(before + "\n") and after.count("\n") == before.count("\n") + 2
    assert stat.S_IMODE(known.stat().st_mode) == 0o644
    assert KnownHosts([known]).check(f"[127.0.0.1]:{sshd.port}", base64.b64decode(_pub(sshd.host_key)[1])).status == "known"
    with SshTransport(device) as t:  # and it is trusted from now on
        assert t.run(["true"]).code == 0


_RECORDER = textwrap.dedent(
    """
    import sys, paramiko
    from edgeyolo.targets.transport import record_host_key
    key = paramiko.Ed25519Key.from_private_key_file(sys.argv[2])
    for k in range(int(sys.argv[3]), int(sys.argv[3]) + 40):
        record_host_key(__import__("pathlib").Path(sys.argv[1]), "127.0.0.1", 10000 + k, key)
    """
)


def test_two_processes_trusting_keys_at_once_lose_no_line(tmp_path, sshd):
    """f6b95b9: load + rewrite without a lock: the comment and one writer's lines vanish
    (fails on ``lines[0] == "# shared file"``)."""
    known = tmp_path / "known_hosts"
    known.write_text("# shared file\n")
    root = Path(__file__).resolve().parents[2]
    procs = [subprocess.Popen([sys.executable, "-c", _RECORDER, str(known), str(sshd.host_key), str(start)], cwd=root)
             for start in (0, 40)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    lines = known.read_text().splitlines()
    assert lines[0] == "# shared file" and len(lines) == 81
    names = {line.split()[0] for line in lines[1:]}
    assert names == {f"[127.0.0.1]:{10000 + k}" for k in range(80)}


# ---------------------------------------------------------------- ~/.ssh/config


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty home: ~/.ssh/config is the test's, and no default key or agent is found by accident."""
    h = tmp_path / "home"
    (h / ".ssh").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(h))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return h


def test_a_host_alias_from_ssh_config(device, sshd, home):
    """f6b95b9: ConnectionFailed "cannot resolve host 'board'"."""
    from edgeyolo.targets.transport import SshTransport

    (home / ".ssh" / "config").write_text(
        f"Host board\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User root\n  IdentityFile {sshd.client_key}\n"
        "Host *\n  User nobody-by-default\n"
    )
    dev = with_(device, host="board", port=22, user="root", key_file=None)
    with SshTransport(dev) as t:
        assert t.run(["whoami"]).stdout.strip() == "root"
    # the inventory's own port wins over the config's
    with pytest.raises(ConnectionFailed, match="refused"):
        SshTransport(with_(dev, port=free_port()))


def test_a_jump_host_and_its_own_host_key(device, sshd, sshd_jump, home):
    """f6b95b9: ConnectionFailed "cannot resolve host 'board'"."""
    from edgeyolo.targets.transport import SshTransport

    (home / ".ssh" / "config").write_text(
        f"Host jumpbox\n  HostName 127.0.0.1\n  Port {sshd_jump.port}\n  User root\n  IdentityFile {sshd.client_key}\n"
        f"Host board\n  HostName 127.0.0.1\n  Port {sshd.port}\n  ProxyJump jumpbox\n"
    )
    known = Path(device.known_hosts)  # holds the board's key only
    dev = with_(device, host="board", port=22)
    with pytest.raises(HostKeyError, match="jump host jumpbox.*unknown host key"):
        SshTransport(dev)
    with SshTransport(dev, trust_new_host_key=True) as t:  # recorded, then the board is reached through it
        assert t.run(["true"]).code == 0
    assert known.read_text() == sshd.known_hosts.read_text() + sshd_jump.known_hosts.read_text()
    deadline = time.monotonic() + 10
    while _children(sshd_jump.proc.pid) and time.monotonic() < deadline:  # the refused attempt's session ends
        time.sleep(0.05)
    before = len(_children(sshd_jump.proc.pid))
    with SshTransport(dev) as t:
        assert t.run(["echo", "through"]).stdout == "through\n"
        assert [h.alias for h in t.jump_hops] == ["jumpbox"]
        assert len(_children(sshd_jump.proc.pid)) > before  # the session really runs through the jump host
    # a changed key of the jump host is refused like the board's
    fake = _pub(keygen(home / "fake_jump_key"))
    known.write_text(sshd.known_hosts.read_text() + f"[127.0.0.1]:{sshd_jump.port} {fake[0]} {fake[1]}\n")
    with pytest.raises(HostKeyError, match="CHANGED"):
        SshTransport(dev)


def test_a_key_held_by_ssh_agent_only(device, sshd, home, tmp_path, monkeypatch):
    """The config's IdentityFile has its .pub only; the private key is in ssh-agent.
    f6b95b9: ConnectionFailed "cannot resolve host 'board'"."""
    from edgeyolo.targets.transport import SshTransport

    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if sock.exists():
                break
            time.sleep(0.05)
        env = {**os.environ, "SSH_AUTH_SOCK": str(sock)}
        subprocess.run(["ssh-add", "-q", str(sshd.client_key)], env=env, check=True, capture_output=True)
        pub_only = home / ".ssh" / "lab_key.pub"
        pub_only.write_text(sshd.client_key.with_suffix(".pub").read_text())
        (home / ".ssh" / "config").write_text(f"Host board\n  HostName 127.0.0.1\n  Port {sshd.port}\n  IdentityFile ~/.ssh/lab_key\n")
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        with SshTransport(with_(device, host="board", port=22, key_file=None)) as t:
            assert t.run(["true"]).code == 0
    finally:
        agent.terminate()
        agent.wait(timeout=10)


# ---------------------------------------------------------------- key mistakes, one clear line each


def test_key_mistakes_are_named(device, tmp_path, monkeypatch, home):
    """f6b95b9: a wrong passphrase gives "SSH connection ... failed: ... Invalid key"-like text, an
    unset variable asks to add the passphrase_env that is there, a missing file reads as a
    connection failure (fails on the first ``match``)."""
    from edgeyolo.targets.transport import SshTransport

    locked = keygen(tmp_path / "locked", passphrase="right-one")
    monkeypatch.setenv("LAB_KEY_PASS", "wrong-one")
    with pytest.raises(AuthFailed, match=r"passphrase in \$LAB_KEY_PASS does not open the key .*locked") as exc:
        SshTransport(with_(device, key_file=str(locked), passphrase_env="LAB_KEY_PASS"))
    assert "wrong-one" not in str(exc.value)
    monkeypatch.delenv("LAB_KEY_PASS")
    with pytest.raises(AuthFailed, match="LAB_KEY_PASS named by passphrase_env is not set; export LAB_KEY_PASS"):
        SshTransport(with_(device, key_file=str(locked), passphrase_env="LAB_KEY_PASS"))
    with pytest.raises(AuthFailed, match="key file .*nope.* does not exist") as missing:
        SshTransport(with_(device, key_file=str(tmp_path / "nope")))
    assert "refused" not in str(missing.value) and "\n" not in str(missing.value)
