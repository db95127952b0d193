"""``edgeyolo quantize``: post-training quantization into a folder (model.cfg, model.safetensors, quant.json)."""
from __future__ import annotations

import math
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperCommand

from edgeyolo.cli.common import ImgSizeOpt, WeightsOpt, check_img_size, load_cli_model

BATCH = 4  # images per calibration forward


def _scheme_help() -> str:
    from edgeyolo.compress.quant.schemes import scheme_names

    return f"Quantization scheme: {' | '.join(scheme_names())} (default affine; see --list-schemes)."


def _method_help() -> str:
    from edgeyolo.compress.quant.calib import method_names

    return f"Range choice: {' | '.join(method_names())}."


class QuantizeCommand(TyperCommand):
    """The ``quantize`` command; its help lists the registered schemes and calibration methods when
    it is shown (importing the registries earlier would load torch for every command)."""

    def format_help(self, ctx, formatter) -> None:
        runtime_help = {"scheme": _scheme_help, "method": _method_help}
        for param in self.params:
            if param.name in runtime_help:
                param.help = runtime_help[param.name]()
        super().format_help(ctx, formatter)


def _list_schemes(value: bool) -> None:
    """``--list-schemes``: one line per registered scheme (name, weight granularity, description)."""
    if not value:
        return
    from edgeyolo.compress.quant.schemes import get_scheme, scheme_names

    schemes = [get_scheme(name) for name in scheme_names()]
    width = max(len(s.name) for s in schemes)
    for s in schemes:
        weights = ("per-channel" if s.per_channel else "per-tensor") if s.uses_ranges else "formula"
        typer.echo(f"{s.name:<{width}}  {weights:<11}  {s.description}")
    raise typer.Exit()


