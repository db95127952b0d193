"""Native checkpoints (safetensors + cfg + provenance) and reference-repo ``.pt`` state dicts.

A native checkpoint is self-describing: the cfg text travels in the metadata, so a checkpoint can
never be loaded into the wrong architecture, plus where it came from (source sha256, tool version,
command). Reference ``.pt`` files are read with ``torch.load(weights_only=True)``: a weights file from
the internet must not be able to run code.
"""
from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from edgeyolo import __version__
from edgeyolo.errors import InputFileError, WeightsError
from edgeyolo.fileio import atomic_write_bytes
from edgeyolo.model.cfg import Cfg, format_cfg, parse_cfg, parse_cfg_text
from edgeyolo.model.darknet import Darknet

WEIGHT_SUFFIXES = (".weights", ".safetensors", ".pt", ".pth", ".conv")


@dataclass(frozen=True)
class Provenance:
    source_sha256: str = ""
    command: str = ""
    tool_version: str = __version__

    def to_metadata(self) -> dict[str, str]:
        return {
            "edgeyolo.source_sha256": self.source_sha256,
            "edgeyolo.command": self.command or " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:]),
            "edgeyolo.version": self.tool_version,
        }


def save_checkpoint(model: Darknet, path: str | Path, provenance: Provenance | None = None, extra: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"edgeyolo.cfg": format_cfg(model.cfg), **(provenance or Provenance()).to_metadata(), **(extra or {})}
    return atomic_write_bytes(Path(path), save(tensors, metadata=metadata))


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputFileError(f"checkpoint not found: {path}") from None
    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as exc:
        raise WeightsError(f"{path}: not a valid safetensors file ({exc})") from None
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_len])
    return tensors, dict(header.get("__metadata__") or {})


def checkpoint_cfg(path: str | Path) -> Cfg:
    """The architecture stored inside a native checkpoint."""
    _, meta = read_checkpoint(path)
    if "edgeyolo.cfg" not in meta:
        raise WeightsError(f"{path}: safetensors file has no edgeyolo cfg in its metadata")
    return parse_cfg_text(meta["edgeyolo.cfg"], f"{path}#cfg")


def load_checkpoint(model: Darknet, path: str | Path) -> dict[str, str]:
    tensors, meta = read_checkpoint(path)
    _load_state(model, tensors, str(path))
    return meta


_REFERENCE_KEY = re.compile(r"^(?:module\.)?module_list\.(\d+)\.(Conv2d|BatchNorm2d|conv|bn)\.(.+)$")


def reference_key_map(key: str) -> str | None:
    """Map a reference-repo key (``module_list.3.Conv2d.weight``, DataParallel ``module.`` prefix) to ours."""
    m = _REFERENCE_KEY.match(key)
    if not m:
        return None
    index, kind, rest = m.groups()
    sub = "conv" if kind in ("Conv2d", "conv") else "bn"
    return f"module_list.{index}.{sub}.{rest}"


