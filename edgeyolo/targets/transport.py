"""How edgeyolo talks to a board: a small command + file-transfer protocol, and its SSH driver.

Board logic (deploy, bench, doctor, trtexec, xdputil) is written against :class:`Transport` only,
as labgrid's drivers are written against its protocols; :class:`SshTransport` binds that protocol
to paramiko. paramiko is imported inside the driver, never at package import.

Guarantees of the SSH driver, each with a fault test in tests/targets:

* host keys: checked against known_hosts as OpenSSH keeps it (hashed and ``[host]:port`` names,
  ``@revoked`` keys refused, ``@cert-authority`` lines skipped, unknown key types kept); an unknown
  or changed key is refused unless the caller explicitly trusts it, which appends it to the file
  under a lock (every other line and the mode are kept); the jump hosts' keys alike;
* the device's host may be an alias of ``~/.ssh/config`` (HostName, Port, User, IdentityFile,
  ProxyJump through direct-tcpip channels); keys from ssh-agent are offered;
* every remote command is built from an argv list, each item ``shlex.quote``-d;
* timeouts on connect, on every command (the remote process is stopped when it fires) and on
  transfers (no progress for ``transfer_timeout`` seconds);
* uploads are content-addressed: an unchanged file costs one hash query and 0 bytes; a new one is
  written under a temporary name, verified by sha256 and renamed into place, so the target name
  never holds a partial file; after a dropped connection the next upload appends to the partial
  once its prefix hash matches the local file;
* a board-wide lock (an flock on ``lock_file``, held by a process fed heartbeats over its stdin)
  so two clients never share a board, whatever their workdir: it goes with a client that dies,
  expires when the heartbeats stop, and is broken at once when its owner is a dead process of this
  same machine (machine id + boot id + pid namespace + pid);
* an interrupt (Ctrl-C) drops the connection at once instead of waiting for the pipelined writes;
  the partial upload stays and the next deploy resumes it;
* secrets (passphrases, passwords) are read from the environment at connect time and are never
  logged or put in a message.
"""
from __future__ import annotations

import base64
import getpass
import hashlib
import json
import logging
import os
import posixpath
import select
import shlex
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeyolo.errors import (
    AuthFailed,
    BoardBusy,
    ConnectionFailed,
    HostKeyError,
    Interrupted,
    RemoteCommandError,
    RemoteTimeout,
    TargetError,
)
from edgeyolo.fileio import sha256_file as sha256_of  # noqa: F401 - part of this module's API
from edgeyolo.targets.inventory import Device
from edgeyolo.targets.knownhosts import KnownHosts, Verdict, add_host_key, host_name
from edgeyolo.targets.sshconfig import Hop, resolve

log = logging.getLogger(__name__)

LineSink = Callable[[str], None]
Progress = Callable[[int, int], None]

CHUNK = 1 << 20
_PID_MARK = "__edgeyolo_pid__"
EOF_GRACE_S = 2.0  # how long a command's output may trail its exit status


def quote_argv(argv: Sequence[object]) -> str:
    """One shell word per item, whatever it contains (spaces, quotes, ``$(...)``, ``;``)."""
    return " ".join(shlex.quote(str(a)) for a in argv)


@dataclass(frozen=True)
class CommandResult:
    cmd: str
    code: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Upload:
    """What one ``put`` did: ``sent`` bytes went over the wire (0 when the board already had it)."""

    local: str
    remote: str
    size: int
    sent: int
    sha256: str
    skipped: bool = False
    resumed_from: int = 0
    seconds: float = 0.0


