"""Running a command line through the app: errors become one line and an exit code.

Kept apart from ``cli/app.py`` so that a command which runs other edgeyolo command lines in-process
(``bench suite``) does it through the running root command, without importing the module that
imports it.
"""
from __future__ import annotations

from typing import Callable

import click
import typer

from edgeyolo.errors import EdgeYoloError

# typer >= 0.2x vendors click as ``typer._click``: its exceptions are not the ``click`` package's, so
# catch both (with only click's, a missing option or a bad value escaped as a traceback).
_CLICK_ERRORS = tuple({click.ClickException, getattr(typer.exceptions, "TyperException", click.ClickException)})
_EXIT = tuple({click.exceptions.Exit, typer.Exit})
_ABORT = tuple({click.exceptions.Abort, typer.Abort})


def invoke(command, args: list[str]) -> int:
    """Run ``edgeyolo ARGS`` on ``command`` (the Typer app, or the root click command of a running
    one) and return its exit code: usage errors, EdgeYoloError and OSError print one ``error:`` line
    (a traceback with --debug), Ctrl-C is 130."""
    debug = "--debug" in args
    try:
        code = command(args=args, prog_name="edgeyolo", standalone_mode=False)
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


def root_runner(ctx) -> Callable[[list[str]], int]:
    """``edgeyolo ARGS`` run in-process from inside the running command of ``ctx``, on its root command."""
    root = ctx.find_root().command
    return lambda args: invoke(root, args)
