"""Error types. Every message says what failed, what was expected and how to fix it.

The CLI maps these to exit codes and one-line messages; the library never prints or exits.
"""
from __future__ import annotations

from pathlib import Path


class EdgeYoloError(Exception):
    """Base class for every error edgeyolo raises on purpose."""

    exit_code = 1


class UsageError(EdgeYoloError):
    """The user asked for something inconsistent (bad flag combination, bad value)."""

    exit_code = 2


class InputFileError(EdgeYoloError):
    """A file the user named is missing, unreadable or of the wrong kind."""

    exit_code = 2


class DatasetError(InputFileError):
    """A dataset loads but has problems that would corrupt training (broken labels, missing or
    corrupt images); raised by strict checks."""


class CfgError(EdgeYoloError):
    """A darknet .cfg is malformed; carries the file and line it points at."""

    exit_code = 3

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        self.path = str(path) if path is not None else "<cfg>"
        self.line = line
        self.reason = message
        where = self.path if line is None else f"{self.path}:{line}"
        super().__init__(f"{where}: {message}")


class UnsupportedLayerError(CfgError):
    """A layer type or option darknet knows but edgeyolo does not implement."""


class WeightsError(EdgeYoloError):
    """A weights file does not match the model it is loaded into."""

    exit_code = 4


class MissingDependencyError(EdgeYoloError):
    """An optional backend is not installed; names the extra that provides it."""

    exit_code = 5

    def __init__(self, module: str, extra: str):
        self.module = module
        self.extra = extra
        super().__init__(
            f"the optional module '{module}' is not installed; install it with "
            f"`pip install 'edgeyolo[{extra}]'` (or the vendor package on the board)"
        )


class ExportError(EdgeYoloError):
    """An exporter could not produce the requested artifact."""

    exit_code = 6


class VerificationError(ExportError):
    """An artifact was written but does not compute what its source computes."""


class TargetError(EdgeYoloError):
    """Something about a deployment target or board went wrong."""

    exit_code = 7


class ConnectionFailed(TargetError):
    """The board could not be reached (refused, unreachable, timed out, dropped)."""


class HostKeyError(TargetError):
    """The board's SSH host key is unknown or differs from the recorded one."""


class AuthFailed(TargetError):
    """The board refused the key or password."""


class RemoteCommandError(TargetError):
    """A command on the board exited non-zero; carries the command, exit code and stderr."""

    def __init__(self, cmd: str, code: int, stderr: str, hint: str = "", shown: bool = False):
        self.cmd = cmd
        self.code = code
        self.stderr = stderr
        lines = stderr.strip().splitlines()
        if shown:  # the board's stderr was already printed as it came: only its last line again, on one line
            last = f": {lines[-1].strip()}" if lines else " (no stderr)"
            short = " ".join(cmd.split())
            short = short if len(short) <= 160 else short[:157] + "..."
            super().__init__(f"remote command failed with exit code {code}{last}" + (f" ({hint})" if hint else "") + f" [{short}]")
            return
        tail = "\n".join(lines[-15:])
        detail = f"\n{tail}" if tail else " (no stderr)"
        super().__init__(f"remote command failed with exit code {code}: {cmd}{detail}" + (f"\n{hint}" if hint else ""))


class Interrupted(TargetError):
    """The user interrupted a board operation (Ctrl-C); says what can be resumed."""

    exit_code = 130


class RemoteTimeout(TargetError):
    """A connect, command or transfer on the board took longer than its timeout."""


class BoardBusy(TargetError):
    """Another client holds the board's lock."""
