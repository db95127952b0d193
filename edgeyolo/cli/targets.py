"""``edgeyolo targets list|show``, ``edgeyolo check`` and ``edgeyolo adapt``: what a board runs, what it
cannot run of a model, and the model rewritten so that it can."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from edgeyolo.cli.common import CfgOpt, ImgSizeOpt, WeightsOpt, check_img_size

app = typer.Typer(help="Deployment target profiles (boards, precisions, operator rules).", no_args_is_help=True)

TargetOpt = typer.Option(..., "--target", help="Target profile name (see `edgeyolo targets list`).")
VaiOpt = typer.Option(None, "--vai", help="DPU targets: the Vitis AI version of the board image (e.g. 2.0, 3.5); default: every image.")


@app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Every target profile, and the boards known to be unsupported with the reason."""
    from edgeyolo.targets.profiles import UNSUPPORTED, list_targets

    profiles = list_targets()
    if as_json:
        typer.echo(json.dumps({"targets": [p.to_dict() for p in profiles], "unsupported": UNSUPPORTED}, indent=1))
        return
    width = max(len(p.name) for p in profiles)
    for p in profiles:
        precisions = ",".join(x.value for x in p.precisions)
        typer.echo(f"{p.name:<{width}}  {p.runtime:<11}  {precisions:<14}  x{p.channel_multiple:<3} {p.title}")
    for name, reason in UNSUPPORTED.items():
        typer.echo(f"{name:<{width}}  unsupported: {reason.split(':')[0]}")


