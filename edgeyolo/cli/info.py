"""``edgeyolo info``: per-layer table and totals for a cfg."""
from __future__ import annotations

import json
from dataclasses import asdict
from typing import Optional

import typer

from edgeyolo.cli.common import CfgOpt, ImgSizeOpt, check_img_size


def info(cfg: str = CfgOpt, img_size: Optional[int] = ImgSizeOpt, as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Show every layer: type, filters, size/stride, input -> output shape, BFLOPs, parameters."""
    from rich.console import Console
    from rich.table import Table

    from edgeyolo.model.cfg import layer_table, parse_cfg
    from edgeyolo.model.zoo import resolve_cfg

    check_img_size(img_size)
    parsed = parse_cfg(resolve_cfg(cfg))
    rows = layer_table(parsed, img_size)
    size = img_size or parsed.net.height
    total = sum(r.bflops for r in rows)
    conv = sum(r.bflops for r in rows if r.type == "convolutional")
    params = sum(r.params for r in rows)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "cfg": str(parsed.path),
                    "img_size": size,
                    "layers": [asdict(r) for r in rows],
                    "bflops": round(total, 6),
                    "bflops_conv": round(conv, 6),
                    "params": params,
                    "classes": parsed.num_classes,
                },
                indent=1,
            )
        )
        return
    table = Table(title=f"{parsed.path} @ {size}x{size}")
    for col in ("layer", "type", "filters", "size", "input", "output", "BFLOPs"):
        table.add_column(col, justify="right" if col in ("layer", "filters", "BFLOPs") else "left")
    fmt = lambda s: "x".join(str(v) for v in (s[1], s[2], s[0]))  # noqa: E731 - darknet prints W x H x C
    for r in rows:
        table.add_row(str(r.index), r.type, "" if r.filters is None else str(r.filters), r.size, fmt(r.input), fmt(r.output), f"{r.bflops:.3f}" if r.bflops else "")
    console = Console(width=120)
    console.print(table)
    console.print(f"Total BFLOPs {total:.3f} (darknet-AB convention: conv 2·MAC + maxpool + shortcut)")
    console.print(f"Conv BFLOPs  {conv:.3f}")
    console.print(f"Parameters   {params:,}")


def register(app: typer.Typer) -> None:
    app.command("info")(info)
