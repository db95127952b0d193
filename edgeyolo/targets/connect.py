"""One way to reach a board by its inventory name: read the inventory once, resolve the device, open
the transport under the caller's host-key policy.

The CLI's board commands (deploy, doctor, device clean, bench device, bench deploy-throughput) and
the build pipeline's deploy stage all connect through :func:`connect`, so a board is reached alike
from each of them, ``--trust-new-host-key`` included.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

from edgeyolo.targets.inventory import Device, get_device
from edgeyolo.targets.transport import SshTransport


def resolve_device(device: Union[str, Device], inventory: Union[str, Path, None] = None) -> Device:
    """The inventory entry of a board name (the inventory is read here, once); a Device as it is."""
    return device if isinstance(device, Device) else get_device(device, inventory)


def connect(
    device: Union[str, Device],
    *,
    trust: bool = False,
    inventory: Union[str, Path, None] = None,
    on_stderr: Optional[Callable[[str], None]] = None,
) -> SshTransport:
    """A connected transport to a board, to be closed by the caller (it is a context manager).

    ``device`` is an inventory name, or a Device already resolved with :func:`resolve_device` by a
    caller that needs its entry before connecting (to check its target, to record a run), so the
    inventory is read once either way. ``trust`` is the host-key policy: False refuses an unknown or
    changed host key with a message that names the fingerprint and ``--trust-new-host-key``; True
    records it in the device's known_hosts (a changed key replaces its entry). ``on_stderr`` gets
    each line the board's commands write to stderr as ``"  [NAME] line"``; the transport keeps that
    sink as its ``on_stderr`` for later commands.
    """
    dev = resolve_device(device, inventory)
    sink = None
    if on_stderr is not None:
        def sink(line: str) -> None:
            on_stderr(f"  [{dev.name}] {line}")
    return SshTransport(dev, trust_new_host_key=trust, on_stderr=sink)