@app.command("show")
def show_cmd(
    name: str = typer.Argument(..., help="Target profile name."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """One profile in full: precisions, channel multiples, operator rules, toolchain and sources."""
    from edgeyolo.targets.profiles import get_target

    profile = get_target(name)
    data = profile.to_dict()
    if as_json:
        typer.echo(json.dumps(data, indent=1))
        return
    typer.echo(f"{profile.name}: {profile.title}")
    typer.echo(f"  runtime        {profile.runtime}")
    typer.echo(f"  precisions     {', '.join(p.value for p in profile.precisions)} (default {profile.default_precision.value})")
    for p, reason in profile.precision_notes.items():
        typer.echo(f"    no {p.value}: {reason}")
    typer.echo(f"  channels       multiple of {profile.channel_multiple} ({', '.join(f'{k.value} x{v}' for k, v in profile.channel_multiples.items())})")
    typer.echo(f"  input sizes    {', '.join(map(str, profile.input_sizes))} (multiple of {profile.input_multiple})")
    rules = profile.rules
    typer.echo(f"  activations    {', '.join(sorted(rules.activations))}")
    if rules.leaky_slope is not None:
        typer.echo(f"  leaky slope    {rules.leaky_slope} only")
    typer.echo(f"  route groups   {'yes' if rules.route_groups else 'no (channel split unsupported)'}")
    typer.echo(f"  equal scales   {'required on concat/add inputs' if rules.equal_concat_scales else 'not required'}")
    if profile.tensorrt is not None:
        trt = profile.tensorrt
        typer.echo(
            f"  TensorRT       {trt.version_text} (JetPack {trt.jetpack}), {trt.gpu} sm_{trt.compute_capability.replace('.', '')}, "
            f"ONNX opset <= {trt.max_opset}, DLA cores {trt.dla_cores}, {trt.trtexec}"
        )
    for image in profile.dpu_images:
        typer.echo(f"  DPU image      {image.label}: fingerprint {image.fingerprint_hex}, pool kernel <= {image.max_pool_kernel}")
    if profile.board_python:
        typer.echo(f"  board python   {profile.board_python}")
    typer.echo(f"  artifact       {profile.artifact}")
    for note in profile.notes:
        typer.echo(f"  note           {note}")
    for source in profile.sources:
        typer.echo(f"  source         {source}")


def check(
    target: str = TargetOpt,
    cfg: Optional[str] = typer.Option(None, "--cfg", help="darknet .cfg path or zoo name."),
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="An ONNX file to check against the board's TensorRT."),
    vai: Optional[str] = VaiOpt,
    strict: bool = typer.Option(False, "--strict", help="Also fail on layers that run with changed numerics (leaky 0.1 on a DPU)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """List what the target cannot run; exit code 1 when something is unsupported (or changed, with --strict)."""
    from edgeyolo.adapt.check import check_cfg, check_onnx
    from edgeyolo.errors import UsageError
    from edgeyolo.targets.profiles import get_target

    if (cfg is None) == (onnx is None):
        raise UsageError("give either --cfg C or --onnx FILE")
    profile = get_target(target)
    if cfg is not None:
        from edgeyolo.model.cfg import parse_cfg
        from edgeyolo.model.zoo import resolve_cfg

        report = check_cfg(parse_cfg(resolve_cfg(cfg)), profile, vai)
    else:
        report = check_onnx(onnx, profile)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=1))
    else:
        for f in report.findings:
            where = " ".join(x for x in (f"layer {f.layer}" if f.layer is not None else "", f"line {f.line}" if f.line else "") if x)
            scope = f" [{'; '.join(f.applies_to)}]" if f.applies_to and len(f.applies_to) < len(report.images) else ""
            typer.echo(f"{f.severity.value:<11} {f.rule:<16} {where:<18} {f.message}{scope}" + (f" -> {f.fix}" if f.fix else ""))
        for note in report.notes:
            typer.echo(f"note        {note}")
        counts = {s: sum(f.severity.value == s for f in report.findings) for s in ("unsupported", "changed", "slow", "warning")}
        summary = ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "nothing to report"
        images = f" ({'; '.join(report.images)})" if report.images else ""
        typer.echo(f"check {report.target}{images}: {report.source}: {summary}")
    report.raise_if_failed(strict)


def adapt(
    target: str = TargetOpt,
    cfg: str = CfgOpt,
    weights: Optional[Path] = WeightsOpt,
    random_init: bool = typer.Option(False, "--random-init", help="Seeded calibrated random weights (to measure deltas without a model)."),
    seed: int = typer.Option(0, "--seed", help="Seed for --random-init and the delta images."),
    out: Path = typer.Option(..., "--out", help="Output folder: model.cfg, model.weights (with weights), adapt.json."),
    vai: Optional[str] = VaiOpt,
    img_size: Optional[int] = ImgSizeOpt,
) -> None:
    """Rewrite the model for the target: exact rewrites keep the weights; the others report their output delta."""
    from edgeyolo.adapt.rewrite import plan_adaptation, write_adapted
    from edgeyolo.model.cfg import parse_cfg
    from edgeyolo.model.zoo import resolve_cfg
    from edgeyolo.targets.profiles import get_target

    check_img_size(img_size)
    profile = get_target(target)
    source_cfg = resolve_cfg(cfg)
    plan = plan_adaptation(parse_cfg(source_cfg), profile, vai)
    result = None
    provenance: dict[str, object] = {"cfg": str(source_cfg), "command": "edgeyolo " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    if weights is not None or random_init:
        from edgeyolo.adapt.rewrite import adapt_model
        from edgeyolo.cli.common import load_cli_model
        from edgeyolo.contract import Contract, channel_order_for
        from edgeyolo.model.init import calibration_batch, synthetic_images

        model = load_cli_model(str(source_cfg), weights, random_init, seed, img_size=img_size)
        size = img_size or model.cfg.net.height
        contract = Contract(size, size, channel_order=channel_order_for(model.cfg.net.channels))
        batch = calibration_batch(contract, synthetic_images(2, size, size, seed))
        result = adapt_model(model, plan, batch)
        if weights is not None:
            from edgeyolo.fileio import sha256_file

            provenance["weights"] = str(weights)
            provenance["weights_sha256"] = sha256_file(weights)
        else:
            provenance["weights"] = f"random-init:seed={seed}"
    written = write_adapted(out, plan, result, provenance)
    kinds: dict[str, int] = {}
    for change in plan.changes:
        kinds[change.kind] = kinds.get(change.kind, 0) + (len(change.layers) if change.kind == "leaky-slope" else 1)
    summary = ", ".join(f"{k} x{v}" for k, v in kinds.items()) or "no changes needed"
    typer.echo(f"adapt {profile.name}: {summary}; layers {len(plan.source.layers)} → {len(plan.cfg.layers)}")
    if result is not None:
        for name, delta in result.deltas.items():
            typer.echo(f"  output delta after {name:<12} max|Δ| {delta['max_abs']:.4g} (relative {delta['rel']:.3g})")
    for finding in plan.remaining:
        typer.echo(f"warning: still unsupported: layer {finding.layer}: {finding.message}", err=True)
    typer.echo(f"wrote {out}/" + ", ".join(p.name for p in written))


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="targets")
    root.command("check")(check)
    root.command("adapt")(adapt)
