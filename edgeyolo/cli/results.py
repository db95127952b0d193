"""``edgeyolo results``: the benchmark history (SQLite) — list, show, compare, plot, add, and the regression gate."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from edgeyolo.cli import render

app = typer.Typer(help="Benchmark results history (SQLite) and the noise-aware regression gate.", no_args_is_help=True)

DbOpt = typer.Option(None, "--db", help="Results database (default: $EDGEYOLO_RESULTS_DB, else $XDG_DATA_HOME/edgeyolo/results.sqlite).")
TargetOpt = typer.Option(None, "--target", help="Only runs on this target.")
DeviceOpt = typer.Option(None, "--device", help="Only runs on this device.")
ArtifactOpt = typer.Option(None, "--artifact", help="Only runs of this artifact file name.")
JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")


def _open(db: Optional[Path], create: bool = False):
    from edgeyolo.bench.results import ResultsStore

    return ResultsStore(db, create=create)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _console():
    from rich.console import Console

    return Console(width=160)


@app.command("list")
def list_runs(
    db: Optional[Path] = DbOpt,
    target: Optional[str] = TargetOpt,
    device: Optional[str] = DeviceOpt,
    artifact: Optional[str] = ArtifactOpt,
    ref: Optional[str] = typer.Option(None, "--ref", help="Only runs with this label or git rev."),
    status: Optional[str] = typer.Option(None, "--status", help="running, complete, incomplete or failed."),
    limit: int = typer.Option(20, "--limit", help="Newest N runs (0: all)."),
    as_json: bool = JsonOpt,
) -> None:
    """Runs, newest first, with their first few metrics."""
    with _open(db) as store:
        runs = store.runs(target=target, device=device, artifact_name=artifact, status=status, ref=ref, limit=limit or None)
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in runs], indent=1))
        return
    if not runs:
        typer.echo("no runs match")
        return
    table = render.table(
        f"{len(runs)} run{'s' if len(runs) != 1 else ''}, newest first",
        ("id", "started (UTC)", "status", "kind", "target", "device", "artifact", "ref", "metrics"),
        left=("started (UTC)", "status", "kind", "target", "device", "artifact", "ref", "metrics"),
    )
    for r in runs:
        shown = ", ".join(f"{k}={_fmt(v)}" for k, v in list(r.metrics.items())[:3])
        more = len(r.metrics) - 3
        table.add_row(
            str(r.id), r.started[:19], r.status, r.kind, r.target, r.device, r.artifact_name or "",
            r.label or (r.git_rev or "")[:10], shown + (f" (+{more})" if more > 0 else ""),
        )
    _console().print(table)


@app.command("show")
def show(run_id: int = typer.Argument(..., help="Run id."), db: Optional[Path] = DbOpt, as_json: bool = JsonOpt) -> None:
    """Everything recorded about one run."""
    with _open(db) as store:
        run = store.get(run_id)
    if as_json:
        typer.echo(json.dumps(run.to_dict(), indent=1))
        return
    console = _console()
    info = render.table(f"run {run.id}", ("field", "value"), left=("field", "value"))
    for name in ("status", "kind", "target", "device", "label", "started", "finished", "artifact", "artifact_sha256",
                 "command", "git_rev", "error"):
        value = getattr(run, name)
        if value not in (None, ""):
            info.add_row(name, str(value))
    for section in ("board_state", "toolchain", "extra"):
        for key, value in sorted(_flat(getattr(run, section)).items()):
            info.add_row(f"{section}.{key}", json.dumps(value) if not isinstance(value, str) else value)
    console.print(info)
    metrics = render.table("metrics", ("metric", "value", "unit"), left=("metric", "unit"))
    for name, value in run.metrics.items():
        metrics.add_row(name, _fmt(value), run.units.get(name, ""))
    console.print(metrics)


def _flat(mapping: dict) -> dict:
    from edgeyolo.bench.results import flatten

    return flatten(mapping)


@app.command("compare")
def compare(
    a: int = typer.Argument(..., help="First run id (the reference)."),
    b: int = typer.Argument(..., help="Second run id."),
    db: Optional[Path] = DbOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Two runs side by side: every metric with its relative change, and any board-state difference."""
    from edgeyolo.bench.results import state_differences

    with _open(db) as store:
        ra, rb = store.get(a), store.get(b)
    names = list(ra.metrics) + [n for n in rb.metrics if n not in ra.metrics]
    diffs = state_differences([ra, rb])
    if as_json:
        rows = [{"metric": n, "a": ra.metrics.get(n), "b": rb.metrics.get(n)} for n in names]
        typer.echo(json.dumps({"a": a, "b": b, "metrics": rows,
                               "state_differences": [{"field": d.field, "values": d.values} for d in diffs]}, indent=1))
        return
    table = render.table(
        f"run {a} ({ra.target}/{ra.artifact_name or '-'}) vs run {b} ({rb.target}/{rb.artifact_name or '-'})",
        ("metric", f"run {a}", f"run {b}", "change"), left=("metric",),
    )
    for n in names:
        va, vb = ra.metrics.get(n), rb.metrics.get(n)
        change = f"{100 * (vb - va) / abs(va):+.1f} %" if va not in (None, 0) and vb is not None else ""
        table.add_row(n, "" if va is None else _fmt(va), "" if vb is None else _fmt(vb), change)
    console = _console()
    console.print(table)
    if diffs:
        console.print("board state / toolchain differ, so these numbers are not directly comparable:", markup=False)
        for d in diffs:
            console.print(f"  {d.describe()}", markup=False)
    else:
        console.print("board state and toolchain: identical")


