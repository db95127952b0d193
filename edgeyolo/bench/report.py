"""``edgeyolo report RUN_DIR``: markdown + PNG reports rebuilt from a folder an earlier command wrote.

Three kinds of folder, told apart by the files in them:

    suite   suite.json (``edgeyolo bench suite``): pareto.png (mAP@0.5 vs latency, the Pareto front),
            latency.png, channels.png (conv widths before / after each pruning), gamma.png (BN |γ| of
            the sparse model) and report.md; default --out RUN_DIR/report
    build   manifest.json (``edgeyolo build``): report.md as the build writes it, plus stages.png and,
            when a stage carries board numbers, device.png and a Device section; default --out RUN_DIR
    train   config.json + metrics.csv (``edgeyolo train``): curves.png, sparsity.png (sparse
            training) and report.md; default --out RUN_DIR/report

Nothing is trained, timed or evaluated again: every number comes from the folder (a suite's γ and
channel widths from its checkpoints and cfgs), so a report can be rebuilt anywhere, long after.
The build's markdown is ``edgeyolo.pipeline.report_markdown``, a layer above this package, so the
caller hands it in (``build_markdown``).
"""
from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Sequence

from edgeyolo.bench.results import flatten
from edgeyolo.bench.suite import SUITE_FILE, Preset, Row, table_markdown
from edgeyolo.errors import InputFileError, UsageError

MANIFEST_FILE = "manifest.json"  # edgeyolo.pipeline.MANIFEST_FILE (a higher layer: not imported)
TRAIN_FILES = ("config.json", "metrics.csv")  # edgeyolo.train.trainer.CONFIG_FILE and its metrics
REPORT_FILE = "report.md"
NO_POWER = "FPS/W: no power reading (the board's tegrastats did not report a rail)"
_EXPECTED = "suite.json (edgeyolo bench suite), manifest.json (edgeyolo build) or config.json + metrics.csv (edgeyolo train)"
_FRONT_COLOR, _OTHER_COLOR, _P90_COLOR = "#c0392b", "#3b75af", "#f0a35e"


@dataclass
class Report:
    """What one ``edgeyolo report`` wrote: the folder kind, the files, and why a figure was left out."""

    kind: str  # suite | build | train
    out: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def detect_kind(run_dir: Path) -> str:
    """suite, build or train, by the files the folder holds; anything else is a UsageError."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir}: no such folder")
    if (run_dir / SUITE_FILE).is_file():
        return "suite"
    if (run_dir / MANIFEST_FILE).is_file():
        return "build"
    if all((run_dir / name).is_file() for name in TRAIN_FILES):
        return "train"
    raise UsageError(f"{run_dir}: nothing to report on; expected {_EXPECTED}")


def make_report(
    run_dir: str | Path, out: str | Path | None = None, build_markdown: Callable[[dict], str] | None = None
) -> Report:
    """Write the report of ``run_dir`` into ``out`` (default by kind, see the module doc)."""
    run_dir = Path(run_dir)
    kind = detect_kind(run_dir)
    if kind == "suite":
        return suite_report(run_dir, Path(out) if out else run_dir / "report")
    if kind == "build":
        if build_markdown is None:
            raise TypeError("a build folder's report.md is edgeyolo.pipeline.report_markdown: pass it as build_markdown")
        return build_report(run_dir, Path(out) if out else run_dir, build_markdown)
    return train_report(run_dir, Path(out) if out else run_dir / "report")


# ------------------------------------------------------------------------------------------- common


def _num(value: Any) -> float | None:
    """A finite number, or None (strings, bools, NaN and missing values are not plotted)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    from edgeyolo.fileio import atomic_write_bytes

    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def _read_json(path: Path, what: str) -> dict:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise InputFileError(f"{path}: not valid JSON ({exc}); expected the {what}") from None
    if not isinstance(doc, dict):
        raise InputFileError(f"{path}: expected a JSON object (the {what})")
    return doc


def _figures_section(report: Report, captions: dict[str, str]) -> list[str]:
    """Markdown image links to the PNGs this report wrote (only those), then why others are missing."""
    written = {p.name for p in report.files}
    lines = ["## Figures", ""]
    for name, caption in captions.items():
        if name in written:
            lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    if not written & set(captions):
        lines += ["No figure could be drawn from this folder.", ""]
    if report.notes:
        lines += ["Left out:", ""] + [f"- {note}" for note in report.notes] + [""]
    return lines


