"""``edgeyolo test``: mAP of a model on a dataset (pycocotools COCO, VOC07, VOC12)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from edgeyolo.cli.common import ImgSizeOpt, ModelCfgOpt, ModelWeightsOpt, check_img_size, load_cli_model, onnx_contract


def test(
    data: Path = typer.Option(..., "--data", help="darknet .data, Ultralytics .yaml, COCO .json or a VOC root."),
    cfg: Optional[str] = ModelCfgOpt,
    weights: Path = ModelWeightsOpt,
    img_size: Optional[int] = ImgSizeOpt,
    conf: float = typer.Option(0.001, "--conf", "--conf-thres", help="Score threshold (low: mAP needs the full PR curve)."),
    iou: float = typer.Option(0.6, "--iou", "--iou-thres", help="NMS IoU threshold."),
    metric: str = typer.Option("coco", "--metric", help="coco | voc07 | voc12."),
    split: str = typer.Option("val", "--split", help="Dataset split: train | val | test (val_region: the whole val region of a data tile set)."),
    backend: str = typer.Option("onnxruntime", "--backend", help="torch | onnxruntime | opencv."),
    threads: int = typer.Option(0, "--threads", help="Inference threads (0 = backend default)."),
    save_json: Optional[Path] = typer.Option(None, "--save-json", help="Write COCO-style detections here."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Sliced inference: run each image as tiles of this many px, scored over the whole image."),
    tile_overlap: str = typer.Option("0.2", "--tile-overlap", help="Overlap of the tiles: a fraction of --tile (0.2) or pixels (64, 64px)."),
) -> None:
    """Measure mAP@0.5 and mAP@0.5:0.95, precision, recall and per-class AP."""
    from rich.console import Console
    from rich.table import Table

    from edgeyolo.data.formats import load_dataset
    from edgeyolo.fileio import atomic_write_text, check_output_file
    from edgeyolo.log import track
    from edgeyolo.runtime.evaluate import evaluate_model
    from edgeyolo.runtime.sliced import Slicing
    from edgeyolo.train.metrics import coco_detections_json

    check_img_size(img_size)
    if save_json is not None:
        check_output_file(save_json, "--save-json")
    slicing = Slicing.of(tile, tile_overlap) if tile is not None else None
    dataset = load_dataset(data, split)
    progress = lambda s: track(s, f"test [{backend}]", len(dataset.samples))  # noqa: E731
    if weights.suffix.lower() == ".onnx":  # an exported file (QDQ int8 included), run as it is
        from edgeyolo.runtime.evaluate import evaluate_runner
        from edgeyolo.runtime.runners import OnnxRuntimeRunner

        contract = onnx_contract(weights, backend, img_size, conf_threshold=conf, iou_threshold=iou, max_detections=100)
        with OnnxRuntimeRunner(weights, contract, threads) as runner:
            ev = evaluate_runner(runner, contract, dataset, metric, progress, slicing)
    else:
        model = load_cli_model(cfg, weights, img_size=img_size)
        ev = evaluate_model(model, dataset, img_size, backend, metric, conf, iou, threads, progress=progress, slicing=slicing)
    size = ev.img_size
    for issue in ev.issues:
        typer.echo(f"warning: {issue}", err=True)
    if save_json:
        records = coco_detections_json(ev.detections, [s.image_id for s in ev.samples], dataset.category_ids)
        atomic_write_text(save_json, json.dumps(records))
    r = ev.result
    if as_json:
        tiling = {"tile": slicing.tile, "tile_overlap": slicing.overlap} if slicing else {}
        typer.echo(json.dumps({"data": str(data), "backend": backend, "img_size": size, **tiling, **r.to_dict()}, indent=1))
        return
    rows = r.table()
    sliced = f", tiles of {slicing.tile} px overlapping {slicing.overlap} px" if slicing else ""
    table = Table(title=f"{metric} on {data} ({split}, {r.num_images} images, {backend} @ {size}{sliced})")
    for i, col in enumerate(rows[0]):
        table.add_column(col, justify="left" if i == 0 else "right")
    for row in rows[1:]:
        table.add_row(*row)
    console = Console(width=120)
    console.print(table)
    console.print(f"mAP@0.5 {r.map50:.4f}   mAP@0.5:0.95 {r.map50_95:.4f}   P {r.precision:.3f}   R {r.recall:.3f}")


def register(app: typer.Typer) -> None:
    app.command("test")(test)
