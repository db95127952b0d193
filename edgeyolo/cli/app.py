"""The ``edgeyolo`` command. The only place that prints or exits; errors become one line + exit code."""
from __future__ import annotations

import logging
import sys

import click
import typer

from edgeyolo import __version__
from edgeyolo.errors import EdgeYoloError

# typer >= 0.2x vendors click as ``typer._click``: its exceptions are not the ``click`` package's, so
# catch both (with only click's, a missing option or a bad value escaped as a traceback).
_CLICK_ERRORS = tuple({click.ClickException, getattr(typer.exceptions, "TyperException", click.ClickException)})
_EXIT = tuple({click.exceptions.Exit, typer.Exit})
_ABORT = tuple({click.exceptions.Abort, typer.Abort})

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


def _register() -> None:
    from edgeyolo.cli import bench, build, data, detect, device, export, info, prune, quantize, report, results, synth, targets, test, train

    info.register(app)
    detect.register(app)
    test.register(app)
    train.register(app)
    prune.register(app)
    quantize.register(app)
    build.register(app)
    report.register(app)
    targets.register(app)  # targets list|show, check, adapt
    device.register(app)  # deploy, doctor
    app.add_typer(export.app, name="export")
    app.add_typer(bench.app, name="bench")
    app.add_typer(results.app, name="results")
    data.app.command("synth")(synth.synth)
    app.add_typer(data.app, name="data")


_register()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args
    try:
        code = app(args=args, prog_name="edgeyolo", standalone_mode=False)
        if isinstance(code, int):  # ``raise typer.Exit(n)`` in a command: click returns n here
            return code
    except _EXIT as exc:
        return exc.exit_code
    except _ABORT:
        typer.echo("aborted", err=True)
        return 130
    except _CLICK_ERRORS as exc:
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError":
            exc.show()  # no arguments: the help text is the answer
        else:
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"error: {exc.format_message()}{hint}", err=True)
        return exc.exit_code
    except EdgeYoloError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except OSError as exc:
        if debug:
            raise
        typer.echo(f"error: {exc.strerror or exc}: {exc.filename}" if exc.filename else f"error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
