"""``edgeyolo data synth``: write a deterministic synthetic detection dataset (Ultralytics layout)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def synth(
    out: Path = typer.Option(..., "--out", help="Folder to write images/, labels/, data.yaml and synth.json into."),
    classes: int = typer.Option(12, "--classes", help="Number of shape classes (at most 24)."),
    train: int = typer.Option(2000, "--train", help="Training images."),
    val: int = typer.Option(300, "--val", help="Validation images."),
    img_size: int = typer.Option(256, "--img-size", "--img_size", help="Square image size in pixels."),
    seed: int = typer.Option(0, "--seed", help="Same seed and options give bit-identical files."),
    backgrounds: Optional[Path] = typer.Option(
        None, "--backgrounds", help="Folder of photos; random crops of them become most backgrounds."
    ),
    workers: int = typer.Option(1, "--workers", help="Processes; the output does not depend on it."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Write into a non-empty folder made otherwise (other parameters or not by synth)."
    ),
) -> None:
    """Render shapes and glyphs (class = shape, random colours, 6 px to 45 % of the image) with tight boxes."""
    from edgeyolo.data.synth import make_synthetic

    s = make_synthetic(
        out,
        classes=classes,
        train=train,
        val=val,
        img_size=img_size,
        seed=seed,
        backgrounds=backgrounds,
        workers=workers,
        overwrite=overwrite,
    )
    typer.echo(
        f"wrote {s.images['train']} train + {s.images['val']} val images, {s.total_objects} objects "
        f"({s.mean_objects:.2f}/image) in {s.seconds:.1f} s"
    )
    typer.echo(f"objects < 16 px: {100 * s.frac_lt16:.1f} %   < 32 px: {100 * s.frac_lt32:.1f} %  (at {img_size} px)")
    typer.echo("per class: " + ", ".join(f"{n} {c}" for n, c in zip(s.names, s.per_class)))
    typer.echo(f"data: {s.data_yaml}")
