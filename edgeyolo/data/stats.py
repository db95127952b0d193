"""Box size statistics per class, and a plot of them.

Sizes are in original-image pixels, or, with ``img_size``, in the pixels of the letterboxed network
input (each image scaled by ``img_size / max(width, height)``) — the size the detector sees. The
"small" fractions use a box's geometric size ``sqrt(w * h)`` (COCO's area-based convention: a box
is < 32 px when its area is below 32²).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeyolo.data.types import DetectionDataset
from edgeyolo.fileio import atomic_write_bytes


@dataclass(frozen=True)
class BoxSizeStats:
    class_id: int  # -1 for the all-classes row
    name: str
    count: int
    width: tuple[float, float, float]  # min, median, max (0s when count is 0)
    height: tuple[float, float, float]
    frac_lt16: float  # fraction of boxes with sqrt(w*h) < 16 px
    frac_lt32: float  # fraction of boxes with sqrt(w*h) < 32 px


@dataclass(frozen=True)
class BoxStatsReport:
    per_class: list[BoxSizeStats]
    overall: BoxSizeStats
    img_size: int | None  # None: original pixels


def box_sizes(ds: DetectionDataset, img_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(wh float64 [N, 2], classes int64 [N]) of every box; scaled to the letterboxed input with ``img_size``."""
    whs, classes = [], []
    for s in ds.samples:
        a = s.annotation
        if not len(a):
            continue
        wh = (a.boxes[:, 2:4] - a.boxes[:, 0:2]).astype(np.float64)
        if img_size:
            side = max(s.width, s.height)
            if side <= 0:
                continue
            wh = wh * (img_size / side)
        whs.append(wh)
        classes.append(a.classes)
    if not whs:
        return np.zeros((0, 2)), np.zeros(0, np.int64)
    return np.concatenate(whs), np.concatenate(classes).astype(np.int64)


def _summary(class_id: int, name: str, wh: np.ndarray) -> BoxSizeStats:
    if not len(wh):
        return BoxSizeStats(class_id, name, 0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), 0.0, 0.0)
    size = np.sqrt(wh[:, 0] * wh[:, 1])
    stat = lambda v: (float(v.min()), float(np.median(v)), float(v.max()))
    return BoxSizeStats(
        class_id, name, len(wh), stat(wh[:, 0]), stat(wh[:, 1]), float((size < 16).mean()), float((size < 32).mean())
    )


def box_stats(ds: DetectionDataset, img_size: int | None = None) -> BoxStatsReport:
    """Per-class width/height min/median/max and small-box fractions (see the module doc)."""
    wh, classes = box_sizes(ds, img_size)
    per_class = [_summary(i, name, wh[classes == i]) for i, name in enumerate(ds.names)]
    return BoxStatsReport(per_class, _summary(-1, "all", wh), img_size)


def plot_box_stats(ds: DetectionDataset, out_png: str | Path, img_size: int | None = None) -> Path:
    """A PNG: box width/height scatter by class, boxes per class, and box-size histogram per class."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    wh, classes = box_sizes(ds, img_size)
    unit = f"px @ {img_size} input" if img_size else "px"
    fig = Figure(figsize=(15, 4.8), dpi=100)
    FigureCanvasAgg(fig)
    ax_scatter, ax_counts, ax_hist = fig.subplots(1, 3)
    cmap = _colors(len(ds.names))
    for i, name in enumerate(ds.names):
        sel = classes == i
        if sel.any():
            ax_scatter.scatter(wh[sel, 0], wh[sel, 1], s=6, alpha=0.5, color=cmap[i], label=name)
    ax_scatter.set_xlabel(f"box width ({unit})")
    ax_scatter.set_ylabel(f"box height ({unit})")
    ax_scatter.set_title("box sizes")
    if len(wh) and (wh > 0).all():
        ax_scatter.set_xscale("log")
        ax_scatter.set_yscale("log")
        _plain_log_ticks(ax_scatter.xaxis, ax_scatter.yaxis)
    if 0 < len(ds.names) <= 20:
        ax_scatter.legend(fontsize="small", markerscale=2)

    counts = np.bincount(classes[(classes >= 0) & (classes < len(ds.names))], minlength=len(ds.names))
    ax_counts.bar(range(len(ds.names)), counts, color=cmap)
    ax_counts.set_title("boxes per class")
    ax_counts.set_ylabel("boxes")
    if len(ds.names) <= 30:
        ax_counts.set_xticks(range(len(ds.names)))
        ax_counts.set_xticklabels(ds.names, rotation=60, ha="right", fontsize="small")

    size = np.sqrt(wh[:, 0] * wh[:, 1]) if len(wh) else np.zeros(0)
    if len(size) and size.max() > 0:
        bins = np.geomspace(max(size[size > 0].min(), 0.5), size.max() * 1.01, 30)
        for i, name in enumerate(ds.names):
            sel = (classes == i) & (size > 0)
            if sel.any():
                ax_hist.hist(size[sel], bins=bins, histtype="step", color=cmap[i], label=name)
        ax_hist.set_xscale("log")
        _plain_log_ticks(ax_hist.xaxis)
        for edge in (16, 32):
            ax_hist.axvline(edge, color="grey", linestyle=":", linewidth=1)
    ax_hist.set_xlabel(f"sqrt(w·h) ({unit})")
    ax_hist.set_ylabel("boxes")
    ax_hist.set_title("box size per class")
    fig.suptitle(f"{Path(ds.source).name or ds.source}: {len(wh)} boxes in {len(ds.samples)} images")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return atomic_write_bytes(Path(out_png), buffer.getvalue())


def _plain_log_ticks(*axes) -> None:
    """Log axes labelled 1, 2, 5, 10, 20, 50, ... instead of 2x10^1."""
    from matplotlib.ticker import FuncFormatter

    def label(value, _pos):
        if value <= 0:
            return ""
        mantissa = value / 10 ** np.floor(np.log10(value) + 1e-9)
        return f"{value:g}" if any(abs(mantissa - m) < 1e-6 for m in (1, 2, 5)) else ""

    for axis in axes:
        axis.set_major_formatter(FuncFormatter(label))
        axis.set_minor_formatter(FuncFormatter(label))


def _colors(n: int) -> list:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if n > 10 else "tab10"]
    return [cmap(i % cmap.N) for i in range(max(n, 1))][: max(n, 1)] if n else []
