"""The board lock: one per board (not per workdir), freed at once when its owner on this machine is
gone, and a full disk said as such."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgeyolo.errors import BoardBusy, TargetError
from edgeyolo.targets.transport import BoardLock, SshTransport
from tests.targets.conftest import with_


def test_two_workdirs_on_one_board_share_its_lock(device, transport, tmp_path):
    """f6b95b9: the lock lived in the workdir, so the second workdir's client got it too
    (fails on ``pytest.raises(BoardBusy)``)."""
    other = with_(device, workdir=str(tmp_path / "another-workdir"))
    with BoardLock(transport, "bench in workdir one"), SshTransport(other) as t2, \
            pytest.raises(BoardBusy, match="bench in workdir one"):
        BoardLock(t2, "bench in workdir two").acquire()
    with SshTransport(other) as t2, BoardLock(t2, "now free") as lock:
        assert lock.held


def test_the_default_lock_is_board_wide():
    from edgeyolo.targets.inventory import Device

    a, b = Device(name="a", host="h", workdir="one"), Device(name="b", host="h", workdir="/srv/two")
    assert a.lock_file == b.lock_file == "/tmp/edgeyolo-board.lock"


def _local_holder(lock_file: str, owner: dict) -> subprocess.Popen:
    """A holder left on the board by a client whose connection is still up but whose process is gone."""
    from edgeyolo.targets.transport import _HOLDER

    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, lock_file, json.dumps(owner), "120"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().startswith("ACQUIRED")
    return proc


def test_a_lock_of_a_dead_process_of_this_machine_is_stale_at_once(device, transport, caplog):
    from edgeyolo.targets.transport import client_identity

    gone = subprocess.Popen(["true"])
    gone.wait()
    me = client_identity()
    holder = _local_holder(device.lock_file, {**me, "pid": gone.pid, "user": "me", "host": "here", "purpose": "deploy"})
    try:
        with caplog.at_level(logging.WARNING), BoardLock(transport, "redeploy") as lock:
            assert lock.held
        assert "process of this machine is gone" in caplog.text
        assert holder.wait(timeout=10) is not None
    finally:
        holder.kill()
    # the same dead pid on another machine (or another boot) is not ours to judge: busy
    for other in ({"boot_id": "another-boot"}, {"machine_id": "another-machine"}, {"pidns": 1}):
        holder = _local_holder(device.lock_file, {**me, "pid": gone.pid, **other, "purpose": "elsewhere"})
        try:
            with pytest.raises(BoardBusy, match="elsewhere"):
                BoardLock(transport, "second").acquire()
        finally:
            holder.kill()
            holder.wait()


@pytest.fixture
def full_disk(tmp_path):
    mount = tmp_path / "full"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True,
                          check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a 64 kB tmpfs to fake a full disk: {proc.stderr.strip()}")
    try:
        (mount / "board").mkdir()
        fd = os.open(mount / "filler", os.O_WRONLY | os.O_CREAT)
        try:  # fill it to the last byte
            while os.write(fd, b"\0" * 4096):
                pass
        except OSError:
            pass
        finally:
            os.close(fd)
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_board_disk_is_said_and_leaves_nothing(device, full_disk):
    """f6b95b9 (lock in the full workdir): "busy: another client holds its lock" and an empty
    .edgeyolo.lock folder left behind (fails on the ``match``)."""
    dev = with_(device, workdir=str(full_disk / "board"), lock_file=str(full_disk / "board" / "edgeyolo.lock"))
    before = sorted(p.name for p in full_disk.rglob("*"))
    with SshTransport(dev) as t, pytest.raises(TargetError, match="disk is full.*edgeyolo.lock") as exc:
        BoardLock(t, "deploy").acquire()
    assert not isinstance(exc.value, BoardBusy)
    assert sorted(p.name for p in full_disk.rglob("*")) == before  # nothing left behind
    assert not Path(dev.lock_file).exists()


def test_a_deploy_that_reconnects_takes_the_lock_again(device, transport, tmp_path, sshd):
    """The lock's holder goes with a dropped connection; after the reconnect the deploy holds the
    lock again until it finishes, then releases it."""
    from edgeyolo.targets.deploy import upload

    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(6 << 20))
    killed = []
    owners = []

    def kill_once(done: int, total: int) -> None:
        if done > total // 2 and not killed:
            killed.append(sshd.kill_sessions())
        owners.append(Path(device.lock_file).read_text())

    with BoardLock(transport, "deploy") as lock:
        report = upload(transport, [(src, "models/big.bin")], progress=kill_once, retries=2)
        assert lock.held and "deploy" in Path(device.lock_file).read_text()
    assert killed and report.uploads[0].resumed_from > 0
    assert Path(device.lock_file).read_text() == ""