def load_reference_pt(model: Darknet, path: str | Path) -> dict[str, object]:
    """Load a reference-repo ``.pt`` (``{'model': state_dict, ...}`` or a bare state dict) safely."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputFileError(f"weights file not found: {path}") from None
    except Exception as exc:  # the unpickler's refusal is the point: report it, do not retry unsafely
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"{path}: cannot be read as a plain state dict with weights_only=True ({first}); "
            "re-save it as {'model': model.state_dict()} or convert it to darknet .weights"
        ) from None
    state = obj.get("model", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict (or {{'model': state_dict}}), got {type(obj).__name__}")
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        ours = reference_key_map(key)
        if ours is None:
            raise WeightsError(f"{path}: unexpected key '{key}'; expected module_list.N.(Conv2d|BatchNorm2d).*")
        mapped[ours] = value
    _load_state(model, mapped, str(path))
    return {k: v for k, v in obj.items() if k != "model"} if isinstance(obj, dict) and "model" in obj else {}


def _load_state(model: Darknet, tensors: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    if missing or unexpected:
        raise WeightsError(
            f"{source}: does not match the cfg: {len(missing)} missing tensors"
            + (f" (first: {missing[0]})" if missing else "")
            + f", {len(unexpected)} unexpected"
            + (f" (first: {unexpected[0]})" if unexpected else "")
        )
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise WeightsError(f"{source}: {key} has shape {tuple(value.shape)}, the cfg needs {tuple(own[key].shape)}")
    model.load_state_dict(tensors, strict=True)


def load_model(
    cfg: str | Path | Cfg | None,
    weights: str | Path | None = None,
    cutoff: int | None = None,
    partial: bool = False,
) -> Darknet:
    """Build a model from a cfg (or from the cfg inside a checkpoint) and load weights by file type."""
    from edgeyolo.model.weights import load_darknet_weights

    if cfg is None:
        if weights is None or Path(weights).suffix != ".safetensors":
            raise InputFileError("a --cfg is required unless the weights are an edgeyolo .safetensors checkpoint")
        cfg = checkpoint_cfg(weights)
    elif not isinstance(cfg, Cfg):
        cfg = parse_cfg(cfg)
    model = Darknet(cfg)
    if weights is None:
        return model.eval()
    path = Path(weights)
    if not path.exists():
        raise InputFileError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        load_checkpoint(model, path)
    elif suffix in (".pt", ".pth"):
        load_reference_pt(model, path)
    else:  # darknet: .weights, .conv.74-style backbone files and anything else
        load_darknet_weights(model, path, cutoff=cutoff, partial=partial)
    return model.eval()


def _darknet_source_model(model: Darknet, path: Path) -> Darknet:
    """The model a darknet file was saved from: ``model``'s cfg with the class count the file size implies.

    Only the heads depend on the class count, and the file size is linear in it, so it can be solved
    for exactly; a fine-tune from COCO (80 classes) onto a 12-class cfg then loads every other layer.
    """
    from edgeyolo.model.cfg import ConvSpec
    from edgeyolo.model.cfg import with_classes as cfg_with_classes
    from edgeyolo.model.weights import expected_bytes, read_header

    size = path.stat().st_size
    header = read_header(path.read_bytes()[:20], str(path))

    def with_classes(classes: int) -> Darknet:
        return Darknet(cfg_with_classes(model.cfg, classes))

    if not model.cfg.yolo_layers or not isinstance(model.cfg.layers[model.cfg.yolo_indices[0] - 1], ConvSpec):
        return model
    base = expected_bytes(with_classes(1), header)
    step = expected_bytes(with_classes(2), header) - base
    if step <= 0 or (size - base) % step:
        return model  # not a matter of class count: let the strict loader explain the mismatch
    classes = 1 + (size - base) // step
    return with_classes(int(classes)) if classes != model.num_classes and classes > 0 else model


def load_pretrained(model: Darknet, weights: str | Path, cutoff: int | None = None) -> list[str]:
    """Load what fits from pretrained weights, skipping tensors whose shape differs (heads of another
    class count). Returns the names of the skipped tensors."""
    from edgeyolo.model.weights import load_darknet_weights

    path = Path(weights)
    if not path.exists():
        raise InputFileError(f"weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state, _ = read_checkpoint(path)
    elif suffix in (".pt", ".pth"):
        source = Darknet(model.cfg)
        try:
            load_reference_pt(source, path)
            state = source.state_dict()
        except WeightsError:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
            raw = obj.get("model", obj) if isinstance(obj, dict) else {}
            state = {reference_key_map(k) or k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    else:
        source = _darknet_source_model(model, path) if cutoff is None else Darknet(model.cfg)
        load_darknet_weights(source, path, cutoff=cutoff)
        state = source.state_dict()
        if cutoff is not None:
            state = {k: v for k, v in state.items() if int(k.split(".")[1]) < cutoff}
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not usable:
        raise WeightsError(f"{path}: no tensor fits this cfg; is it a checkpoint of another architecture?")
    own.update(usable)
    model.load_state_dict(own)
    return sorted(k for k in own if k not in usable and not k.endswith("num_batches_tracked"))
