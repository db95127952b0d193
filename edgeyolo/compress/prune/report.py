"""What a pruning run did, per conv layer and in total, as JSON (for tools), Markdown (for people) and
a bar chart of the channels per conv layer.

Layer numbers are the original cfg's throughout, with each surviving conv's new number beside it,
so a row can be traced in both files. Parameters and BFLOPs use ``layer_table``'s darknet-AB
convention at the cfg's input size, the numbers ``edgeyolo info`` prints.
"""
from __future__ import annotations

import dataclasses
import io
import json
from dataclasses import dataclass

from edgeyolo.compress.prune.methods import PruneResult
from edgeyolo.model.cfg import layer_table


@dataclass(frozen=True)
class LayerRow:
    layer: int
    new_layer: int | None  # None: deleted with its residual block
    filters_before: int
    filters_after: int
    params_before: int
    params_after: int
    bflops_before: float
    bflops_after: float
    status: str  # pruned | kept | deleted (...) | protected: why


@dataclass(frozen=True)
class Accuracy:
    """mAP of the model before and after pruning on one dataset split, measured as ``edgeyolo test`` does."""

    data: str
    split: str
    backend: str
    img_size: int
    images: int
    map50: tuple[float, float]
    map50_95: tuple[float, float]


def _stage_origins(result: PruneResult) -> list[dict[int, int]]:
    """For each stage, its input layer → original layer."""
    origins = [{i: i for i in range(len(result.source.layers))}]
    for stage in result.stages:
        origins.append({stage.layer_map[i]: o for i, o in origins[-1].items() if i in stage.layer_map})
    return origins


def build_report(result: PruneResult, accuracy: Accuracy | None = None) -> dict[str, object]:
    origins = _stage_origins(result)
    final = result.model.cfg
    back = {o: i for i, o in origins[-1].items()}  # original → final
    before = {r.index: r for r in layer_table(result.source)}
    after = {r.index: r for r in layer_table(final)}
    protected: dict[int, str] = {}
    deleted: dict[int, str] = {}
    stages = []
    for stage, origin in zip(result.stages, origins[:-1], strict=True):
        sel = stage.selection
        for i, why in sel.protected.items():
            protected.setdefault(origin[i], why)
        blocks = [origin[s] for s in sel.plan.blocks]
        for s in sel.plan.blocks:
            for j in range(stage.cfg.layers[s].source + 1, s + 1):
                deleted.setdefault(origin[j], f"deleted: residual block of shortcut {origin[s]}")
        stages.append(
            {
                "method": sel.method,
                "rankings": {name: dataclasses.asdict(stats) for name, stats in sel.rankings.items()},
                "pruned_channels": int(sum(int((~m).sum()) for m in sel.plan.masks.values())),
                "deleted_blocks": blocks,
                "block_scores": {origin[i]: round(score, 6) for i, score in sel.block_scores.items()},
            }
        )
    rows = []
    for layer in result.source.conv_layers:
        i = layer.index
        j = back.get(i)
        filters_after = final.layers[j].filters if j is not None else 0
        if i in deleted:
            status = deleted[i]
        elif filters_after < layer.filters:
            status = "pruned"
        elif i in protected:
            status = f"protected: {protected[i]}"
        else:
            status = "kept"
        rows.append(
            LayerRow(
                i,
                j,
                layer.filters,
                filters_after,
                before[i].params,
                after[j].params if j is not None else 0,
                round(before[i].bflops, 6),
                round(after[j].bflops, 6) if j is not None else 0.0,
                status,
            )
        )
    totals = {
        "layers": [len(result.source.layers), len(final.layers)],
        "conv_channels": [sum(r.filters_before for r in rows), sum(r.filters_after for r in rows)],
        "params": [sum(r.params for r in before.values()), sum(r.params for r in after.values())],
        "bflops": [round(sum(r.bflops for r in before.values()), 6), round(sum(r.bflops for r in after.values()), 6)],
    }
    report: dict[str, object] = {
        "method": result.config.method,
        "config": result.config.to_dict(),
        "source_cfg": str(result.source.path),
        "img_size": [result.source.net.height, result.source.net.width],
        "seconds": round(result.seconds, 3),
        "totals": totals,
    }
    if accuracy is not None:
        report["accuracy"] = dataclasses.asdict(accuracy)
    report.update(
        {
            "stages": stages,
            "protected": {i: why for i, why in sorted(protected.items())},
            "layers": [dataclasses.asdict(r) for r in rows],
        }
    )
    return report


def report_json(report: dict[str, object]) -> str:
    return json.dumps(report, indent=1, ensure_ascii=False) + "\n"


def _change(before: float, after: float) -> str:
    return f"{(after - before) / before:+.1%}" if before else ""


