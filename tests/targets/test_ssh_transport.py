"""SshTransport against a real OpenSSH server on loopback: every fault leaves nothing lost or corrupted."""
from __future__ import annotations

import hashlib
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgeyolo.errors import (
    AuthFailed,
    BoardBusy,
    ConnectionFailed,
    HostKeyError,
    RemoteCommandError,
    RemoteTimeout,
    TargetError,
)
from edgeyolo.targets.transport import BoardLock, SshTransport, quote_argv
from tests.targets.conftest import free_port, keygen, with_

WEIRD = "we ird;$(touch PWNED)`touch PWNED2`'\"|&>x"


def _payload(path: Path, size: int, seed: int = 0) -> Path:
    import numpy as np

    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- connecting


def test_connection_refused_is_a_clear_error(device):
    port = free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="refused.*sshd running"):
        SshTransport(with_(device, port=port))
    assert time.monotonic() - started < 5


def test_unknown_host_key_is_refused_then_trusted_and_recorded(device, tmp_path, sshd):
    known = tmp_path / "empty_known_hosts"
    dev = with_(device, known_hosts=str(known))
    with pytest.raises(HostKeyError, match="unknown host key .*SHA256:.*--trust-new-host-key"):
        SshTransport(dev)
    assert not known.exists()  # nothing recorded without consent
    with SshTransport(dev, trust_new_host_key=True) as t:
        assert t.run(["echo", "hi"]).stdout == "hi\n"
    recorded = known.read_text()
    assert f"[127.0.0.1]:{sshd.port}" in recorded and (sshd.root / "host_ed25519.pub").read_text().split()[1] in recorded
    with SshTransport(dev) as t:  # from now on trusted without the flag
        assert t.run(["true"]).code == 0


def test_rotated_host_key_is_refused(device, tmp_path, sshd):
    other = keygen(tmp_path / "other_host_key")
    pub = (tmp_path / "other_host_key.pub").read_text().split()
    known = Path(device.known_hosts)
    known.write_text(f"[127.0.0.1]:{sshd.port} {pub[0]} {pub[1]}\n")
    before = known.read_text()
    with pytest.raises(HostKeyError, match="CHANGED.*expected SHA256:.*got SHA256:"):
        SshTransport(device)
    assert known.read_text() == before  # the recorded key is untouched
    with SshTransport(device, trust_new_host_key=True) as t:  # an explicit decision replaces it
        assert t.run(["true"]).code == 0
    assert pub[1] not in known.read_text()
    assert other.exists()


def test_auth_failure_names_the_fix_and_never_logs_secrets(device, tmp_path, caplog, monkeypatch):
    stranger = keygen(tmp_path / "stranger", passphrase="s3cret-passphrase")
    monkeypatch.setenv("EDGEYOLO_TEST_PASSPHRASE", "s3cret-passphrase")
    monkeypatch.setenv("EDGEYOLO_TEST_PASSWORD", "hunter2-password")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(AuthFailed, match="authorized_keys") as exc:
        SshTransport(with_(device, key_file=str(stranger), passphrase_env="EDGEYOLO_TEST_PASSPHRASE"))
    with pytest.raises(AuthFailed) as exc2:
        SshTransport(with_(device, key_file=None, password_env="EDGEYOLO_TEST_PASSWORD"))
    with pytest.raises(AuthFailed, match="passphrase-protected.*passphrase_env"):
        SshTransport(with_(device, key_file=str(stranger)))
    for text in (str(exc.value), str(exc2.value), caplog.text):
        assert "s3cret-passphrase" not in text and "hunter2-password" not in text


# ---------------------------------------------------------------- commands


def test_arguments_with_shell_metacharacters_arrive_verbatim(transport, device):
    args = [WEIRD, "a  b", "", "$HOME", "*", "\n", "--"]
    got = transport.run([device.python, "-c", "import json, sys; print(json.dumps(sys.argv[1:]))", *args])
    import json

    assert json.loads(got.stdout) == args
    board = Path(device.workdir)
    assert not (board / "PWNED").exists() and not (board / "PWNED2").exists()
    assert quote_argv(["a b"]) == "'a b'"


def test_non_zero_exit_shows_code_and_stderr(transport):
    with pytest.raises(RemoteCommandError) as exc:
        transport.run(["sh", "-c", "echo partial; echo 'engine build failed: out of memory' >&2; exit 3"])
    assert exc.value.code == 3 and "out of memory" in exc.value.stderr
    assert "exit code 3" in str(exc.value) and "out of memory" in str(exc.value)
    assert transport.run(["sh", "-c", "exit 4"], check=False).code == 4


def test_stderr_is_streamed_line_by_line(transport):
    lines = []
    transport.run(["sh", "-c", "for i in 1 2 3; do echo log $i >&2; done"], on_stderr=lines.append)
    assert lines == ["log 1", "log 2", "log 3"]


def test_command_timeout_stops_the_remote_process(transport, device):
    marker = Path(device.workdir) / "sleeping.pid"
    started = time.monotonic()
    # 3 s: the session must start and write its pid within the limit even on a loaded machine
    with pytest.raises(RemoteTimeout, match="did not finish within 3 s and was stopped"):
        transport.run(["sh", "-c", f"echo $$ > {marker}; exec sleep 60"], timeout=3)
    assert time.monotonic() - started < 10
    pid = int(marker.read_text())
    time.sleep(0.3)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    assert transport.run(["echo", "still usable"]).stdout == "still usable\n"


# ---------------------------------------------------------------- uploads


