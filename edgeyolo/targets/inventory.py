"""``devices.yaml``: the boards a user can deploy to, as plain data (labgrid's resource idea).

A device says where a board is and how to log in; it never holds a secret. Key passphrases and
passwords are read from environment variables the entry names, so the file can be committed and
shared by a team without leaking anything.

    devices:
      nano:
        target: jetson-nano
        host: 192.168.1.20
        user: jetson
        key_file: ~/.ssh/id_ed25519
        workdir: edgeyolo            # relative to the login directory, or absolute
        python: python3
      orin:
        host: orin                   # an alias of ~/.ssh/config: HostName, Port, User, IdentityFile
        target: jetson-orin-nano     # and ProxyJump come from there unless set here

The board lock is a file outside the workdir (``lock_file``, default ``/tmp/edgeyolo-board.lock``)
so that every workdir and every Unix user on a board share it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edgeyolo.errors import InputFileError, UsageError

ENV_INVENTORY = "EDGEYOLO_DEVICES"
DEFAULT_LOCK_FILE = "/tmp/edgeyolo-board.lock"
DEFAULT_LOCATIONS = (Path("devices.yaml"), Path("~/.config/edgeyolo/devices.yaml"))


@dataclass(frozen=True)
class Device:
    name: str
    host: str
    target: str = "generic"
    port: int = 22
    user: str = "root"
    key_file: str | None = None
    known_hosts: str = "~/.ssh/known_hosts"
    workdir: str = "edgeyolo"
    python: str = "python3"
    passphrase_env: str | None = None  # name of the variable holding the key's passphrase
    password_env: str | None = None  # name of the variable holding a login password
    connect_timeout: float = 10.0
    command_timeout: float = 600.0
    transfer_timeout: float = 60.0  # seconds without progress before an upload is abandoned
    ssh_config: str = "~/.ssh/config"  # read for host aliases ('' to ignore it)
    proxy_jump: str | None = None  # [user@]host[:port],...; overrides the ssh config's ProxyJump ('none': direct)
    lock_file: str = DEFAULT_LOCK_FILE  # on the board, shared by every workdir and user
    trtexec: str | None = None  # trtexec on the board when not where the target's profile says (relative: to the workdir)
    # the keys the inventory entry spelled out: those win over ~/.ssh/config even at their default value
    given: frozenset = field(default=frozenset(), compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.name or not self.host:
            raise UsageError(f"device '{self.name}': 'host' is required")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "given" or value is None:
                continue
            if f.type == "float" and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise UsageError(f"device '{self.name}': {f.name} must be a number of seconds, got {value!r}")
            if f.type in ("str", "str | None") and not isinstance(value, str):
                raise UsageError(f"device '{self.name}': {f.name} must be a string, got {value!r}")
        if self.target != "generic":
            from edgeyolo.targets.profiles import get_target

            get_target(self.target)  # an unknown target names the known ones
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise UsageError(f"device '{self.name}': port must be an integer in 1..65535, got {self.port!r}")
        if not self.workdir or self.workdir.strip() in ("/", "~", "."):
            raise UsageError(f"device '{self.name}': workdir must be a dedicated folder, got {self.workdir!r}")
        if not self.lock_file or not self.lock_file.startswith("/"):
            raise UsageError(f"device '{self.name}': lock_file must be an absolute path on the board, got {self.lock_file!r}")
        for key in ("connect_timeout", "command_timeout", "transfer_timeout"):
            if float(getattr(self, key)) <= 0:
                raise UsageError(f"device '{self.name}': {key} must be positive")

    def is_set(self, key: str) -> bool:
        """Whether the inventory chose this field (named in the entry, or not at its default)."""
        default = next(f.default for f in fields(self) if f.name == key)
        return key in self.given or getattr(self, key) != default

    @property
    def address(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    @property
    def remote_workdir(self) -> str:
        """The workdir as the board's shell and SFTP both understand it (``~/`` stripped: relative
        paths resolve against the login directory in both)."""
        w = self.workdir
        return w.removeprefix("~/")

    def secret(self, which: str) -> str | None:
        """The passphrase or password from its environment variable (never stored, never logged)."""
        var = self.passphrase_env if which == "passphrase" else self.password_env
        return os.environ.get(var) if var else None


_FIELDS = {f.name for f in fields(Device)} - {"name", "given"}


def default_inventory_path() -> Path:
    """``$EDGEYOLO_DEVICES``, else ./devices.yaml, else ~/.config/edgeyolo/devices.yaml."""
    env = os.environ.get(ENV_INVENTORY)
    if env:
        return Path(env).expanduser()
    for candidate in DEFAULT_LOCATIONS:
        if candidate.expanduser().is_file():
            return candidate.expanduser()
    return DEFAULT_LOCATIONS[0]


def parse_inventory(data: Any, source: str = "<inventory>") -> dict[str, Device]:
    if data is None:
        return {}
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(devices, dict):
        raise InputFileError(f"{source}: expected a top-level 'devices:' mapping of name -> settings")
    out: dict[str, Device] = {}
    for name, entry in devices.items():
        if not isinstance(entry, dict):
            raise InputFileError(f"{source}: device '{name}' must be a mapping of settings")
        if {"password", "passphrase"} & set(entry):
            raise InputFileError(
                f"{source}: device '{name}': secrets do not belong in the inventory; name an environment "
                "variable instead (password_env: VAR, passphrase_env: VAR)"
            )
        unknown = sorted(set(entry) - _FIELDS)
        if unknown:
            raise InputFileError(f"{source}: device '{name}': unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_FIELDS))}")
        try:
            out[str(name)] = Device(name=str(name), given=frozenset(entry), **entry)
        except TypeError as exc:
            raise InputFileError(f"{source}: device '{name}': {exc}") from None
        except UsageError as exc:
            message = str(exc)
            raise InputFileError(f"{source}: {message if message.startswith('device ') else f'device {name!r}: {message}'}") from None
    return out


def load_inventory(path: str | Path | None = None) -> dict[str, Device]:
    import yaml

    p = Path(path).expanduser() if path is not None else default_inventory_path()
    if not p.is_file():
        raise InputFileError(
            f"device inventory {p} not found; create it (see `edgeyolo deploy --help`), pass --inventory PATH "
            f"or set {ENV_INVENTORY}"
        )
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        raise InputFileError(f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    return parse_inventory(data, str(p))


def get_device(name: str, path: str | Path | None = None) -> Device:
    devices = load_inventory(path)
    if name not in devices:
        known = ", ".join(sorted(devices)) or "none"
        raise UsageError(f"no device '{name}' in the inventory; known devices: {known}")
    return devices[name]
