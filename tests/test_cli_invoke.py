"""The CLI's command line runner: exit codes and one-line errors, also for a command line run from
inside a running command (``bench suite`` runs its rows that way)."""
from __future__ import annotations

from pathlib import Path

import typer

from edgeyolo import __version__
from edgeyolo.cli.app import main
from edgeyolo.cli.invoke import invoke, root_runner
from edgeyolo.errors import UsageError


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    seen: list[int] = []

    @app.command("outer")
    def outer(ctx: typer.Context, inner: str = typer.Option(..., "--inner")) -> None:
        seen.append(root_runner(ctx)([inner]))
        raise typer.Exit(seen[-1] + 10)

    @app.command("bad")
    def bad() -> None:
        raise UsageError("bad usage")

    @app.command("ok")
    def ok() -> None:
        typer.echo("fine")

    app.seen = seen  # type: ignore[attr-defined]
    return app


def test_errors_become_one_line_and_the_error_types_exit_code(capsys) -> None:
    app = _app()
    assert invoke(app, ["bad"]) == UsageError.exit_code
    assert capsys.readouterr().err == "error: bad usage\n"
    assert invoke(app, ["ok", "--nope"]) == 2
    assert "No such option: --nope" in capsys.readouterr().err


def test_a_command_line_run_from_inside_a_command_goes_through_the_same_root(capsys) -> None:
    app = _app()
    assert invoke(app, ["outer", "--inner", "ok"]) == 10
    assert app.seen == [0] and capsys.readouterr().out == "fine\n"
    assert invoke(app, ["outer", "--inner", "bad"]) == 10 + UsageError.exit_code
    assert app.seen == [0, UsageError.exit_code] and "error: bad usage" in capsys.readouterr().err


def test_bench_suite_runs_its_rows_through_the_edgeyolo_command(monkeypatch, tmp_path: Path, capsys) -> None:
    import edgeyolo.bench.suite as suite_module

    class FakeSuite:
        def __init__(self, preset, out, run, echo):
            self.out, self.run_cli = Path(out), run

        def run(self):
            self.out.mkdir(parents=True, exist_ok=True)
            codes = [self.run_cli(["--version"]), self.run_cli(["info", "--cfg", "no-such-cfg"])]
            (self.out / suite_module.TABLE_FILE).write_text(f"codes {codes}\n")
            return []

    monkeypatch.setattr(suite_module, "Suite", FakeSuite)
    assert main(["bench", "suite", "--out", str(tmp_path / "suite")]) == 0
    captured = capsys.readouterr()
    assert f"edgeyolo {__version__}\n" in captured.out
    code = int(captured.out.strip().rpartition(", ")[2].rstrip("]"))
    assert captured.out.strip().endswith(f"codes [0, {code}]") and code != 0 and "error: " in captured.err