@app.command("plot")
def plot(
    metric: str = typer.Option(..., "--metric", help="Metric to plot (e.g. fps, latency_ms.p50)."),
    out: Path = typer.Option(..., "--out", help="PNG to write."),
    db: Optional[Path] = DbOpt,
    target: Optional[str] = TargetOpt,
    device: Optional[str] = DeviceOpt,
    artifact: Optional[str] = ArtifactOpt,
) -> None:
    """The metric over time, one line per target/device/artifact; labelled runs are marked."""
    from datetime import datetime

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeyolo.errors import UsageError
    from edgeyolo.fileio import check_output_file

    check_output_file(out, "--out")
    with _open(db) as store:
        runs = [r for r in store.runs(target=target, device=device, artifact_name=artifact, status="complete") if metric in r.metrics]
    if not runs:
        raise UsageError(f"no complete run has metric {metric!r} (see 'edgeyolo results list')")
    series: dict[tuple, list] = {}
    for r in reversed(runs):
        series.setdefault(r.group, []).append(r)
    fig, ax = plt.subplots(figsize=(10, 5))
    for (tgt, dev, art), rs in series.items():
        xs = [datetime.fromisoformat(r.started) for r in rs]
        ys = [r.metrics[metric] for r in rs]
        (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=f"{tgt}/{dev or '-'}/{art or '-'}")
        for x, y, r in zip(xs, ys, rs):
            if r.label:
                ax.annotate(r.label, (x, y), textcoords="offset points", xytext=(0, 6), fontsize=7, color=line.get_color())
    unit = next((r.units[metric] for r in runs if metric in r.units), None)
    ax.set_ylabel(metric + (f" ({unit})" if unit else ""))
    ax.set_xlabel("run start (UTC)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    typer.echo(f"wrote {out} ({len(runs)} runs, {len(series)} series)")


@app.command("add")
def add(
    json_file: str = typer.Option(..., "--json", help="Bench JSON file ('-' for stdin): one run object, a list of them, or {\"runs\": [...]}."),
    label: Optional[str] = typer.Option(None, "--label", help="Label the run(s) (e.g. 'main', 'v0.3') for use as a baseline."),
    db: Optional[Path] = DbOpt,
) -> None:
    """Store runs measured elsewhere (e.g. `edgeyolo bench device --json` on a lab host)."""
    from edgeyolo.errors import InputFileError

    try:
        text = sys.stdin.read() if json_file == "-" else Path(json_file).read_text()
    except OSError as exc:
        raise InputFileError(f"--json {json_file}: {exc.strerror or exc}") from None
    try:
        payload = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputFileError(f"--json {json_file}: not JSON ({exc})") from None
    records = payload.get("runs", [payload]) if isinstance(payload, dict) else payload
    if not isinstance(records, list) or not records:
        raise InputFileError(f"--json {json_file}: expected a run object, a non-empty list, or {{\"runs\": [...]}}")
    from edgeyolo.bench.results import parse_record

    for record in records:
        parse_record(record)  # validate every record before storing any
    with _open(db, create=True) as store:
        ids = [store.add_run(record, label=label) for record in records]
    typer.echo(f"recorded run{'s' if len(ids) > 1 else ''} {', '.join(map(str, ids))} in {store.path}")


@app.command("check")
def check(
    baseline: str = typer.Option(..., "--baseline", help="Baseline label or git rev (7+ character prefix)."),
    metric: str = typer.Option("fps", "--metric", help="Metric to gate on."),
    higher_better: Optional[bool] = typer.Option(
        None, "--higher-better/--lower-better", help="Direction (default: from the metric name: fps up, latency/ms down)."
    ),
    runs: int = typer.Option(5, "--runs", help="Median of the last N candidate and N baseline runs."),
    band: float = typer.Option(5.0, "--band", help="Tolerated change in percent; widened to the baseline's noise."),
    k: float = typer.Option(3.0, "--k", help="Noise band = k · 1.4826 · MAD of the baseline runs (in % of its median)."),
    candidate: Optional[int] = typer.Option(None, "--candidate", help="Candidate run id (default: the newest non-baseline run)."),
    target: Optional[str] = TargetOpt,
    device: Optional[str] = DeviceOpt,
    artifact: Optional[str] = ArtifactOpt,
    ignore_field: List[str] = typer.Option([], "--ignore-field", help="Board-state/toolchain field not to compare (repeatable)."),
    db: Optional[Path] = DbOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Regression gate. Exit 0 pass, 1 regression, 2 refused (board state differs) or not enough runs.

    Compares the median of the last N complete candidate runs (same target/device/artifact) with the
    median of the last N baseline runs; fails when the change is worse than
    max(--band, k · 1.4826 · MAD(baseline) / median(baseline)) percent.
    """
    from edgeyolo.bench.results import check_regression

    with _open(db) as store:
        result = check_regression(
            store, baseline, metric=metric, higher_is_better=higher_better, runs=runs, band_pct=band, k=k,
            candidate=candidate, target=target, device=device, artifact_name=artifact, ignore_fields=ignore_field,
        )
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=1))
        result.raise_for_verdict(f"regression gate: {result.verdict} (details in the JSON above)")
    elif result.verdict == "pass":
        typer.echo(result.describe())
    result.raise_for_verdict()  # the CLI prints it as one 'error:' message and exits 1 or 2


def register(root: typer.Typer) -> None:
    """The ``results`` group."""
    root.add_typer(app, name="results")
