"""``edgeyolo report RUN_DIR``: rebuild the markdown + PNG report of a suite, build or training folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def report(
    run_dir: Optional[Path] = typer.Argument(
        None, metavar="[RUN_DIR]", help="A bench suite folder (suite.json), a build folder (manifest.json) or a training run (config.json + metrics.csv)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write (default: RUN_DIR/report; for a build folder RUN_DIR itself; with --db: ./report)."),
    db: Optional[Path] = typer.Option(
        None, "--db", help="Instead of a folder: the results history (SQLite); one accuracy-vs-latency Pareto per target."
    ),
) -> None:
    """Write report.md and its PNG figures from what an earlier command left in RUN_DIR (or in the
    results history with --db); nothing runs again."""
    from edgeyolo.bench.report import history_report, make_report
    from edgeyolo.errors import UsageError
    from edgeyolo.pipeline import report_markdown

    if (run_dir is None) == (db is None):
        raise UsageError("give RUN_DIR (a suite, build or training folder) or --db F (the results history), not both")
    if db is not None:
        if not db.is_file():
            raise UsageError(f"{db}: no such results database")
        result = history_report(db, out or Path("report"))
        typer.echo(f"results history: {db}")
    else:
        result = make_report(run_dir, out, build_markdown=report_markdown)
        typer.echo(f"{result.kind} folder: {run_dir}")
    for path in result.files:
        typer.echo(f"wrote {path}")
    for note in result.notes:
        typer.echo(f"left out {note}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