class Transport(ABC):
    """Run commands on a board and move files to and from it. Relative remote paths (and the
    working directory of commands) are the device's workdir."""

    device: Device
    on_reconnect: list[Callable[[], None]]  # called after reconnect() (a lock re-taken)

    @abstractmethod
    def run(
        self,
        argv: Sequence[object],
        timeout: float | None = None,
        check: bool = True,
        on_stderr: LineSink | None = None,
        cwd: str | None = "",
        heartbeat: float | None = None,
    ) -> CommandResult:
        """Run ``argv`` (quoted item by item); raise RemoteCommandError on a non-zero exit when
        ``check``, RemoteTimeout after ``timeout`` seconds (the remote process is stopped). With
        ``heartbeat``, stdin stays open and gets a newline every that many seconds, for a command
        that stops itself when they cease (the agent's --watchdog)."""

    @abstractmethod
    def put(self, local: str | Path, remote: str, progress: Progress | None = None, check_space: bool = True) -> Upload:
        """Upload one file (skipped when unchanged; resumed after a drop)."""

    def put_many(
        self, pairs: Sequence[tuple[str | Path, str]], progress: Progress | None = None, check_space: bool = True
    ) -> list[Upload]:
        """Upload several files; drivers override this to batch their round trips."""
        return [self.put(local, remote, progress, check_space) for local, remote in pairs]

    @abstractmethod
    def get(self, remote: str, local: str | Path) -> Path:
        """Download one file to ``local`` (written atomically)."""

    @abstractmethod
    def read_bytes(self, remote: str) -> bytes | None:
        """A remote file's content, or None when it does not exist."""

    def spawn(self, argv: Sequence[object], cwd: str | None = None) -> RemoteProcess:
        """Start a command whose stdin stays open (a lock holder, a watched agent)."""
        raise TargetError(f"{self.device.name}: this transport cannot keep a command's stdin open")

    def close(self) -> None:
        """Release the connection."""

    def abort(self) -> None:
        """Drop the connection at once (an interrupt); the default is a plain close."""
        self.close()

    def reconnect(self) -> None:
        """Open a fresh connection after a drop (uploads then resume from their partial files)."""
        raise ConnectionFailed(f"{self.device.name}: this transport cannot reconnect")

    def remote_path(self, path: str) -> str:
        return path if posixpath.isabs(path) else posixpath.join(self.device.remote_workdir, path)

    def __enter__(self) -> "Transport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RemoteProcess:
    """A command on the board whose stdin stays open; reads never block longer than asked."""

    def __init__(self, chan: Any):
        self.chan = chan
        self._out = bytearray()
        self._err = bytearray()

    def _pump(self, wait: float) -> bool:
        """Take what arrived (waiting up to ``wait`` s for something); False once stdout is at EOF."""
        c = self.chan
        if not (c.recv_ready() or c.recv_stderr_ready() or c.eof_received or c.closed):
            select.select([c], [], [], wait)
        while c.recv_ready():
            self._out += c.recv(1 << 16)
        while c.recv_stderr_ready():
            self._err += c.recv_stderr(1 << 16)
        return not (c.eof_received or c.closed) or c.recv_ready()

    def readline(self, timeout: float) -> str | None:
        """The next stdout line, or None at EOF or after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._out:
            if not self._pump(0.1) and b"\n" not in self._out or time.monotonic() > deadline:
                return None
        line, _, rest = bytes(self._out).partition(b"\n")
        self._out = bytearray(rest)
        return line.decode("utf-8", "replace")

    def read_rest(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while self._pump(0.1) and time.monotonic() < deadline:
            pass
        text, self._out = bytes(self._out), bytearray()
        return text.decode("utf-8", "replace")

    def stderr_text(self, timeout: float = 2.0) -> str:
        self.read_rest(timeout)
        return self._err.decode("utf-8", "replace")

    def send(self, data: bytes) -> bool:
        try:
            self.chan.sendall(data)
            return True
        except Exception:  # noqa: BLE001 - a dead channel raises OSError, EOFError or SSHException
            return False

    def wait(self, timeout: float) -> int | None:
        deadline = time.monotonic() + timeout
        while not self.chan.exit_status_ready():
            if time.monotonic() > deadline:
                return None
            self._pump(0.1)
        return self.chan.recv_exit_status()

    def close(self) -> None:
        try:
            self.chan.close()
        except Exception:  # noqa: BLE001 - closing a dead channel may raise anything
            pass


# ------------------------------------------------------------------------------------ host keys


def key_fingerprint(key: Any) -> str:
    """OpenSSH's ``SHA256:...`` fingerprint of a paramiko public key."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(key.asbytes()).digest()).decode().rstrip("=")


known_hosts_name = host_name


def record_host_key(path: Path, host: str, port: int, key: Any, replace: bool = False) -> None:
    """Add the host's key to a known_hosts file: appended under a lock, every other byte kept."""
    add_host_key(path, host_name(host, port), key.get_name(), key.asbytes(), replace=replace)


class _HostKeyVerdict(Exception):
    def __init__(self, key: Any, verdict: Verdict):
        self.key = key
        self.verdict = verdict


def _policy(known: KnownHosts, name: str) -> Any:
    """Every key paramiko sees goes through here (the client itself is given no known keys), so
    the check is ours: revoked, known, changed or unknown."""
    import paramiko

    class Check(paramiko.MissingHostKeyPolicy):
        def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
            verdict = known.check(name, key.asbytes())
            if verdict.status != "known":
                raise _HostKeyVerdict(key, verdict)

    return Check()


# the server host key algorithms that present a key of a known_hosts key type
_ALGORITHMS = {"ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256", "ssh-rsa")}


def _fast_transport(prefer_keys: Sequence[str] = ()) -> Callable[..., Any]:
    """A paramiko transport factory preferring AES-GCM when the server offers it (its AEAD path
    skips the separate HMAC and roughly doubles upload speed, bench deploy-throughput) and asking
    for a host key of a type known_hosts holds for the host, as OpenSSH does."""

    def make(sock: Any, **kwargs: Any) -> Any:
        import paramiko

        t = paramiko.Transport(sock, **kwargs)
        options = t.get_security_options()
        offered = tuple(options.ciphers)
        options.ciphers = tuple(c for c in offered if "gcm" in c) + tuple(c for c in offered if "gcm" not in c)
        wanted = [a for k in prefer_keys for a in _ALGORITHMS.get(k, (k,))]
        types = tuple(options.key_types)
        options.key_types = tuple(a for a in wanted if a in types) + tuple(a for a in types if a not in wanted)
        return t

    return make


# ------------------------------------------------------------------------------------ SSH driver


