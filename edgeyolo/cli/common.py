"""Options and helpers shared by the command modules."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from edgeyolo.errors import UsageError

CfgOpt = typer.Option(..., "--cfg", help="darknet .cfg path or zoo name (edgeyolo-res, edgeyolo-mobile, yolov3-tiny, ...).")
WeightsOpt = typer.Option(None, "--weights", help="darknet .weights, edgeyolo .safetensors or reference .pt.")
ModelCfgOpt = typer.Option(None, "--cfg", help="darknet .cfg path or zoo name; not needed for a .safetensors, a quantized folder or an .onnx.")
ModelWeightsOpt = typer.Option(
    ..., "--weights", help="darknet .weights, .safetensors, reference .pt, a quantized folder (edgeyolo quantize) or an edgeyolo .onnx (QDQ included)."
)


def onnx_contract(path: Path, backend: str, img_size: Optional[int], **overrides):
    """The pre/post-processing contract an edgeyolo ONNX file given as --weights carries, with some
    thresholds replaced; the file runs as it is, so only onnxruntime at its own size applies."""
    from edgeyolo.contract import Contract
    from edgeyolo.export.onnx import read_metadata

    if backend != "onnxruntime":
        raise UsageError(f"an .onnx model runs on --backend onnxruntime, not {backend}")
    text = read_metadata(path).get("edgeyolo.contract")
    if text is None:
        raise UsageError(f"{path}: no edgeyolo contract in the ONNX metadata; export it with edgeyolo export onnx|qdq")
    base = Contract.from_json(text)
    if img_size not in (None, base.height):
        raise UsageError(f"{path} was exported at {base.height} px; --img-size {img_size} does not apply")
    return Contract(**{**base.__dict__, **{k: v for k, v in overrides.items() if v is not None}})


ImgSizeOpt = typer.Option(None, "--img-size", "--img_size", help="Square input size (multiple of 32); default from the cfg.")


def load_cli_model(
    cfg: Optional[str],
    weights: Optional[Path],
    random_init: bool = False,
    seed: int = 0,
    calib_images: Optional[Path] = None,
    img_size: Optional[int] = None,
    cutoff: Optional[int] = None,
    partial: bool = False,
):
    """The model a command works on: loaded weights, or seeded calibrated random weights."""
    from edgeyolo.model.checkpoint import load_model
    from edgeyolo.model.zoo import resolve_cfg

    if weights is not None and random_init:
        raise UsageError("give either --weights or --random-init, not both")
    if weights is None and not random_init:
        raise UsageError("give --weights W, or --random-init [--seed S] for calibrated random weights")
    if weights is not None and not Path(weights).exists():
        from edgeyolo.errors import InputFileError

        raise InputFileError(f"weights file not found: {weights}")
    if weights is not None and Path(weights).is_dir():  # a quantized model folder (edgeyolo quantize, QAT *_quant)
        from edgeyolo.compress.quant import load_quantized

        return load_quantized(weights)
    cfg_path = resolve_cfg(cfg) if cfg else None
    model = load_model(cfg_path, weights, cutoff=cutoff, partial=partial)
    if random_init:
        from edgeyolo.contract import Contract, channel_order_for
        from edgeyolo.model.init import calibration_batch, load_images, random_init as init, synthetic_images

        size = img_size or model.cfg.net.height
        contract = Contract(size, size, channel_order=channel_order_for(model.cfg.net.channels))
        images = load_images(calib_images, 16) if calib_images else []
        if calib_images and not images:
            raise UsageError(f"--calib-images {calib_images}: no readable images found")
        images = images or synthetic_images(8, size, size, seed)
        init(model, calibration_batch(contract, images), seed=seed)
        model.eval()
    return model


def darknet_files(cfg: Optional[str], weights: Optional[Path]) -> tuple[Optional[Path], Optional[Path]]:
    """The user's own darknet cfg + weights when that is what was given, so OpenCV DNN reads those
    very files; (None, None) otherwise, and the OpenCV runner writes darknet files from the model."""
    if cfg is None or Path(cfg).suffix != ".cfg" or weights is None or weights.suffix.lower() in (".safetensors", ".pt", ".pth"):
        return None, None
    return Path(cfg), weights


def check_img_size(img_size: Optional[int]) -> None:
    if img_size is not None and (img_size <= 0 or img_size % 32):
        raise UsageError(f"--img-size must be a positive multiple of 32, got {img_size}")