# -------------------------------------------------------------------------------------------- suite


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points no other point dominates, fastest first.

    A point is dominated when another has lower-or-equal latency and higher-or-equal accuracy, and
    is strictly better in one of them; identical points do not dominate each other, so both stay.
    """
    front = [
        i for i, (lat, acc) in enumerate(points)
        if not any(j != i and lat2 <= lat and acc2 >= acc and (lat2 < lat or acc2 > acc) for j, (lat2, acc2) in enumerate(points))
    ]
    return sorted(front, key=lambda i: (points[i][0], -points[i][1], i))


def load_suite(path: Path) -> tuple[Preset, list[Row], float]:
    """The preset, rows and wall time of a suite.json (unknown keys from other versions are ignored)."""
    doc = _read_json(path, "suite.json of edgeyolo bench suite")

    def tuples(value: Any) -> Any:  # JSON turned the preset's tuples into lists
        return tuple(tuples(v) for v in value) if isinstance(value, list) else value

    preset_keys = {f.name for f in fields(Preset)}
    row_keys = {f.name for f in fields(Row)}
    try:
        preset = Preset(**{k: tuples(v) for k, v in doc["preset"].items() if k in preset_keys})
        rows = [Row(**{k: v for k, v in r.items() if k in row_keys}) for r in doc["rows"]]
        for r in rows:
            r.notes = r.notes if isinstance(r.notes, dict) else {}
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputFileError(f"{path}: not a suite.json written by edgeyolo bench suite ({type(exc).__name__}: {exc})") from None
    return preset, rows, float(doc.get("wall_s") or 0.0)


def _target(preset: Preset) -> str:
    return f"host (onnxruntime, {preset.cfg} @ {preset.img_size})"


def _suite_checkpoint(run_dir: Path, name: str) -> Path | None:
    """The weights a training row of the suite left: the sparse model is used as trained (last), the
    others at their best epoch, as the suite itself picks them."""
    order = ("last", "best") if name == "sparse" else ("best", "last")
    return next((p for p in (run_dir / "runs" / name / f"{k}.safetensors" for k in order) if p.is_file()), None)


def plot_pareto(rows: list[Row], preset: Preset, path: Path) -> tuple[Path, list[Row]] | None:
    """mAP@0.5 against latency p50 (p90 as the error bar's right end), the Pareto front as a step line.

    Returns the file and the front's rows (fastest first), or None when no row has both numbers.
    """
    points = [r for r in rows if _num(r.latency_ms) is not None and _num(r.map50) is not None]
    if not points:
        return None
    front = [points[i] for i in pareto_front([(r.latency_ms, r.map50) for r in points])]
    on_front = {id(r) for r in front}
    fig = _figure(8, 5.5)
    ax = fig.add_subplot(1, 1, 1)
    for r in points:
        p90 = _num(r.latency_p90_ms)
        spread = max(p90 - r.latency_ms, 0.0) if p90 is not None else 0.0
        color = _FRONT_COLOR if id(r) in on_front else _OTHER_COLOR
        ax.errorbar([r.latency_ms], [r.map50], xerr=[[0.0], [spread]], fmt="o", color=color, elinewidth=1, capsize=3)
        ax.annotate(r.name, (r.latency_ms, r.map50), textcoords="offset points", xytext=(4, 4), fontsize=7)
    right = max(max(_num(r.latency_p90_ms) or r.latency_ms, r.latency_ms) for r in points)
    xs = [r.latency_ms for r in front] + [right]
    ys = [r.map50 for r in front] + [front[-1].map50]
    label = f"Pareto front ({len(front)} row{'' if len(front) == 1 else 's'})"
    ax.step(xs, ys, where="post", color=_FRONT_COLOR, linestyle="--", linewidth=1, label=label)
    ax.plot([], [], "o", color=_OTHER_COLOR, label="dominated row")
    ax.plot([], [], "-", color="0.4", label="bar: latency p50 → p90")
    ax.set_xlabel("latency p50 (ms, inference only)")
    ax.set_ylabel("mAP@0.5 (synthetic val)")
    ax.set_title(f"mAP@0.5 vs latency — {_target(preset)}")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path), front


def plot_latency(rows: list[Row], preset: Preset, path: Path) -> Path | None:
    """p50 and p90 latency per row, as grouped horizontal bars (None when nothing was timed)."""
    timed = [r for r in rows if _num(r.latency_ms) is not None]
    if not timed:
        return None
    fig = _figure(8, 1.2 + 0.45 * len(timed))
    ax = fig.add_subplot(1, 1, 1)
    ys = list(range(len(timed)))
    p50 = [r.latency_ms for r in timed]
    p90 = [_num(r.latency_p90_ms) or 0.0 for r in timed]
    ax.barh([y - 0.2 for y in ys], p50, height=0.4, color=_OTHER_COLOR, label="p50")
    ax.barh([y + 0.2 for y in ys], p90, height=0.4, color=_P90_COLOR, label="p90")
    for y, a, b in zip(ys, p50, p90):
        ax.text(a, y - 0.2, f" {a:g}", va="center", fontsize=7)
        if b:
            ax.text(b, y + 0.2, f" {b:g}", va="center", fontsize=7)
    ax.set_yticks(ys, [r.name for r in timed], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("latency (ms, inference only)")
    ax.set_title(f"Latency per row — {_target(preset)}, {preset.latency_runs} runs each")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


@dataclass(frozen=True)
class ChannelComparison:
    """Conv widths of a reference cfg and a pruned one, matched by order only when that is meaningful."""

    name: str
    before: list[int]
    after: list[int]
    matched: bool  # same layer count: conv k of one is conv k of the other

    @property
    def kept(self) -> float:
        return sum(self.after) / max(sum(self.before), 1)


def compare_channels(name: str, reference, pruned) -> ChannelComparison:
    """Compare two parsed cfgs' conv filters. Layer pruning deletes layers, so convs are matched by
    order only when both cfgs have the same number of layers (and of convs)."""
    before = [c.filters for c in reference.conv_layers]
    after = [c.filters for c in pruned.conv_layers]
    matched = len(reference.layers) == len(pruned.layers) and len(before) == len(after)
    return ChannelComparison(name, before, after, matched)


def plot_channels(comparisons: list[ChannelComparison], reference_name: str, path: Path) -> Path:
    """One panel per pruning method: filters per conv before (the reference model) and after."""
    fig = _figure(10, 0.6 + 2.6 * len(comparisons))
    for k, c in enumerate(comparisons):
        ax = fig.add_subplot(len(comparisons), 1, k + 1)
        if c.matched:
            xs = list(range(len(c.before)))
            ax.bar(xs, c.before, width=0.8, color="0.82", label=f"{reference_name} ({len(c.before)} convs)")
            ax.bar(xs, c.after, width=0.5, color=_FRONT_COLOR, label=f"{c.name} (matched conv by conv)")
            ax.set_xlabel("conv (in cfg order)")
        else:
            ax.step(range(len(c.before)), c.before, where="mid", color="0.45",
                    label=f"{reference_name}: {len(c.before)} convs, own order")
            ax.step(range(len(c.after)), c.after, where="mid", color=_FRONT_COLOR,
                    label=f"{c.name}: {len(c.after)} convs, own order (layers deleted: not matched by index)")
            ax.set_xlabel("conv (each cfg in its own order)")
        ax.set_ylim(0, 1.35 * max(c.before + c.after + [1]))  # headroom for the legend
        ax.set_ylabel("filters")
        ax.set_title(f"{c.name}: {sum(c.after):,} of {sum(c.before):,} conv filters kept ({c.kept:.1%})", fontsize=9)
        ax.legend(loc="upper left", fontsize=7)
    return _save(fig, path)


def suite_report(run_dir: Path, out: Path) -> Report:
    """pareto.png, latency.png, channels.png, gamma.png and report.md of a bench suite folder."""
    from edgeyolo.fileio import atomic_write_text

    preset, rows, wall_s = load_suite(run_dir / SUITE_FILE)
    report = Report("suite", out)
    front: list[Row] = []
    pareto = plot_pareto(rows, preset, out / "pareto.png")
    if pareto is None:
        report.notes.append("pareto.png: no row has both a latency and an mAP@0.5")
    else:
        report.files.append(pareto[0])
        front = pareto[1]
    latency = plot_latency(rows, preset, out / "latency.png")
    if latency is None:
        report.notes.append("latency.png: no row was timed")
    else:
        report.files.append(latency)
    _suite_channels(run_dir, rows, out, report)
    _suite_gamma(run_dir, rows, out, report)

    table = "\n".join("#" + line if line.startswith("#") else line for line in table_markdown(preset, rows, wall_s).splitlines())
    lines = [f"# edgeyolo report: bench suite `{preset.name}`", "", f"Rebuilt from `{run_dir}`; target {_target(preset)}.", ""]
    lines += [table, ""]
    lines += ["## Pareto front", ""]
    if front:
        lines += ["Rows that no other row beats on both latency (p50) and mAP@0.5, fastest first:", ""]
        lines += [f"- {r.name}: {r.latency_ms:g} ms p50" + ("" if r.latency_p90_ms is None else f" ({r.latency_p90_ms:g} p90)")
                  + f", mAP@0.5 {r.map50:.4f}" for r in front]
    else:
        lines += ["No row has both a latency and an mAP@0.5."]
    lines += [""] + _figures_section(report, {
        "pareto.png": "Accuracy vs latency", "latency.png": "Latency p50 / p90",
        "channels.png": "Conv filters before / after pruning", "gamma.png": "BN |γ| of the sparse model",
    })
    report.files.append(atomic_write_text(out / REPORT_FILE, "\n".join(lines)))
    return report


def _suite_channels(run_dir: Path, rows: list[Row], out: Path, report: Report) -> None:
    from edgeyolo.model.cfg import parse_cfg
    from edgeyolo.model.checkpoint import checkpoint_cfg

    methods = [r.name[len("prune-"):] for r in rows if r.name.startswith("prune-")]
    methods = [m for m in methods if (run_dir / "prune" / m / "model.cfg").is_file()]
    if not methods:
        report.notes.append("channels.png: no prune/<method>/model.cfg in the folder")
        return
    reference = next(((n, p) for n in ("sparse", "baseline") if (p := _suite_checkpoint(run_dir, n)) is not None), None)
    if reference is None:
        report.notes.append("channels.png: neither runs/sparse nor runs/baseline holds a checkpoint to compare against")
        return
    ref_cfg = checkpoint_cfg(reference[1])
    comparisons = [compare_channels(f"prune-{m}", ref_cfg, parse_cfg(run_dir / "prune" / m / "model.cfg")) for m in methods]
    report.files.append(plot_channels(comparisons, reference[0], out / "channels.png"))


def _suite_gamma(run_dir: Path, rows: list[Row], out: Path, report: Report) -> None:
    from edgeyolo.compress.prune.prunable import PruneMode, prunable_bn
    from edgeyolo.model.checkpoint import load_model
    from edgeyolo.train.sparsity import plot_gamma_histogram

    if not any(r.name == "sparse" for r in rows):
        report.notes.append("gamma.png: the suite has no sparse row")
        return
    weights = _suite_checkpoint(run_dir, "sparse")
    if weights is None:
        report.notes.append("gamma.png: runs/sparse holds no checkpoint (the sparse row did not finish)")
        return
    model = load_model(None, weights)
    layers = prunable_bn(model.cfg, PruneMode.SHORTCUT)
    if not len(layers):
        report.notes.append("gamma.png: the sparse model's cfg has no BN conv that --prune 1 sparsifies")
        return
    title = f"BN |γ| of the sparse model ({weights.name}, --prune 1 set)"
    report.files.append(plot_gamma_histogram(model, layers, out / "gamma.png", title))


# -------------------------------------------------------------------------------------------- build


@dataclass(frozen=True)
class DevicePoint:
    """One timed phase on a board, as a build stage recorded it."""

    stage: str
    streams: int
    device: str
    fps: float
    latency_p50_ms: float | None = None
    power_w: float | None = None
    fps_per_w: float | None = None

    @property
    def label(self) -> str:
        return f"{self.stage} ×{self.streams}"


# a phase's metric names (flattened) -> DevicePoint's
_PHASE_KEYS = {
    "fps": "fps", "power_w": "power_w", "fps_per_w": "fps_per_w", "latency_ms.p50": "p50", "p50_ms": "p50", "latency_p50_ms": "p50",
}


def device_points(stage: dict, stage_dir: Path | None = None) -> list[DevicePoint]:
    """The board numbers of one manifest stage, per stream count.

    Read from the metrics the deploy stage records (``fps_N_streams``, ``latency_p50_ms_N_streams``),
    the results-database form (``fps``, ``latency_ms.p50``, ``power_w``, ``fps_per_w`` for one stream;
    ``streams.N.*``), and the stage's ``bench.json`` when it is there: the phases with their power.
    """
    flat = flatten(stage.get("metrics") or {})
    by_streams: dict[int, dict[str, float]] = {}

    def put(streams: int, key: str, value: Any) -> None:
        number = _num(value)
        if number is not None:
            by_streams.setdefault(streams, {}).setdefault(key, number)

    for key, value in flat.items():
        if m := re.fullmatch(r"fps_(\d+)_streams", key):
            put(int(m[1]), "fps", value)
        elif m := re.fullmatch(r"latency_p50_ms_(\d+)_streams", key):
            put(int(m[1]), "p50", value)
        elif (m := re.fullmatch(r"streams\.(\d+)\.(.+)", key)) and m[2] in _PHASE_KEYS:
            put(int(m[1]), _PHASE_KEYS[m[2]], value)
        elif key in _PHASE_KEYS:  # the headline numbers are the single-stream phase's
            put(1, _PHASE_KEYS[key], value)
    bench = stage_dir / stage["outputs"]["bench"] if stage_dir is not None and "bench" in (stage.get("outputs") or {}) else None
    if bench is not None and bench.is_file():
        try:
            phases = json.loads(bench.read_text(encoding="utf-8")).get("phases") or []
        except (ValueError, AttributeError):
            phases = []
        for p in phases:
            if isinstance(p, dict) and isinstance(p.get("streams"), int):
                for key, value in flatten(p).items():
                    if key in _PHASE_KEYS:
                        put(p["streams"], _PHASE_KEYS[key], value)
    device = str(flat.get("device") or "")
    points = []
    for streams, v in sorted(by_streams.items()):
        if "fps" not in v:
            continue
        per_w = v.get("fps_per_w")
        if per_w is None and v.get("power_w"):
            per_w = v["fps"] / v["power_w"]
        points.append(DevicePoint(stage["name"], streams, device, v["fps"], v.get("p50"), v.get("power_w"), per_w))
    return points


def _stage_dir(run_dir: Path, stage: dict) -> Path | None:
    """``stages/NN-name``: the one whose stage.json has the manifest's key, else the only candidate."""
    candidates = sorted(p for p in (run_dir / "stages").glob(f"[0-9][0-9]-{stage.get('name')}") if p.is_dir())
    for folder in candidates:
        try:
            if json.loads((folder / "stage.json").read_text(encoding="utf-8")).get("key") == stage.get("key"):
                return folder
        except (OSError, ValueError):
            continue
    return candidates[0] if len(candidates) == 1 else None


def plot_stages(manifest: dict, path: Path) -> Path | None:
    """mAP@0.5 and parameters of each stage that recorded them (None when none did)."""
    stages = manifest.get("stages") or []
    maps = [(s["name"], _num((s.get("metrics") or {}).get("map50"))) for s in stages]
    params = [(s["name"], _num((s.get("metrics") or {}).get("params"))) for s in stages]
    maps = [(n, v) for n, v in maps if v is not None]
    params = [(n, v) for n, v in params if v is not None]
    if not maps and not params:
        return None
    fig = _figure(10, 3.8)
    for k, (data, ylabel, fmt) in enumerate(((maps, "mAP@0.5", "{:.3f}"), (params, "parameters (M)", "{:.3f}M"))):
        ax = fig.add_subplot(1, 2, k + 1)
        values = [v / 1e6 if k else v for _, v in data]
        ax.bar(range(len(data)), values, color=_OTHER_COLOR if k else _FRONT_COLOR)
        for x, v in enumerate(values):
            ax.text(x, v, fmt.format(v), ha="center", va="bottom", fontsize=7)
        ax.set_xticks(range(len(data)), [n for n, _ in data], fontsize=8, rotation=20)
        ax.set_ylabel(ylabel)
        if not data:
            ax.text(0.5, 0.5, "no stage recorded it", ha="center", va="center", transform=ax.transAxes, fontsize=9)
    fig.suptitle(f"edgeyolo build: {manifest.get('target')} ({manifest.get('precision')}) — per stage", fontsize=10)
    return _save(fig, path)


def plot_device(points: list[DevicePoint], path: Path) -> Path:
    """FPS and FPS/W per stage and stream count; a phase without a power reading says so."""
    fig = _figure(10, 3.8)
    labels = [p.label for p in points]
    ax = fig.add_subplot(1, 2, 1)
    ax.bar(range(len(points)), [p.fps for p in points], color=_OTHER_COLOR)
    for x, p in enumerate(points):
        ax.text(x, p.fps, f"{p.fps:.1f}", ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(points)), labels, fontsize=8)
    ax.set_ylabel("FPS")
    ax.set_title("throughput", fontsize=9)
    ax = fig.add_subplot(1, 2, 2)
    per_w = [p.fps_per_w or 0.0 for p in points]
    ax.bar(range(len(points)), per_w, color=_FRONT_COLOR)
    top = max(per_w) or 1.0
    for x, p in enumerate(points):
        text = f"{p.fps_per_w:.2f}" if p.fps_per_w is not None else "no power\nreading"
        ax.text(x, p.fps_per_w or 0.02 * top, text, ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, top * 1.25)
    ax.set_xticks(range(len(points)), labels, fontsize=8)
    ax.set_ylabel("FPS / W")
    ax.set_title("efficiency (board power rail)", fontsize=9)
    devices = sorted({p.device for p in points if p.device})
    fig.suptitle("on the board" + (f": {', '.join(devices)}" if devices else ""), fontsize=10)
    return _save(fig, path)


