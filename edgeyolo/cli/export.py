"""``edgeyolo export onnx|darknet|safetensors``."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

from edgeyolo.cli.common import CfgOpt, ImgSizeOpt, ModelCfgOpt, WeightsOpt, check_img_size, load_cli_model
from edgeyolo.fileio import check_output_file

app = typer.Typer(help="Write a model as ONNX, darknet cfg+weights or an edgeyolo checkpoint.", no_args_is_help=True)

RandomInitOpt = typer.Option(False, "--random-init", help="Seeded random weights, BN calibrated on images (non-degenerate).")
SeedOpt = typer.Option(0, "--seed", help="Seed for --random-init.")
CalibOpt = typer.Option(None, "--calib-images", help="Images for --random-init calibration (default: synthetic).")
CutoffOpt = typer.Option(None, "--cutoff", help="Load only layers before N from a darknet backbone file (e.g. 75).")
PartialOpt = typer.Option(False, "--partial", help="Load as many whole layers as a darknet file holds.")


def _command() -> str:
    return "edgeyolo " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _provenance(weights: Optional[Path], random_init: bool, seed: int) -> dict[str, str]:
    from edgeyolo.fileio import sha256_file

    source = sha256_file(weights) if weights else f"random-init:seed={seed}"
    return {"source_sha256": source, "command": _command()}


@app.command("onnx")
def onnx_cmd(
    cfg: str = CfgOpt,
    out: Path = typer.Option(..., "--out", help="Output .onnx file."),
    weights: Optional[Path] = WeightsOpt,
    random_init: bool = RandomInitOpt,
    seed: int = SeedOpt,
    calib_images: Optional[Path] = CalibOpt,
    img_size: Optional[int] = ImgSizeOpt,
    opset: int = typer.Option(13, "--opset", help="ONNX opset 11..17 (13 suits TensorRT 8.2 / JetPack 4.6)."),
    no_simplify: bool = typer.Option(False, "--no-simplify", help="Skip onnxsim."),
    dynamic_batch: bool = typer.Option(False, "--dynamic-batch", help="Free batch axis."),
    raw: bool = typer.Option(False, "--raw", help="One raw tensor per [yolo] layer instead of decoded [B, N, 5+C]."),
    cutoff: Optional[int] = CutoffOpt,
    partial: bool = PartialOpt,
) -> None:
    """Export ONNX (TorchScript exporter, one file), simplify, and verify it in onnxruntime against torch."""
    from edgeyolo.export.onnx import export_onnx

    check_img_size(img_size)
    check_output_file(out, "--out")
    model = load_cli_model(cfg, weights, random_init, seed, calib_images, img_size, cutoff, partial)
    size = img_size or model.cfg.net.height
    result = export_onnx(
        model,
        out,
        size,
        opset=opset,
        simplify=not no_simplify,
        dynamic_batch=dynamic_batch,
        raw=raw,
        provenance=_provenance(weights, random_init, seed),
    )
    shapes = ", ".join(f"{n} {list(s)}" for n, s in zip(result.outputs, result.output_shapes))
    typer.echo(
        f"wrote {result.path} (opset {result.opset}, IR {result.ir_version}, {shapes}); "
        f"onnxruntime vs torch max|Δ|/max|ref| = {result.max_rel_error:.2e}"
    )


@app.command("darknet")
def darknet_cmd(
    cfg: str = CfgOpt,
    out: Path = typer.Option(..., "--out", help="Output folder: model.cfg + model.weights."),
    weights: Optional[Path] = WeightsOpt,
    random_init: bool = RandomInitOpt,
    seed: int = SeedOpt,
    calib_images: Optional[Path] = CalibOpt,
    img_size: Optional[int] = ImgSizeOpt,
    cutoff: Optional[int] = CutoffOpt,
    partial: bool = PartialOpt,
) -> None:
    """Write darknet cfg + weights (read back and checked bit-exact)."""
    from edgeyolo.export.darknet import export_darknet
    from edgeyolo.model.init import health

    check_img_size(img_size)
    model = load_cli_model(cfg, weights, random_init, seed, calib_images, img_size, cutoff, partial)
    result = export_darknet(model, out)
    message = f"wrote {result.cfg} and {result.weights}"
    if random_init:
        import torch

        from edgeyolo.contract import Contract, channel_order_for
        from edgeyolo.model.init import calibration_batch, synthetic_images

        size = img_size or model.cfg.net.height
        channel_order = channel_order_for(model.cfg.net.channels)
        probe = calibration_batch(Contract(size, size, channel_order=channel_order), synthetic_images(4, size, size, seed + 1))
        with torch.no_grad():
            h = health(model, probe)
        message += f"; objectness in (0.01, 0.99) on held-out images: {h['objectness_in_range']:.1%}"
    typer.echo(message)


@app.command("safetensors")
def safetensors_cmd(
    cfg: Optional[str] = typer.Option(None, "--cfg", help="darknet .cfg or zoo name."),
    out: Path = typer.Option(..., "--out", help="Output .safetensors checkpoint."),
    weights: Optional[Path] = WeightsOpt,
    random_init: bool = RandomInitOpt,
    seed: int = SeedOpt,
    calib_images: Optional[Path] = CalibOpt,
    cutoff: Optional[int] = CutoffOpt,
    partial: bool = PartialOpt,
) -> None:
    """Write an edgeyolo checkpoint: tensors + the cfg text + provenance in the metadata."""
    from edgeyolo.model.checkpoint import Provenance, save_checkpoint

    check_output_file(out, "--out")
    model = load_cli_model(cfg, weights, random_init, seed, calib_images, None, cutoff, partial)
    prov = _provenance(weights, random_init, seed)
    path = save_checkpoint(model, out, Provenance(prov["source_sha256"], prov["command"]))
    typer.echo(f"wrote {path}")


@app.command("qdq")
def qdq_cmd(
    model: Path = typer.Option(..., "--model", help="Quantized-model folder written by `edgeyolo quantize`."),
    out: Path = typer.Option(..., "--out", help="Output .onnx file."),
    opset: int = typer.Option(13, "--opset", help="ONNX opset 13..17 (per-channel QuantizeLinear needs 13)."),
    img_size: Optional[int] = ImgSizeOpt,
    raw: bool = typer.Option(False, "--raw", help="One raw tensor per [yolo] layer instead of decoded [B, N, 5+C]."),
) -> None:
    """QuantizeLinear/DequantizeLinear ONNX for TensorRT explicit quantization, verified code for code."""
    from edgeyolo.compress.quant import load_quantized
    from edgeyolo.export.qdq import export_qdq
    from edgeyolo.fileio import sha256_file

    check_img_size(img_size)
    check_output_file(out, "--out")
    quantized = load_quantized(model)
    size = img_size or int(getattr(quantized, "quant_info", {}).get("img_size") or quantized.cfg.net.height)
    prov = {"source_sha256": sha256_file(model / "model.safetensors"), "command": _command()}
    result = export_qdq(quantized, out, size, opset=opset, raw=raw, provenance=prov)
    typer.echo(
        f"wrote {result.path} (opset {result.opset}, {result.quantize_nodes} QuantizeLinear, "
        f"{result.weight_quantizers} weight quantizers); int8 codes equal to torch at every "
        f"QuantizeLinear: min {result.min_code_match:.4%} ({result.comparison})"
    )


@app.command("int8")
def int8_cmd(
    cfg: Optional[str] = ModelCfgOpt,
    out: Path = typer.Option(..., "--out", help="Output .onnx file."),
    calib: Path = typer.Option(..., "--calib", help="Calibration images (a folder, or a dataset's train split); never the images you evaluate on."),
    weights: Optional[Path] = WeightsOpt,
    images: int = typer.Option(64, "--images", help="Calibration images used (the first N, sorted)."),
    img_size: Optional[int] = ImgSizeOpt,
    calibration: str = typer.Option("minmax", "--calibration", help="Activation ranges: minmax | percentile | entropy."),
    reduce_range: Optional[bool] = typer.Option(
        None, "--reduce-range/--full-range", help="7-bit weights (default: only on a CPU without VNNI, where 8 bits can saturate)."
    ),
) -> None:
    """int8 ONNX for onnxruntime on a CPU (the host target): u8 activations, s8 per-channel weights, verified code for code."""
    from edgeyolo.cli.quantize import _calib_images
    from edgeyolo.errors import UsageError
    from edgeyolo.export.host_int8 import export_host_int8
    from edgeyolo.model.io import read_image

    check_img_size(img_size)
    check_output_file(out, "--out")
    if images <= 0:
        raise UsageError(f"--images must be positive, got {images}")
    paths, source = _calib_images(calib, images)
    frames = [f for f in (read_image(p) for p in paths) if f is not None]
    if not frames:
        raise UsageError(f"--calib {calib}: none of its images could be read")
    model = load_cli_model(cfg, weights, img_size=img_size)
    result = export_host_int8(
        model, out, frames, img_size=img_size, calibration=calibration, reduce_range=reduce_range,
        provenance=_provenance(weights, False, 0),
    )
    bits = "7-bit weights (no VNNI)" if result.reduce_range else "8-bit weights"
    typer.echo(
        f"wrote {result.path} (onnxruntime layout: {result.activation_quantizers} u8 activation quantizers, "
        f"{result.weight_quantizers} int8 convs, {bits}; {calibration} ranges from {source}); codes equal to the torch "
        f"fake-quant model: weights {result.weight_code_match:.2%}, activations min {result.min_code_match:.4%} (teacher-forced)"
    )


@app.command("bnfold")
def bnfold_cmd(
    cfg: str = CfgOpt,
    out: Path = typer.Option(..., "--out", help="Output .onnx file."),
    weights: Optional[Path] = WeightsOpt,
    img_size: Optional[int] = ImgSizeOpt,
    opset: int = typer.Option(13, "--opset", help="ONNX opset 11..17."),
) -> None:
    """Float ONNX with batch norm folded into the convs (checked against the unfolded model)."""
    from edgeyolo.export.qdq import export_bnfold

    check_img_size(img_size)
    check_output_file(out, "--out")
    model = load_cli_model(cfg, weights, img_size=img_size)
    size = img_size or model.cfg.net.height
    result = export_bnfold(model, out, size, opset=opset, provenance=_provenance(weights, False, 0))
    typer.echo(f"wrote {result.path} (BN folded, opset {result.opset}); onnxruntime vs torch max|Δ|/max|ref| = {result.max_rel_error:.2e}")


@app.command("vitis")
def vitis_cmd(
    target: str = typer.Option(..., "--target", help="zcu104 or ultra96."),
    cfg: str = CfgOpt,
    weights: Path = typer.Option(..., "--weights", help="darknet .weights, edgeyolo .safetensors or reference .pt."),
    calib: Path = typer.Option(..., "--calib", help="Calibration images (a folder, or a dataset's train split); never the images you evaluate on."),
    out: Path = typer.Option(..., "--out", help="Bundle folder to create (must not exist or be empty)."),
    images: int = typer.Option(200, "--images", help="Calibration images copied into the bundle (the first N, sorted)."),
    img_size: Optional[int] = ImgSizeOpt,
    vai: str = typer.Option("3.0", "--vai", help="Vitis AI release of the board image: 2.5 or 3.0."),
    name: Optional[str] = typer.Option(None, "--name", help="Model name for the xmodel and prototxt (default: the cfg's stem)."),
    fingerprint: Optional[str] = typer.Option(None, "--fingerprint", help="The board's DPU fingerprint from `xdputil query` (default: the profile's)."),
    vitis_sim_map: Optional[float] = typer.Option(None, "--vitis-sim-map", help="mAP@0.5 measured with `quantize --vitis-sim`, written into the bundle README."),
) -> None:
    """Vitis AI bundle (standalone model.py, vai_q_pytorch + vai_c_xir scripts, prototxt) for a Xilinx DPU, verified."""
    from edgeyolo.adapt.dpu import dpu_arch
    from edgeyolo.cli.quantize import _calib_images
    from edgeyolo.export.vitis import VAI_IMAGES, export_vitis

    check_img_size(img_size)
    if vai not in VAI_IMAGES:
        from edgeyolo.errors import UsageError

        raise UsageError(f"--vai must be one of {', '.join(VAI_IMAGES)}, got '{vai}'")
    arch = dpu_arch(target, vai, fingerprint)
    paths, _ = _calib_images(calib, max(images, 0) + 16)  # a few spares for unreadable files
    model = load_cli_model(cfg, weights, img_size=img_size)
    result = export_vitis(
        model, out, arch, paths, images=images, img_size=img_size, vai=vai, name=name, calib_source=str(calib),
        vitis_sim_map=vitis_sim_map, provenance=_provenance(weights, False, 0),
    )
    typer.echo(
        f"wrote {result.path}/ ({', '.join(result.files)}; {result.calib_images} calibration images from {calib}) "
        f"for {arch.target} {arch.label} fingerprint {arch.fingerprint}; model.py (traced) vs edgeyolo "
        f"max|Δ|/max|ref| = {result.max_rel_error:.2e}\nnext: docker/vitis-ai/run.sh {result.path} --vai {vai}"
    )


@app.command("engine")
def engine_cmd(
    onnx: Path = typer.Option(..., "--onnx", help="An edgeyolo ONNX (a Q/DQ one for int8)."),
    out: Path = typer.Option(..., "--out", help="Engine file to write."),
    precision: str = typer.Option("fp16", "--precision", help="fp32 | fp16 | int8 (int8: Q/DQ ONNX)."),
    workspace: int = typer.Option(1024, "--workspace", help="Builder workspace in MiB."),
) -> None:
    """A TensorRT engine from this machine's tensorrt module: run it on the Jetson itself (engines are tied
    to the GPU and TensorRT version). From a host, `edgeyolo deploy --device NAME M.onnx --engine` builds on the board."""
    from edgeyolo.targets.jetson.engine import build_engine_local

    check_output_file(out, "--out")
    path = build_engine_local(onnx, out, precision, workspace)
    typer.echo(f"wrote {path} ({precision})")


def register(root: typer.Typer) -> None:
    """The ``export`` group."""
    root.add_typer(app, name="export")