class SshTransport(Transport):
    """The board over SSH (paramiko): commands on exec channels, files over SFTP. The device's host
    may be an alias of ``~/.ssh/config``, reached through its ProxyJump hosts."""

    def __init__(self, device: Device, trust_new_host_key: bool = False, on_stderr: LineSink | None = None):
        self.device = device
        self.trust_new_host_key = trust_new_host_key
        self.on_stderr = on_stderr
        self._client: Any = None
        self._jumps: list[Any] = []
        self._sftp: Any = None
        self.host_key_fingerprint = ""
        self.on_reconnect: list[Callable[[], None]] = []
        self.hop, self.jump_hops = resolve(device)
        self._connect()

    # -------------------------------------------------------------- connection

    def _connect(self) -> None:
        sock = None
        try:
            for k, hop in enumerate(self.jump_hops):
                client = self._open(hop, sock, role="jump host")
                self._jumps.append(client)
                nxt = (self.jump_hops + [self.hop])[k + 1]
                sock = self._tunnel(client, hop, nxt)
            self._client = self._open(self.hop, sock, role="")
        except BaseException:
            self.close()
            raise
        t = self._client.get_transport()
        self.host_key_fingerprint = key_fingerprint(t.get_remote_server_key())
        t.set_keepalive(15)
        self.run(["mkdir", "-p", self.device.remote_workdir], timeout=self.device.connect_timeout + 10, cwd=None)

    def _tunnel(self, client: Any, hop: Hop, nxt: Hop) -> Any:
        import paramiko

        try:
            return client.get_transport().open_channel(
                "direct-tcpip", (nxt.host, nxt.port), ("127.0.0.1", 0), timeout=self.device.connect_timeout
            )
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectionFailed(
                f"{self.device.name}: the jump host {hop.alias} ({hop.address}) could not open a connection to "
                f"{nxt.host}:{nxt.port} ({exc or type(exc).__name__}); check ProxyJump / HostName in the ssh config"
            ) from None

    def _open(self, hop: Hop, sock: Any, role: str) -> Any:
        """A logged-in SSHClient to one hop, its host key checked against known_hosts."""
        import paramiko

        d = self.device
        known_path = Path(d.known_hosts).expanduser()
        name = host_name(hop.host, hop.port)
        what = f"{d.name}" + (f" (its {role} {hop.alias})" if role else "")
        for attempt in range(2):
            known = KnownHosts([known_path])
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(_policy(known, name))
            try:
                self._login(client, hop, sock, _fast_transport(known.key_types(name)), what)
                return client
            except _HostKeyVerdict as exc:
                client.close()
                key, verdict = exc.key, exc.verdict
                fp, kind = key_fingerprint(key), key.get_name()
                if verdict.status == "revoked":
                    raise HostKeyError(
                        f"{what} ({hop.host}:{hop.port}) offers the host key {kind} {fp}, which {known_path} marks "
                        f"@revoked (line {verdict.expected[0].line}); refusing it. Give the board a new host key"
                    ) from None
                if not self.trust_new_host_key or attempt:
                    if verdict.status == "changed":
                        old = ", ".join(f"{e.fingerprint} ({e.key_type}, line {e.line})" for e in verdict.expected)
                        raise HostKeyError(
                            f"the host key of {what} ({hop.host}:{hop.port}) CHANGED: expected {old} of {known_path}, "
                            f"got {fp} ({kind}). If the board was reflashed or its keys regenerated, verify the new "
                            f"fingerprint on the board and rerun with --trust-new-host-key (replaces that entry); "
                            f"otherwise someone may be intercepting the connection"
                        ) from None
                    raise HostKeyError(
                        f"{what} ({hop.host}:{hop.port}) offers an unknown host key {kind} {fp}; check it on the "
                        f"board (`ssh-keygen -lf /etc/ssh/ssh_host_{kind.split('-')[-1]}_key.pub`) and rerun with "
                        f"--trust-new-host-key to record it in {known_path}"
                    ) from None
                changed = verdict.status == "changed"
                log.warning("%s host key of %s: %s %s (in %s)", "replacing changed" if changed else "trusting new",
                            what, kind, fp, known_path)
                record_host_key(known_path, hop.host, hop.port, key, replace=changed)
                if sock is not None:  # the tunnel is spent with the failed attempt: open another
                    sock = self._tunnel(self._jumps[-1], self.jump_hops[len(self._jumps) - 1], hop)
        raise AssertionError("unreachable")  # pragma: no cover

    def _keys(self, hop: Hop, what: str) -> list[Any]:
        """The hop's private keys, loaded here so that a missing file, a missing passphrase and a
        wrong one each get their own message. IdentityFiles of the ssh config that do not exist
        are skipped, as ssh skips them (the key may live in ssh-agent only)."""
        import paramiko

        d = self.device
        explicit = d.key_file is not None and hop is self.hop
        keys = []
        for path in hop.key_files:
            p = Path(path)
            if not p.is_file():
                if explicit:
                    raise AuthFailed(f"{what}: the key file {p} (key_file in the inventory) does not exist; fix key_file")
                continue
            passphrase = d.secret("passphrase")
            try:
                keys.append(paramiko.PKey.from_path(str(p), passphrase.encode() if passphrase is not None else None))
            except (paramiko.PasswordRequiredException, TypeError):  # cryptography: TypeError, no password given
                if d.passphrase_env:
                    raise AuthFailed(
                        f"{what}: the key {p} is passphrase-protected and the variable {d.passphrase_env} named by "
                        f"passphrase_env is not set; export {d.passphrase_env} before running edgeyolo"
                    ) from None
                raise AuthFailed(
                    f"{what}: the key {p} is passphrase-protected; export its passphrase in an environment variable "
                    f"and name it in the inventory (passphrase_env: VAR)"
                ) from None
            except (paramiko.SSHException, ValueError) as exc:
                if passphrase is not None:
                    raise AuthFailed(
                        f"{what}: the passphrase in ${d.passphrase_env} does not open the key {p} (wrong passphrase)"
                    ) from None
                raise AuthFailed(f"{what}: cannot read the key {p}: {exc}") from None
            except OSError as exc:
                raise AuthFailed(f"{what}: cannot read the key {p}: {exc.strerror or exc}") from None
        return keys

    def _login(self, client: Any, hop: Hop, sock: Any, factory: Callable[..., Any], what: str) -> None:
        import paramiko

        d = self.device
        password = d.secret("password") if hop is self.hop else None
        keys = self._keys(hop, what)
        timeout = d.connect_timeout
        try:
            client.connect(
                hop.host,
                port=hop.port,
                username=hop.user,
                pkey=keys[0] if keys else None,
                password=password,
                sock=sock,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                channel_timeout=timeout,
                allow_agent=password is None,
                look_for_keys=not hop.key_files and password is None,
                transport_factory=factory,
            )
        except (_HostKeyVerdict, paramiko.BadHostKeyException):
            raise
        except paramiko.AuthenticationException:
            client.close()
            how = (f"key {hop.key_files[0]}" if hop.key_files else "password" if password else "the default keys") + " and ssh-agent"
            raise AuthFailed(
                f"{what}: {hop.address} refused {how}; add the public key to ~{hop.user}/.ssh/authorized_keys there "
                f"(ssh-copy-id -p {hop.port} {hop.user}@{hop.host}) or fix key_file / user in the inventory"
            ) from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise ConnectionFailed(
                f"{what}: no answer from {hop.host}:{hop.port} within {timeout:g} s; is the board powered and on the network?"
            ) from None
        except socket.gaierror as exc:
            client.close()
            raise ConnectionFailed(
                f"{what}: cannot resolve host '{hop.host}' ({exc.strerror}); fix host in the inventory or add a Host "
                f"entry with a HostName to {d.ssh_config or '~/.ssh/config'}"
            ) from None
        except paramiko.ssh_exception.NoValidConnectionsError:
            client.close()
            raise ConnectionFailed(
                f"{what}: connection refused by {hop.host}:{hop.port}; is sshd running there and is the port right?"
            ) from None
        except (paramiko.SSHException, OSError, EOFError) as exc:
            client.close()
            raise ConnectionFailed(f"{what}: SSH connection to {hop.host}:{hop.port} failed: {exc or type(exc).__name__}") from None

    def reconnect(self) -> None:
        self.close()
        self._connect()
        for hook in list(self.on_reconnect):
            hook()

    @property
    def connected(self) -> bool:
        t = self._client.get_transport() if self._client is not None else None
        return t is not None and t.is_active()

    def _transport(self) -> Any:
        if not self.connected:
            raise ConnectionFailed(f"{self.device.name}: the SSH connection was lost; rerun the command (uploads resume)")
        return self._client.get_transport()

    def abort(self) -> None:
        """Drop the connection at once, without any goodbye: what an interrupt needs. A graceful
        close waits for the server to answer every pipelined write first (up to the transfer
        timeout); shutting the socket down makes every waiter fail immediately instead."""
        for client in [self._client, *reversed(self._jumps)]:
            t = client.get_transport() if client is not None else None
            if t is not None and t.sock is not None:
                try:
                    t.sock.shutdown(socket.SHUT_RDWR)
                except (OSError, AttributeError):
                    pass
        self._sftp = None
        self.close()

    def close(self) -> None:
        for thing in (self._sftp, self._client, *reversed(self._jumps)):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing a dead connection may raise anything
                    pass
        self._sftp = self._client = None
        self._jumps = []

    # -------------------------------------------------------------- commands

    def run(
        self,
        argv: Sequence[object],
        timeout: float | None = None,
        check: bool = True,
        on_stderr: LineSink | None = None,
        cwd: str | None = "",
        heartbeat: float | None = None,
    ) -> CommandResult:
        cmd = quote_argv(argv)
        workdir = self.device.remote_workdir if cwd == "" else cwd
        # the shell reports its pid, then becomes the command: that pid is what a timeout stops
        prefix = f"echo {_PID_MARK}$$; " + (f"cd {shlex.quote(workdir)} && " if workdir else "")
        limit = self.device.command_timeout if timeout is None else timeout
        sink = on_stderr or self.on_stderr
        log.debug("%s$ %s", self.device.name, cmd)
        try:
            chan = self._transport().open_session(timeout=self.device.connect_timeout)
            chan.exec_command(prefix + "exec " + cmd)
            if not heartbeat:
                chan.shutdown_write()
        except (OSError, EOFError) as exc:
            raise ConnectionFailed(f"{self.device.name}: could not start a command: {exc}") from None
        except Exception as exc:  # paramiko.SSHException and friends
            raise ConnectionFailed(f"{self.device.name}: could not start a command: {exc}") from None
        out, err, pending = bytearray(), bytearray(), bytearray()
        deadline = time.monotonic() + limit
        beat = time.monotonic()
        exited = 0.0
        try:
            while True:
                if heartbeat and time.monotonic() - beat >= heartbeat:
                    beat = time.monotonic()
                    try:  # the command's watchdog reads these; a closed stdin tells it we are gone
                        chan.sendall(b"\n")
                    except (OSError, EOFError):
                        pass
                ready = chan.recv_ready() or chan.recv_stderr_ready() or (chan.exit_status_ready() and chan.eof_received)
                if not ready:
                    select.select([chan], [], [], 0.05)  # wakes on stdout data and on EOF
                while chan.recv_ready():
                    out += chan.recv(1 << 16)
                while chan.recv_stderr_ready():
                    pending += chan.recv_stderr(1 << 16)
                    *lines, rest = pending.split(b"\n")
                    pending = bytearray(rest)
                    for line in lines:
                        err += line + b"\n"
                        self._emit(line.decode("utf-8", "replace"), sink)
                if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                    # sshd may send the exit status before the last of stderr: the end is the EOF, which a
                    # background child holding the pipes open can delay; past a short grace, stop waiting
                    exited = exited or time.monotonic()
                    if chan.eof_received or chan.closed or time.monotonic() - exited > EOF_GRACE_S:
                        break
                if (chan.closed and not chan.exit_status_ready()) or not self.connected:
                    raise ConnectionFailed(f"{self.device.name}: the connection dropped while running: {cmd}")
                if time.monotonic() > deadline:
                    pid = _pid_of(out)
                    self._stop(pid)
                    raise RemoteTimeout(
                        f"{self.device.name}: `{cmd}` did not finish within {limit:g} s and was stopped on the board "
                        f"(pid {pid}); give it more time (--timeout / command_timeout in the inventory)"
                    )
            code = chan.recv_exit_status()
        except KeyboardInterrupt:
            # closing the channel closes the command's stdin and pipes on the board: a command with
            # a watchdog (the agent) stops at once; the connection is dropped without waiting
            self.abort()
            raise
        finally:
            chan.close()
        if pending:
            err += pending
            self._emit(pending.decode("utf-8", "replace"), sink)
        stdout = out.decode("utf-8", "replace")
        first, _, rest = stdout.partition("\n")
        if first.startswith(_PID_MARK):
            stdout = rest
        result = CommandResult(cmd, code, stdout, err.decode("utf-8", "replace"))
        if check and code != 0:
            hint = "killed by a signal on the board" if code == -1 else ""
            # stderr already went to the screen line by line: the error keeps its last line only
            raise RemoteCommandError(cmd, code, result.stderr, hint, shown=sink is not None)
        return result

    def spawn(self, argv: Sequence[object], cwd: str | None = None) -> RemoteProcess:
        """Start ``argv`` with its stdin kept open (a lock holder, a watched agent)."""
        cmd = quote_argv(argv)
        prefix = f"cd {shlex.quote(cwd)} && " if cwd else ""
        try:
            chan = self._transport().open_session(timeout=self.device.connect_timeout)
            chan.exec_command(prefix + "exec " + cmd)
        except Exception as exc:  # noqa: BLE001 - OSError, EOFError, paramiko.SSHException
            raise ConnectionFailed(f"{self.device.name}: could not start a command: {exc or type(exc).__name__}") from None
        return RemoteProcess(chan)

    def _emit(self, line: str, sink: LineSink | None) -> None:
        log.info("[%s] %s", self.device.name, line)
        if sink is not None:
            sink(line)

    def _stop(self, pid: int | None) -> None:
        """Stop a timed-out command: TERM, then KILL after a grace period."""
        if pid is None:
            return
        script = 'kill -TERM "$1" 2>/dev/null || exit 0; i=0; while kill -0 "$1" 2>/dev/null && [ $i -lt 20 ]; do sleep 0.1; i=$((i+1)); done; kill -KILL "$1" 2>/dev/null; exit 0'
        try:
            self.run(["sh", "-c", script, "sh", pid], timeout=10, check=False, cwd=None)
        except TargetError as exc:
            log.warning("%s: could not stop pid %s after a timeout: %s", self.device.name, pid, exc)

    # -------------------------------------------------------------- files

    def sftp(self) -> Any:
        import paramiko

        if self._sftp is None or self._sftp.sock.closed:
            # a large window keeps the pipeline full; packets stay at the 32 KiB every server accepts
            self._sftp = paramiko.SFTPClient.from_transport(self._transport(), window_size=1 << 26, max_packet_size=1 << 15)
        self._sftp.get_channel().settimeout(self.device.transfer_timeout)
        return self._sftp

    _PROBE = (
        "import hashlib,json,os,sys\n"
        "req=json.loads(sys.argv[1]);out={'hashes':{},'space':{}}\n"
        "for d in req['mkdir']:\n"
        "    if not os.path.isdir(d):os.makedirs(d)\n"
        "for p in req['hash']:\n"
        "    try:\n"
        "        h=hashlib.sha256()\n"
        "        with open(p,'rb') as f:\n"
        "            for b in iter(lambda:f.read(1<<20),b''):h.update(b)\n"
        "        out['hashes'][p]=[os.path.getsize(p),h.hexdigest()]\n"
        "    except (IOError,OSError):out['hashes'][p]=None\n"
        "for d in req['space']:\n"
        "    st=os.statvfs(d);out['space'][d]=[st.f_bavail*st.f_frsize,os.stat(d).st_dev]\n"
        "out['removed']=[];seen={}\n"
        "for keep in (req['hash'] if req.get('stale') else []):\n"
        "    d,n=os.path.split(keep)\n"
        "    if not (n.startswith('.') and n.endswith('.part')):continue\n"
        "    head=n[:-len('.part')].rsplit('.',1)[0]+'.'\n"
        "    if d not in seen:seen[d]=os.listdir(d) if os.path.isdir(d) else []\n"
        "    for m in seen[d]:\n"
        "        p=os.path.join(d,m)\n"
        "        if m.startswith(head) and m.endswith('.part') and len(m)==len(n) and m!=n and os.path.exists(p):\n"
        "            try:\n"
        "                s=os.path.getsize(p);os.remove(p);out['removed'].append([p,s])\n"
        "            except OSError:pass\n"
        "print(json.dumps(out))\n"
    )

    def probe(
        self, paths: Sequence[str] = (), mkdir: Sequence[str] = (), space: Sequence[str] = (), stale: bool = False,
    ) -> dict[str, Any]:
        """One round trip (the board's python) that creates folders, hashes files (size, sha256; None
        when missing) and reports free bytes + filesystem id of folders. With ``stale``, each
        ``.name.<digest>.part`` among ``paths`` removes its siblings of other digests: partials of
        another version of that file, which can never be resumed."""
        request = json.dumps({"mkdir": list(mkdir), "hash": list(paths), "space": list(space), "stale": stale})
        res = self.run([self.device.python, "-c", self._PROBE, request], timeout=self.device.command_timeout, cwd=None)
        data = json.loads(res.stdout)
        data["hashes"] = {p: (tuple(v) if v else None) for p, v in data["hashes"].items()}
        return data

    def remote_hashes(self, paths: Sequence[str]) -> dict[str, tuple[int, str] | None]:
        """(size, sha256) of each remote file, None when missing: one round trip for all of them."""
        return self.probe(paths)["hashes"]

    def free_bytes(self, folder: str) -> int | None:
        try:
            return int(self.probe(space=[folder])["space"][folder][0])
        except (TargetError, KeyError, ValueError):
            return None

    def put(self, local: str | Path, remote: str, progress: Progress | None = None, check_space: bool = True) -> Upload:
        return self.put_many([(local, remote)], progress, check_space)[0]

    def put_many(
        self, pairs: Sequence[tuple[str | Path, str]], progress: Progress | None = None, check_space: bool = True
    ) -> list[Upload]:
        """Upload files with a constant number of round trips: one probe (mkdir, hashes, free space)
        and one verification for the lot, however many files (an eval set is thousands of images)."""
        items = []
        for local, remote in pairs:
            local = Path(local)
            digest = sha256_of(local)
            final = self.remote_path(remote)
            folder = posixpath.dirname(final) or "."
            part = posixpath.join(folder, f".{posixpath.basename(final)}.{digest[:16]}.part")
            items.append({"local": local, "size": local.stat().st_size, "sha": digest, "final": final, "folder": folder, "part": part})
        if not items:
            return []
        # every path here is absolute or relative to the login directory, as SFTP sees them
        folders = sorted({i["folder"] for i in items})
        # partials of another version of these files can never be resumed: they only take space
        state = self.probe([i["final"] for i in items] + [i["part"] for i in items], mkdir=folders, space=folders, stale=True)
        for path, size in state.get("removed", []):
            log.info("%s: removed the stale partial upload %s (%d bytes)", self.device.name, path, size)
        have = state["hashes"]
        uploads: dict[int, Upload] = {}
        todo = []
        for k, i in enumerate(items):
            if have[i["final"]] == (i["size"], i["sha"]):
                uploads[k] = Upload(str(i["local"]), i["final"], i["size"], 0, i["sha"], skipped=True)
                continue
            i["offset"] = 0
            old = have[i["part"]]
            if old is not None and 0 < old[0] <= i["size"] and sha256_of(i["local"], old[0]) == old[1]:
                i["offset"] = old[0]
                log.info("%s: resuming %s at byte %d of %d", self.device.name, i["final"], old[0], i["size"])
            todo.append((k, i))
        if check_space and todo:
            need: dict[int, int] = {}  # bytes still to send per filesystem
            for _, i in todo:
                fs = state["space"][i["folder"]][1]
                need[fs] = need.get(fs, 0) + i["size"] - i["offset"]
            for folder, (free, fs) in state["space"].items():
                if free < need.get(fs, 0):
                    raise TargetError(
                        f"{self.device.name}: not enough space on the board: the upload needs {need[fs] / 1e6:.1f} MB, "
                        f"{free / 1e6:.1f} MB are free in {folder}; free space there or point workdir elsewhere"
                    )
        for _, i in todo:
            t0 = time.monotonic()
            i["sent"] = self._write(i["local"], i["part"], i["offset"], i["size"], progress)
            i["seconds"] = time.monotonic() - t0
        got = self.remote_hashes([i["part"] for _, i in todo]) if todo else {}
        for k, i in todo:
            if got[i["part"]] != (i["size"], i["sha"]):
                self._bad_upload(i, got[i["part"]])
            try:
                self.sftp().posix_rename(i["part"], i["final"])
            except OSError as exc:
                raise TargetError(f"{self.device.name}: could not move the verified upload into {i['final']}: {exc}") from None
            uploads[k] = Upload(str(i["local"]), i["final"], i["size"], i["sent"], i["sha"], resumed_from=i["offset"], seconds=i["seconds"])
        return [uploads[k] for k in range(len(items))]

    def _bad_upload(self, i: dict[str, Any], got: tuple[int, str] | None) -> None:
        # pipelined SFTP writes may report a failed write (ENOSPC) only as a short or wrong file
        free = self.free_bytes(i["folder"])
        self.run(["rm", "-f", i["part"]], check=False, cwd=None)  # a partial that cannot be trusted only takes space
        if got is not None and got[0] < i["size"] and free is not None and free < CHUNK:
            raise TargetError(
                f"{self.device.name}: the board ran out of disk space writing {i['local'].name} ({free / 1e3:.0f} kB "
                f"free in {i['folder']}); nothing was replaced. Free space or point workdir elsewhere"
            )
        raise TargetError(f"{self.device.name}: {i['final']} arrived corrupted (sha256 mismatch); nothing was replaced, rerun the deploy")

    def _write(self, local: Path, part: str, offset: int, size: int, progress: Progress | None) -> int:
        import paramiko

        sent = 0
        sftp = self.sftp()
        dst = None
        src = open(local, "rb")  # noqa: SIM115 - closed in finally
        try:
            # not a `with`: on an interrupt the remote file must not be closed gracefully, which
            # waits for the server to acknowledge every pipelined write (up to transfer_timeout)
            dst = sftp.open(part, "r+b" if offset else "wb")
            dst.set_pipelined(True)
            if offset:
                dst.seek(offset)
                src.seek(offset)
            while True:
                block = src.read(CHUNK)
                if not block:
                    break
                dst.write(block)
                sent += len(block)
                if progress is not None:
                    progress(offset + sent, size)
            dst.close()  # waits for the acknowledgements: write errors (ENOSPC) surface here
        except KeyboardInterrupt:
            if dst is not None:
                dst._closed = True  # nothing more goes to a connection being dropped, not even from __del__
            self.abort()
            raise Interrupted(
                f"{self.device.name}: interrupted while uploading {local.name} ({offset + sent} of {size} bytes sent); "
                f"the partial file stays on the board and the next deploy resumes the upload from it"
            ) from None
        except socket.timeout:
            self.abort()
            raise RemoteTimeout(
                f"{self.device.name}: upload of {local.name} stalled for {self.device.transfer_timeout:g} s after "
                f"{offset + sent} of {size} bytes; the partial file is kept and the next deploy resumes it"
            ) from None
        except (EOFError, paramiko.SSHException, ConnectionError) as exc:
            self.abort()
            raise ConnectionFailed(
                f"{self.device.name}: connection lost while uploading {local.name} after {offset + sent} of {size} "
                f"bytes ({exc or type(exc).__name__}); rerun the deploy to resume from the partial file"
            ) from None
        except OSError as exc:
            if not self.connected:
                self.abort()
                raise ConnectionFailed(
                    f"{self.device.name}: connection lost while uploading {local.name} after {offset + sent} of "
                    f"{size} bytes; rerun the deploy to resume from the partial file"
                ) from None
            if dst is not None:
                try:
                    dst.close()
                except (OSError, EOFError, paramiko.SSHException):
                    pass
            free = self.free_bytes(posixpath.dirname(part) or ".")
            self.run(["rm", "-f", part], check=False, cwd=None)  # a partial that cannot grow only takes space
            if free is not None and free < size - offset - sent + CHUNK:
                raise TargetError(
                    f"{self.device.name}: the board ran out of disk space writing {local.name} ({free / 1e3:.0f} kB "
                    f"free next to {part}); nothing was replaced. Free space or point workdir elsewhere"
                ) from None
            raise TargetError(f"{self.device.name}: writing {part} failed: {exc}; nothing was replaced") from None
        finally:
            src.close()
        return sent

    def get(self, remote: str, local: str | Path) -> Path:
        local = Path(local)
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f".{local.name}.{os.getpid()}.part")
        try:
            self.sftp().get(self.remote_path(remote), str(tmp))
            os.replace(tmp, local)
        except FileNotFoundError:
            tmp.unlink(missing_ok=True)
            raise TargetError(f"{self.device.name}: {self.remote_path(remote)} does not exist on the board") from None
        except socket.timeout:
            tmp.unlink(missing_ok=True)
            raise RemoteTimeout(f"{self.device.name}: download of {remote} stalled for {self.device.transfer_timeout:g} s") from None
        return local

    def read_bytes(self, remote: str) -> bytes | None:
        try:
            with self.sftp().open(self.remote_path(remote), "rb") as fh:
                fh.prefetch()
                return fh.read()
        except FileNotFoundError:
            return None


