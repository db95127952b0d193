"""A user's Ctrl-C and a killed client, mid-upload, against the loopback board: the command ends at
once, says what resumes, and the next deploy resumes instead of finding the board busy."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from tests.targets.conftest import cli, write_inventory


def _sparse(path: Path, size: int) -> Path:
    with open(path, "wb") as fh:
        fh.truncate(size)
    return path


def _part(device, name: str) -> Path | None:
    folder = Path(device.workdir) / "models"
    parts = list(folder.glob(f".{name}.*.part")) if folder.is_dir() else []
    return parts[0] if parts else None


def _wait_for_part(proc, device, name: str, at_least: int, timeout: float = 120.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        part = _part(device, name)
        if part is not None and part.exists() and part.stat().st_size >= at_least:
            return part
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"the upload of {name} never reached {at_least} bytes")


def _catches(pid: int, sig: int) -> bool:
    """Whether a process has a handler for ``sig`` (neither ignored nor default), from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    return True  # pragma: no cover - no SigCgt line: cannot tell


def _interrupt_upload(device, tmp_path: Path, size: int) -> tuple[float, int, str]:
    """Ctrl-C a deploy mid-upload: (seconds from SIGINT to exit, exit code, stderr)."""
    src = _sparse(tmp_path / "big.bin", size)
    args = write_inventory(device, tmp_path / "devices.yaml")
    proc = cli("deploy", *args, str(src), cwd=tmp_path)
    _wait_for_part(proc, device, "big.bin", 8 << 20)
    assert _catches(proc.pid, signal.SIGINT), "the deploy does not handle SIGINT: the Ctrl-C below would be lost"
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    return time.monotonic() - sent, proc.returncode, err


def test_ctrl_c_mid_upload_exits_at_once_and_the_upload_resumes(device, tmp_path):
    """Ctrl-C mid-upload: the deploy ends within 5 s with code 130 and one line saying the upload
    resumes; the partial file stays and the next deploy resumes from it.

    This used to fail now and then with nothing on stderr (exit 0, or an exit after 6 s): the upload
    simply ran to its end because the deploy never saw the SIGINT. A test run started with SIGINT
    ignored (a background job of a non-interactive shell, nohup, some CI runners) passes SIG_IGN on
    to the deploy, and Python keeps an inherited SIG_IGN instead of installing its KeyboardInterrupt
    handler; that reproduces both failures every time. ``cli()`` now starts the command with
    Python's handler, as a user's foreground command has it, and the deploy is checked to catch
    SIGINT before the signal is sent. The deploy itself is right to keep an inherited SIG_IGN.

    f6b95b9: the interrupt lands inside paramiko; closing the SFTP file then waits for its
    pipelined writes (up to transfer_timeout) and the exit is a bare 130 (fails on ``"resume" in err``,
    and in 3 of 5 tries on the 5 s bound)."""
    seconds, code, err = _interrupt_upload(device, tmp_path, 1 << 30)  # ~10 s of upload: a loaded machine still interrupts it mid-way
    assert seconds <= 5.0, (seconds, err)
    assert code == 130
    assert "resume" in err and len(err.strip().splitlines()) == 1, err
    part = _part(device, "big.bin")
    assert part is not None and 0 < part.stat().st_size < 1 << 30  # resumable
    again = cli("deploy", *write_inventory(device, tmp_path / "devices.yaml"), str(tmp_path / "big.bin"), cwd=tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "resumed at" in out
    assert _part(device, "big.bin") is None


@pytest.mark.slow
def test_ctrl_c_mid_upload_of_a_large_file_five_times(device, tmp_path):
    for attempt in range(5):
        for p in (Path(device.workdir) / "models").glob(".*.part") if (Path(device.workdir) / "models").is_dir() else []:
            p.unlink()
        seconds, code, err = _interrupt_upload(device, tmp_path, 448 << 20)
        assert seconds <= 5.0 and code == 130 and "resume" in err, (attempt, seconds, err)


def test_killed_deploy_then_an_immediate_redeploy_resumes(device, tmp_path):
    """The same machine redeploys right after its deploy was SIGKILLed: not refused as busy.
    f6b95b9: "board 'loop' is busy: ... pid N ... holds its lock" for 120 s (fails on returncode 0)."""
    src = _sparse(tmp_path / "big.bin", 128 << 20)
    args = write_inventory(device, tmp_path / "devices.yaml")
    proc = cli("deploy", *args, str(src), cwd=tmp_path)
    _wait_for_part(proc, device, "big.bin", 8 << 20)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    again = cli("deploy", *args, str(src), cwd=tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "resumed at" in out and "busy" not in err
