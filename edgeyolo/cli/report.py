"""``edgeyolo report RUN_DIR``: rebuild the markdown + PNG report of a suite, build or training folder."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def report(
    run_dir: Path = typer.Argument(
        ..., metavar="RUN_DIR", help="A bench suite folder (suite.json), a build folder (manifest.json) or a training run (config.json + metrics.csv)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write (default: RUN_DIR/report; for a build folder RUN_DIR itself)."),
) -> None:
    """Write report.md and its PNG figures from what an earlier command left in RUN_DIR; nothing runs again."""
    from edgeyolo.bench.report import make_report
    from edgeyolo.pipeline import report_markdown

    result = make_report(run_dir, out, build_markdown=report_markdown)
    typer.echo(f"{result.kind} folder: {run_dir}")
    for path in result.files:
        typer.echo(f"wrote {path}")
    for note in result.notes:
        typer.echo(f"left out {note}")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
