"""``edgeyolo data convert|tile|check|stats|anchors|synth``: dataset conversion, tiling, health checks, box stats, anchors.

Label problems are printed as ``file:line: message`` lines and fail a command only with
``data check --strict``; otherwise only a dataset that cannot be read at all (an ``EdgeYoloError``)
gives a non-zero exit.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeyolo.cli.synth import synth
from edgeyolo.errors import UsageError
from edgeyolo.fileio import check_output_file

app = typer.Typer(help="Convert, check and measure detection datasets; compute anchors.", no_args_is_help=True)

DataOpt = typer.Option(..., "--data", help="Dataset: darknet .data, Ultralytics .yaml, COCO .json, or VOC root / xml folder.")
SplitOpt = typer.Option("val", "--split", help="Split to read: train, val or test (COCO json / VOC xml folder: ignored).")
ImagesOpt = typer.Option(None, "--images", help="Image folder of a COCO json (default: beside the json).")
NamesOpt = typer.Option(None, "--names", help="Class names file for VOC (default: sorted names found).")
MaxIssuesOpt = typer.Option(50, "--max-issues", help="Print at most this many issue lines (0: all).")
MapOpt = typer.Option(None, "--map", help="VOC: rename a class before the names apply, SOURCE=TARGET (repeatable), e.g. --map Alive=Tree.")
DropUnknownOpt = typer.Option(False, "--drop-unknown", help="VOC: drop boxes of classes outside --names (default: an error at the first such box).")


def _console():
    from rich.console import Console

    return Console(width=120, highlight=False)


def _esc(text) -> str:
    from rich.markup import escape

    return escape(str(text))


def _print_issues(issues, limit: int) -> None:
    shown = issues if limit <= 0 else issues[:limit]
    for issue in shown:
        typer.echo(str(issue))
    if len(issues) > len(shown):
        typer.echo(f"... and {len(issues) - len(shown)} more issue(s) (show all with --max-issues 0)")


def _load(data: str, split: str, images: Optional[Path], names: Optional[Path]):
    from edgeyolo.data.formats import load_dataset

    return load_dataset(data, split, image_root=images, names=names)


# ------------------------------------------------------------------------------------------ convert


@app.command("convert")
def convert_cmd(
    src_format: str = typer.Option(..., "--from", help="Source format: voc, coco, oxfordhand or yolo."),
    dst_format: str = typer.Option("yolo", "--to", help="Target format: yolo (Ultralytics layout) or coco (from yolo)."),
    src: Path = typer.Option(..., "--src", help="Source: VOC root / xml folder, COCO json, Oxford hand folder, or a dataset for --to coco."),
    out: Path = typer.Option(..., "--out", help="Output folder (--to yolo) or .json file (--to coco)."),
    names: Optional[Path] = NamesOpt,
    images: Optional[Path] = ImagesOpt,
    split: Optional[str] = typer.Option(None, "--split", help="COCO → yolo: split to write (default from the json name); yolo → coco: split to read (default val)."),
    keep_difficult: bool = typer.Option(False, "--keep-difficult", help="VOC: keep difficult boxes as ordinary boxes (default: drop them)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="VOC without a val list or folder: fraction of images (stable hash, at least one) put in val."),
    copy: bool = typer.Option(False, "--copy", help="Copy images (default: hard links where possible, else copies; never symlinks)."),
    class_map: Optional[list[str]] = MapOpt,
    drop_unknown: bool = DropUnknownOpt,
    max_issues: int = MaxIssuesOpt,
) -> None:
    """Convert VOC / COCO / Oxford hand to the Ultralytics YOLO layout, or a YOLO dataset to COCO json."""
    from edgeyolo.data import convert

    src_format, dst_format = src_format.lower(), dst_format.lower()
    if dst_format == "coco":
        check_output_file(out, "--out")
    if names is not None and src_format != "voc":
        raise UsageError("--names applies to --from voc only (other formats name their classes)")
    if (class_map or drop_unknown) and src_format != "voc":
        raise UsageError("--map and --drop-unknown apply to --from voc only")
    if dst_format == "yolo":
        if src_format == "voc":
            result = convert.voc_to_yolo(
                src, out, names, keep_difficult=keep_difficult, val_fraction=val_fraction, image_root=images, link=not copy,
                class_map=class_map, drop_unknown=drop_unknown,
            )
        elif src_format == "coco":
            result = convert.coco_to_yolo(src, images, out, split=split, link=not copy)
        elif src_format == "oxfordhand":
            result = convert.oxfordhand_to_yolo(src, out, link=not copy)
        else:
            raise UsageError(f"--from {src_format} --to yolo is not supported; --from is one of voc, coco, oxfordhand")
    elif dst_format == "coco":
        if src_format not in ("yolo", "darknet", "ultralytics", "voc"):
            raise UsageError(f"--from {src_format} --to coco is not supported; use --from yolo (any readable dataset)")
        dataset = _load(str(src), split or "val", images, names)
        result = convert.yolo_to_coco(dataset, out, image_root=None)
    else:
        raise UsageError(f"--to {dst_format}: expected yolo or coco")
    _print_issues(result.issues, max_issues)
    for note in result.notes:
        typer.echo(f"note: {note}")
    counts = ", ".join(f"{split_}: {result.images[split_]} images / {result.boxes.get(split_, 0)} boxes" for split_ in result.images)
    target = result.data_yaml if dst_format == "yolo" else result.out
    typer.echo(f"wrote {target} ({len(result.names)} classes: {', '.join(result.names)}; {counts}; {len(result.issues)} issue(s))")


# ------------------------------------------------------------------------------------------ tile


@app.command("tile")
def tile_cmd(
    src: Path = typer.Option(..., "--src", help="Large annotated images: VOC xml file / folder / root, COCO json, or a YOLO dataset (.yaml / .data)."),
    out: Path = typer.Option(..., "--out", help="New (or empty) folder for the tiled YOLO dataset."),
    size: int = typer.Option(416, "--size", help="Tile side in pixels (tiles may be smaller than the training size)."),
    overlap: str = typer.Option("0.2", "--overlap", help="Overlap of neighbouring tiles: a fraction of --size (0.2) or pixels (64, 64px)."),
    min_visible: float = typer.Option(0.5, "--min-visible", help="Keep a clipped box when at least this fraction of its area is in the tile."),
    val_region: Optional[str] = typer.Option(None, "--val-region", help="X0,Y0,X1,Y1 (pixels): this rectangle of each image is val, tiled on its own."),
    val_below: Optional[int] = typer.Option(None, "--val-below", help="Rows y >= this (pixels) are val, tiled on their own."),
    gap: int = typer.Option(0, "--gap", help="Band of this many px around the val region left out of train."),
    val_fraction: Optional[float] = typer.Option(None, "--val-fraction", help="Instead of a region: whole images to val by a stable hash."),
    names: Optional[Path] = NamesOpt,
    class_map: Optional[list[str]] = MapOpt,
    drop_unknown: bool = DropUnknownOpt,
    images: Optional[Path] = typer.Option(None, "--images", help="Image folder (COCO json; VOC xml whose images are elsewhere)."),
    max_issues: int = MaxIssuesOpt,
) -> None:
    """Cut large annotated images into tiles: a YOLO dataset split by region (no object in two splits)."""
    from edgeyolo.data.tile import TileConfig, parse_overlap, parse_region, tile_dataset

    config = TileConfig(
        size=size,
        overlap=parse_overlap(overlap, size) if size > 0 else 0,
        min_visible=min_visible,
        val_region=parse_region(val_region) if val_region is not None else None,
        val_below=val_below,
        gap=gap,
        val_fraction=val_fraction,
    )
    result = tile_dataset(src, out, config, names, class_map=class_map, drop_unknown=drop_unknown, image_root=images)
    _print_issues(result.issues, max_issues)
    for note in result.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"tiles of {config.size} px, overlap {config.overlap} px, boxes kept at >= {config.min_visible:g} visible")
    for split, c in result.counts.items():
        what = "image" if split == "val_region" else "tiles"
        typer.echo(f"  {split}: {c.images} {what}, {c.boxes} boxes of {c.objects} objects ({c.whole} seen whole)")
    typer.echo(f"objects in both train and val: {result.shared_objects}")
    typer.echo(f"wrote {result.data_yaml} ({len(result.names)} classes: {', '.join(result.names)}; {len(result.issues)} issue(s))")


# ------------------------------------------------------------------------------------------ check


@app.command("check")
def check_cmd(
    data: str = DataOpt,
    split: str = SplitOpt,
    images: Optional[Path] = ImagesOpt,
    names: Optional[Path] = NamesOpt,
    no_decode: bool = typer.Option(False, "--no-decode", help="Skip decoding every image (faster; misses truncated data)."),
    strict: bool = typer.Option(False, "--strict", help="Exit non-zero when any label issue or missing/corrupt image is found."),
    max_issues: int = MaxIssuesOpt,
) -> None:
    """Report label issues, missing/corrupt/duplicate images, empty images, classes and boxes per image."""
    from rich.table import Table

    from edgeyolo.data.check import check_dataset

    ds = _load(data, split, images, names)
    report = check_dataset(ds, decode=not no_decode)
    _print_issues(report.issues, max_issues)
    console = _console()
    table = Table(title=_esc(f"{report.source} [{split}]"), title_justify="left")
    table.add_column("class", justify="right")
    table.add_column("name")
    table.add_column("boxes", justify="right")
    table.add_column("images", justify="right")
    for i, name in enumerate(report.names):
        table.add_row(str(i), _esc(name), str(report.class_histogram[i]), str(report.images_per_class[i]))
    console.print(table)
    summary = Table(show_header=False, box=None)
    summary.add_column(justify="left")
    summary.add_column(justify="right")
    rows = [
        ("images", report.num_images),
        ("boxes", report.num_boxes),
        ("difficult boxes", report.difficult_boxes),
        ("empty images (no boxes)", report.empty_images),
        ("boxes per image (mean / max)", f"{report.mean_boxes_per_image:.2f} / {report.max_boxes_per_image}"),
        ("label issues", len(report.label_issues)),
        ("missing images", len(report.missing_images)),
        ("corrupt images", len(report.corrupt_images)),
        ("duplicate image groups", len(report.duplicates)),
    ]
    for key, value in rows:
        summary.add_row(key, str(value))
    console.print(summary)
    for group in report.duplicates:
        typer.echo("duplicate images: " + ", ".join(str(p) for p in group))
    if strict:
        report.require_clean()  # after the report: the error line comes last, on stderr


# ------------------------------------------------------------------------------------------ stats


@app.command("stats")
def stats_cmd(
    data: str = DataOpt,
    split: str = SplitOpt,
    images: Optional[Path] = ImagesOpt,
    names: Optional[Path] = NamesOpt,
    img_size: Optional[int] = typer.Option(None, "--img-size", help="Measure boxes in a letterboxed input of this size (default: original pixels)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG: w/h scatter, boxes per class, size histogram."),
    max_issues: int = MaxIssuesOpt,
) -> None:
    """Box width/height per class (min / median / max) and the fraction of small boxes."""
    from rich.table import Table

    from edgeyolo.data.stats import box_stats, plot_box_stats

    if img_size is not None and img_size <= 0:
        raise UsageError(f"--img-size must be positive, got {img_size}")
    if plot is not None:
        check_output_file(plot, "--plot")
    ds = _load(data, split, images, names)
    _print_issues(ds.issues, max_issues)
    report = box_stats(ds, img_size)
    unit = f"px @ {img_size}" if img_size else "px"
    table = Table(title=f"box sizes ({unit}); small = sqrt(w·h)", title_justify="left")
    for col in ("class", "name", "boxes", "w min/med/max", "h min/med/max", "< 16 px", "< 32 px"):
        table.add_column(col, justify="left" if col == "name" else "right")
    fmt = lambda t: "/".join(f"{v:.0f}" if v >= 10 else f"{v:.1f}" for v in t)
    for row in [*report.per_class, report.overall]:
        table.add_row(
            "" if row.class_id < 0 else str(row.class_id), _esc(row.name), str(row.count),
            fmt(row.width) if row.count else "-", fmt(row.height) if row.count else "-",
            f"{row.frac_lt16:.1%}" if row.count else "-", f"{row.frac_lt32:.1%}" if row.count else "-",
        )
    _console().print(table)
    if plot is not None:
        typer.echo(f"wrote {plot_box_stats(ds, plot, img_size)}")


# ------------------------------------------------------------------------------------------ anchors


@app.command("anchors")
def anchors_cmd(
    data: str = DataOpt,
    split: str = typer.Option("train", "--split", help="Split whose boxes are clustered (default train)."),
    n: Optional[int] = typer.Option(None, "--n", help="Number of anchors (default: what --cfg's masks use, else 9)."),
    img_size: int = typer.Option(416, "--img-size", "--img_size", help="Network input size the boxes are letterboxed to."),
    seed: int = typer.Option(0, "--seed", help="k-means seed."),
    cfg: Optional[str] = typer.Option(None, "--cfg", help="darknet .cfg or zoo name to write the anchors into."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the cfg with the new anchors (needs --cfg)."),
    images: Optional[Path] = ImagesOpt,
    names: Optional[Path] = NamesOpt,
    max_issues: int = MaxIssuesOpt,
) -> None:
    """k-means anchors (1 - IoU distance) for a dataset; optionally write them into a cfg."""
    from rich.table import Table

    from edgeyolo.data.anchors import (
        anchor_recall,
        avg_best_iou,
        check_anchor_layout,
        iou_wh,
        kmeans_anchors,
        letterbox_wh,
        write_anchors,
    )

    if img_size <= 0:
        raise UsageError(f"--img-size must be positive, got {img_size}")
    if out is not None and cfg is None:
        raise UsageError("--out writes a cfg with the new anchors: give --cfg too")
    if out is not None:
        check_output_file(out, "--out")
    parsed = None
    if cfg is not None:
        from edgeyolo.model.cfg import parse_cfg
        from edgeyolo.model.zoo import resolve_cfg

        parsed = parse_cfg(resolve_cfg(cfg))
        if n is None:
            n = sum(len(h.mask) for h in parsed.yolo_layers) or 9
        if out is not None:
            check_anchor_layout(parsed, n)  # fail before the (possibly long) clustering
    n = 9 if n is None else n
    ds = _load(data, split, images, names)
    _print_issues(ds.issues, max_issues)
    wh = letterbox_wh(ds, img_size)
    anchors = kmeans_anchors(wh, n, img_size, seed=seed)
    assigned = iou_wh(wh, anchors).argmax(axis=1) if len(wh) else []
    counts = [int((assigned == k).sum()) for k in range(n)] if len(wh) else [0] * n
    typer.echo(f"{n} anchors for {len(wh)} boxes, letterboxed to {img_size}x{img_size}:")
    table = Table()
    for col in ("#", "w", "h", "boxes"):
        table.add_column(col, justify="right")
    for k, (w, h) in enumerate(anchors):
        table.add_row(str(k), f"{w:.1f}", f"{h:.1f}", str(counts[k]))
    console = _console()
    console.print(table)
    typer.echo(f"anchors = {', '.join(f'{w:.0f},{h:.0f}' for w, h in anchors)}")
    typer.echo(f"mean IoU of each box with its best anchor: {avg_best_iou(wh, anchors):.3f} (recall@0.25: {anchor_recall(wh, anchors):.3f})")
    if parsed is not None and parsed.yolo_layers:
        old = parsed.yolo_layers[0].anchors
        typer.echo(f"the cfg's current anchors: mean best IoU {avg_best_iou(wh, old):.3f}")
        if parsed.net.width != img_size or parsed.net.height != img_size:
            typer.echo(f"note: the cfg's input is {parsed.net.width}x{parsed.net.height}, the anchors were computed for {img_size}x{img_size}")
    if out is not None and parsed is not None:
        from edgeyolo.model.cfg import write_cfg

        typer.echo(f"wrote {write_cfg(write_anchors(parsed, anchors), out)}")


app.command("synth")(synth)  # last: 'data --help' lists it after the commands above


def register(root: typer.Typer) -> None:
    """The ``data`` group."""
    root.add_typer(app, name="data")
