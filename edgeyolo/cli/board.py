"""Options and helpers of the commands that reach a board by its inventory name."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Union

import typer

DeviceOpt = typer.Option(..., "--device", "-d", help="Device name in the inventory (devices.yaml).")
InventoryOpt = typer.Option(
    None, "--inventory", help="devices.yaml (default: $EDGEYOLO_DEVICES, ./devices.yaml, ~/.config/edgeyolo/devices.yaml)."
)
TrustOpt = typer.Option(
    False, "--trust-new-host-key", help="Accept and record an unknown or changed host key (verify its fingerprint first)."
)
PrecisionOpt = typer.Option(
    None, "--precision", help="TensorRT engine precision: fp32 | fp16 | int8 (default: the target's; int8 needs a Q/DQ ONNX or --calib)."
)
CalibOpt = typer.Option(None, "--calib", help="INT8 calibration cache for the engine build (implicit quantization).")
TrtexecOpt = typer.Option(
    None, "--trtexec", help="trtexec on the board (default: the target's, /usr/src/tensorrt/bin/trtexec); relative to the workdir."
)
BuildTimeoutOpt = typer.Option(3600.0, "--build-timeout", help="Seconds an engine build on the board may take.")


def _remote_log(line: str) -> None:
    typer.secho(line, err=True, dim=True)


def connect_board(device, inventory: Union[str, Path, None], trust: bool):
    """The board's transport (:func:`edgeyolo.targets.connect.connect`), its commands' stderr shown
    dimmed on ours. ``device`` is an inventory name or an entry already resolved."""
    from edgeyolo.targets.connect import connect

    return connect(device, trust=trust, inventory=inventory, on_stderr=_remote_log)


def upload_progress():
    """A per-file byte counter on a TTY, nothing otherwise."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        sys.stderr.write(f"\r  {done / 1e6:8.1f} / {total / 1e6:.1f} MB")
        if done >= total:
            sys.stderr.write("\n")
        sys.stderr.flush()

    return show

