"""``edgeyolo detect``: run a model on images, folders, videos, cameras and streams."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from edgeyolo.cli.common import ImgSizeOpt, ModelCfgOpt, ModelWeightsOpt, check_img_size, darknet_files, load_cli_model, onnx_contract

BACKENDS = ("torch", "onnxruntime", "opencv")


def detect(
    cfg: Optional[str] = ModelCfgOpt,
    weights: Path = ModelWeightsOpt,
    source: str = typer.Option("data/samples", "--source", help="Image, folder, glob, video, webcam index, RTSP/HTTP URL or GStreamer pipeline."),
    output: Path = typer.Option(Path("output"), "--output", help="Folder for annotated images/videos and labels."),
    img_size: Optional[int] = ImgSizeOpt,
    conf: float = typer.Option(0.25, "--conf", "--conf-thres", help="Score threshold (objectness x class)."),
    iou: float = typer.Option(0.45, "--iou", "--iou-thres", help="NMS IoU threshold."),
    classes: Optional[List[int]] = typer.Option(None, "--classes", help="Keep only these class ids (repeatable)."),
    agnostic_nms: bool = typer.Option(False, "--agnostic-nms", help="NMS across classes."),
    max_det: int = typer.Option(100, "--max-det", help="Detections kept per image."),
    backend: str = typer.Option("torch", "--backend", help="torch | onnxruntime | opencv."),
    threads: int = typer.Option(0, "--threads", help="Inference threads (0 = backend default)."),
    save_json: bool = typer.Option(False, "--save-json", help="Write DIR/detections.json (COCO style)."),
    save_txt: bool = typer.Option(False, "--save-txt", help="Write DIR/labels/<stem>.txt (YOLO format + score)."),
    no_save: bool = typer.Option(False, "--no-save", help="Do not write annotated images/videos."),
    names: Optional[Path] = typer.Option(None, "--names", help=".names file with class names."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset file (.yaml/.data/COCO json) to take names from."),
    tile: Optional[int] = typer.Option(None, "--tile", help="Sliced inference: run each image as tiles of this many px, merged across the seams."),
    tile_overlap: str = typer.Option("0.2", "--tile-overlap", help="Overlap of the tiles: a fraction of --tile (0.2) or pixels (64, 64px)."),
) -> None:
    """Detect objects; the same letterbox, decode and NMS for every backend."""
    from edgeyolo.contract import Contract, channel_order_for
    from edgeyolo.errors import UsageError
    from edgeyolo.log import track
    from edgeyolo.runtime.detect import run_detect
    from edgeyolo.runtime.runners import make_runner
    from edgeyolo.runtime.sliced import Slicing

    check_img_size(img_size)
    slicing = Slicing.of(tile, tile_overlap) if tile is not None else None
    if backend not in BACKENDS:
        raise UsageError(f"--backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    if names and data:
        raise UsageError("give --names or --data, not both")
    thresholds = dict(conf_threshold=conf, iou_threshold=iou, max_detections=max_det, agnostic_nms=agnostic_nms,
                      classes=tuple(classes) if classes else None)
    if weights.suffix.lower() == ".onnx":  # an exported file (QDQ int8 included), run as it is
        from edgeyolo.runtime.runners import OnnxRuntimeRunner

        contract = onnx_contract(weights, backend, img_size, **thresholds)
        runner_cm = OnnxRuntimeRunner(weights, contract, threads)
        num_classes = int(runner_cm.session.get_outputs()[0].shape[-1]) - 5  # [B, N, 5 + C]
    else:
        model = load_cli_model(cfg, weights, img_size=img_size)
        size = img_size or model.cfg.net.height
        contract = Contract(size, size, channel_order=channel_order_for(model.cfg.net.channels), **thresholds)
        num_classes = model.num_classes
        runner_cm = make_runner(backend, model, contract, threads, *(darknet_files(cfg, weights) if cfg else (None, None)))
    bad = sorted({c for c in classes or () if not 0 <= c < num_classes})
    if bad:
        raise UsageError(
            f"--classes {', '.join(map(str, bad))}: the model has {num_classes} classes, so class ids run 0..{num_classes - 1}"
        )
    class_names = _names(names or data, num_classes)
    with runner_cm as runner:
        result = run_detect(
            runner,
            contract,
            source,
            output,
            class_names,
            save_images=not no_save,
            save_txt=save_txt,
            save_json=save_json,
            progress=lambda frames: track(frames, f"detect [{backend}]"),
            slicing=slicing,
        )
    for what, why in result.skipped:
        typer.echo(f"warning: skipped {what}: {why}", err=True)
    per_frame = 1000 * result.seconds_inference / max(result.frames, 1)
    typer.echo(f"{result.frames} frames, {result.detections} detections, {per_frame:.1f} ms inference/frame ({backend}); results in {output}")


def _names(path: Optional[Path], count: int) -> list[str]:
    from edgeyolo.data.names import class_names
    from edgeyolo.errors import UsageError

    if path is None:
        return [str(i) for i in range(count)]
    names = class_names(path)
    if len(names) != count:
        raise UsageError(f"{path} lists {len(names)} class names but the model has {count} classes")
    return names


def register(app: typer.Typer) -> None:
    app.command("detect")(detect)
