"""A real OpenSSH server on loopback, playing the board: sshd -D with its own config, host key,
authorized key and pid file, started once per session. Tests that need it skip when sshd is absent."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, kind: str = "ed25519", passphrase: str = "") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", passphrase, "-C", "edgeyolo-test", "-f", str(path)], check=True)
    return path


def _children(pid: int) -> list[int]:
    """Every descendant of a process, from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


@dataclass
class Sshd:
    port: int
    root: Path
    host_key: Path
    client_key: Path
    known_hosts: Path
    proc: subprocess.Popen

    def kill_sessions(self) -> int:
        """Kill every per-connection sshd process (and what runs under it): a dropped session."""
        victims = _children(self.proc.pid)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(victims)


def _write_config(root: Path, port: int, host_key: Path, authorized: Path) -> Path:
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {root / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "MaxStartups 50",
                "MaxSessions 50",
                "LogLevel ERROR",
                "Subsystem sftp internal-sftp",
                "",
            ]
        )
    )
    return config


def _start_sshd(root: Path, client_pub: Path | None = None):
    """sshd -D on a free loopback port with its own host key; the client key (made here unless
    given) is authorized. Returns (Sshd, log file) or skips."""
    host_key = keygen(root / "host_ed25519")
    client_key = keygen(root / "client_ed25519") if client_pub is None else client_pub.with_suffix("")
    authorized = root / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    port = free_port()
    config = _write_config(root, port, host_key, authorized)
    log = open(root / "sshd.log", "wb")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"sshd exited at start: {(root / 'sshd.log').read_text()[-500:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            time.sleep(0.05)
    else:  # pragma: no cover
        proc.kill()
        pytest.skip("sshd did not start listening within 15 s")
    known = root / "known_hosts"
    pub = (root / "host_ed25519.pub").read_text().split()
    known.write_text(f"[127.0.0.1]:{port} {pub[0]} {pub[1]}\n")
    return Sshd(port, root, host_key, client_key, known, proc), log


def _stop_sshd(server: Sshd, log) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # pragma: no cover
        server.proc.kill()
    log.close()


def _require_sshd() -> None:
    if not Path(SSHD).is_file() or shutil.which("ssh-keygen") is None:
        pytest.skip(f"{SSHD} or ssh-keygen not found: install openssh-server to run the SSH transport tests")
    if os.geteuid() != 0:
        pytest.skip("the loopback board logs in as the current user via root-only sshd features; run as root")
    Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation directory


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Sshd:
    _require_sshd()
    server, log = _start_sshd(tmp_path_factory.mktemp("sshd"))
    yield server
    _stop_sshd(server, log)


@pytest.fixture(scope="session")
def sshd_jump(tmp_path_factory, sshd) -> Sshd:
    """A second loopback sshd (own host key, same client key) to reach the board through."""
    server, log = _start_sshd(tmp_path_factory.mktemp("sshd-jump"), sshd.client_key.with_suffix(".pub"))
    yield server
    _stop_sshd(server, log)


@pytest.fixture
def device(sshd, tmp_path):
    """A device entry for the loopback board with its own fresh workdir (absolute, under tmp_path)."""
    from edgeyolo.targets.inventory import Device

    known = tmp_path / "known_hosts"
    known.write_text(sshd.known_hosts.read_text())
    return Device(
        name="loopback",
        host="127.0.0.1",
        port=sshd.port,
        user="root",
        key_file=str(sshd.client_key),
        known_hosts=str(known),
        workdir=str(tmp_path / "board"),
        python=sys.executable,
        lock_file=str(tmp_path / "board.lock"),  # the board-wide default would make concurrent test runs collide
        connect_timeout=10.0,
        command_timeout=120.0,
        transfer_timeout=20.0,
    )


@pytest.fixture
def transport(device):
    from edgeyolo.targets.transport import SshTransport

    t = SshTransport(device)
    yield t
    t.close()


def with_(device, **changes):
    return replace(device, **changes)


INVENTORY_FIELDS = ("target", "host", "port", "user", "key_file", "known_hosts", "workdir", "python")


def write_inventory(device, path: Path, **changes) -> list[str]:
    """devices.yaml with the loopback board as 'loop' (the board-wide default lock file, as a user
    has it); the CLI arguments that select it."""
    d = replace(device, **changes)
    path.write_text(json.dumps({"devices": {"loop": {k: getattr(d, k) for k in INVENTORY_FIELDS}}}))  # JSON is YAML
    return ["--inventory", str(path), "--device", "loop"]


def cli(*args: str, cwd: Path, **kwargs) -> subprocess.Popen:
    """``edgeyolo ARGS`` in a child process (to be interrupted or killed like a user's).

    The child handles SIGINT as a command a user runs in the foreground of a terminal does, whatever
    the test runner inherited: a test run started as a background job of a non-interactive shell
    (``cmd &``), under nohup or by some CI runners has SIGINT set to SIG_IGN, children inherit that,
    and Python then keeps ignoring it (it installs its KeyboardInterrupt handler only over SIG_DFL),
    so a test's Ctrl-C would never reach the command."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from edgeyolo.cli.app import main; sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)