def report_markdown(report: dict[str, object]) -> str:
    totals = report["totals"]
    h, w = report["img_size"]
    config = ", ".join(f"{k}={v}" for k, v in report["config"].items() if k != "method" and v not in (None, {}, ()))
    lines = [
        f"# Pruning report: {report['method']}",
        "",
        f"Source `{report['source_cfg']}` at {w}x{h}; {config}; {report['seconds']} s.",
        "",
        "| | before | after | change |",
        "|---|---:|---:|---:|",
    ]
    labels = {"layers": "layers", "conv_channels": "conv channels", "params": "parameters", "bflops": "BFLOPs"}
    for key, label in labels.items():
        b, a = totals[key]
        shown = "{:,.3f}" if key == "bflops" else "{:,}"
        lines.append(f"| {label} | {shown.format(b)} | {shown.format(a)} | {_change(b, a)} |")
    accuracy = report.get("accuracy")
    if accuracy:
        for key, label in (("map50", "mAP@0.5"), ("map50_95", "mAP@0.5:0.95")):
            b, a = accuracy[key]
            lines.append(f"| {label} | {b:.4f} | {a:.4f} | {a - b:+.4f} |")
        lines += [
            "",
            f"mAP measured as `edgeyolo test` does: {accuracy['images']} images of `{accuracy['data']}` "
            f"({accuracy['split']}) through {accuracy['backend']} at {accuracy['img_size']} px.",
        ]
    for number, stage in enumerate(report["stages"], start=1):
        lines += ["", f"## Stage {number}: {stage['method']}", ""]
        for name, r in stage["rankings"].items():
            where = "" if name == "all" else f"group {name}: "
            threshold = "none" if r["threshold"] is None else f"{r['threshold']:.4g}"
            lines.append(
                f"- {where}{r['channels']} ranked channels in {r['layers']} layers; removed {r['percent']:.2%} "
                f"(largest safe {r['safe_percent']:.2%}); lowest kept score {threshold}"
            )
        if stage["rankings"]:
            lines.append(f"- {stage['pruned_channels']} channels pruned")
        if stage["deleted_blocks"]:
            lines.append(f"- deleted the residual blocks of shortcuts {', '.join(map(str, stage['deleted_blocks']))}")
    lines += [
        "",
        "## Convolutional layers",
        "",
        "| layer | new | filters | params | BFLOPs | status |",
        "|---:|---:|---|---|---|---|",
    ]
    for r in report["layers"]:
        new = "" if r["new_layer"] is None else str(r["new_layer"])
        lines.append(
            f"| {r['layer']} | {new} | {r['filters_before']} → {r['filters_after']} | "
            f"{r['params_before']:,} → {r['params_after']:,} | {r['bflops_before']:.4f} → {r['bflops_after']:.4f} | "
            f"{r['status']} |"
        )
    return "\n".join(lines) + "\n"


def summary_line(report: dict[str, object]) -> str:
    """One line for the CLI: what shrank by how much."""
    t = report["totals"]
    parts = [
        f"conv channels {t['conv_channels'][0]:,} → {t['conv_channels'][1]:,}",
        f"params {t['params'][0] / 1e6:.2f}M → {t['params'][1] / 1e6:.2f}M",
        f"BFLOPs {t['bflops'][0]:.3f} → {t['bflops'][1]:.3f} ({_change(t['bflops'][0], t['bflops'][1])})",
    ]
    if t["layers"][0] != t["layers"][1]:
        parts.insert(0, f"layers {t['layers'][0]} → {t['layers'][1]}")
    accuracy = report.get("accuracy")
    if accuracy:
        (b50, a50), (b, a) = accuracy["map50"], accuracy["map50_95"]
        parts.append(f"mAP@0.5 {b50:.4f} → {a50:.4f}, mAP@0.5:0.95 {b:.4f} → {a:.4f}")
    return f"prune {report['method']}: " + ", ".join(parts) + f" in {report['seconds']:.2f} s"


def channels_png(report: dict[str, object]) -> bytes:
    """PNG of every conv layer's output channels before (grey) and after (blue) pruning.

    Deleted layers are outlined in red; the figure widens with the layer count so that yolov4's
    110 convs stay readable.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = report["layers"]
    x = list(range(len(rows)))
    before = [r["filters_before"] for r in rows]
    after = [r["filters_after"] for r in rows]
    deleted = [r["status"].startswith("deleted") for r in rows]
    fig = Figure(figsize=(max(8.0, 0.11 * len(rows) + 2), 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.bar(x, before, width=0.85, color="#c8ccd2", label="before")
    ax.bar(x, after, width=0.85, color="#3b75af", label="after")
    if any(deleted):
        gone = [i for i, d in enumerate(deleted) if d]
        ax.bar(gone, [before[i] for i in gone], width=0.85, fill=False, edgecolor="#c0392b", label="deleted")
    step = max(1, len(rows) // 40)
    ax.set_xticks(x[::step], [str(r["layer"]) for r in rows][::step], rotation=90, fontsize=7)
    ax.set_xlim(-0.8, len(rows) - 0.2)
    ax.set_xlabel("conv layer (original cfg numbering)")
    ax.set_ylabel("output channels")
    channels, bflops = report["totals"]["conv_channels"], report["totals"]["bflops"]
    ax.set_title(
        f"prune {report['method']}: conv channels {channels[0]:,} → {channels[1]:,}, "
        f"BFLOPs {bflops[0]:.3f} → {bflops[1]:.3f} ({_change(bflops[0], bflops[1])})"
    )
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
