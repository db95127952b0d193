"""OpenSSH ``known_hosts`` files as people keep them, read and appended to without losing a byte.

paramiko's own parser raises on lines it does not understand (``@cert-authority``, ``@revoked``,
``sk-ssh-ed25519@openssh.com`` keys) and its writer rewrites the whole file from what it parsed, so
comments and every line it skipped are gone. Here keys are compared as raw blobs (no key type needs
to be understood to be matched), markers are honoured (a revoked key is refused; a host CA line is
skipped: it trusts certificates, never a plain key), hashed ``|1|salt|hash`` names and
``[host]:port`` names match as OpenSSH matches them, and a new key is appended under a file lock.
"""
from __future__ import annotations

import base64
import fcntl
import hashlib
import hmac
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

MARKERS = ("@cert-authority", "@revoked")


def host_name(host: str, port: int) -> str:
    """The name a host has in known_hosts: bare on port 22, ``[host]:port`` otherwise."""
    return host if port == 22 else f"[{host}]:{port}"


@dataclass(frozen=True)
class Entry:
    line: int  # 1-based line number in its file
    marker: str  # "", "@cert-authority" or "@revoked"
    hosts: str
    key_type: str
    blob: bytes

    def matches(self, name: str) -> bool:
        return match_hosts(self.hosts, name)

    @property
    def fingerprint(self) -> str:
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode().rstrip("=")


def _hashed_match(pattern: str, name: str) -> bool:
    try:
        _, magic, salt, digest = pattern.split("|")
        if magic != "1":
            return False
        mac = hmac.new(base64.b64decode(salt), name.encode(), hashlib.sha1).digest()
        return hmac.compare_digest(mac, base64.b64decode(digest))
    except (ValueError, TypeError):
        return False


def _wildcard(pattern: str, name: str) -> bool:
    """OpenSSH's pattern: only ``*`` and ``?`` are special (``[`` of ``[host]:port`` is literal)."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, name, re.DOTALL) is not None


def match_hosts(patterns: str, name: str) -> bool:
    """OpenSSH's host list match: any positive pattern matches and no negated (``!``) one does;
    ``*`` and ``?`` are wildcards, host names compare case-insensitively."""
    if patterns.startswith("|"):
        return _hashed_match(patterns, name)
    name = name.lower()
    found = False
    for pattern in patterns.lower().split(","):
        negated = pattern.startswith("!")
        if _wildcard(pattern[1:] if negated else pattern, name):
            if negated:
                return False
            found = True
    return found


def parse_line(text: str, number: int) -> Entry | None:
    """One known_hosts line, or None for a comment, a blank or a line that cannot be read."""
    fields = text.split()
    if not fields or fields[0].startswith("#"):
        return None
    marker = ""
    if fields[0].startswith("@"):
        marker, fields = fields[0], fields[1:]
        if marker not in MARKERS:
            return None
    if len(fields) < 3:
        return None
    try:
        blob = base64.b64decode(fields[2], validate=True)
    except (ValueError, TypeError):
        return None
    return Entry(number, marker, fields[0], fields[1], blob)


def parse(text: str) -> list[Entry]:
    return [e for n, line in enumerate(text.splitlines(), 1) if (e := parse_line(line, n)) is not None]


@dataclass(frozen=True)
class Verdict:
    """``known`` (a line holds this very key), ``revoked``, ``changed`` (the host has other keys:
    ``expected`` lists them) or ``unknown``."""

    status: str
    expected: tuple[Entry, ...] = ()


class KnownHosts:
    """The entries of one or more known_hosts files (missing files count as empty)."""

    def __init__(self, paths: Iterable[str | Path]):
        self.entries: list[Entry] = []
        for path in paths:
            p = Path(path).expanduser()
            try:
                self.entries += parse(p.read_text(errors="replace"))
            except FileNotFoundError:
                continue

    def for_host(self, name: str) -> list[Entry]:
        return [e for e in self.entries if e.marker != "@cert-authority" and e.matches(name)]

    def key_types(self, name: str) -> list[str]:
        """Key types recorded for the host, to ask the server for one of those first."""
        out: list[str] = []
        for e in self.for_host(name):
            if not e.marker and e.key_type not in out:
                out.append(e.key_type)
        return out

    def check(self, name: str, blob: bytes) -> Verdict:
        mine = self.for_host(name)
        if any(e.marker == "@revoked" and e.blob == blob for e in mine):
            return Verdict("revoked", tuple(e for e in mine if e.marker == "@revoked" and e.blob == blob))
        plain = tuple(e for e in mine if not e.marker)
        if any(e.blob == blob for e in plain):
            return Verdict("known")
        return Verdict("changed", plain) if plain else Verdict("unknown")


def _locked(path: Path) -> int:
    """An fd of ``path`` (created 0600 when missing) holding an exclusive flock. A writer that
    replaced the file while we waited leaves us locking the old inode, so check and retry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _hashed_name(name: str) -> str:
    salt = os.urandom(20)
    digest = hmac.new(salt, name.encode(), hashlib.sha1).digest()
    return f"|1|{base64.b64encode(salt).decode()}|{base64.b64encode(digest).decode()}"


def add_host_key(path: str | Path, name: str, key_type: str, blob: bytes, replace: bool = False) -> None:
    """Record a host key. Without ``replace`` the line is appended and nothing else is touched
    (comments, unparsable lines, the mode). With it, the host's other plain keys are dropped too
    (a key that was rotated) and every other line is kept byte for byte, written to a temporary
    file beside it and renamed over it with the old mode and owner. Both under an exclusive flock,
    so concurrent writers lose no line."""
    path = Path(path).expanduser()
    fd = _locked(path)
    try:
        with os.fdopen(os.dup(fd), "rb") as fh:
            old = fh.read()
        lines = old.decode("utf-8", "surrogateescape").splitlines(keepends=True)
        hashed = any(e.hosts.startswith("|1|") for e in parse(old.decode("utf-8", "replace")))
        line = f"{_hashed_name(name) if hashed else name} {key_type} {base64.b64encode(blob).decode()}\n"
        if not replace:
            prefix = b"\n" if old and not old.endswith(b"\n") else b""
            os.write(fd, prefix + line.encode())
            os.fsync(fd)
            return
        kept = []
        for number, text in enumerate(lines, 1):
            e = parse_line(text, number)
            if e is not None and not e.marker and e.matches(name) and e.blob != blob:
                log.info("%s:%d: dropping the old key of %s", path, number, name)
                continue
            kept.append(text)
        if kept and not kept[-1].endswith("\n"):
            kept[-1] += "\n"
        st = os.fstat(fd)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as out:
                out.write(("".join(kept) + line).encode("utf-8", "surrogateescape"))
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, st.st_mode & 0o7777)
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except PermissionError:
                pass
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
    finally:
        os.close(fd)