def test_upload_verifies_and_redeploy_unchanged_sends_nothing(transport, device, tmp_path):
    src = _payload(tmp_path / "model.onnx", 3_000_000)
    first = transport.put(src, f"models/{WEIRD}.onnx")
    target = Path(device.workdir) / "models" / f"{WEIRD}.onnx"
    assert first.sent == first.size == 3_000_000 and not first.skipped
    assert _sha(target) == _sha(src) == first.sha256
    again = transport.put(src, f"models/{WEIRD}.onnx")
    assert again.skipped and again.sent == 0
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]  # no temp files left


def test_session_killed_mid_upload_then_resumes(transport, device, tmp_path, sshd):
    src = _payload(tmp_path / "big.bin", 12 << 20, seed=1)
    old = _payload(tmp_path / "old.bin", 1000, seed=2)
    transport.put(old, "models/big.bin")  # a previous version on the board must survive the crash
    killed = []

    def kill_midway(done: int, total: int) -> None:
        if done > total // 3 and not killed:
            killed.append(sshd.kill_sessions())

    with pytest.raises((ConnectionFailed, RemoteTimeout), match="resume"):
        transport.put(src, "models/big.bin", progress=kill_midway)
    assert killed and killed[0] > 0
    target = Path(device.workdir) / "models" / "big.bin"
    assert _sha(target) == _sha(old)  # the old version is intact: the target name never held a partial
    parts = list(target.parent.glob(".big.bin.*.part"))
    assert len(parts) == 1 and 0 < parts[0].stat().st_size < src.stat().st_size

    with SshTransport(device) as fresh:
        resumed = fresh.put(src, "models/big.bin")
    assert resumed.resumed_from > 0 and resumed.sent == src.stat().st_size - resumed.resumed_from
    assert _sha(target) == _sha(src)
    assert not list(target.parent.glob("*.part"))


def test_deploy_reconnects_and_resumes_by_itself(transport, device, tmp_path, sshd):
    from edgeyolo.targets.deploy import upload

    files = [_payload(tmp_path / f"f{k}.bin", 4 << 20, seed=10 + k) for k in range(2)]
    killed = []

    def kill_once(done: int, total: int) -> None:
        if done > total // 2 and not killed:
            killed.append(sshd.kill_sessions())

    report = upload(transport, [(f, f"models/{f.name}") for f in files], progress=kill_once, retries=2)
    assert killed and report.bytes_sent < 2 * (4 << 20)  # the interrupted file was resumed, not sent again
    assert any(u.resumed_from > 0 for u in report.uploads)
    for f in files:
        assert _sha(Path(device.workdir) / "models" / f.name) == _sha(f)


def test_a_corrupted_partial_is_not_resumed(transport, device, tmp_path):
    src = _payload(tmp_path / "m.bin", 200_000, seed=3)
    digest = _sha(src)
    folder = Path(device.workdir) / "models"
    folder.mkdir(parents=True)
    (folder / f".m.bin.{digest[:16]}.part").write_bytes(b"garbage" * 100)  # wrong prefix
    up = transport.put(src, "models/m.bin")
    assert up.resumed_from == 0 and up.sent == 200_000 and _sha(folder / "m.bin") == digest


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a 64 kB tmpfs to fake a full disk: {proc.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_remote_disk_full(device, tmp_path, tiny_disk):
    dev = with_(device, workdir=str(tiny_disk / "board"))
    small = _payload(tmp_path / "small.bin", 10_000, seed=4)
    big = _payload(tmp_path / "big.bin", 300_000, seed=5)
    with SshTransport(dev) as t:
        t.put(small, "models/m.bin")
        with pytest.raises(TargetError, match="not enough space"):  # refused before writing anything
            t.put(big, "models/m.bin")
        with pytest.raises(TargetError, match="ran out of disk space.*nothing was replaced"):  # the write itself fails
            t.put(big, "models/m.bin", check_space=False)
        target = tiny_disk / "board" / "models" / "m.bin"
        assert _sha(target) == _sha(small)  # the deployed version is intact
        assert not list(target.parent.glob("*.part"))  # and the space is given back
        assert t.put(small, "models/m.bin").skipped


# ---------------------------------------------------------------- board lock

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from edgeyolo.targets.inventory import Device
    from edgeyolo.targets.transport import BoardLock, SshTransport
    dev = Device(name="loopback", host="127.0.0.1", port=int(sys.argv[1]), key_file=sys.argv[2],
                 known_hosts=sys.argv[3], workdir=sys.argv[4], python=sys.executable, lock_file=sys.argv[5])
    with SshTransport(dev) as t, BoardLock(t, "held by the test", ttl=30):
        print("locked", flush=True)
        sys.stdin.readline()
    """
)


def test_second_client_is_refused_while_the_lock_is_held(device, transport):
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(device.port), device.key_file, device.known_hosts, device.workdir, device.lock_file],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BoardBusy, match=f"pid {holder.pid} .*held by the test"):
            BoardLock(transport, "second").acquire()
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=30)
    with BoardLock(transport, "after release") as lock:
        assert lock.held and "after release" in Path(device.lock_file).read_text()
    assert Path(device.lock_file).read_text() == ""  # released: no owner left in the lock file
    assert not (Path(device.workdir) / ".edgeyolo.lock").exists()


def test_a_silent_holder_frees_the_lock_after_ttl(device, transport):
    """A client that stops beating (here: SIGSTOP, the connection stays up) loses the lock after ttl."""
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER.replace("ttl=30", "ttl=2"), str(device.port), device.key_file,
         device.known_hosts, device.workdir, device.lock_file],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        os.kill(holder.pid, signal.SIGSTOP)
        with pytest.raises(BoardBusy):
            BoardLock(transport, "too early").acquire()
        time.sleep(4)
        with BoardLock(transport, "after the ttl") as lock:
            assert lock.held
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
