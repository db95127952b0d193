"""ONNX export that old board runtimes can read, verified in onnxruntime against torch.

torch 2.13's default (dynamo) exporter writes opset 18–20 with a side ``.onnx.data`` file and
ignores a request for opset 13; TensorRT 8.2 (JetPack 4.6) cannot read that. The TorchScript exporter
(``dynamo=False``) honours the opset and writes one file, so it is used, and the opset and IR version
actually written are asserted rather than assumed. onnxsim may re-stamp the IR version with the
installed onnx's newest, so the exporter's IR is restored after simplifying.
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgeyolo import __version__
from edgeyolo.contract import Contract, channel_order_for
from edgeyolo.errors import ExportError, MissingDependencyError, UsageError, VerificationError
from edgeyolo.fileio import atomic_write_bytes
from edgeyolo.model.cfg import format_cfg
from edgeyolo.model.darknet import Darknet, RawHeads

OPSET_RANGE = (11, 17)
DEFAULT_OPSET = 13
DEFAULT_TOLERANCE = 1e-4  # max|Δ| / max|ref| per output


@dataclass(frozen=True)
class OnnxExportResult:
    path: Path
    opset: int
    ir_version: int
    outputs: tuple[str, ...]
    output_shapes: tuple[tuple[int | str, ...], ...]
    max_rel_error: float
    simplified: bool


def output_names(model: Darknet, raw: bool) -> list[str]:
    # raw heads are named after the conv feeding each [yolo] layer, as OpenCV DNN names that blob
    return [f"conv_{h.layer - 1}" for h in model.heads] if raw else ["detections"]


def _max_ir_for_opset(opset: int) -> int:
    import onnx

    for _release, ir, op, *_ in onnx.helper.VERSION_TABLE:
        if op == opset:
            return ir
    return onnx.IR_VERSION


def export_onnx(
    model: Darknet,
    out: str | Path,
    img_size: int | tuple[int, int] = 416,
    opset: int = DEFAULT_OPSET,
    simplify: bool = True,
    dynamic_batch: bool = False,
    raw: bool = False,
    contract: Contract | None = None,
    sample: np.ndarray | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
    provenance: dict[str, str] | None = None,
) -> OnnxExportResult:
    """Export, simplify, stamp metadata and verify; the file appears only if verification passed."""
    import onnx

    if not OPSET_RANGE[0] <= opset <= OPSET_RANGE[1]:
        raise UsageError(f"--opset must lie in {OPSET_RANGE[0]}..{OPSET_RANGE[1]}, got {opset}")
    h, w = (img_size, img_size) if isinstance(img_size, int) else img_size
    if h % 32 or w % 32:
        raise UsageError(f"--img-size must be a multiple of 32, got {h}x{w}")
    if not model.heads and not raw:
        raise ExportError("the cfg has no [yolo] layer, so there is nothing to decode; export with --raw")
    contract = contract or Contract(h, w, channel_order=channel_order_for(model.cfg.net.channels))
    model = model.eval()
    channels = model.cfg.net.channels
    if sample is None:
        sample = np.random.default_rng(0).random((1, channels, h, w), dtype=np.float32)
    x = torch.from_numpy(np.ascontiguousarray(sample, dtype=np.float32))
    module = (RawHeads(model) if raw else model).eval()
    names = output_names(model, raw)
    dynamic_axes = {"images": {0: "batch"}, **{n: {0: "batch"} for n in names}} if dynamic_batch else None

    buffer = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=names,
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    written_opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    if written_opset != opset:
        raise ExportError(f"asked torch for opset {opset} but it wrote opset {written_opset}")
    ir_version = proto.ir_version
    if ir_version > _max_ir_for_opset(opset):
        raise ExportError(f"exporter wrote IR {ir_version}, newer than opset {opset} allows ({_max_ir_for_opset(opset)})")

    simplified = False
    if simplify:
        try:
            import onnxsim
        except ImportError as exc:  # pragma: no cover - a hard dependency
            raise MissingDependencyError("onnxsim", "cpu") from exc
        proto_s, ok = onnxsim.simplify(proto)
        if not ok:
            raise ExportError("onnxsim could not validate the simplified model; retry with --no-simplify")
        proto, simplified = proto_s, True
        proto.ir_version = ir_version  # onnxsim re-stamps with the installed onnx's IR; ops are unchanged
    if dynamic_batch:  # only the batch axis is free; keep the other output dims concrete
        with torch.no_grad():
            single = module(x)
        for value, ref in zip(proto.graph.output, single if isinstance(single, (tuple, list)) else [single]):
            for dim, size in zip(value.type.tensor_type.shape.dim[1:], ref.shape[1:]):
                dim.dim_value = int(size)

    heads = [[h.layer, h.stride, list(map(list, h.anchors)), h.classes, h.scale_x_y] for h in model.heads]
    stamp_metadata(proto, model, contract, provenance, {"edgeyolo.outputs": json.dumps({"raw": raw, "names": names, "heads": heads})})
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()

    # verify before writing: onnxruntime on the same input as torch
    from edgeyolo.runtime.onnxruntime import make_session, run_session

    if dynamic_batch:  # prove the batch axis really is free
        x = torch.cat([x, x.flip(-1)])
    with torch.no_grad():
        ref = module(x)
    refs = [t.numpy() for t in (ref if isinstance(ref, (tuple, list)) else [ref])]
    got = run_session(make_session(data), x.numpy())
    worst = 0.0
    for name, r, g in zip(names, refs, got):
        if r.shape != g.shape:
            raise VerificationError(f"output {name}: onnxruntime shape {g.shape} != torch shape {r.shape}")
        scale = float(np.abs(r).max())
        err = float(np.abs(r - g).max()) / max(scale, 1e-12)
        if not np.isfinite(err) or err > tolerance:
            raise VerificationError(
                f"output {name}: onnxruntime differs from torch by max|Δ|/max|ref| = {err:.3g} (allowed {tolerance:g})"
            )
        worst = max(worst, err)
    path = atomic_write_bytes(Path(out), data)
    shapes = tuple(tuple(d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim) for o in proto.graph.output)
    return OnnxExportResult(path, opset, ir_version, tuple(names), shapes, worst, simplified)


def stamp_metadata(proto, model: Darknet, contract: Contract, provenance: dict[str, str] | None = None,
                   extra: dict[str, str] | None = None) -> dict[str, str]:
    """Replace ``proto``'s metadata with edgeyolo's (version, cfg, contract, ``extra``, provenance) and
    name edgeyolo its producer; returns the metadata."""
    meta = {
        "edgeyolo.version": __version__,
        "edgeyolo.cfg": format_cfg(model.cfg),
        "edgeyolo.contract": contract.to_json(),
        **(extra or {}),
        **{f"edgeyolo.provenance.{k}": v for k, v in (provenance or {}).items()},
    }
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name, proto.producer_version = "edgeyolo", __version__
    return meta


def read_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}
