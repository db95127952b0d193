"""The ``edgeyolo`` command: the root app with every command module registered, and ``main``.

The CLI is the only place that prints or exits; :func:`edgeyolo.cli.invoke.invoke` turns errors into
one line and an exit code."""
from __future__ import annotations

import logging
import sys

import typer

from edgeyolo import __version__
from edgeyolo.cli import (
    bench,
    build,
    data,
    detect,
    device,
    export,
    info,
    prune,
    quantize,
    report,
    results,
    targets,
    test,
    train,
)
from edgeyolo.cli.invoke import invoke

app = typer.Typer(
    name="edgeyolo",
    help="Make darknet-cfg YOLO detectors small and fast on edge boards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"edgeyolo {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logs."),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


# Every command module exposes ``register(app)``: it adds its commands, or its group with its own
# sub-app. 'edgeyolo --help' lists the plain commands, then the groups, each in this order.
COMMAND_MODULES = (info, detect, test, train, prune, quantize, build, report, targets, device, export, bench, results, data)

for _module in COMMAND_MODULES:
    _module.register(app)


def main(argv: list[str] | None = None) -> int:
    """``edgeyolo ARGV`` (default: this process's arguments); returns the exit code."""
    return invoke(app, sys.argv[1:] if argv is None else argv)


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    run()