def build_report(run_dir: Path, out: Path, build_markdown: Callable[[dict], str]) -> Report:
    """report.md (the build's own, plus figures and a Device section), stages.png and device.png."""
    from edgeyolo.fileio import atomic_write_text

    manifest = _read_json(run_dir / MANIFEST_FILE, "manifest.json of edgeyolo build")
    if not isinstance(manifest.get("stages"), list):
        raise InputFileError(f"{run_dir / MANIFEST_FILE}: no 'stages' list; expected a manifest written by edgeyolo build")
    try:
        text = build_markdown(manifest)
    except (KeyError, TypeError) as exc:
        why = f"{type(exc).__name__}: {exc}"
        raise InputFileError(f"{run_dir / MANIFEST_FILE}: not a manifest written by edgeyolo build ({why})") from None
    report = Report("build", out)
    stages = plot_stages(manifest, out / "stages.png")
    if stages is None:
        report.notes.append("stages.png: no stage recorded an mAP@0.5 or a parameter count")
    else:
        report.files.append(stages)
    points = [p for s in manifest["stages"] if isinstance(s, dict) for p in device_points(s, _stage_dir(run_dir, s))]
    lines = [text.rstrip("\n"), ""]
    if points:
        report.files.append(plot_device(points, out / "device.png"))
        lines += ["## Device", "", "| stage | device | streams | FPS | latency p50 ms | power W | FPS/W |", "|---|---|---|---|---|---|---|"]
        cell = lambda v: "" if v is None else f"{v:.2f}"  # noqa: E731
        for p in points:
            per_w = "no power reading" if p.fps_per_w is None else cell(p.fps_per_w)
            lines.append(f"| {p.stage} | {p.device} | {p.streams} | {p.fps:.2f} | {cell(p.latency_p50_ms)} | {cell(p.power_w)} | {per_w} |")
        missing = [p for p in points if p.fps_per_w is None]
        if missing:
            lines += [""] + [f"- {p.stage}, {p.streams} stream{'s' if p.streams != 1 else ''}: {NO_POWER}" for p in missing]
        lines.append("")
    lines += _figures_section(report, {"stages.png": "mAP@0.5 and parameters per stage", "device.png": "FPS and FPS/W on the board"})
    report.files.append(atomic_write_text(out / REPORT_FILE, "\n".join(lines)))
    return report


