"""``edgeyolo build --target T``: adapt → sparse-train → prune → fine-tune → quantize → export → deploy + bench."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from edgeyolo.cli.board import TrustOpt


def build(
    target: str = typer.Option(..., "--target", help="Target profile (edgeyolo targets list)."),
    cfg: Optional[str] = typer.Option(None, "--cfg", help="darknet .cfg path or zoo name."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Starting weights (.weights, .safetensors, .pt)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Dataset for training, calibration (train split) and mAP (val split)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="fp32 | fp16 | int8 (default: the target's)."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="recipe.yaml overriding the stage settings."),
    device: Optional[str] = typer.Option(None, "--device", help="Inventory name of a board: deploy and benchmark there."),
    inventory: Optional[Path] = typer.Option(None, "--inventory", help="devices.yaml (default: $EDGEYOLO_DEVICES, ./devices.yaml or ~/.config/edgeyolo/devices.yaml)."),
    trust_new_host_key: bool = TrustOpt,
    train_device: str = typer.Option("cpu", "--train-device", help="cpu | cuda:N for the training stages."),
    img_size: Optional[int] = typer.Option(None, "--img-size", "--img_size", help="Input size (overrides the recipe)."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Prune to this frame rate (onnxruntime on this host) instead of a percent."),
    latency_ms: Optional[float] = typer.Option(None, "--latency-ms", help="Prune to this latency in ms (onnxruntime on this host)."),
    demo: bool = typer.Option(False, "--demo", help="The embedded demo: a small zoo cfg on the synthetic set."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the stages and why any is skipped; run nothing."),
    out: Path = typer.Option(..., "--out", help="Build folder (stages/, manifest.json, report.md); reused stages are cached."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON."),
) -> None:
    """Build a model for a target; every stage is cached by the hash of its inputs."""
    from edgeyolo.errors import UsageError
    from edgeyolo.pipeline import Build, BuildRequest, Recipe, demo_recipe

    demo = demo or (cfg is None and weights is None and data is None)
    overrides = {"img_size": img_size} if img_size else {}
    if recipe is not None:
        chosen = Recipe.from_yaml(recipe, **overrides)
    elif demo:
        chosen = demo_recipe(target, **overrides)
    else:
        chosen = Recipe(**overrides)
    if fps is not None and latency_ms is not None:
        raise UsageError("give --fps or --latency-ms, not both")
    if fps is not None and not fps > 0:
        raise UsageError(f"--fps must be positive, got {fps}")
    target_ms = 1000.0 / fps if fps else latency_ms
    request = BuildRequest(
        target=target, out=out, cfg=cfg, weights=str(weights) if weights else None, data=str(data) if data else None,
        precision=precision, recipe=chosen, device=device, inventory=str(inventory) if inventory else None,
        train_device=train_device, demo=demo, latency_ms=target_ms, trust_new_host_key=trust_new_host_key,
    )
    echo = (lambda _: None) if as_json else typer.echo
    if demo:
        echo("no model given: the embedded demo (edgeyolo-res trained on the synthetic set, shipped with edgeyolo): "
             "sparse training, pruning, fine-tuning and export, each stage scored on the 300 val images")
    builder = Build(request, echo=echo)
    if dry_run:
        for name, reason in builder.plan():
            typer.echo(f"{name:9s} {'skip: ' + reason if reason else 'run'}")
        return
    manifest = builder.run()
    if as_json:
        typer.echo(json.dumps(manifest, indent=1, sort_keys=True, default=str))
    else:
        typer.echo((out / "report.md").read_text(encoding="utf-8"))


def register(app: typer.Typer) -> None:
    app.command("build")(build)