def _calib_images(calib: Path, limit: int) -> tuple[list[Path], str]:
    """A folder of images, or a dataset's train split (never its val split)."""
    from edgeyolo.errors import InputFileError
    from edgeyolo.model.io import IMAGE_SUFFIXES

    if not calib.exists():
        raise InputFileError(f"--calib {calib}: not found; give a folder of images or a dataset (.data, .yaml, VOC root)")
    if calib.is_dir():
        images = sorted(p for p in calib.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            return images[:limit], f"{min(len(images), limit)} images of folder {calib}"
    from edgeyolo.data.formats import load_dataset

    dataset = load_dataset(calib, "train")
    images = [s.image for s in dataset.samples]
    if not images:
        raise InputFileError(f"--calib {calib}: the dataset's train split lists no images")
    return images[:limit], f"{min(len(images), limit)} images of the train split of {calib} (calibration never uses a val split)"


def _refuse_overlap(calib: list[Path], eval_images: list[Path], data: Path) -> None:
    from edgeyolo.errors import UsageError

    shared = {p.resolve() for p in calib} & {p.resolve() for p in eval_images}
    if shared:
        raise UsageError(
            f"{len(shared)} of the {len(calib)} calibration images are also evaluation images of --data {data} "
            f"(e.g. {sorted(shared)[0]}); calibrate on other images (the dataset's train split or a separate folder)"
        )


def _parse_keep_float(text: Optional[str]) -> list[int] | str:
    from edgeyolo.errors import UsageError

    if text is None or not text.strip():
        return []
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise UsageError(f"--keep-float takes 'auto' or comma-separated layer indices (e.g. 0,22), got {text!r}") from None


def _db(value: float) -> str:
    return "inf" if math.isinf(value) and value > 0 else f"{value:.1f}"


def quantize(
    cfg: Optional[str] = typer.Option(None, "--cfg", help="darknet .cfg path or zoo name (optional with a .safetensors checkpoint)."),
    weights: Optional[Path] = WeightsOpt,
    calib: Path = typer.Option(..., "--calib", help="Calibration images: a folder of images, or a dataset (its train split is used)."),
    out: Path = typer.Option(..., "--out", help="Output folder: model.cfg, model.safetensors, quant.json."),
    images: int = typer.Option(200, "--images", help="Calibration images to use (the first N, sorted)."),
    method: str = typer.Option("minmax", "--method", help="Range choice (the registered calibration methods)."),
    scheme: Optional[str] = typer.Option(None, "--scheme", help="Quantization scheme (default affine; see --list-schemes)."),
    pow2: bool = typer.Option(False, "--pow2", help="Per-tensor power-of-two scales (shift-only arithmetic); short for --scheme pow2."),
    vitis_sim: bool = typer.Option(False, "--vitis-sim", help="Simulate the Xilinx DPU exactly (pow2, narrow range, its rounding, leaky 26/256); short for --scheme vitis-sim."),
    keep_float: Optional[str] = typer.Option(None, "--keep-float", help="Layers left in float: comma-separated indices, or 'auto' (the most sensitive)."),
    analyze: bool = typer.Option(False, "--analyze", help="Per-layer SQNR (dB); with --data also the mAP@0.5 of quantizing one layer at a time."),
    data: Optional[Path] = typer.Option(None, "--data", help="Evaluation dataset (its val split) for mAP; never used for calibration."),
    img_size: Optional[int] = ImgSizeOpt,
    list_schemes: bool = typer.Option(
        False, "--list-schemes", callback=_list_schemes, is_eager=True, help="List the registered quantization schemes and exit."
    ),
) -> None:
    """Calibrate activation ranges on images the model is not evaluated on, and write the quantized model."""
    from edgeyolo.compress.quant import METHODS, QuantSpec, calibrate, prepare_qat, save_quantized, set_float_layers
    from edgeyolo.compress.quant.analysis import analyze as run_analysis
    from edgeyolo.compress.quant.analysis import auto_keep_float
    from edgeyolo.compress.quant.calib import image_batches, method_names
    from edgeyolo.contract import Contract, channel_order_for
    from edgeyolo.errors import UsageError
    from edgeyolo.log import track

    check_img_size(img_size)
    if method not in METHODS:
        raise UsageError(f"--method must be one of {', '.join(method_names())}, got '{method}'")
    if images <= 0:
        raise UsageError(f"--images must be positive, got {images}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    wanted_float = _parse_keep_float(keep_float)
    if scheme is not None and (pow2 or vitis_sim):
        raise UsageError("--pow2 is short for --scheme pow2 and --vitis-sim for --scheme vitis-sim; give only one of them")
    spec = QuantSpec(scheme if scheme is not None else "pow2" if pow2 else "affine", vitis_sim=vitis_sim)
    if not spec.scheme_obj.uses_ranges:
        raise UsageError(
            f"--scheme {spec.scheme} quantizes by fixed formulas, with no ranges to calibrate; "
            f"use it for quantization-aware training (edgeyolo train --quantized {spec.scheme})"
        )
    paths, described = _calib_images(calib, images)
    dataset = None
    if data is not None:
        from edgeyolo.data.formats import load_dataset

        dataset = load_dataset(data, "val")
        _refuse_overlap(paths, [s.image for s in dataset.samples], data)
    model = load_cli_model(cfg, weights, img_size=img_size)
    size = img_size or model.cfg.net.height
    contract = Contract(size, size, channel_order=channel_order_for(model.cfg.net.channels))
    typer.echo(f"calibrating ({method}) on {described}")
    prepare_qat(model, spec)
    if isinstance(wanted_float, list):
        set_float_layers(model, wanted_float)  # validate indices before the long calibration pass
    kept: list = []
    batches = image_batches(paths, contract, BATCH, kept)
    seen = calibrate(model, track(batches, "calibrating", math.ceil(len(paths) / BATCH)), method)
    if not kept:
        raise UsageError(f"--calib {calib}: none of the {len(paths)} images could be read")

    import torch

    probe = [torch.cat(kept)]
    reports = run_analysis(model, probe) if (analyze or wanted_float == "auto") else []
    if wanted_float == "auto":
        wanted_float = auto_keep_float({r.layer: r.solo_sqnr_db for r in reports})
        typer.echo(f"--keep-float auto: keeping layers {wanted_float} in float (lowest one-layer SQNR)")
    set_float_layers(model, wanted_float)
    maps: dict[str, float] = {}
    if analyze:
        maps = _layer_maps(model, dataset, size, [r.layer for r in reports]) if dataset is not None else {}
        typer.echo("layer  kind            output SQNR dB  one-layer SQNR dB" + ("  one-layer mAP@0.5" if maps else ""))
        for r in reports:
            extra = f"  {maps[str(r.layer)]:.4f}" if maps else ""
            typer.echo(f"{r.layer:5d}  {r.kind:<14}  {_db(r.output_sqnr_db):>14}  {_db(r.solo_sqnr_db):>17}{extra}")
        if maps:
            typer.echo(f"mAP@0.5 float {maps['float']:.4f}, all quantized {maps['quantized']:.4f}")
    info = {
        "method": method,
        "calibration": described,
        "calibration_batches": seen,
        "img_size": size,
        "source": str(weights) if weights else str(cfg),
        "command": "edgeyolo " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "analysis": [r.__dict__ | {"map50": maps.get(str(r.layer))} for r in reports],
        "map50": {k: v for k, v in maps.items() if k in ("float", "quantized")},
    }
    save_quantized(model, out, info)
    kind = spec.scheme_obj.title
    typer.echo(f"wrote {out}/ ({kind} int{spec.w_bit}, float layers {wanted_float or 'none'})")


def _layer_maps(model, dataset, size: int, layers: list[int]) -> dict[str, float]:
    """mAP@0.5 on the --data val split: float, all quantized, and each layer quantized alone."""
    from edgeyolo.compress.quant.modules import float_layers, only_quantized, quant_layers
    from edgeyolo.log import track
    from edgeyolo.runtime.evaluate import evaluate_model

    def score(which: list[int], label: str) -> float:
        with only_quantized(model, which):
            run = evaluate_model(
                model, dataset, size, "torch",
                progress=lambda items: track(items, f"eval {label}", len(dataset.samples)),
            )
        return run.result.map50

    quantized = [i for i in quant_layers(model) if i not in set(float_layers(model))]
    result = {"float": score([], "float"), "quantized": score(quantized, "quantized")}
    for i in layers:
        result[str(i)] = score([i], f"layer {i} quantized")
    return result


def register(app: typer.Typer) -> None:
    app.command("quantize", cls=QuantizeCommand)(quantize)