def _pid_of(stdout: bytes | bytearray) -> int | None:
    first = bytes(stdout).split(b"\n", 1)[0].decode("ascii", "replace")
    if first.startswith(_PID_MARK):
        try:
            return int(first[len(_PID_MARK):])
        except ValueError:
            return None
    return None


# ------------------------------------------------------------------------------------ board lock

# Runs on the board with its python (3.6+): holds an flock on the board-wide lock file for as long
# as the client keeps its stdin open and beating. The kernel drops an flock with its holder, so a
# client that dies (its connection closes, sshd closes the pipe) frees the board at once, and a
# client that went silent (pulled cable) frees it after ttl seconds without a heartbeat.
# argv: lock file, owner JSON, ttl. First stdout line: ACQUIRED | BUSY <age s> | ERROR <errno> <text>.
_HOLDER = r"""
import errno, fcntl, json, os, select, sys, time
path, info, ttl = sys.argv[1], sys.argv[2], float(sys.argv[3])
def say(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n"); sys.stdout.flush()
def free(p):
    try:
        st = os.statvfs(os.path.dirname(p) or "/"); return st.f_bavail * st.f_frsize
    except OSError:
        return -1
created, writable = False, True
try:
    fd = os.open(path, os.O_RDWR)
except OSError as e:
    fd = None
    if e.errno == errno.EACCES:
        fd, writable = os.open(path, os.O_RDONLY), False
    elif e.errno != errno.ENOENT:
        say("ERROR", errno.errorcode.get(e.errno, e.errno), free(path), e.strerror); sys.exit(0)
if fd is None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666); created = True
        os.fchmod(fd, 0o666)
    except OSError as e:
        if e.errno != errno.EEXIST:
            say("ERROR", errno.errorcode.get(e.errno, e.errno), free(path), e.strerror); sys.exit(0)
        fd = os.open(path, os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except OSError as e:
    if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
        raise
    age = int(time.time() - os.fstat(fd).st_mtime)
    say("BUSY", age); sys.stdout.write(os.read(fd, 8192).decode("utf-8", "replace")); sys.exit(0)
me = json.loads(info); me["holder_pid"] = os.getpid()
data = (json.dumps(me, sort_keys=True) + "\n").encode()
if writable:
    try:
        os.ftruncate(fd, 0)
        if os.write(fd, data) != len(data):
            raise OSError(errno.ENOSPC, "No space left on device")
        os.fsync(fd)
    except OSError as e:
        if created:
            os.unlink(path)
        else:
            os.ftruncate(fd, 0)
        say("ERROR", errno.errorcode.get(e.errno, e.errno), free(path), e.strerror); sys.exit(0)
say("ACQUIRED", os.getpid())
last = time.time()
while True:
    ready = select.select([0], [], [], 1.0)[0]
    if ready:
        chunk = os.read(0, 4096)
        if not chunk or b"R" in chunk:
            break
        last = time.time()
        if writable:
            os.utime(path, None)
    elif time.time() - last > ttl:
        break
if writable:
    os.ftruncate(fd, 0)
"""

