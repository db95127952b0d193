"""``edgeyolo prune <method>``: channel or layer pruning into a folder of darknet + edgeyolo files."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import typer

from edgeyolo.cli.common import ImgSizeOpt, WeightsOpt, check_img_size, load_cli_model

if TYPE_CHECKING:
    from edgeyolo.compress.prune.report import Accuracy
    from edgeyolo.data.types import DetectionDataset
    from edgeyolo.model.darknet import Darknet


def prune(
    method: str = typer.Argument(..., help="normal | regular | shortcut | slim | group | layer | layer-channel."),
    cfg: Optional[str] = typer.Option(None, "--cfg", help="darknet .cfg path or zoo name (optional with a .safetensors checkpoint)."),
    weights: Optional[Path] = WeightsOpt,
    random_init: bool = typer.Option(False, "--random-init", help="Seeded calibrated random weights instead of --weights."),
    seed: int = typer.Option(0, "--seed", help="Seed for --random-init."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (model.cfg, model.weights, model.safetensors, prune_report.*, prune_channels.png)."),
    percent: Optional[str] = typer.Option(
        None, "--percent", "--global_percent", "--global-percent",
        help="Fraction of the ranked channels to remove; 'auto': the largest safe one; 'sparse': the channels sparse training zeroed (score < 1e-2), at most the safe count.",
    ),
    multiple: Optional[int] = typer.Option(
        None, "--multiple", help="regular: kept channel counts are multiples of N (default: the --target's channel multiple, else 8)."
    ),
    target: Optional[str] = typer.Option(None, "--target", help="Deployment target whose channel multiple --multiple defaults to (see `edgeyolo targets list`)."),
    shortcuts: int = typer.Option(8, "--shortcuts", "--shortcut", help="layer, layer-channel: residual blocks to delete."),
    layer_keep: float = typer.Option(0.01, "--layer-keep", "--layer_keep", help="Fewest channels a layer keeps, as a fraction of its width."),
    importance: str = typer.Option("gamma", "--importance", help="Channel score: gamma (BN |γ|) or l1 (filter L1 norm / its layer's mean)."),
    group_percent: Optional[List[str]] = typer.Option(
        None, "--group-percent", help="group: NAME=P for one scale group (s8, s16, head-s32 ...); repeat for more."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Select and cut, print the summary, write nothing."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset for --eval: darknet .data, Ultralytics .yaml, COCO .json or a VOC root."),
    evaluate: bool = typer.Option(False, "--eval", help="mAP@0.5 and mAP@0.5:0.95 before and after pruning on the --data val split."),
    img_size: Optional[int] = ImgSizeOpt,
    backend: str = typer.Option("onnxruntime", "--backend", help="--eval runtime: torch | onnxruntime | opencv."),
    threads: int = typer.Option(0, "--threads", help="--eval inference threads (0 = backend default)."),
) -> None:
    """Prune a model; nothing is written unless the whole result is valid (percent, shapes, read-back)."""
    from edgeyolo.compress.prune import PruneConfig, parse_percent
    from edgeyolo.compress.prune import prune as run_prune
    from edgeyolo.compress.prune.report import build_report, summary_line
    from edgeyolo.errors import UsageError

    if out is None and not dry_run:
        raise UsageError("--out DIR is required (or --dry-run)")
    if evaluate and data is None:
        raise UsageError("--eval needs --data D, the dataset whose val split is scored")
    if data is not None and not evaluate:
        raise UsageError("--data is only read by --eval; add --eval or drop --data")
    check_img_size(img_size)
    groups = []
    for item in group_percent or []:
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise UsageError(f"--group-percent takes NAME=P (e.g. s32=0.7), got {item!r}")
        groups.append((name.strip(), parse_percent(value, f"--group-percent {name.strip()}")))
    config = PruneConfig(
        method,
        percent=None if percent is None else parse_percent(percent),
        multiple=_multiple(multiple, target),
        shortcuts=shortcuts,
        layer_keep=layer_keep,
        importance=importance,
        group_percents=tuple(groups),
    )
    model = load_cli_model(cfg, weights, random_init, seed, img_size=img_size)
    dataset = None
    if data is not None:
        from edgeyolo.data.formats import load_dataset

        dataset = load_dataset(data, "val")
    result = run_prune(model, config)
    accuracy = None
    if dataset is not None:
        accuracy = _accuracy(str(data), dataset, model, result.model, img_size, backend, threads)
    report = build_report(result, accuracy)
    deviation = _deviation(model, result.model, dataset, img_size)
    report["checks"] = {
        "read_back": "model.cfg + model.weights read back bit-exact into a fresh model before any file is moved into the folder",
        "output_deviation": deviation.to_dict(),
    }
    line = summary_line(report) + f"; {deviation.describe()}"
    if dry_run:
        typer.echo(f"{line}; dry run, nothing written")
        return
    from edgeyolo.compress.prune.artifacts import write_artifacts
    from edgeyolo.fileio import sha256_file
    from edgeyolo.model.checkpoint import Provenance

    source = sha256_file(weights) if weights else f"random-init:seed={seed}"
    command = "edgeyolo " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    written = write_artifacts(result, out, Provenance(source, command), report)
    typer.echo(f"{line}; wrote {out}/" + ", ".join(p.name for p in written))


def _accuracy(
    data: str,
    dataset: DetectionDataset,
    model: Darknet,
    pruned: Darknet,
    img_size: Optional[int],
    backend: str,
    threads: int,
) -> Accuracy:
    """Both models scored by ``edgeyolo test``'s own code path, on the same images."""
    from edgeyolo.compress.prune.report import Accuracy
    from edgeyolo.log import track
    from edgeyolo.runtime.evaluate import evaluate_model

    runs = []
    for when, net in (("before", model), ("after", pruned)):
        runs.append(
            evaluate_model(
                net, dataset, img_size, backend, threads=threads,
                progress=lambda items: track(items, f"eval {when} pruning [{backend}]", len(dataset.samples)),
            )
        )
    before, after = runs
    for issue in before.issues:
        typer.echo(f"warning: {issue}", err=True)
    return Accuracy(
        data, "val", backend, before.img_size, before.result.num_images,
        (before.result.map50, after.result.map50), (before.result.map50_95, after.result.map50_95),
    )