# -------------------------------------------------------------------------------------------- train


def read_metrics_csv(path: Path) -> list[dict[str, float | None]]:
    """The trainer's metrics.csv, one dict per epoch: numbers, None where a cell is empty."""
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        rows = []
        for raw in reader:
            row: dict[str, float | None] = {}
            for key, text in raw.items():
                if key is None:
                    continue
                try:
                    row[key] = float(text) if text not in (None, "") else None
                except ValueError:
                    row[key] = None
            rows.append(row)
    if not rows or "epoch" not in rows[0]:
        raise InputFileError(f"{path}: no epochs recorded (expected the metrics.csv of edgeyolo train, one row per epoch)")
    return rows


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pairs = [(r["epoch"], r.get(key)) for r in rows if r.get("epoch") is not None and r.get(key) is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def plot_curves(rows: list[dict], title: str, path: Path) -> Path:
    """The three losses and mAP@0.5, mAP@0.5:0.95 per epoch (the trainer's own curves.png layout)."""
    fig = _figure(9, 3.4)
    ax = fig.add_subplot(1, 2, 1)
    for key in ("loss_box", "loss_obj", "loss_cls"):
        ax.plot(*_series(rows, key), marker=".", label=key)
    ax.set_xlabel("epoch")
    ax.set_title("losses", fontsize=9)
    ax.legend(fontsize=8)
    ax = fig.add_subplot(1, 2, 2)
    for key, label in (("map50", "mAP@0.5"), ("map50_95", "mAP@0.5:0.95")):
        ax.plot(*_series(rows, key), marker=".", label=label)
    ax.set_xlabel("epoch")
    ax.set_title("validation", fontsize=9)
    ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_sparsity(rows: list[dict], title: str, path: Path) -> Path | None:
    """Fraction of prunable |γ| below 1e-2 and 1e-3 per epoch, and the sparse rate s on a second axis."""
    fractions = [(k, label) for k, label in (("sparsity.frac_lt_1e-2", "|γ| < 1e-2"), ("sparsity.frac_lt_1e-3", "|γ| < 1e-3"))
                 if _series(rows, k)[0]]
    rate = _series(rows, "sparsity.s")
    if not fractions and not rate[0]:
        return None
    fig = _figure(7, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    for key, label in fractions:
        ax.plot(*_series(rows, key), marker="o", label=label)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("epoch")
    ax.set_ylabel("fraction of prunable γ")
    handles, labels = ax.get_legend_handles_labels()
    if rate[0]:
        ax2 = ax.twinx()
        ax2.plot(*rate, color="0.35", linestyle="--", marker=".", label="s (sparse rate)")
        if all(v > 0 for v in rate[1]):
            ax2.set_yscale("log")
        ax2.set_ylabel("s")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def _epoch_line(row: dict) -> str:
    """The line the trainer printed for this epoch, rebuilt from its CSV row."""
    from edgeyolo.train.trainer import EpochRecord

    columns = [f for f in fields(EpochRecord) if f.name not in ("sparsity", "kd")]
    extra = {
        prefix: {k[len(prefix) + 1:]: v for k, v in row.items() if k.startswith(prefix + ".") and v is not None}
        for prefix in ("sparsity", "kd")
    }
    try:
        # a column added later (data_wait) has a default, so older runs still print their lines
        values = {f.name: row[f.name] for f in columns if f.name in row or f.default is MISSING}
        values["epoch"] = int(values["epoch"])
        return EpochRecord(**values, **extra).line()
    except (KeyError, TypeError, ValueError):  # a CSV from another version: its numbers as they are
        return "  ".join(f"{k} {v:g}" for k, v in row.items() if v is not None)


def train_report(run_dir: Path, out: Path) -> Report:
    """curves.png, sparsity.png (when the run was sparse training) and report.md of a training run."""
    from edgeyolo.fileio import atomic_write_text

    config = _read_json(run_dir / TRAIN_FILES[0], "config.json of edgeyolo train")
    rows = read_metrics_csv(run_dir / TRAIN_FILES[1])
    name = config.get("name") or run_dir.name
    report = Report("train", out)
    report.files.append(plot_curves(rows, f"training run {name}", out / "curves.png"))
    if any(k.startswith("sparsity.") for k in rows[0]):
        sparsity = plot_sparsity(rows, f"sparse training {name}: prunable BN γ", out / "sparsity.png")
        if sparsity is None:
            report.notes.append("sparsity.png: the sparsity columns hold no fraction below 1e-2 / 1e-3 nor a rate s")
        else:
            report.files.append(sparsity)
    model = config.get("weights") or config.get("cfg") or "?"
    setup = [f"model `{model}`", f"data `{config.get('data')}`", f"{config.get('img_size')} px", f"{config.get('epochs')} epochs"]
    if config.get("sparse"):
        c = config
        setup.append(f"sparse training (--prune {c.get('prune')}, s {c.get('s')}, {c.get('sr_penalty')}, {c.get('sr_schedule')})")
    if config.get("kd_strategy"):
        setup.append(f"distilled (--KDstr {config.get('kd_strategy')}) from `{config.get('t_weights')}`")
    if config.get("quantized"):
        setup.append(f"QAT {config.get('quantized')} w{config.get('w_bit')}a{config.get('a_bit')}")
    lines = [f"# edgeyolo report: training run `{name}`", "", f"Rebuilt from `{run_dir}`: " + ", ".join(setup) + ".", ""]
    lines += [f"{len(rows)} epochs recorded; the last:", "", "```", _epoch_line(rows[-1]), "```", ""]
    for key, label in (("map50", "mAP@0.5"), ("map50_95", "mAP@0.5:0.95")):
        epochs, values = _series(rows, key)
        if values:
            best = max(range(len(values)), key=lambda i: values[i])
            lines.append(f"- best {label}: {values[best]:.4f} at epoch {int(epochs[best])}")
    captions = {"curves.png": "Losses and mAP per epoch", "sparsity.png": "Sparse training: small γ and the rate s"}
    lines += [""] + _figures_section(report, captions)
    report.files.append(atomic_write_text(out / REPORT_FILE, "\n".join(lines)))
    return report


# ------------------------------------------------------------------------------------------ history


@dataclass(frozen=True)
class HistoryPoint:
    """One (device, artifact) of a target in the results history: median latency over its complete
    runs, the newest mAP@0.5 any of them recorded, and the median FPS/W where power was read."""

    target: str
    device: str
    artifact: str
    runs: int
    latency_ms: float
    map50: float
    fps_per_w: float | None


def history_points(runs: Sequence[Any]) -> list[HistoryPoint]:
    """Group complete runs by (target, device, artifact); a group needs a latency and an mAP."""
    import statistics

    groups: dict[tuple, list] = {}
    for run in runs:  # newest first, as ResultsStore.runs returns them
        if run.status == "complete":
            groups.setdefault(run.group, []).append(run)
    points = []
    for (target, device, artifact), members in groups.items():
        latencies = [m.metrics["latency_ms.p50"] for m in members if _num(m.metrics.get("latency_ms.p50")) is not None]
        accuracy = next((m.metrics["map50"] for m in members if _num(m.metrics.get("map50")) is not None), None)
        if not latencies or accuracy is None:
            continue
        efficiency = [m.metrics["fps_per_w"] for m in members if _num(m.metrics.get("fps_per_w")) is not None]
        points.append(HistoryPoint(
            target, device or "-", artifact or "-", len(members), statistics.median(latencies), float(accuracy),
            statistics.median(efficiency) if efficiency else None,
        ))
    return points


def history_report(db: Path | None, out: Path) -> Report:
    """Per target: mAP@0.5 against latency p50 of every device/artifact in the results history, the
    Pareto front marked (``pareto-<target>.png``), and a table with FPS/W where power was read."""
    from edgeyolo.bench.results import ResultsStore
    from edgeyolo.fileio import atomic_write_text

    with ResultsStore(db, create=False) as store:
        points = history_points(store.runs(status="complete"))
        where = store.path
    report = Report("history", Path(out))
    if not points:
        raise UsageError(f"{where}: no complete run records both latency_ms.p50 and map50 (bench device --record --map, or bench suite rows)")
    by_target: dict[str, list[HistoryPoint]] = {}
    for p in points:
        by_target.setdefault(p.target, []).append(p)
    lines = [f"# Accuracy vs latency per target — {where}", ""]
    for target, members in sorted(by_target.items()):
        front = {id(members[i]) for i in pareto_front([(p.latency_ms, p.map50) for p in members])}
        fig = _figure(8, 5)
        ax = fig.add_subplot(1, 1, 1)
        for p in members:
            ax.plot([p.latency_ms], [p.map50], "o", color=_FRONT_COLOR if id(p) in front else _OTHER_COLOR)
            ax.annotate(f"{p.artifact} ({p.device})", (p.latency_ms, p.map50), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ordered = sorted((p for p in members if id(p) in front), key=lambda p: p.latency_ms)
        ax.step([p.latency_ms for p in ordered], [p.map50 for p in ordered], where="post", color=_FRONT_COLOR, linestyle="--", label="Pareto front")
        ax.set_xlabel("latency p50 (ms, median over runs)")
        ax.set_ylabel("mAP@0.5")
        ax.set_title(f"mAP@0.5 vs latency — {target}")
        ax.grid(True, alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
        name = f"pareto-{re.sub(r'[^A-Za-z0-9_.-]+', '_', target)}.png"
        report.files.append(_save(fig, report.out / name))
        lines += [f"## {target}", "", f"![{target}]({name})", "",
                  "| device | artifact | runs | latency p50 ms | mAP@0.5 | FPS/W | Pareto |", "|---|---|---|---|---|---|---|"]
        for p in sorted(members, key=lambda p: p.latency_ms):
            watts = f"{p.fps_per_w:.3g}" if p.fps_per_w is not None else "no power reading"
            lines.append(f"| {p.device} | {p.artifact} | {p.runs} | {p.latency_ms:.3g} | {p.map50:.4f} | {watts} | {'yes' if id(p) in front else ''} |")
        lines.append("")
    report.files.append(atomic_write_text(report.out / REPORT_FILE, "\n".join(lines)))
    return report