_NO_SPACE = ("ENOSPC", "EDQUOT")


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def client_identity() -> dict[str, object]:
    """Who this client is, unambiguously: machine id + boot id + pid namespace, then the pid. Host
    name + pid is not enough: containers on one host share pids across names and names across pids."""
    try:
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        pidns = None
    return {
        "machine_id": _read("/etc/machine-id") or _read("/var/lib/dbus/machine-id") or None,
        "boot_id": _read("/proc/sys/kernel/random/boot_id") or None,
        "pidns": pidns,
        "pid": os.getpid(),
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_is_dead_here(owner: dict[str, Any]) -> bool:
    """The lock's owner is a process of this very machine, boot and pid namespace that no longer
    runs: its lock is stale now, not after the heartbeat timeout."""
    me = client_identity()
    if not me["machine_id"] or not me["boot_id"]:
        return False
    same = all(owner.get(k) == me[k] for k in ("machine_id", "boot_id", "pidns"))
    pid = owner.get("pid")
    return same and isinstance(pid, int) and pid != me["pid"] and not _pid_alive(pid)


class BoardLock:
    """Exclusive use of a board, whatever the workdir or Unix user, so two clients never share it.

    An flock on ``device.lock_file`` held by a small process on the board (see ``_HOLDER``) while
    this client's heartbeats reach it. A lock left by a dead process of this same machine is broken
    at once; one whose holder stopped beating for ``ttl`` seconds frees itself.
    """

    def __init__(self, transport: Transport, purpose: str = "", ttl: float = 120.0, heartbeat: bool = True):
        self.transport = transport
        self.purpose = purpose
        self.ttl = ttl
        self.heartbeat = heartbeat
        self.path = transport.device.lock_file
        self.held = False
        self.lost = False
        self._proc: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def owner_info(self) -> dict[str, object]:
        return {
            **client_identity(),
            "user": getpass.getuser(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "purpose": self.purpose,
            "workdir": self.transport.device.remote_workdir,
        }

    def acquire(self) -> None:
        for attempt in range(2):
            owner = self._try()
            if owner is None:
                return
            if attempt == 0 and _owner_is_dead_here(owner):
                log.warning("%s: breaking the board lock of %s: that process of this machine is gone",
                            self.transport.device.name, _describe(owner))
                self._break(owner)
                continue
            age = owner.get("_age", "?")
            raise BoardBusy(
                f"board '{self.transport.device.name}' is busy: {_describe(owner) or 'another client'} holds its "
                f"lock {self.path} (last heartbeat {age} s ago). Wait for it to finish; a lock without heartbeat "
                f"frees itself after {self.ttl:g} s"
            )

    def _try(self) -> dict[str, Any] | None:
        """None when the lock is ours now, else the owner's info (``_age``: seconds since its beat)."""
        t, dev = self.transport, self.transport.device
        info = json.dumps(self.owner_info(), sort_keys=True)
        proc = t.spawn([dev.python, "-c", _HOLDER, self.path, info, int(self.ttl)])
        first = proc.readline(30.0)
        if first is None:
            err = proc.stderr_text().strip()
            proc.close()
            raise TargetError(
                f"{dev.name}: could not take the board lock {self.path} with {dev.python}: "
                f"{err.splitlines()[-1] if err else 'no answer'}; is python right in the inventory?"
            )
        word, *rest = first.split(" ", 3)
        if word == "ACQUIRED":
            self._proc, self.held, self.lost = proc, True, False
            self._stop.clear()
            if self.heartbeat:
                self._thread = threading.Thread(target=self._beat, name="edgeyolo-lock-heartbeat", daemon=True)
                self._thread.start()
            t.on_reconnect.append(self._reacquire)
            return None
        if word == "BUSY":
            text = proc.read_rest(5.0)
            proc.close()
            try:
                owner = json.loads(text.strip().splitlines()[0])
            except (ValueError, IndexError):
                owner = {}
            owner["_age"] = rest[0] if rest else "?"
            return owner
        proc.close()
        code, free, why = (rest + ["", "", ""])[:3]
        if word == "ERROR" and code in _NO_SPACE:
            raise TargetError(
                f"{dev.name}: the board's disk is full: no space to write its lock file {self.path} "
                f"({int(free) // 1000 if free.lstrip('-').isdigit() and int(free) >= 0 else '?'} kB free); nothing "
                f"was left behind. Free space on the board"
            )
        raise TargetError(f"{dev.name}: could not take the board lock {self.path}: {code} {why}".rstrip())

    def _break(self, owner: dict[str, Any]) -> None:
        pid = owner.get("holder_pid")
        if isinstance(pid, int):
            self.transport.run(["kill", "-TERM", pid], check=False, timeout=30, cwd=None)
            script = 'i=0; while kill -0 "$1" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done'
            self.transport.run(["sh", "-c", script, "sh", pid], check=False, timeout=30, cwd=None)

    def _reacquire(self) -> None:
        """After a reconnect the old holder went with the old connection: take the lock again."""
        if not self.held:
            return
        self.held = False
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        if self._reacquire in self.transport.on_reconnect:
            self.transport.on_reconnect.remove(self._reacquire)
        if self._proc is not None:
            self._proc.close()
            self._proc = None
        self.acquire()

    def _beat(self) -> None:
        while not self._stop.wait(min(max(self.ttl / 4.0, 0.5), 5.0)):
            if self._proc is None or not self._proc.send(b"\n"):
                if not self._stop.is_set():
                    self.lost = True
                    log.warning("%s: the board lock's holder is gone (connection lost?)", self.transport.device.name)
                return

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1)
        if self._reacquire in self.transport.on_reconnect:
            self.transport.on_reconnect.remove(self._reacquire)
        if self._proc is not None:
            if self._proc.send(b"R\n"):
                self._proc.wait(5.0)  # the holder truncates the owner file and exits
            self._proc.close()
            self._proc = None
        self.held = False

    def __enter__(self) -> BoardLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe(owner: dict[str, Any]) -> str:
    if not owner or "pid" not in owner:
        return ""
    what = f" ({owner['purpose']})" if owner.get("purpose") else ""
    where = f" in {owner['workdir']}" if owner.get("workdir") else ""
    return f"{owner.get('user')}@{owner.get('host')} pid {owner.get('pid')} since {owner.get('since')}{what}{where}"
