"""What a pruning run did, per conv layer and in total, as JSON (for tools) and Markdown (for people).

Layer numbers are the original cfg's throughout, with each surviving conv's new number beside it,
so a row can be traced in both files. Parameters and BFLOPs use ``layer_table``'s darknet-AB
convention at the cfg's input size, the numbers ``edgeyolo info`` prints.
"""
from __future__ import annotations

import dataclasses
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


def _stage_origins(result: PruneResult) -> list[dict[int, int]]:
    """For each stage, its input layer → original layer."""
    origins = [{i: i for i in range(len(result.source.layers))}]
    for stage in result.stages:
        origins.append({stage.layer_map[i]: o for i, o in origins[-1].items() if i in stage.layer_map})
    return origins


def build_report(result: PruneResult) -> dict[str, object]:
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
    return {
        "method": result.config.method,
        "config": result.config.to_dict(),
        "source_cfg": str(result.source.path),
        "img_size": [result.source.net.height, result.source.net.width],
        "seconds": round(result.seconds, 3),
        "totals": totals,
        "stages": stages,
        "protected": {i: why for i, why in sorted(protected.items())},
        "layers": [dataclasses.asdict(r) for r in rows],
    }


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
    return f"prune {report['method']}: " + ", ".join(parts) + f" in {report['seconds']:.2f} s"

