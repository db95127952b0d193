"""File writes that are either complete or absent, file hashes, and the modes new files get.

A leaf module: the board side (``edgeyolo.targets``) hashes and writes files with it as much as the
model side does, so it imports nothing from edgeyolo but the error types.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from edgeyolo.errors import UsageError


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it, racing other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file (0o666 less the umask); a temp file starts at 0o600."""
    return 0o666 & ~current_umask()


def new_dir_mode() -> int:
    """The mode ``mkdir`` gives a new folder; ``tempfile.mkdtemp`` makes 0o700."""
    return 0o777 & ~current_umask()


def check_output_file(path: str | Path, option: str = "output") -> Path:
    """A file path that a command may write: not an existing folder, its parent not a file."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory; the output is a file: give a file name inside it or elsewhere")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"{option} {path}: {parent} is a file, not a folder")
            break
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file beside it: ``path`` is either the old file or the
    complete new one. The new file gets the mode a plain ``open()`` would give (the umask applies)."""
    path = check_output_file(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), new_file_mode())
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | Path, length: int | None = None) -> str:
    """sha256 of a file, or of its first ``length`` bytes (a partial upload's prefix)."""
    digest = hashlib.sha256()
    left = length
    with open(path, "rb") as fh:
        while left is None or left > 0:
            block = fh.read(1 << 20 if left is None else min(1 << 20, left))
            if not block:
                break
            digest.update(block)
            if left is not None:
                left -= len(block)
    return digest.hexdigest()


def tree_sha256(folder: str | Path) -> str:
    """One sha256 over a folder (a model bundle): each file's relative path and content hash, in
    sorted order; hidden files are left out."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{f.relative_to(folder).as_posix()}\0{sha256_file(f)}\n".encode())
    return digest.hexdigest()
