"""A quantized model on disk: one folder, written whole or not at all.

``model.cfg`` (the architecture), ``model.safetensors`` (float parameters + every quantizer range),
``quant.json`` (the resolved :class:`QuantSpec`, the float layers, how it was calibrated, and the
scale of every quantizer for people and board tools to read). Files are staged in a hidden folder
beside the target, read back and checked, then moved in one rename each.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from edgeyolo.compress.quant.modules import (
    QuantConvBlock,
    _require,
    act_quantizers,
    float_layers,
    prepare_qat,
    set_float_layers,
)
from edgeyolo.compress.quant.spec import QuantSpec
from edgeyolo.errors import InputFileError, UsageError, VerificationError, WeightsError
from edgeyolo.model.cfg import format_cfg, parse_cfg_text
from edgeyolo.model.darknet import Darknet

FILES = ("model.cfg", "model.safetensors", "quant.json")
FORMAT_VERSION = 1


def scales(model) -> dict[str, object]:
    """Every quantizer's scale: activations per tensor, weights per channel or per tensor (as the
    scheme says); a scheme without ranges (dorefa) has no weight scales."""
    model = _require(model)
    out: dict[str, object] = {name: float(q.scale()) for name, q in act_quantizers(model).items() if float(q.amax) > 0}
    for i, m in enumerate(model.module_list):
        if isinstance(m, QuantConvBlock) and m.w_q.scheme_obj.uses_ranges:
            w, _ = m.folded_params()
            out[f"module_list.{i}.w_q"] = m.w_q.scale(w).flatten().tolist()
    return out


def save_quantized(model, out_dir: str | Path, info: dict[str, object] | None = None) -> Path:
    """Write the folder; ``info`` (calibration method, images, source, ...) goes into quant.json."""
    from safetensors.torch import load as load_tensors
    from safetensors.torch import save as save_tensors

    model = _require(model)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "format": FORMAT_VERSION,
        "spec": model.quant_spec.to_dict(),
        "float_layers": float_layers(model),
        "info": info or {},
        "scales": scales(model),
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        (staging / "model.cfg").write_text(format_cfg(model.cfg), encoding="utf-8")
        (staging / "model.safetensors").write_bytes(save_tensors(tensors))
        (staging / "quant.json").write_text(json.dumps(meta, indent=1, sort_keys=True), encoding="utf-8")
        back = load_tensors((staging / "model.safetensors").read_bytes())
        if set(back) != set(tensors) or not all(torch.equal(back[k], tensors[k]) for k in tensors):
            raise VerificationError(f"{staging / 'model.safetensors'} does not read back bit-exactly")
        out.mkdir(exist_ok=True)
        for name in FILES:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def read_quant_json(folder: str | Path) -> dict:
    path = Path(folder) / "quant.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputFileError(f"{folder} is not a quantized-model folder: {path.name} is missing (write one with `edgeyolo quantize`)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION or "spec" not in meta:
        raise InputFileError(f"{path}: not an edgeyolo quant.json of format {FORMAT_VERSION}")
    return meta


def load_quantized(out_dir: str | Path) -> Darknet:
    """Rebuild the quantized model (eval mode) from a folder written by :func:`save_quantized`."""
    from safetensors import SafetensorError
    from safetensors.torch import load as load_tensors

    folder = Path(out_dir)
    if not folder.is_dir():
        raise InputFileError(f"quantized model folder not found: {folder}")
    meta = read_quant_json(folder)
    for name in FILES:
        if not (folder / name).is_file():
            raise InputFileError(f"{folder}: {name} is missing; the folder is incomplete, re-run `edgeyolo quantize`")
    cfg = parse_cfg_text((folder / "model.cfg").read_text(encoding="utf-8"), folder / "model.cfg")
    model = prepare_qat(Darknet(cfg), QuantSpec.from_dict(meta["spec"]))
    set_float_layers(model, meta.get("float_layers", []))
    try:
        tensors = load_tensors((folder / "model.safetensors").read_bytes())
    except (SafetensorError, ValueError) as exc:
        raise WeightsError(f"{folder / 'model.safetensors'}: not a valid safetensors file ({exc})") from None
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(tensors)), sorted(set(tensors) - set(own))
    if missing or extra:
        raise WeightsError(f"{folder / 'model.safetensors'} does not match {folder / 'model.cfg'}: missing {missing[:3]}, unexpected {extra[:3]}")
    bad = [k for k in own if own[k].shape != tensors[k].shape]
    if bad:
        raise WeightsError(f"{folder / 'model.safetensors'}: {bad[0]} has shape {tuple(tensors[bad[0]].shape)}, the cfg needs {tuple(own[bad[0]].shape)}")
    model.load_state_dict(tensors)
    model.quant_info = meta.get("info", {})
    return model.eval()
