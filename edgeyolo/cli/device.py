"""``edgeyolo deploy``, ``edgeyolo doctor`` and ``edgeyolo device clean``: the board's files and tools."""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from edgeyolo.cli.board import (
    BuildTimeoutOpt,
    CalibOpt,
    DeviceOpt,
    InventoryOpt,
    PrecisionOpt,
    TrtexecOpt,
    TrustOpt,
    connect_board,
    upload_progress,
)
from edgeyolo.cli.render import size_text


def deploy(
    artifacts: List[Path] = typer.Argument(..., help="Model files (.onnx/.engine/.xmodel) or bundle folders."),
    device: str = DeviceOpt,
    inventory: Optional[Path] = InventoryOpt,
    trust_new_host_key: bool = TrustOpt,
    engine: bool = typer.Option(
        False, "--engine", help="Also build the TensorRT engine of each .onnx on the board (jetson-* devices; cached by TensorRT, GPU, precision, shape, ONNX)."
    ),
    precision: Optional[str] = PrecisionOpt,
    calib: Optional[Path] = CalibOpt,
    trtexec: Optional[str] = TrtexecOpt,
    build_timeout: float = BuildTimeoutOpt,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Copy artifacts (and the agent) to the board: unchanged files cost 0 bytes; a dropped upload resumes.
    With --engine, build each ONNX's TensorRT engine there with trtexec (skipped when already built)."""
    from edgeyolo.errors import UsageError
    from edgeyolo.targets.deploy import deploy as run_deploy

    onnx = [a for a in artifacts if a.is_file() and a.suffix.lower() == ".onnx"]
    if not engine and (precision is not None or calib is not None or trtexec is not None):
        raise UsageError("--precision, --calib and --trtexec set how the engine is built; add --engine")
    if engine and not onnx:
        raise UsageError("--engine builds TensorRT engines from .onnx files; none was given")
    with connect_board(device, inventory, trust_new_host_key) as transport:
        profile = _engine_profile(transport.device) if engine else None
        report = run_deploy(transport, artifacts, progress=upload_progress())
        engines = []
        if profile is not None:
            from edgeyolo.targets.jetson.engine import engine_summary, ensure_engine

            for path in onnx:
                built = ensure_engine(transport, path, profile, precision, calib_cache=calib, timeout=build_timeout,
                                      on_log=None if as_json else transport.on_stderr, trtexec=trtexec)
                engines.append(built)
                if not as_json:
                    typer.echo(engine_summary(built))
    if as_json:
        payload = {"device": device, **report.to_dict()}
        if engine:
            payload["engines"] = [e.to_dict() for e in engines]
        typer.echo(json.dumps(payload, indent=1))
        return
    for u in report.uploads:
        state = "unchanged" if u.skipped else f"resumed at {size_text(u.resumed_from)}" if u.resumed_from else "uploaded"
        typer.echo(f"{state:>22}  {size_text(u.size):>9}  {u.remote}")
    typer.echo(f"{device}: {len(report.uploads)} files, {report.unchanged} unchanged, {size_text(report.bytes_sent)} sent in {report.seconds:.1f} s")


def _engine_profile(dev):
    """The jetson-* profile of an inventory device, or a UsageError saying how to set it."""
    from edgeyolo.errors import UsageError
    from edgeyolo.targets.profiles import get_target

    try:
        profile = get_target(dev.target)
    except UsageError:
        profile = None
    if profile is None or not profile.family_obj.builds_engine_on_board:
        raise UsageError(
            f"--engine builds TensorRT engines on Jetson boards; device '{dev.name}' has target '{dev.target}'. "
            "Set its target in the inventory (target: jetson-nano, jetson-tx2, jetson-xavier-nx or jetson-orin-nano)"
        )
    return profile


def doctor(
    device: str = DeviceOpt,
    inventory: Optional[Path] = InventoryOpt,
    trust_new_host_key: bool = TrustOpt,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """What the board has for deploying and benchmarking: one line per tool, ok / missing / warn."""
    from edgeyolo.targets.runner import doctor as run_doctor
    from edgeyolo.targets.runner import doctor_failures

    with connect_board(device, inventory, trust_new_host_key) as transport:
        checks = run_doctor(transport)
        target = transport.device.target
    failed = doctor_failures(checks)
    if as_json:
        typer.echo(json.dumps([c.__dict__ for c in checks], indent=1))
    else:
        colours = {"ok": "green", "missing": "yellow", "warn": "red"}
        for c in checks:
            status = typer.style(f"{c.status:>7}", fg="red" if c in failed else colours.get(c.status))
            typer.echo(f"{status}  {c.name:<20} {c.detail}" + ("" if c.needed or c.status == "ok" else " (optional)"))
    if failed:
        typer.echo(f"error: {device} ({target}) lacks what it needs: {', '.join(c.name for c in failed)}", err=True)
        raise typer.Exit(1)


device_app = typer.Typer(help="Board housekeeping.", no_args_is_help=True)


@device_app.command("clean")
def clean(
    device: str = DeviceOpt,
    inventory: Optional[Path] = InventoryOpt,
    trust_new_host_key: bool = TrustOpt,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Remove the partial uploads interrupted deploys left in the board's workdir."""
    from edgeyolo.targets.runner import clean as run_clean

    with connect_board(device, inventory, trust_new_host_key) as transport:
        removed = run_clean(transport)
    if as_json:
        typer.echo(json.dumps({"device": device, "removed": [{"path": p, "bytes": n} for p, n in removed]}, indent=1))
        return
    for path, n in removed:
        typer.echo(f"removed  {size_text(n):>9}  {path}")
    typer.echo(f"{device}: {len(removed)} partial uploads removed, {size_text(sum(n for _, n in removed))} freed")


def register(app: typer.Typer) -> None:
    """deploy, doctor and the ``device`` group."""
    app.command("deploy")(deploy)
    app.command("doctor")(doctor)
    app.add_typer(device_app, name="device")
