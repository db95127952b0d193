"""Where a device really is: its inventory entry read together with ``~/.ssh/config``.

A lab names its boards in ``~/.ssh/config`` (``Host nano`` with ``HostName``, ``Port``, ``User``,
``IdentityFile``, ``ProxyJump``) and the inventory then says ``host: nano``. The inventory's own
fields win where both are set, as ``ssh -p`` wins over the config; what the inventory leaves at its
default comes from the config, then from the defaults.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeyolo.errors import UsageError
from edgeyolo.targets.inventory import Device

MAX_JUMPS = 8


@dataclass(frozen=True)
class Hop:
    """One SSH server on the way to a board: the board itself or a jump host."""

    alias: str  # the name it was given by (inventory host, config Host or ProxyJump item)
    host: str  # what is connected to (HostName)
    port: int
    user: str
    key_files: tuple[str, ...] = ()  # from IdentityFile (missing files are skipped, as ssh does)

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


def load_config(path: str | Path | None) -> Any:
    """paramiko's SSHConfig of ``path``; an empty one when the file does not exist."""
    import paramiko

    if path:
        p = Path(path).expanduser()
        if p.is_file():
            try:
                return paramiko.SSHConfig.from_path(str(p))
            except Exception as exc:  # noqa: BLE001 - paramiko raises bare exceptions on bad syntax
                raise UsageError(f"{p}: cannot read this ssh config ({exc}); fix it or set ssh_config: '' in the inventory") from None
    return paramiko.SSHConfig()


def _jump_items(value: str) -> list[tuple[str | None, str, int | None]]:
    """``[user@]host[:port]`` items of a ProxyJump value (``ssh://`` URLs too)."""
    out = []
    for item in value.split(","):
        item = item.strip()
        item = item.removeprefix("ssh://")
        m = re.fullmatch(r"(?:([^@]+)@)?(\[[^\]]+\]|[^:]+)(?::(\d+))?", item)
        if not m:
            raise UsageError(f"ProxyJump item '{item}' is not [user@]host[:port]")
        out.append((m.group(1), m.group(2).strip("[]"), int(m.group(3)) if m.group(3) else None))
    return out


def _hop(config: Any, alias: str, user: str | None, port: int | None, default_user: str) -> tuple[Hop, str | None]:
    found = config.lookup(alias)
    files = tuple(str(Path(f).expanduser()) for f in found.get("identityfile", []))
    hop = Hop(alias, found.get("hostname", alias), port or int(found.get("port", 22)),
              user or found.get("user") or default_user, files)
    jump = found.get("proxyjump")
    return hop, (None if jump is None or jump.lower() == "none" else jump)


def resolve(device: Device, config: Any | None = None) -> tuple[Hop, list[Hop]]:
    """The board and the jump hosts to cross first (nearest first)."""
    config = load_config(device.ssh_config) if config is None else config
    port = device.port if device.is_set("port") else None
    user = device.user if device.is_set("user") else None
    target, jump = _hop(config, device.host, user, port, device.user)
    if device.key_file:
        target = Hop(target.alias, target.host, target.port, target.user, (str(Path(device.key_file).expanduser()),))
    if device.proxy_jump is not None:
        jump = None if device.proxy_jump.lower() in ("", "none") else device.proxy_jump
    jumps: list[Hop] = []
    pending = jump
    while pending:
        chain = []
        nested = None
        for k, (u, h, p) in enumerate(_jump_items(pending)):
            hop, inner = _hop(config, h, u, p, device.user)
            chain.append(hop)
            if k == 0:
                nested = inner  # the first jump host's own ProxyJump comes before it
        jumps = chain + jumps
        if len(jumps) > MAX_JUMPS:
            raise UsageError(f"device '{device.name}': more than {MAX_JUMPS} jump hosts (a ProxyJump loop in the ssh config?)")
        pending = nested
    return target, jumps