DEVIATION_IMAGES = 4  # the check's images: yolov4 at 608 ran its 2 × 4 forward passes in 7.5 s on this 2-core host


def _deviation(model: Darknet, pruned: Darknet, dataset: Optional[DetectionDataset], img_size: Optional[int]):
    """The pruned model's raw outputs against the unpruned model's on up to DEVIATION_IMAGES --data val
    images, or on as many synthetic images (seeded) without --data."""
    from edgeyolo.compress.prune.checks import output_deviation
    from edgeyolo.contract import Contract, channel_order_for
    from edgeyolo.model.init import calibration_batch, synthetic_images
    from edgeyolo.model.io import read_image

    size = img_size or model.cfg.net.height
    contract = Contract(size, size, channel_order=channel_order_for(model.cfg.net.channels))
    images = []
    if dataset is not None:
        images = [f for f in (read_image(s.image) for s in dataset.samples[:DEVIATION_IMAGES]) if f is not None]
    return output_deviation(model, pruned, calibration_batch(contract, images or synthetic_images(DEVIATION_IMAGES, size, size, seed=0)))


def _multiple(multiple: Optional[int], target: Optional[str]) -> int:
    """An explicit --multiple wins; else the target's channel multiple (an unknown target is an error either way)."""
    profile = None
    if target is not None:
        from edgeyolo.targets.profiles import get_target

        profile = get_target(target)
    if multiple is not None:
        return multiple
    return profile.channel_multiple if profile is not None else 8


def register(app: typer.Typer) -> None:
    app.command("prune")(prune)
